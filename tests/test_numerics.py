"""Numerics guard: a tiny pretraining stage, fixed seeds, against a stored per-step loss curve.

The run goes through the real path -- ``LocalLauncher`` -> torchrun -> a seed-checkpoint process
-> torchtitan's Trainer with our model spec, curriculum dataloader, plan LR and AdamW -- on CPU
in fp32 with one rank and one thread (CUDA hidden, so a GPU host runs the same CPU reference).
Its data needs no corpus: token ids come from an integer formula (:func:`synthetic_ids`), so
only torch and torchtitan (and our training code) can move the numbers. A torch or torchtitan
upgrade that changes them fails here, naming every step that drifted with both values.

Tolerance (``TOLERANCE`` = 2e-5 nats, absolute, per step), from what was measured here (kept in
the reference's ``measured`` field): the run-to-run spread is 0 (bit-identical losses:
deterministic kernels, one thread, fp32); forcing the AVX2 kernels instead of AVX512
(``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``) moved one step by 4.8e-7. Raising the peak
LR by 1% moves step 2 by 2.1e-4 and step 12 by 3.8e-3. So 2e-5 is 40x another CPU's SIMD
rounding and 10x below the smallest real change tried: a changed kernel, init, optimizer or
schedule fails, a different host does not.

Regenerate the reference (after an intended change; say why in the commit):

    .venv/bin/python tests/test_numerics.py --regenerate
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "tests" / "data" / "reference_loss_tiny.json"
TOLERANCE = 2e-5  # absolute, nats per step; see the module docstring
SEED = 7
VOCAB = 320
SHAPE = {"dim": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_dim": 64}
CURRICULUM = {
    "lr_peak": 3e-3,
    "lr_min": 1e-5,
    "stages": [
        {"name": "warmup", "tokens": 512, "lr": "warmup", "seq_len": 64, "rope_theta": 1e4},
        {"name": "stable", "tokens": 3072, "lr": "constant", "seq_len": 64, "rope_theta": 1e4},
        {"name": "decay", "tokens": 512, "lr": "decay", "seq_len": 64, "rope_theta": 1e4},
    ],
}
STAGE = "stable"  # 12 steps at constant LR, from the seed checkpoint
BATCH = 4
TRAIN_TOKENS = 16_384


def synthetic_ids(n: int, vocab: int = VOCAB) -> list[int]:
    """Learnable, version-proof token ids: the next id is a fixed function of the current one
    and of a slowly changing phase; id 0 (EOS) closes every 97-token document."""
    ids, cur = [], 1
    for i in range(n):
        if i % 97 == 96:
            ids.append(0)
            continue
        cur = (5 * cur + 17 + (i // 50) % 3) % (vocab - 1) + 1
        ids.append(cur)
    return ids


def config() -> dict:
    """Everything that fixes the run, as stored in the reference."""
    return {
        "seed": SEED,
        "vocab": VOCAB,
        "shape": SHAPE,
        "curriculum": CURRICULUM,
        "stage": STAGE,
        "batch_size": BATCH,
        "train_tokens": TRAIN_TOKENS,
        "dtype": "float32",
        "ranks": 1,
        "threads_per_rank": 1,
    }


def build_inputs(root: Path):
    """Shards, tokenizer and plan for the run under ``root``; returns the stage's spec."""
    from nanbeige_data.pretraining.config import CurriculumConfig, PretrainConfig, TokenizerConfig
    from nanbeige_data.pretraining.curriculum import plan_curriculum
    from nanbeige_data.pretraining.tokenizer import ShardIndex, ShardRow, train_tokenizer
    from nanbeige_train.pretrain.trainer import StageSpec

    shards = root / "shards"
    shards.mkdir(parents=True)
    for split, n in (("train", TRAIN_TOKENS), ("val", 1024)):
        np.asarray(synthetic_ids(n), dtype=np.uint16).tofile(shards / f"web__diverse.{split}.bin")
    rows = [
        ShardRow("web/diverse", "web", "diverse", s, f"web__diverse.{s}.bin", "uint16", n // 97, n)
        for s, n in (("train", TRAIN_TOKENS), ("val", 1024))
    ]
    index = ShardIndex(rows, VOCAB, 0, "uint16", TRAIN_TOKENS + 1024, 0.0, 0.0)
    (shards / "index.json").write_text(json.dumps(index.as_dict()))
    # torchtitan's Trainer loads a tokenizer; its ids never reach the model (the shards are ids)
    text = ["the quick brown fox jumps over the lazy dog " * 20]
    tok = TokenizerConfig(vocab_size=VOCAB, special_tokens=["<|endoftext|>"])
    train_tokenizer(text, tok, root / "tokenizer")
    stages = [{**s, "mixture": {"web/diverse": 1.0}} for s in CURRICULUM["stages"]]
    curriculum = CurriculumConfig.model_validate({**CURRICULUM, "stages": stages})
    pretrain = PretrainConfig(batch_size=BATCH, dtype="float32", checkpoint_every=1000)
    plan = plan_curriculum(curriculum, pretrain)
    (root / "plan.json").write_text(json.dumps(plan.to_dict()))
    return StageSpec(
        plan_path=str(root / "plan.json"),
        stage=STAGE,
        shards_dir=str(shards),
        tokenizer_dir=str(root / "tokenizer"),
        model={**SHAPE, "vocab_size": VOCAB},
        work_dir=str(root / "work"),
        pretrain=pretrain,
        seed=SEED,
    )


def train(root: Path) -> dict:
    """Run the stage; its per-step losses and the versions that produced them."""
    import importlib.metadata as md

    from nanbeige_train.launch import LocalLauncher
    from nanbeige_train.pretrain.trainer import read_metrics

    spec = build_inputs(root)
    result = LocalLauncher(nproc_per_node=1, threads_per_rank=1).run_stage(spec)
    return {
        "torch": md.version("torch"),
        "torchtitan": md.version("torchtitan"),
        "config": config(),
        "dtype_used": result["dtype"],
        "losses": [row["loss"] for row in read_metrics(Path(spec.work_dir))],
    }


def drift(reference: dict, run: dict, tolerance: float = TOLERANCE) -> list[str]:
    """One readable line per step whose loss is off by more than ``tolerance``."""
    want, got = reference["losses"], run["losses"]
    lines = [] if len(want) == len(got) else [f"{len(got)} steps logged, reference {len(want)}"]
    for step, (w, g) in enumerate(zip(want, got, strict=False), start=1):
        if not (math.isfinite(g) and abs(g - w) <= tolerance):
            lines.append(f"step {step}: loss {g:.8f}, reference {w:.8f} (diff {g - w:+.2e})")
    return lines


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the reference is a CPU run, on any host


def test_tiny_stage_reproduces_the_reference_loss_curve(cpu_only, tmp_path):
    reference = json.loads(REFERENCE.read_text())
    assert reference["config"] == config(), "the run's setup changed: regenerate the reference"
    run = train(tmp_path)
    assert run["dtype_used"] == "float32"
    problems = drift(reference, run)
    if problems:
        pytest.fail(
            f"loss curve drifted from {REFERENCE.name} (tolerance {TOLERANCE:g} nats per step; "
            f"reference torch {reference['torch']} / torchtitan {reference['torchtitan']}, "
            f"now torch {run['torch']} / torchtitan {run['torchtitan']}):\n  "
            + "\n  ".join(problems)
            + f"\nIf the change is intended: {sys.executable} tests/test_numerics.py --regenerate",
            pytrace=False,
        )


def test_drift_names_the_step_and_both_values():
    reference = {"losses": [5.0, 4.5, 4.0]}
    assert drift(reference, {"losses": [5.0, 4.5 + 1e-5, 4.0]}) == []
    assert drift(reference, {"losses": [5.0, 4.6, float("nan")]}) == [
        "step 2: loss 4.60000000, reference 4.50000000 (diff +1.00e-01)",
        "step 3: loss nan, reference 4.00000000 (diff +nan)",
    ]
    assert drift(reference, {"losses": [5.0]})[0] == "1 steps logged, reference 3"


def regenerate(runs: int = 2) -> None:
    """Train ``runs`` times (they must agree exactly) and once more on the AVX2 kernels; store
    the curve and both spreads (the LR figures in ``measured`` are carried over as they were)."""
    import os
    import tempfile

    def one(**env: str) -> dict:
        os.environ.update(CUDA_VISIBLE_DEVICES="", **env)  # the launcher passes it to torchrun
        with tempfile.TemporaryDirectory() as tmp:
            return train(Path(tmp))

    def spread(a: dict, b: dict) -> float:
        return max(abs(x - y) for x, y in zip(a["losses"], b["losses"], strict=True))

    first, *others = [one() for _ in range(runs)]
    avx2 = one(ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2")
    stored = json.loads(REFERENCE.read_text()).get("measured", {}) if REFERENCE.exists() else {}
    measured = {
        **stored,
        "run_to_run_max_abs_diff": max((spread(first, r) for r in others), default=0.0),
        "runs": runs,
        "avx2_vs_avx512_max_abs_diff": spread(first, avx2),
    }
    if measured["run_to_run_max_abs_diff"] > 0:
        sys.exit(f"runs disagree ({measured}): the stage is not deterministic; not written")
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    body = {**first, "tolerance": TOLERANCE, "measured": measured}
    body["regenerate"] = ".venv/bin/python tests/test_numerics.py --regenerate"
    REFERENCE.write_text(json.dumps(body, indent=2) + "\n")
    print(f"wrote {REFERENCE}: {len(first['losses'])} steps, {measured}")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit(__doc__)
    regenerate()

"""Pretraining on CPU with torchtitan: curriculum loader, stage hand-off, crash resume, two gloo
ranks against one, and the Hugging Face export. Real text, a real tokenizer, real processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from nanbeige_data.corpus.build import build_domain
from nanbeige_data.corpus.config import DomainSource
from nanbeige_data.pretraining.config import PretrainConfig, TokenizerConfig
from nanbeige_data.pretraining.curriculum import plan_curriculum
from nanbeige_data.pretraining.tokenizer import train_tokenizer, write_token_shards
from nanbeige_data.recipe import load_recipe
from nanbeige_train.data import MixtureSchedule
from nanbeige_train.launch import LocalLauncher, TrainingError
from nanbeige_train.model import ModelShape
from nanbeige_train.pretrain.trainer import StageSpec, checkpoints, read_metrics

STAGE_TOKENS = [512, 2048, 1024, 1024]  # 2 + 8 + 4 + 2 steps of 4 x 64 (decay: 4 x 128)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A small real corpus -> tokenizer -> shards -> plan, as the curriculum assets build them."""
    root = tmp_path_factory.mktemp("pretrain")
    corpus = root / "corpus"
    corpus.mkdir()
    for domain in ("web", "code"):
        build_domain(
            domain,
            DomainSource(max_bytes=60_000, target_doc_chars=2000),
            out_dir=corpus,
            shard_docs=10_000,
        )
        for i, shard in enumerate(sorted(corpus.glob("part-*.parquet"))):
            shard.rename(corpus / f"{domain}-{i}.parquet")
    docs = pl.read_parquet(corpus / "*.parquet")
    tiers = docs.select("id", "domain").with_columns(
        tier=pl.when(pl.int_range(pl.len()) % 2 == 0)
        .then(pl.lit("diverse"))
        .otherwise(pl.lit("high"))
    )
    tiers.write_parquet(root / "tiers.parquet")
    tok = root / "tokenizer"
    train_tokenizer(docs["text"].to_list(), TokenizerConfig(vocab_size=1024), tok)
    shards = root / "shards"
    write_token_shards(str(corpus / "*.parquet"), root / "tiers.parquet", tok, shards, seed=1)

    recipe = load_recipe("tiny")
    mixtures = [
        {"web/diverse": 0.5, "code/diverse": 0.5},
        {"web/diverse": 0.4, "code/diverse": 0.3, "web/high": 0.3},
        {"web/high": 0.5, "code/high": 0.5},
        {"web/high": 0.3, "code/high": 0.7},
    ]
    stages = [
        s.model_copy(update={"tokens": t, "seq_len": 64 * (1 + (s.lr == "decay")), "mixture": m})
        for s, t, m in zip(recipe.curriculum.stages, STAGE_TOKENS, mixtures, strict=True)
    ]
    cur = recipe.curriculum.model_copy(update={"stages": stages})
    pre = recipe.pretrain.model_copy(update={"batch_size": 4})
    plan = plan_curriculum(cur, pre)
    (root / "plan.json").write_text(json.dumps(plan.to_dict()))
    vocab = json.loads((tok / "tokenizer.json").read_text())["model"]["vocab"]
    return root, plan, max(vocab.values()) + 1


def spec_for(data, stage: str, work: Path, init: Path | None = None, every: int = 50):
    root, _, vocab = data
    shape = ModelShape(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, vocab_size=vocab)
    return StageSpec(
        plan_path=str(root / "plan.json"),
        stage=stage,
        shards_dir=str(root / "shards"),
        tokenizer_dir=str(root / "tokenizer"),
        model=shape.model_dump(),
        work_dir=str(work),
        init_checkpoint=str(init) if init else None,
        seed=3,
        pretrain=PretrainConfig(checkpoint_every=every),
    )


def losses(work: Path) -> list[float]:
    return [row["loss"] for row in read_metrics(work)]


# --- the curriculum schedule ---------------------------------------------------------------


def test_mixture_schedule_is_exact_and_never_more_than_one_sequence_off():
    targets = {"a": 7, "b": 2, "c": 11}
    schedule = MixtureSchedule(targets)
    total = sum(targets.values())
    for j in range(total):
        schedule.next()
        for bucket, n, c in zip(schedule.buckets, schedule.targets, schedule.counts, strict=True):
            assert abs(c - n * (j + 1) / total) < 1, (bucket, j)
    assert dict(zip(schedule.buckets, schedule.counts, strict=True)) == targets
    with pytest.raises(StopIteration):
        schedule.next()


def test_schedule_state_restores_the_exact_position():
    targets = {"a": 5, "b": 3}
    first = MixtureSchedule(targets)
    order = [first.next() for _ in range(3)]
    second = MixtureSchedule(targets)
    second.restore(json.loads(json.dumps(first.state())))
    assert order + [second.next() for _ in range(5)] == _replay(targets, 8)


def _replay(targets, n):
    schedule = MixtureSchedule(targets)
    return [schedule.next() for _ in range(n)]


# --- training stages -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def first_stage(data, tmp_path_factory):
    """A first stage (no predecessor), one process, uninterrupted: the reference curve."""
    work = tmp_path_factory.mktemp("first")
    result = LocalLauncher(nproc_per_node=1).run_stage(spec_for(data, "stable_diverse", work))
    return work, result


def test_stage_trains_what_the_plan_says(data, first_stage):
    _, plan, _ = data
    work, result = first_stage
    stage = next(s for s in plan.stages if s.name == "stable_diverse")
    assert result["steps"] == stage.steps
    assert result["tokens_seen"] == {b: t for b, t in stage.bucket_tokens.items() if t}
    curve = losses(work)
    assert len(curve) == stage.steps and all(np.isfinite(curve))
    assert np.mean(curve[-3:]) < np.mean(curve[:3])  # it learns
    assert result["initial_load"].endswith("seed/step-0")  # a first stage starts from its seed
    assert result["dtype"] == "float32"  # "auto" trains in fp32 on a CPU


def test_the_training_log_carries_progress_a_person_can_follow(data, first_stage):
    """The trainer's progress lines, through ``stage.progress`` (as the assets wire it to the
    run's log): the first and the last step always, with loss and tokens/s."""
    from nanbeige_train.pretrain.stage import progress

    work, result = first_stage
    shown: list[str] = []
    on_line = progress(shown.append, every_s=3600)
    for line in (work / "train.log").read_text().splitlines():
        on_line(line)
    steps = result["steps"]
    assert [line.split()[2] for line in shown] == ["1/8", f"{steps}/{steps}"]
    assert all(line.startswith("stable_diverse: step ") for line in shown)
    assert all(" loss " in line and line.endswith(" tokens/s") for line in shown)


@pytest.mark.slow
def test_two_gloo_ranks_train_the_same_curve_as_one(data, first_stage, tmp_path):
    """torchrun --nproc_per_node 2 over gloo (FSDP) against one process, same seed and data."""
    one, _ = first_stage
    result = LocalLauncher(nproc_per_node=2).run_stage(spec_for(data, "stable_diverse", tmp_path))
    assert result["world_size"] == 2
    np.testing.assert_allclose(losses(tmp_path), losses(one), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_a_crash_mid_stage_resumes_from_that_stages_last_checkpoint(data, first_stage, tmp_path):
    reference, _ = first_stage
    spec = spec_for(data, "stable_diverse", tmp_path, every=3)

    def crash(line: str) -> None:
        if " step:  4 " in line:
            raise KeyboardInterrupt  # the launcher stops torchrun and its ranks mid-stage

    with pytest.raises(KeyboardInterrupt):
        LocalLauncher().run_stage(spec, on_line=crash)
    assert [p.name for p in checkpoints(tmp_path)] == ["step-3"]
    result = LocalLauncher().run_stage(spec)
    assert result["resumed_from"] == "step-3" and result["start_step"] == 3
    assert result["initial_load"] is None  # not the seed, not a previous stage
    # steps 4.. continue exactly where the uninterrupted run went (data position, optimizer)
    np.testing.assert_allclose(losses(tmp_path)[3:], losses(reference)[3:], rtol=1e-5)
    # tokens counted over the whole stage, across the crash
    assert result["tokens_seen"] == first_stage[1]["tokens_seen"]


def _trainers_of(work: Path) -> list[int]:
    """PIDs of live processes whose command line names ``work`` (torchrun and its ranks)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and proc.name != str(os.getpid()):
            with contextlib.suppress(OSError):
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                state = (proc / "stat").read_text().split(") ", 1)[1][0]
                if str(work) in cmdline and state != "Z":
                    pids.append(int(proc.name))
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_sigkilled_launcher_leaves_no_orphan_trainer_and_the_stage_resumes(
    data, first_stage, tmp_path
):
    """The process that launched torchrun dies by SIGKILL (as a Dagster run killed by the OOM
    killer or a pre-empted node does): torchrun and its ranks must not train on as orphans in
    the work directory (PR_SET_PDEATHSIG stops them at once; the broken log pipe would only
    stop them at their next log line), and the next attempt resumes from the stage's last
    checkpoint with the uninterrupted run's losses and token counts."""
    reference, _ = first_stage
    spec = spec_for(data, "stable_diverse", tmp_path / "work", every=2)
    spec_file = spec.save(tmp_path / "spec.json")
    parent = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys\n"
            "from nanbeige_train.launch import LocalLauncher\n"
            "from nanbeige_train.pretrain.trainer import StageSpec\n"
            "LocalLauncher().run_stage(StageSpec.load(sys.argv[1]))\n"
        ), str(spec_file)],
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not any(p.name != "step-0" for p in checkpoints(tmp_path / "work")):
        assert parent.poll() is None, "the stage ended before it wrote a checkpoint"
        assert time.monotonic() < deadline, "no checkpoint in 300 s"
        time.sleep(0.1)
    assert _trainers_of(tmp_path / "work"), "torchrun should be running now"
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 60
    while _trainers_of(tmp_path / "work"):
        assert time.monotonic() < deadline, f"orphans: {_trainers_of(tmp_path / 'work')}"
        time.sleep(0.2)

    done = [p.name for p in checkpoints(tmp_path / "work")]
    result = LocalLauncher().run_stage(spec)
    assert result["resumed_from"] == done[-1] != "step-0"
    np.testing.assert_allclose(losses(tmp_path / "work")[-2:], losses(reference)[-2:], rtol=1e-5)
    assert result["tokens_seen"] == first_stage[1]["tokens_seen"]


@pytest.fixture(scope="module")
def next_stage(data, first_stage, tmp_path_factory):
    """The stage after ``first_stage``, from its final checkpoint, in a launch of its own."""
    work = tmp_path_factory.mktemp("next")
    init = Path(first_stage[1]["checkpoint"])
    result = LocalLauncher().run_stage(spec_for(data, "stable_high_quality", work, init=init))
    return work, result


def test_next_stage_starts_from_the_previous_checkpoint(data, first_stage, next_stage, tmp_path):
    _, result = first_stage
    work, nxt = next_stage
    assert nxt["initial_load"] == result["checkpoint"] and nxt["steps"] == 4
    fresh = tmp_path / "fresh"  # the same stage from a new init, for comparison
    LocalLauncher().run_stage(spec_for(data, "stable_high_quality", fresh))
    assert losses(work)[0] < losses(fresh)[0] - 0.05  # it starts from trained weights


def _checkpoint_tensors(checkpoint: Path, scratch: Path) -> dict[str, object]:
    """Every entry of a DCP checkpoint (model, optimizer moments, schedules, data position)."""
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = scratch / f"{len(list(scratch.glob('*.pt')))}.pt"
    dcp_to_torch_save(checkpoint, out)
    flat: dict[str, object] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}/{key}", item)
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                walk(f"{prefix}/{i}", item)
        else:
            flat[prefix] = value

    walk("", torch.load(out, weights_only=False))
    return flat


def _assert_same_checkpoint(a: Path, b: Path, scratch: Path) -> None:
    import torch

    scratch.mkdir(exist_ok=True)
    left, right = _checkpoint_tensors(a, scratch), _checkpoint_tensors(b, scratch)
    assert left.keys() == right.keys()
    assert "/lm_head.weight" in left and any(k.startswith("/optimizer/") for k in left)
    for key, value in left.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, right[key]), key
        else:
            assert value == right[key], key


def test_a_chain_in_one_launch_trains_what_a_launch_per_stage_trains(
    data, first_stage, next_stage, tmp_path
):
    """Seed, a first stage and the next one from its final checkpoint, all in one torchrun
    (as the ablation trains its runs), against the seed launch and one launch per stage:
    bit-identical per-step losses, token counts and checkpoints (model and optimizer)."""
    from nanbeige_train.pretrain.trainer import final_checkpoint

    first = spec_for(data, "stable_diverse", tmp_path / "a")
    second = spec_for(data, "stable_high_quality", tmp_path / "b", init=final_checkpoint(first))
    results = LocalLauncher().run_chain([first, second])
    log = (tmp_path / "a" / "train.log").read_text().splitlines()
    assert len([line for line in log if line.startswith("$ ")]) == 1  # one launch, seed included
    assert not (tmp_path / "a" / "seed.log").exists()
    assert results[0]["initial_load"].endswith("seed/step-0")
    assert results[1]["initial_load"] == results[0]["checkpoint"] == str(final_checkpoint(first))
    assert losses(tmp_path / "a") == losses(first_stage[0])
    assert losses(tmp_path / "b") == losses(next_stage[0])
    assert [r["tokens_seen"] for r in results] == [
        first_stage[1]["tokens_seen"],
        next_stage[1]["tokens_seen"],
    ]
    for ours, theirs in zip(results, (first_stage[1], next_stage[1]), strict=True):
        scratch = tmp_path / "tensors"
        _assert_same_checkpoint(Path(ours["checkpoint"]), Path(theirs["checkpoint"]), scratch)


def test_an_interrupted_plan_resumes_its_chain_at_the_first_incomplete_stage(data, tmp_path):
    """``ablation.train_plan``: a chain interrupted in its second stage keeps the finished
    first stage (outputs and checkpoint in the run's directory); the next attempt's chain
    starts at the second stage, from that stage's own last checkpoint, and keeps only the
    last stage's checkpoint."""
    from nanbeige_data.pretraining.curriculum import Plan, stage_slice
    from nanbeige_train.pretrain.ablation import train_plan
    from nanbeige_train.pretrain.stage import CHECKPOINT_DIR, REPORT_FILE
    from nanbeige_train.pretrain.trainer import PROGRESS_TAG

    root, _, _ = data
    plan = stage_slice(Plan.load(root / "plan.json"), "stable_diverse")
    names = [s.name for s in plan.stages]
    assert names == ["warmup", "stable_diverse", "stable_high_quality"]
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(plan.to_dict()))

    def specs(stage: str, previous: Path | None) -> StageSpec:
        spec = spec_for(data, stage, tmp_path / "work" / stage, init=previous, every=3)
        spec.plan_path = str(plan_path)
        return spec

    seen: list[tuple[str, int]] = []

    def watch(line: str, stop_at: tuple[str, int] | None = None) -> None:
        if PROGRESS_TAG in line:
            row = json.loads(line.split(PROGRESS_TAG, 1)[1])
            seen.append((row["stage"], row["step"]))
            if seen[-1] == stop_at:
                raise KeyboardInterrupt  # the launcher stops torchrun mid-chain

    out, stop_at = tmp_path / "out", ("stable_diverse", 4)
    with pytest.raises(KeyboardInterrupt):
        train_plan(plan_path, specs, out, LocalLauncher(), lambda x: watch(x, stop_at))
    assert (out / "warmup" / REPORT_FILE).exists() and (out / "warmup" / CHECKPOINT_DIR).exists()
    assert not (out / "stable_diverse").exists()
    assert [p.name for p in checkpoints(tmp_path / "work" / "stable_diverse")] == ["step-3"]

    seen.clear()
    reports = train_plan(plan_path, specs, out, LocalLauncher(), watch)
    assert [r.stage for r in reports] == names
    assert {stage for stage, _ in seen} == {"stable_diverse", "stable_high_quality"}
    assert reports[1].resumed_from == "step-3" and [s for _, s in seen][:1] == [4]
    assert [len(read_metrics(out / n)) for n in names] == [s.steps for s in plan.stages]
    assert {r.run_first_loss for r in reports} == {reports[0].first_loss}
    assert [n for n in names if (out / n / CHECKPOINT_DIR).exists()] == ["stable_high_quality"]
    assert train_plan(plan_path, specs, out, LocalLauncher(), watch) == reports  # all done


def test_missing_previous_checkpoint_is_a_clear_error(data, tmp_path):
    spec = spec_for(data, "stable_high_quality", tmp_path / "w", init=tmp_path / "nope")
    with pytest.raises(TrainingError, match="^stage stable_high_quality: .* exited with"):
        LocalLauncher().run_stage(spec)


def test_a_chain_failing_in_a_later_stage_names_that_stage_and_keeps_the_earlier_ones(
    data, tmp_path
):
    first = spec_for(data, "warmup", tmp_path / "a")
    second = spec_for(data, "stable_high_quality", tmp_path / "b", init=tmp_path / "nope")
    with pytest.raises(TrainingError, match="^stage stable_high_quality: .* exited with") as err:
        LocalLauncher().run_chain([first, second])
    assert "nope" in str(err.value).split("log ", 1)[1]  # the log's tail says what was missing
    assert (tmp_path / "a" / "result.json").exists()  # the finished stage's result stays
    assert not (tmp_path / "b" / "result.json").exists()


# --- export ----------------------------------------------------------------------------------


def test_export_loads_in_transformers_with_the_training_logits(data, first_stage, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nanbeige_train.export import compare_logits, export_hf, fixed_batch, load_training_model

    root, _, vocab = data
    _, result = first_stage
    shape = ModelShape(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, vocab_size=vocab)
    stats = export_hf(
        Path(result["checkpoint"]),
        shape,
        rope_theta=10000.0,
        max_seq_len=64,
        tokenizer_dir=root / "tokenizer",
        out_dir=tmp_path,
    )
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {
        p.name for p in tmp_path.iterdir()
    }
    assert stats.parameters == sum(
        p.numel()
        for p in load_training_model(
            Path(result["checkpoint"]), shape, rope_theta=10000.0, max_seq_len=64
        ).parameters()
    )
    model = load_training_model(
        Path(result["checkpoint"]), shape, rope_theta=10000.0, max_seq_len=64
    )
    assert compare_logits(model, tmp_path, fixed_batch(vocab, seq_len=64)) <= 1e-4
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path))
    assert type(hf).__name__ == "LlamaForCausalLM"
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    ids = tok("def main():", return_tensors="pt").input_ids
    out = hf.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 5
    assert torch.isfinite(hf(ids).logits).all()


def test_loss_check_judges_later_stages_against_where_training_started():
    from nanbeige_train.pretrain.trainer import loss_ok

    plateau = [{"loss": x} for x in (7.0, 6.9, 7.0, 6.95, 7.1, 7.05, 7.1, 7.1)]
    assert not loss_ok(plateau)[0]  # noisy plateau: its own start is not a fair reference
    assert loss_ok(plateau, reference=9.5)[0]  # but well below where the run began
    assert not loss_ok([{"loss": 9.6}, {"loss": float("nan")}], reference=9.5)[0]


# --- the pieces that are not training ---------------------------------------------------------


def _progress_line(step: int, steps: int = 40) -> str:
    from nanbeige_train.pretrain.trainer import PROGRESS_TAG

    row = {"stage": "warmup", "step": step, "steps": steps, "loss": 9.0 - step / 10}
    row["tokens_per_second"] = 1234.5
    return "[rank0]: " + PROGRESS_TAG + json.dumps(row)


def test_progress_reports_first_last_and_every_ten_seconds_between():
    from nanbeige_train.pretrain.stage import progress

    now = [0.0]
    shown, warned = [], []
    on_line = progress(shown.append, warned.append, every_s=10.0, clock=lambda: now[0])
    for step in range(1, 41):  # one step every 3 s
        on_line(_progress_line(step))
        now[0] += 3.0
    on_line("[rank0]: Traceback (most recent call last):")
    on_line("[rank0]: step:  4  loss:  7.1  (torchtitan's own line: left to the log file)")
    steps = [int(line.split()[2].split("/")[0]) for line in shown]
    assert steps == [1, 5, 9, 13, 17, 21, 25, 29, 33, 37, 40]  # never 10 s without a line
    assert shown[0] == "warmup: step 1/40  loss 8.9000  1,234 tokens/s"
    assert warned == ["[rank0]: Traceback (most recent call last):"]


def test_stage_spec_carries_the_recipe_section_itself(tmp_path):
    pretrain = PretrainConfig(checkpoint_every=7, dtype="bfloat16", tensor_parallel=2)
    spec = StageSpec("p.json", "warmup", "s", "t", {"dim": 8}, "w", pretrain=pretrain, seed=4)
    again = StageSpec.load(spec.save(tmp_path / "spec.json"))
    assert again == spec and again.pretrain is not pretrain
    assert json.loads((tmp_path / "spec.json").read_text())["pretrain"]["dtype"] == "bfloat16"


def test_training_dtype_auto_is_fp32_on_a_cpu_and_an_explicit_dtype_wins():
    from nanbeige_data.models import resolve_dtype
    from nanbeige_train.pretrain.trainer import training_dtype

    assert training_dtype("auto") == "float32"  # even where inference's "auto" would be bf16
    assert resolve_dtype("auto") in ("float32", "bfloat16")
    assert training_dtype("bfloat16") == "bfloat16" and training_dtype("float32") == "float32"
    assert "dtype" in PretrainConfig.execution_fields  # not part of a stage's version


def _version(store, key: str, fill, **manifest):
    """Commit a version of ``key`` whose directory ``fill(path)`` writes."""
    with store.stage(key) as staging:
        fill(staging.path)
        return store.commit(staging, **manifest)


def test_a_stage_version_from_store_versions_passes_its_checks_and_exports(data, tmp_path):
    """``train_stage_version`` as the assets call it: real store versions in, a Report out,
    the stage's checks and the Hugging Face export on the version it filled."""
    from functools import partial
    from shutil import copytree

    from nanbeige_data.pretraining.curriculum import STAGE_PLAN_FILE, Plan, stage_slice
    from nanbeige_data.recipe import ModelConfig
    from nanbeige_data.store.versioned import VersionedStore
    from nanbeige_train import export
    from nanbeige_train.pretrain import stage as runner

    root, plan, vocab = data
    copy = partial(copytree, dirs_exist_ok=True)
    store = VersionedStore(tmp_path / "store")
    part = stage_slice(Plan.load(root / "plan.json"), "warmup").to_dict()
    plan_v = _version(
        store, "plan_warmup", lambda p: (p / STAGE_PLAN_FILE).write_text(json.dumps(part))
    )
    shards_v = _version(store, "token_shards", lambda p: copy(root / "shards", p))
    tok_v = _version(
        store,
        "tokenizer",
        lambda p: copy(root / "tokenizer", p),
        counts={"vocab_size": vocab},
    )
    model = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64)
    inputs = {"plan_warmup": plan_v, "token_shards": shards_v, "tokenizer": tok_v}
    work = runner.work_dir(store, "pretrain_warmup", "code-1", inputs)
    assert work == runner.work_dir(store, "pretrain_warmup", "code-1", inputs)  # resumable
    assert work != runner.work_dir(store, "pretrain_warmup", "code-2", inputs)
    out = tmp_path / "out"
    out.mkdir()
    lines: list[str] = []
    run = runner.TrainingRun(work, out, LocalLauncher(), runner.progress(lines.append))
    common = dict(plan=plan_v, shards=shards_v, tokenizer=tok_v, model=model, seed=3, run=run)
    pretrain = PretrainConfig()
    report = runner.train_stage_version("warmup", previous=None, pretrain=pretrain, **common)
    assert report.counts == {"steps": 2, "tokens": plan.stages[0].tokens}
    assert report.values["dtype"] == report.extra["dtype"] == "float32"
    assert report.extra["stage"] == {"name": "warmup", "seq_len": 64, "rope_theta": 10000.0}
    assert "| web/diverse |" in report.markdown["tokens_per_bucket"]
    assert lines == [line for line in lines if line.startswith("warmup: step ")]
    assert [line.split()[2] for line in lines] == ["1/2", "2/2"]

    stage_v = _version(
        store,
        "pretrain_warmup",
        lambda p: copy(out, p),
        inputs=inputs,
        counts=report.counts,
        extra=report.extra,
    )
    assert runner.check_tokens(stage_v)[0]
    ok, detail = runner.check_loss(stage_v)
    assert detail["finite"] == 1.0 and ok == (detail["last_loss"] < detail["first_loss"])
    assert runner.check_reloads(stage_v)[0]
    hf = tmp_path / "hf"
    hf.mkdir()
    exported = export.export_version(stage_v, tok_v, model, hf)
    assert exported.values == {"rope_theta": 10000.0, "max_seq_len": 64}
    base = _version(store, "base_model", lambda p: copy(hf, p), extra=exported.extra)
    ok, detail = export.check_export(base)
    assert ok and detail["max_abs_logit_diff"] <= 1e-4

    broken = _version(store, "pretrain_x", lambda p: (p / "x").write_text("x"))
    with pytest.raises(TrainingError, match="no report.run_first_loss"):
        runner.train_stage_version("warmup", previous=broken, pretrain=pretrain, **common)

"""One pretraining stage as the ``pretrain_<stage>`` assets need it: train, fill a version, judge.

``train_stage_version`` trains (or resumes) an FG-WSD stage through a launcher (local torchrun
here) in a work directory that outlives a crashed attempt (:func:`work_dir`: same code and
inputs -> same directory, so the next attempt resumes from the stage's last checkpoint), then
fills the version directory with what a stage version holds: the final DCP checkpoint (model and
optimizer moments, the next stage's starting point), ``metrics.jsonl`` (the loss curve),
``result.json`` (tokens seen per bucket, tokens/s, resume information, the dtype used),
``spec.json``, ``report.json`` and the loss plot -- and returns its
:class:`~nanbeige_data.report.Report`. The previous stage is read from its version (checkpoint
and manifest); the model shape is the recipe's ``model`` section plus the tokenizer's vocabulary.

The checks' logic lives here too (losses finite and falling, tokens seen per bucket within 1% of
the plan, the checkpoint reloads into the training model and gives finite logits), and
:func:`progress`, which turns the trainer's progress lines into the time-throttled lines a
person follows (step, loss, tokens/s at least every ``every_s`` seconds, first and last step).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nanbeige_data.pretraining.config import ModelConfig, PretrainConfig
from nanbeige_data.pretraining.curriculum import STAGE_PLAN_FILE
from nanbeige_data.report import Report, figure_markdown, md_table
from nanbeige_data.store.versioned import Version, VersionedStore
from nanbeige_train.launch import LocalLauncher, TrainingError
from nanbeige_train.model import ModelShape
from nanbeige_train.pretrain.trainer import (
    METRICS_FILE,
    PROGRESS_TAG,
    RESULT_FILE,
    SPEC_FILE,
    StageSpec,
    loss_ok,
    read_metrics,
)

CODE_VERSION = "1"
CHECKPOINT_DIR, REPORT_FILE, LOSS_PLOT = "checkpoint", "report.json", "loss.png"


@dataclass
class StageReport:
    stage: str
    steps: int
    tokens_seen: dict[str, int]
    tokens_planned: dict[str, int]
    tokens_per_second: float
    seconds: float
    first_loss: float
    last_loss: float
    resumed_from: str | None
    checkpoint_bytes: int
    world_size: int
    run_first_loss: float = math.nan  # first-steps loss of the whole run (the first stage's)
    dtype: str = "float32"  # the parameter dtype it trained in (trainer.training_dtype)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrainingRun:
    """Where and how a training call runs: its work directory (kept across a crashed attempt),
    the version directory it fills, the launcher, and the progress callbacks."""

    work_dir: Path
    out_dir: Path
    launcher: LocalLauncher
    on_line: Callable[[str], None] | None = None  # every line of the training log
    log: Callable[[str], None] | None = None  # a few lines for a person


def model_shape(model: ModelConfig, tokenizer: Version) -> ModelShape:
    """The recipe's model section with the vocabulary of the tokenizer version."""
    return ModelShape.from_recipe(model, tokenizer.manifest["counts"]["vocab_size"])


def work_dir(store: VersionedStore, key: str, code_version: str, inputs: Mapping[str, Version]):
    """The work directory of asset ``key``: same code version and inputs -> same directory, so
    a crashed attempt is resumed. Discard it once the version is committed."""
    blob = code_version + "|" + "|".join(v.data_version for v in inputs.values())
    return store.workdir(key, hashlib.sha256(blob.encode()).hexdigest()[:16])


def stage_spec(
    *,
    plan_path: Path,
    stage: str,
    shards_dir: Path,
    tokenizer_dir: Path,
    shape: ModelShape,
    work_dir: Path,
    init_checkpoint: Path | None,
    pretrain: PretrainConfig,
    seed: int,
) -> StageSpec:
    return StageSpec(
        plan_path=str(plan_path),
        stage=stage,
        shards_dir=str(shards_dir),
        tokenizer_dir=str(tokenizer_dir),
        model=shape.model_dump(),
        work_dir=str(work_dir),
        pretrain=pretrain,
        init_checkpoint=str(init_checkpoint) if init_checkpoint else None,
        seed=seed,
    )


def train_stage_version(
    stage: str,
    *,
    plan: Version,
    shards: Version,
    tokenizer: Version,
    previous: Version | None,
    model: ModelConfig,
    pretrain: PretrainConfig,
    seed: int,
    run: TrainingRun,
) -> Report:
    """A ``pretrain_<stage>`` version in ``run.out_dir``: ``stage`` of the plan slice ``plan``,
    from ``previous``'s checkpoint (None: a first stage, from a seeded init)."""
    first = None
    if previous is not None:
        first = previous.manifest.get("extra", {}).get("report", {}).get("run_first_loss")
        if first is None:
            raise TrainingError(f"{previous.key} {previous.version_id}: no report.run_first_loss")
    spec = stage_spec(
        plan_path=plan.local_path / STAGE_PLAN_FILE,
        stage=stage,
        shards_dir=shards.local_path,
        tokenizer_dir=tokenizer.local_path,
        shape=model_shape(model, tokenizer),
        work_dir=run.work_dir,
        init_checkpoint=previous.local_path / CHECKPOINT_DIR if previous else None,
        pretrain=pretrain,
        seed=seed,
    )
    report = train_stage(spec, run.out_dir, run.launcher, run.on_line, first)
    plot = plot_losses(
        {stage: read_metrics(run.out_dir)}, Path(run.out_dir) / LOSS_PLOT, f"pretrain_{stage} loss"
    )
    _, entry = spec.plan_stage()
    buckets = sorted(set(report.tokens_planned) | set(report.tokens_seen))
    rows = [(b, report.tokens_planned.get(b, 0), report.tokens_seen.get(b, 0)) for b in buckets]
    return Report(
        counts={"steps": report.steps, "tokens": sum(report.tokens_seen.values())},
        markdown={
            "loss_curve": plot,
            "tokens_per_bucket": md_table(("bucket", "planned", "seen"), rows, "lrr"),
        },
        values={
            "tokens_per_second": round(report.tokens_per_second, 1),
            "first_loss": round(report.first_loss, 4),
            "last_loss": round(report.last_loss, 4),
            "checkpoint_bytes": report.checkpoint_bytes,
            "resumed_from": report.resumed_from or "",
            "world_size": report.world_size,
            "dtype": report.dtype,
        },
        extra={
            "report": report.as_dict(),
            "stage": {"name": entry.name, "seq_len": entry.seq_len, "rope_theta": entry.rope_theta},
            "dtype": report.dtype,
        },
    )


def planned_tokens(plan_path: Path, stage: str) -> dict[str, int]:
    plan = json.loads(Path(plan_path).read_text())
    for entry in plan["stages"]:
        if entry["name"] == stage:
            return {b: n * entry["seq_len"] for b, n in entry["bucket_sequences"].items() if n}
    raise KeyError(f"stage {stage!r} is not in {plan_path}")


def train_stage(
    spec: StageSpec,
    out_dir: Path,
    launcher: LocalLauncher,
    on_line: Callable[[str], None] | None = None,
    run_first_loss: float | None = None,
) -> StageReport:
    """Train (or resume) one stage in ``spec.work_dir`` and copy its outputs to ``out_dir``;
    ``run_first_loss`` is the previous stage's (None for a first stage)."""
    result = launcher.run_stage(spec, on_line=on_line)
    return stage_outputs(spec, result, out_dir, run_first_loss)


def stage_outputs(
    spec: StageSpec,
    result: Mapping[str, Any],
    out_dir: Path,
    run_first_loss: float | None = None,
    *,
    with_checkpoint: bool = True,
) -> StageReport:
    """Copy a trained stage's outputs from ``spec.work_dir`` to ``out_dir`` and write its
    report there; ``result`` is its ``result.json``. Without ``with_checkpoint`` the final
    checkpoint stays in the work directory (a chain's intermediate stage, whose checkpoint
    only the next stage needs)."""
    work = Path(spec.work_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if with_checkpoint:
        shutil.copytree(result["checkpoint"], out_dir / CHECKPOINT_DIR)
    for name in (METRICS_FILE, RESULT_FILE, SPEC_FILE):
        shutil.copy2(work / name, out_dir / name)
    _, losses = loss_ok(read_metrics(out_dir))
    first = losses.get("first_loss", math.nan)
    report = StageReport(
        stage=spec.stage,
        steps=result["steps"],
        tokens_seen=result["tokens_seen"],
        tokens_planned=planned_tokens(Path(spec.plan_path), spec.stage),
        tokens_per_second=result["tokens_per_second"],
        seconds=result["seconds"],
        first_loss=first,
        last_loss=losses.get("last_loss", math.nan),
        resumed_from=result["resumed_from"],
        checkpoint_bytes=sum(f.stat().st_size for f in Path(result["checkpoint"]).rglob("*")),
        world_size=result["world_size"],
        run_first_loss=first if run_first_loss is None else run_first_loss,
        dtype=result.get("dtype", "float32"),
    )
    (out_dir / REPORT_FILE).write_text(json.dumps(report.as_dict(), indent=2))
    return report


# --- progress ------------------------------------------------------------------------------


def progress(
    info: Callable[[str], None],
    warn: Callable[[str], None] | None = None,
    *,
    every_s: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
) -> Callable[[str], None]:
    """A launcher's ``on_line``: the first and last step of each stage and at least one step
    every ``every_s`` seconds in between go to ``info`` (:func:`progress_line`); error lines
    and tracebacks go to ``warn``; everything else is left to the log file."""
    last_logged = [-math.inf]

    def on_line(line: str) -> None:
        if PROGRESS_TAG in line:
            row = json.loads(line.split(PROGRESS_TAG, 1)[1])
            now, step, steps = clock(), row["step"], row.get("steps")
            if step == 1 or step == steps or now - last_logged[0] >= every_s:
                last_logged[0] = now
                info(progress_line(row))
        elif warn is not None and (
            ("Error" in line and "lspci" not in line) or "Traceback" in line
        ):
            warn(line)

    return on_line


def progress_line(row: Mapping[str, Any]) -> str:
    """``warmup: step 3/16  loss 7.1234  1,234 tokens/s`` (what a row holds of it)."""
    stage = f"{row['stage']}: " if row.get("stage") else ""
    steps = f"/{row['steps']}" if row.get("steps") else ""
    rate = row.get("tokens_per_second")
    speed = f"  {rate:,.0f} tokens/s" if rate is not None else ""
    return f"{stage}step {row['step']}{steps}  loss {row['loss']:.4f}{speed}"


# --- checks ----------------------------------------------------------------------------------


def check_loss(version: Version) -> tuple[bool, dict]:
    """Losses finite, and the last steps' mean below the run's first steps' (a first stage's
    own first steps; a later stage's loss has plateaued and is judged against the run's)."""
    report = version.manifest["extra"]["report"]
    ok, detail = loss_ok(read_metrics(version.local_path), reference=report["run_first_loss"])
    return ok, {k: float(v) for k, v in detail.items()}


def check_tokens(version: Version, tolerance: float = 0.01) -> tuple[bool, dict]:
    """Tokens seen per bucket within ``tolerance`` of the plan (and no unplanned bucket)."""
    return tokens_match(version.manifest["extra"]["report"], tolerance)


def check_reloads(version: Version) -> tuple[bool, dict]:
    """The version's checkpoint loads into the training model and gives finite logits."""
    stage = version.manifest["extra"]["stage"]
    spec = StageSpec.load(version.local_path / SPEC_FILE)
    return checkpoint_reloads(
        version.local_path / CHECKPOINT_DIR,
        ModelShape(**spec.model),
        rope_theta=stage["rope_theta"],
        seq_len=stage["seq_len"],
    )


def tokens_match(report: Mapping[str, Any], tolerance: float = 0.01) -> tuple[bool, dict]:
    """Tokens seen per bucket within ``tolerance`` of the plan (and no unplanned bucket)."""
    seen, planned = report["tokens_seen"], report["tokens_planned"]
    worst, detail = 0.0, {}
    for bucket in sorted(set(seen) | set(planned)):
        want, got = planned.get(bucket, 0), seen.get(bucket, 0)
        off = abs(got - want) / want if want else (math.inf if got else 0.0)
        worst = max(worst, off)
        detail[bucket] = {"planned": want, "seen": got}
    return worst <= tolerance, {"worst_relative_error": worst, "buckets": detail}


def checkpoint_reloads(
    checkpoint: Path, shape: ModelShape, *, rope_theta: float, seq_len: int
) -> tuple[bool, dict]:
    """The checkpoint loads into the training model and gives finite logits."""
    import torch

    from nanbeige_train.export import fixed_batch, load_training_model

    model = load_training_model(checkpoint, shape, rope_theta=rope_theta, max_seq_len=seq_len)
    with torch.no_grad():
        logits = model(fixed_batch(shape.vocab_size, seq_len=min(64, seq_len)))
    finite = bool(torch.isfinite(logits).all())
    params = sum(p.numel() for p in model.parameters())
    return finite, {"parameters": params, "logits_finite": finite}


# --- plots -----------------------------------------------------------------------------------


def plot_losses(curves: Mapping[str, list[dict[str, Any]]], out_png: Path, title: str) -> str:
    """Loss over optimizer steps, one line per curve; saved to ``out_png``, returned as markdown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    for name, rows in curves.items():
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=name, lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("train loss (nats)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend(fontsize=8)
    return figure_markdown(fig, out_png, title)

"""What the pretrain assets call: train a stage into a version directory, and judge it.

``train_stage`` launches one FG-WSD stage (through a launcher: local torchrun here), then
copies what a stage version holds into ``out_dir``: the final DCP checkpoint (model and
optimizer moments, the next stage's starting point), ``metrics.jsonl`` (loss curve),
``result.json`` (tokens seen per bucket, tokens/s, resume information), ``spec.json`` and a loss
plot. ``train_plan`` runs all stages of a plan back to back (the vanilla-WSD ablation run).

The checks' logic lives here too: losses finite and falling, tokens seen per bucket within 1%
of the plan, the checkpoint reloads into the training model and gives finite logits.
``heldout_losses`` scores a checkpoint on each bucket's held-out tokens (the ablation).
"""

from __future__ import annotations

import io
import json
import math
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nanbeige_train.launch import LocalLauncher
from nanbeige_train.model import ModelShape
from nanbeige_train.pretrain.trainer import StageSpec, loss_ok, read_metrics
from nanbeige_data.report import figure_markdown

CODE_VERSION = "1"


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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def stage_spec(
    *,
    plan_path: Path,
    stage: str,
    shards_dir: Path,
    tokenizer_dir: Path,
    shape: ModelShape,
    work_dir: Path,
    init_checkpoint: Path | None,
    pretrain,  # the recipe's pretrain section
    seed: int,
) -> StageSpec:
    return StageSpec(
        plan_path=str(plan_path),
        stage=stage,
        shards_dir=str(shards_dir),
        tokenizer_dir=str(tokenizer_dir),
        model=asdict(shape),
        work_dir=str(work_dir),
        init_checkpoint=str(init_checkpoint) if init_checkpoint else None,
        seed=seed,
        dtype=pretrain.dtype,
        checkpoint_every=pretrain.checkpoint_every,
        data_parallel_shard=pretrain.data_parallel_shard,
        tensor_parallel=pretrain.tensor_parallel,
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
    work = Path(spec.work_dir)
    out_dir = Path(out_dir)
    shutil.copytree(result["checkpoint"], out_dir / "checkpoint")
    for name in ("metrics.jsonl", "result.json", "spec.json"):
        shutil.copy2(work / name, out_dir / name)
    rows = read_metrics(out_dir)
    _, losses = loss_ok(rows)
    first = losses.get("first_loss", math.nan)
    report = StageReport(
        stage=spec.stage,
        steps=result["steps"],
        tokens_seen=result["tokens_seen"],
        tokens_planned=planned_tokens(Path(spec.plan_path), spec.stage),
        tokens_per_second=result["tokens_per_second"],
        seconds=result["seconds"],
        first_loss=losses.get("first_loss", math.nan),
        last_loss=losses.get("last_loss", math.nan),
        resumed_from=result["resumed_from"],
        checkpoint_bytes=sum(f.stat().st_size for f in (out_dir / "checkpoint").rglob("*")),
        world_size=result["world_size"],
        run_first_loss=first if run_first_loss is None else run_first_loss,
    )
    (out_dir / "report.json").write_text(json.dumps(report.as_dict(), indent=2))
    return report


def train_plan(
    plan_path: Path,
    specs: Callable[[str, Path | None], StageSpec],
    out_dir: Path,
    launcher: LocalLauncher,
    on_line: Callable[[str], None] | None = None,
) -> list[StageReport]:
    """Every stage of a plan in order, each from the previous one's checkpoint. Only the last
    stage's checkpoint is kept in ``out_dir`` (with every stage's curve and report); a stage
    already complete in ``out_dir`` (an interrupted earlier attempt) is not trained again."""
    plan = json.loads(Path(plan_path).read_text())
    reports, previous = [], None
    for entry in plan["stages"]:
        stage_dir = Path(out_dir) / entry["name"]
        if (stage_dir / "report.json").exists() and (stage_dir / "checkpoint").exists():
            report = StageReport(**json.loads((stage_dir / "report.json").read_text()))
        else:
            shutil.rmtree(stage_dir, ignore_errors=True)
            stage_dir.mkdir(parents=True)
            first = reports[0].run_first_loss if reports else None
            report = train_stage(
                specs(entry["name"], previous), stage_dir, launcher, on_line, first
            )
        if previous is not None:
            shutil.rmtree(previous)
        previous = stage_dir / "checkpoint"
        reports.append(report)
    return reports


def train_runs(
    runs: Mapping[str, tuple[Path, int]],
    make_spec: Callable[..., StageSpec],
    work: Path,
    out_dir: Path,
    launcher: LocalLauncher,
    on_line: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """Train named runs (``"arm/seedN": (plan path, seed)``) through all their stages.

    Each run trains in ``work`` (so an interrupted attempt resumes) and is copied to
    ``out_dir/<name>``; ``make_spec(plan_path=, stage=, work_dir=, init_checkpoint=, seed=)``
    builds each stage's spec. Returns each run's final checkpoint under ``out_dir``."""
    finals = {}
    for name, (plan_path, seed) in runs.items():
        run_work = Path(work) / name.replace("/", "-")

        def spec(stage: str, previous: Path | None, plan_path=plan_path, seed=seed, w=run_work):
            return make_spec(
                plan_path=plan_path,
                stage=stage,
                work_dir=w / stage,
                init_checkpoint=previous,
                seed=seed,
            )

        reports = train_plan(plan_path, spec, run_work / "out", launcher, on_line)
        shutil.copytree(run_work / "out", Path(out_dir) / name)
        finals[name] = Path(out_dir) / name / reports[-1].stage / "checkpoint"
    return finals


def run_curve(run_dir: Path, stages: list[str]) -> list[dict[str, Any]]:
    """A run's loss rows over all its stages, in order."""
    return [row for stage in stages for row in read_metrics(Path(run_dir) / stage)]


# --- checks ------------------------------------------------------------------------------


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


# --- held-out evaluation -----------------------------------------------------------------


def heldout_losses(
    model,
    shards_dir: Path,
    *,
    seq_len: int,
    max_tokens: int = 32_768,
    batch: int = 8,
) -> dict[str, dict[str, float]]:
    """Mean next-token loss (nats) per held-out bucket, on up to ``max_tokens`` tokens each."""
    import torch
    import torch.nn.functional as F

    index = json.loads((Path(shards_dir) / "index.json").read_text())
    out = {}
    for row in index["rows"]:
        if row["split"] != "val" or row["tokens"] <= seq_len:
            continue
        tokens = np.memmap(Path(shards_dir) / row["path"], dtype=np.dtype(row["dtype"]), mode="r")
        n_windows = min((len(tokens) - 1) // seq_len, max(1, max_tokens // seq_len))
        starts = np.arange(n_windows) * seq_len
        total, count = 0.0, 0
        with torch.no_grad():
            for i in range(0, n_windows, batch):
                rows = [np.asarray(tokens[s : s + seq_len + 1]) for s in starts[i : i + batch]]
                data = torch.from_numpy(np.stack(rows).astype(np.int64))
                logits = model(data[:, :-1]).float()
                loss = F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), data[:, 1:].reshape(-1), reduction="sum"
                )
                total += float(loss)
                count += data[:, 1:].numel()
        out[row["bucket"]] = {"loss": total / count, "tokens": count}
    return out


# --- plots -------------------------------------------------------------------------------


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


# --- the FG-WSD vs vanilla-WSD ablation ---------------------------------------------------


def compare_heldout(
    checkpoints: Mapping[str, Path],
    shards_dir: Path,
    shape: ModelShape,
    *,
    rope_theta: float,
    seq_len: int,
    max_tokens: int = 32_768,
) -> dict[str, dict[str, dict[str, float]]]:
    """Held-out loss per bucket for each named checkpoint: {name: {bucket: {loss, tokens}}}."""
    from nanbeige_train.export import load_training_model

    out = {}
    for name, checkpoint in checkpoints.items():
        model = load_training_model(checkpoint, shape, rope_theta=rope_theta, max_seq_len=seq_len)
        out[name] = heldout_losses(model, shards_dir, seq_len=seq_len, max_tokens=max_tokens)
    return out


def ablation_table(losses: Mapping[str, Mapping[str, Mapping[str, float]]]) -> tuple[str, dict]:
    """Markdown: held-out loss per bucket, FG-WSD vs vanilla WSD (mean over seeds), and the
    per-bucket difference; plus the summary numbers. Names look like ``fgwsd/seed0``."""
    arms: dict[str, list[Mapping[str, Mapping[str, float]]]] = {}
    for name, per_bucket in losses.items():
        arms.setdefault(name.split("/")[0], []).append(per_bucket)
    buckets = sorted({b for per in losses.values() for b in per})

    def mean(arm: str, bucket: str) -> float:
        values = [per[bucket]["loss"] for per in arms.get(arm, []) if bucket in per]
        return sum(values) / len(values) if values else math.nan

    def spread(arm: str, bucket: str) -> float:
        values = [per[bucket]["loss"] for per in arms.get(arm, []) if bucket in per]
        return (max(values) - min(values)) / 2 if len(values) > 1 else 0.0

    lines = [
        "| held-out set | FG-WSD | vanilla WSD | FG-WSD - vanilla |",
        "|---|---:|---:|---:|",
    ]
    summary = {"buckets": {}, "seeds": {arm: len(v) for arm, v in arms.items()}}
    for bucket in buckets:
        f, v = mean("fgwsd", bucket), mean("vanilla_wsd", bucket)
        summary["buckets"][bucket] = {"fgwsd": f, "vanilla_wsd": v, "delta": f - v}
        lines.append(
            f"| {bucket} | {f:.4f} ± {spread('fgwsd', bucket):.4f} | "
            f"{v:.4f} ± {spread('vanilla_wsd', bucket):.4f} | {f - v:+.4f} |"
        )
    deltas = [d["delta"] for d in summary["buckets"].values() if not math.isnan(d["delta"])]
    summary["mean_delta"] = sum(deltas) / len(deltas) if deltas else math.nan
    summary["fgwsd_better"] = sum(d < 0 for d in deltas)
    summary["sets"] = len(deltas)
    lines.append(
        f"\nLoss in nats per token (mean ± half-range over seeds); negative difference = FG-WSD "
        f"lower. FG-WSD is lower on {summary['fgwsd_better']} of {summary['sets']} held-out sets."
    )
    return "\n".join(lines), summary


def plot_ablation(summary: Mapping[str, Any], curves: Mapping[str, list], out_png: Path) -> str:
    """Bars: held-out loss per set for both plans; lines: training loss over all stages."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    buckets = list(summary["buckets"])
    fig, (bars, lines) = plt.subplots(1, 2, figsize=(11, 3.6))
    x = np.arange(len(buckets))
    for offset, arm, label in ((-0.2, "fgwsd", "FG-WSD"), (0.2, "vanilla_wsd", "vanilla WSD")):
        bars.bar(x + offset, [summary["buckets"][b][arm] for b in buckets], 0.4, label=label)
    bars.set_xticks(x, buckets, rotation=45, ha="right", fontsize=7)
    bars.set_ylabel("held-out loss (nats)")
    bars.legend(fontsize=8)
    lo = min(min(v["fgwsd"], v["vanilla_wsd"]) for v in summary["buckets"].values())
    bars.set_ylim(bottom=max(0.0, lo - 0.5))
    for name, rows in curves.items():
        style = "-" if name.startswith("fgwsd") else "--"
        lines.plot(range(1, len(rows) + 1), [r["loss"] for r in rows], style, lw=1, label=name)
    lines.set_xlabel("optimizer step (all stages)")
    lines.set_ylabel("train loss")
    lines.legend(fontsize=7)
    lines.grid(alpha=0.3)
    return figure_markdown(fig, out_png, "FG-WSD vs vanilla WSD")

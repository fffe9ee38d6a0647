"""The FG-WSD vs vanilla-WSD ablation: same token budget and LR, two data orders, held-out loss.

``run_ablation`` fills the ``pretrain_ablation`` version. The FG-WSD run with the recipe's seed
is the pipeline's own ``pretrain_<stage>`` chain (not trained again); the vanilla-WSD plan (one
fixed mixture) is trained here with the recipe's seed, and both plans again with each further
seed the recipe asks for (``curriculum.ablation_seeds``). Every run trains its seed checkpoint
and all its stages in one launch (``LocalLauncher.run_chain``: process start, imports and
process group are paid once per run, not once per stage; the numbers are bit-identical to one
launch per stage) in a work directory (an interrupted attempt resumes at the first incomplete
stage), and only each run's last checkpoint is kept. Every final checkpoint is then scored on
every held-out bucket and the reasoning set (mean next-token loss in nats), and the version
holds ``ablation.json`` (losses and summary), ``ablation.md`` (the table) and ``ablation.png``.

Trade-off: extra seeds multiply the training time of the ablation (two runs per seed), so the
tiny recipe trains one seed and reports mean ± half-range only when there are more.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nanbeige_data.pretraining.config import CurriculumConfig, ModelConfig, PretrainConfig
from nanbeige_data.pretraining.curriculum import PLAN_FILE, VANILLA_FILE, Plan
from nanbeige_data.report import Report, figure_markdown
from nanbeige_data.store.versioned import Version
from nanbeige_train.launch import LocalLauncher, TrainingError
from nanbeige_train.model import ModelShape
from nanbeige_train.pretrain.stage import (
    CHECKPOINT_DIR,
    REPORT_FILE,
    StageReport,
    TrainingRun,
    model_shape,
    stage_outputs,
    stage_spec,
)
from nanbeige_train.pretrain.trainer import RESULT_FILE, StageSpec, final_checkpoint, read_metrics

CODE_VERSION = "1"
ABLATION_JSON, ABLATION_TABLE, ABLATION_PLOT = "ablation.json", "ablation.md", "ablation.png"


def run_ablation(
    *,
    stages: Mapping[str, Version],
    plans: Version,
    shards: Version,
    tokenizer: Version,
    model: ModelConfig,
    pretrain: PretrainConfig,
    curriculum: CurriculumConfig,
    seed: int,
    run: TrainingRun,
) -> Report:
    """The ``pretrain_ablation`` version in ``run.out_dir``. ``stages`` are the FG-WSD run's
    stage versions (any keys; ordered by the plan in ``plans``, the ``fgwsd_plan`` version)."""
    out_dir = Path(run.out_dir)
    names = [s.name for s in Plan.load(plans.local_path / PLAN_FILE).stages]
    by_name = {v.manifest["extra"]["stage"]["name"]: v for v in stages.values()}
    if missing := [n for n in names if n not in by_name]:
        raise TrainingError(f"ablation: no trained FG-WSD stage version for {missing}")
    final = by_name[names[-1]]
    checkpoints = {"fgwsd/seed0": final.local_path / CHECKPOINT_DIR}
    curves = {"fgwsd/seed0": [r for n in names for r in read_metrics(by_name[n].local_path)]}
    dtypes = {by_name[n].manifest["extra"]["report"].get("dtype", "float32") for n in names}
    shape = model_shape(model, tokenizer)
    runs = ablation_runs(plans.local_path, curriculum.ablation_seeds, seed)
    make_spec = functools.partial(
        stage_spec,
        shards_dir=shards.local_path,
        tokenizer_dir=tokenizer.local_path,
        shape=shape,
        pretrain=pretrain,
    )
    if run.log is not None:
        run.log(f"ablation: training {', '.join(runs)}")
    trained = train_runs(runs, make_spec, run.work_dir, out_dir, run.launcher, run.on_line)
    for name, reports in trained.items():
        checkpoints[name] = out_dir / name / reports[-1].stage / CHECKPOINT_DIR
        curves[name] = run_curve(out_dir / name, names)
        dtypes |= {r.dtype for r in reports}
    last = final.manifest["extra"]["stage"]
    losses = compare_heldout(
        checkpoints,
        shards.local_path,
        shape,
        rope_theta=last["rope_theta"],
        seq_len=last["seq_len"],
    )
    table, summary = ablation_table(losses)
    plot = plot_ablation(summary, curves, out_dir / ABLATION_PLOT)
    (out_dir / ABLATION_JSON).write_text(
        json.dumps({"losses": losses, "summary": summary}, indent=2)
    )
    (out_dir / ABLATION_TABLE).write_text(table)
    dtype = ",".join(sorted(dtypes))
    return Report(
        counts={"seeds": curriculum.ablation_seeds, "heldout_sets": summary["sets"]},
        markdown={"heldout_loss": table, "plot": plot},
        values={
            "mean_delta_nats": round(summary["mean_delta"], 4),
            "fgwsd_lower_on": f"{summary['fgwsd_better']}/{summary['sets']}",
            "dtype": dtype,
        },
        extra={"summary": summary, "dtype": dtype},
    )


def ablation_runs(plan_dir: Path, seeds: int, seed: int) -> dict[str, tuple[Path, int]]:
    """The runs to train: ``"arm/seedN": (plan file, seed)``; ``fgwsd/seed0`` is the pipeline's."""
    runs = {f"vanilla_wsd/seed{i}": (Path(plan_dir) / VANILLA_FILE, seed + i) for i in range(seeds)}
    runs |= {f"fgwsd/seed{i}": (Path(plan_dir) / PLAN_FILE, seed + i) for i in range(1, seeds)}
    return runs


def check_ablation(version: Version) -> tuple[bool, dict]:
    """Both plans were scored on every held-out set, all losses finite."""
    summary = version.manifest["extra"]["summary"]
    values = [v for b in summary["buckets"].values() for v in (b["fgwsd"], b["vanilla_wsd"])]
    ok = bool(values) and all(math.isfinite(v) for v in values)
    return ok, {"sets": summary["sets"], "all_finite": ok}


# --- training whole plans --------------------------------------------------------------------


def train_plan(
    plan_path: Path,
    specs: Callable[[str, Path | None], StageSpec],
    out_dir: Path,
    launcher: LocalLauncher,
    on_line: Callable[[str], None] | None = None,
) -> list[StageReport]:
    """Every stage of a plan in order, each from the previous one's checkpoint, in one launch
    (``launcher.run_chain``). Only the last stage's checkpoint is kept in ``out_dir`` (with
    every stage's curve and report). Stages already complete in ``out_dir`` (an interrupted
    earlier attempt) are not trained again: the chain starts at the first incomplete stage,
    which resumes from its own last checkpoint in its work directory if it has one."""
    names = [entry["name"] for entry in json.loads(Path(plan_path).read_text())["stages"]]
    out_dir = Path(out_dir)
    reports = _complete_stages(out_dir, names)
    previous = out_dir / names[len(reports) - 1] / CHECKPOINT_DIR if reports else None
    chain = []
    for name in names[len(reports) :]:
        shutil.rmtree(out_dir / name, ignore_errors=True)
        chain.append(specs(name, previous))
        previous = final_checkpoint(chain[-1])
    try:
        if chain:
            launcher.run_chain(chain, on_line=on_line)
    finally:  # also after a failure: the finished stages need not train again
        reports += _collect(chain, out_dir, reports)
    return reports


def _complete_stages(out_dir: Path, names: list[str]) -> list[StageReport]:
    """Reports of the plan's leading stages complete in ``out_dir``: each has its report, the
    last of them its checkpoint too (the earlier ones' were deleted once they were handed on)."""
    reports: list[StageReport] = []
    for name in names:
        if not (out_dir / name / REPORT_FILE).exists():
            break
        reports.append(StageReport(**json.loads((out_dir / name / REPORT_FILE).read_text())))
    while reports and not (out_dir / reports[-1].stage / CHECKPOINT_DIR).exists():
        reports.pop()
    return reports


def _collect(chain: list[StageSpec], out_dir: Path, done: list[StageReport]) -> list[StageReport]:
    """Copy the outputs of the chain's finished stages to ``out_dir``, keeping only the last
    finished stage's checkpoint there (and deleting the one the chain started from)."""
    results = []
    for spec in chain:
        path = Path(spec.work_dir) / RESULT_FILE
        if not path.exists():
            break
        results.append(json.loads(path.read_text()))
    reports: list[StageReport] = []
    for i, (spec, result) in enumerate(zip(chain, results, strict=False)):
        before = done + reports
        first = before[0].run_first_loss if before else None
        keep = i == len(results) - 1
        report = stage_outputs(spec, result, out_dir / spec.stage, first, with_checkpoint=keep)
        reports.append(report)
    if reports and done:
        shutil.rmtree(out_dir / done[-1].stage / CHECKPOINT_DIR, ignore_errors=True)
    return reports


def train_runs(
    runs: Mapping[str, tuple[Path, int]],
    make_spec: Callable[..., StageSpec],
    work: Path,
    out_dir: Path,
    launcher: LocalLauncher,
    on_line: Callable[[str], None] | None = None,
) -> dict[str, list[StageReport]]:
    """Train named runs (``"arm/seedN": (plan path, seed)``) through all their stages.

    Each run trains in ``work`` (so an interrupted attempt resumes) and is copied to
    ``out_dir/<name>``; ``make_spec(plan_path=, stage=, work_dir=, init_checkpoint=, seed=)``
    builds each stage's spec. Returns each run's stage reports."""
    trained = {}
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

        trained[name] = train_plan(plan_path, spec, run_work / "out", launcher, on_line)
        shutil.copytree(run_work / "out", Path(out_dir) / name)
    return trained


def run_curve(run_dir: Path, stages: list[str]) -> list[dict[str, Any]]:
    """A run's loss rows over all its stages, in order."""
    return [row for stage in stages for row in read_metrics(Path(run_dir) / stage)]


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

    from nanbeige_data.pretraining.tokenizer import load_index, open_shard

    out = {}
    for row in load_index(shards_dir).rows:
        if row.split != "val" or row.tokens <= seq_len:
            continue
        tokens = open_shard(Path(shards_dir) / row.path, row.dtype)
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
        out[row.bucket] = {"loss": total / count, "tokens": count}
    return out


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


# --- the report ------------------------------------------------------------------------------


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

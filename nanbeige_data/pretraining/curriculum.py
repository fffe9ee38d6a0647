"""The FG-WSD plan: the recipe's curriculum turned into optimizer steps, LRs and bucket draws.

Nanbeige4 pretrains with Fine-Grained Warmup-Stable-Decay: Warmup, Diversity-Enriched Stable,
High-Quality Stable, then Decay with long context (0.1 : 12.4 : 6.5 : 4 T tokens), the LR going
0 -> 4.5e-4 linearly, constant, then down to 1.5e-6, and the RoPE base raised (ABF) in decay.
``plan_curriculum`` reads the recipe's ``curriculum`` and ``pretrain`` sections and fixes, per
stage: its steps, global step and token offsets, LR segment, sequence length, RoPE base, and how
many sequences it draws from each bucket (``"<domain>/<tier>"`` or ``"synthetic/<kind>"``).
``vanilla_plan`` is the ablation's baseline: the same stages and LR with one mixture throughout
(the token-weighted average), so both plans draw the same tokens per bucket in a different order.
A plan is JSON (``Plan.to_dict``/``Plan.from_dict``); the training process reads its stages back.
``build_plans`` (the ``fgwsd_plan`` version: both plans as ``PLAN_FILE``/``VANILLA_FILE``) and
``write_stage_plan`` (a ``plan_<stage>`` version: ``STAGE_PLAN_FILE``) are what the assets call;
``check_plans`` and ``check_stage_plan`` are their gates.

Decisions and trade-offs:

- ``pretrain.batch_size`` is the *global* batch (sequences per micro-step over all data-parallel
  ranks), so ``sequences_per_step = batch_size * grad_accumulation``; the trainer splits it.
- A stage's steps are its tokens / tokens-per-step rounded half up (at least 1): the planned
  budget is within half a step of the recipe's and is the one that counts afterwards.
- Sequences, not tokens, are apportioned to buckets (largest remainder, ties by bucket name), so
  a dataloader can follow the counts exactly; each bucket is off its exact share by < 1 sequence
  per stage. Order within a stage is the dataloader's business.
- LR: ``lr_factor(stage, k, plan)`` is the multiplier of ``lr_peak`` for the k-th optimizer step
  of a stage, k = 1..steps (a LambdaLR whose counter starts at 0 calls it with count + 1, as
  torchtitan's WSD does). A run of consecutive stages of one kind is one LR segment of S steps;
  step j of it (1-based) is at progress p = j / S: warmup ``p`` (never 0, peak at its last step),
  constant 1, decay from peak to ``lr_min`` by ``linear`` 1-p, ``cosine`` (1+cos(pi p))/2 or
  ``sqrt`` 1-sqrt(p) (lr_min exactly at the last step). ``StagePlan.lr_start``/``lr_end`` are the
  schedule at the stage's boundaries (p before its first step, p at its last step), so warmup
  starts at 0 and consecutive stages meet exactly.
- Epoch limits: a ``*/high`` bucket may be drawn up to ``high_quality_epochs`` (the paper
  upsamples its high-quality subset >= 2 epochs), every other bucket once. Without token counts
  the plan reports what a corpus must hold instead (``required_unique_tokens``).
"""

from __future__ import annotations

import io
import json
import math
import re
from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Literal, NamedTuple

from nanbeige_data.pretraining.config import CurriculumConfig, PretrainConfig
from nanbeige_data.report import Report, figure_markdown

CODE_VERSION = "1"
# the files of an fgwsd_plan version (both plans, the schedule plot) and of a plan_<stage> one
PLAN_FILE, VANILLA_FILE, PLAN_PLOT = "fgwsd.json", "vanilla_wsd.json", "plan.png"
STAGE_PLAN_FILE = "stage_plan.json"
LrKind = Literal["warmup", "constant", "decay"]
DecayShape = Literal["linear", "cosine", "sqrt"]
_REL_TOL = 1e-12


class PlanError(ValueError):
    """A curriculum that cannot be planned, or a plan that cannot be read or evaluated."""


@dataclass(frozen=True)
class StagePlan:
    name: str
    index: int  # position in Plan.stages
    lr_kind: LrKind
    seq_len: int
    rope_theta: float
    sequences_per_step: int  # global: batch_size * grad_accumulation over all DP ranks
    tokens_per_step: int  # sequences_per_step * seq_len
    steps: int  # optimizer steps in this stage (>= 1)
    start_step: int  # optimizer steps taken before this stage
    tokens: int  # planned budget: steps * tokens_per_step
    start_token: int  # tokens trained on before this stage
    lr_start: float  # absolute LR at the stage's start boundary
    lr_end: float  # absolute LR at the stage's last step
    mixture: dict[str, float]  # bucket -> weight, sums to 1
    bucket_sequences: dict[str, int]  # bucket -> sequences drawn; sums to steps * sequences/step

    @property
    def bucket_tokens(self) -> dict[str, int]:
        return {b: n * self.seq_len for b, n in self.bucket_sequences.items()}


@dataclass(frozen=True)
class Plan:
    name: str  # "fgwsd" or "vanilla_wsd"
    stages: tuple[StagePlan, ...]
    lr_peak: float
    lr_min: float
    decay_shape: DecayShape
    bucket_available: dict[str, int] | None  # unique train tokens per bucket; None: no data
    max_epochs: dict[str, float]  # bucket -> most epochs it may be drawn for

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    @property
    def total_tokens(self) -> int:
        return sum(s.tokens for s in self.stages)

    def bucket_drawn(self) -> dict[str, int]:
        """Tokens drawn per bucket over all stages."""
        drawn: dict[str, int] = {}
        for stage in self.stages:
            for bucket, n in stage.bucket_tokens.items():
                drawn[bucket] = drawn.get(bucket, 0) + n
        return drawn

    def bucket_epochs(self) -> dict[str, float] | None:
        """Drawn / available per bucket (inf for a drawn bucket the data lacks); None if no data."""
        if self.bucket_available is None:
            return None
        drawn = self.bucket_drawn()
        out = {}
        for bucket in {**drawn, **self.bucket_available}:
            used, have = drawn.get(bucket, 0), self.bucket_available.get(bucket, 0)
            out[bucket] = used / have if have else (math.inf if used else 0.0)
        return out

    def required_unique_tokens(self) -> dict[str, int]:
        """Unique tokens a corpus must hold per bucket: drawn / max epochs, rounded up."""
        return {
            b: math.ceil(n / self.max_epochs.get(b, 1.0)) for b, n in self.bucket_drawn().items()
        }

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "lr_peak": self.lr_peak,
            "lr_min": self.lr_min,
            "decay_shape": self.decay_shape,
            "total_steps": self.total_steps,
            "total_tokens": self.total_tokens,
            "bucket_available": self.bucket_available,
            "max_epochs": self.max_epochs,
            "stages": [asdict(s) for s in self.stages],
        }

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        """Read a plan from the JSON file ``to_dict`` was written to."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def from_dict(cls, data: Mapping) -> Plan:
        """Read a plan back from ``to_dict`` output (e.g. after a JSON round trip)."""
        try:
            stages = tuple(StagePlan(**s) for s in data["stages"])
            plan = cls(
                name=data["name"],
                stages=stages,
                lr_peak=data["lr_peak"],
                lr_min=data["lr_min"],
                decay_shape=data["decay_shape"],
                bucket_available=data["bucket_available"],
                max_epochs=data["max_epochs"],
            )
        except (KeyError, TypeError) as exc:
            raise PlanError(f"not a plan: {exc!r}") from exc
        for key in ("total_steps", "total_tokens"):
            if key in data and data[key] != getattr(plan, key):
                raise PlanError(
                    f"{key} {data[key]} disagrees with the stages' {getattr(plan, key)}"
                )
        return plan


# --- planning ----------------------------------------------------------------------------


def plan_curriculum(
    curriculum: CurriculumConfig,
    pretrain: PretrainConfig,
    *,
    bucket_tokens: Mapping[str, int] | None = None,
    high_quality_epochs: float = 2.0,
) -> Plan:
    """The FG-WSD plan of a recipe; ``bucket_tokens`` are the unique train tokens per bucket."""
    kinds = "".join(s.lr[0] for s in curriculum.stages)
    if not re.fullmatch(r"w+c*d+", kinds):
        order = [s.lr for s in curriculum.stages]
        raise PlanError(f"stages must run warmup+, constant*, decay+ in that order, got {order}")
    seqs = pretrain.batch_size * pretrain.grad_accumulation
    rows = []
    for cfg in curriculum.stages:
        per_step = seqs * cfg.seq_len
        steps = max(1, (2 * cfg.tokens + per_step) // (2 * per_step))  # round half up
        rows.append(_Row(cfg.name, cfg.lr, cfg.seq_len, float(cfg.rope_theta), steps, cfg.mixture))
    buckets = {b for cfg in curriculum.stages for b in cfg.mixture} | set(bucket_tokens or {})
    max_epochs = {b: high_quality_epochs if _tier(b) == "high" else 1.0 for b in sorted(buckets)}
    return _build(
        "fgwsd",
        rows,
        seqs,
        curriculum.lr_peak,
        curriculum.lr_min,
        curriculum.decay_shape,
        None if bucket_tokens is None else dict(bucket_tokens),
        max_epochs,
    )


def vanilla_plan(plan: Plan) -> Plan:
    """WSD baseline: the same stages and LR, one mixture (the token-weighted average) throughout."""
    total = plan.total_tokens
    mixture: dict[str, float] = {}
    for stage in plan.stages:
        norm = sum(stage.mixture.values())
        for bucket, w in stage.mixture.items():
            mixture[bucket] = mixture.get(bucket, 0.0) + stage.tokens * w / norm
    mixture = {b: w / total for b, w in mixture.items()}
    rows = [_Row(s.name, s.lr_kind, s.seq_len, s.rope_theta, s.steps, mixture) for s in plan.stages]
    seqs = plan.stages[0].sequences_per_step
    return _build(
        "vanilla_wsd",
        rows,
        seqs,
        plan.lr_peak,
        plan.lr_min,
        plan.decay_shape,
        plan.bucket_available,
        dict(plan.max_epochs),
    )


def _tier(bucket: str) -> str:
    return bucket.split("/", 1)[1] if "/" in bucket else ""


class _Row(NamedTuple):
    name: str
    lr_kind: LrKind
    seq_len: int
    rope_theta: float
    steps: int
    mixture: Mapping[str, float]


def _build(
    name: str,
    rows: list[_Row],
    seqs: int,
    lr_peak: float,
    lr_min: float,
    decay_shape: DecayShape,
    available: dict[str, int] | None,
    max_epochs: dict[str, float],
) -> Plan:
    """A plan from its stages' rows: offsets, token budgets, LR ends and draws filled in."""
    kinds, all_steps = [r.lr_kind for r in rows], [r.steps for r in rows]
    stages, step, token = [], 0, 0
    for i, (stage_name, kind, seq_len, rope, steps, mix) in enumerate(rows):
        before, seg = _segment(kinds, all_steps, i)
        per_step = seqs * seq_len
        stages.append(
            StagePlan(
                name=stage_name,
                index=i,
                lr_kind=kind,
                seq_len=seq_len,
                rope_theta=rope,
                sequences_per_step=seqs,
                tokens_per_step=per_step,
                steps=steps,
                start_step=step,
                tokens=steps * per_step,
                start_token=token,
                lr_start=_lr(kind, before / seg, lr_peak, lr_min, decay_shape),
                lr_end=_lr(kind, (before + steps) / seg, lr_peak, lr_min, decay_shape),
                mixture=dict(mix),
                bucket_sequences=apportion(mix, steps * seqs),
            )
        )
        step, token = step + steps, token + steps * per_step
    return Plan(name, tuple(stages), lr_peak, lr_min, decay_shape, available, max_epochs)


def apportion(mixture: Mapping[str, float], total: int) -> dict[str, int]:
    """Split ``total`` by weight, largest remainder (ties by name): counts sum to ``total``."""
    weights = {b: Fraction(w) for b, w in mixture.items()}
    norm = sum(weights.values())
    if norm <= 0:
        raise PlanError(f"mixture {dict(mixture)} has no positive weight")
    quotas = {b: total * w / norm for b, w in weights.items()}
    counts = {b: math.floor(q) for b, q in quotas.items()}
    left = total - sum(counts.values())
    by_remainder = sorted(quotas, key=lambda b: (-(quotas[b] - counts[b]), b))
    for bucket in by_remainder[:left]:
        counts[bucket] += 1
    return counts


# --- learning rate -----------------------------------------------------------------------


def _segment_bounds(kinds: list[str], i: int) -> tuple[int, int]:
    """First and last index of stage i's LR segment: a run of consecutive stages of one kind."""
    lo = i
    while lo > 0 and kinds[lo - 1] == kinds[i]:
        lo -= 1
    hi = i
    while hi + 1 < len(kinds) and kinds[hi + 1] == kinds[i]:
        hi += 1
    return lo, hi


def _segment(kinds: list[str], steps: list[int], i: int) -> tuple[int, int]:
    """(steps of stage i's LR segment before it, steps of the whole segment)."""
    lo, hi = _segment_bounds(kinds, i)
    return sum(steps[lo:i]), sum(steps[lo : hi + 1])


def _lr(kind: str, p: float, lr_peak: float, lr_min: float, shape: str) -> float:
    """Absolute LR at segment progress p in [0, 1]."""
    if kind == "warmup":
        return lr_peak * p
    if kind == "constant":
        return lr_peak
    if shape == "linear":
        f = 1.0 - p
    elif shape == "cosine":
        f = 0.5 * (1.0 + math.cos(math.pi * p))
    elif shape == "sqrt":
        f = 1.0 - math.sqrt(p)
    else:
        raise PlanError(f"unknown decay shape {shape!r}")
    return lr_min + (lr_peak - lr_min) * f


def stage_slice(plan: Plan, name: str) -> Plan:
    """The part of ``plan`` that training stage ``name`` reads: every stage up to it (they set
    where its data streams start) and the rest of its LR segment (whose steps set its LR), with
    the LR globals. A change elsewhere -- the decay mixture, say -- leaves the warmup and stable
    stages' slices byte-identical, so their checkpoints stay fresh."""
    names = [s.name for s in plan.stages]
    if name not in names:
        raise PlanError(f"stage {name!r} is not in the plan (stages: {names})")
    _, end = _segment_bounds([s.lr_kind for s in plan.stages], names.index(name))
    return replace(plan, stages=plan.stages[: end + 1])


def lr_factor(stage: StagePlan, local_step: int, plan: Plan) -> float:
    """Multiplier of ``plan.lr_peak`` for the stage's optimizer step ``local_step`` (1..steps)."""
    if not 1 <= local_step <= stage.steps:
        raise PlanError(f"stage {stage.name}: step {local_step} outside 1..{stage.steps}")
    kinds = [s.lr_kind for s in plan.stages]
    before, seg = _segment(kinds, [s.steps for s in plan.stages], stage.index)
    p = (before + local_step) / seg
    return _lr(stage.lr_kind, p, plan.lr_peak, plan.lr_min, plan.decay_shape) / plan.lr_peak


def lr_at(plan: Plan, global_step: int) -> float:
    """Absolute LR of the run's optimizer step ``global_step`` (1..total_steps)."""
    if not 1 <= global_step <= plan.total_steps:
        raise PlanError(f"step {global_step} outside 1..{plan.total_steps}")
    ends = [s.start_step + s.steps for s in plan.stages]
    stage = plan.stages[bisect_left(ends, global_step)]
    return plan.lr_peak * lr_factor(stage, global_step - stage.start_step, plan)


# --- the versions the assets write -------------------------------------------------------


def build_plans(
    curriculum: CurriculumConfig,
    pretrain: PretrainConfig,
    bucket_tokens: Mapping[str, int],
    out_dir: Path,
    *,
    high_quality_epochs: float,
) -> Report:
    """The ``fgwsd_plan`` version: the FG-WSD plan for the train tokens per bucket, the
    vanilla-WSD plan beside it, and the schedule plot comparing them."""
    out_dir = Path(out_dir)
    plan = plan_curriculum(
        curriculum,
        pretrain,
        bucket_tokens=bucket_tokens,
        high_quality_epochs=high_quality_epochs,
    )
    vanilla = vanilla_plan(plan)
    (out_dir / PLAN_FILE).write_text(json.dumps(plan.to_dict(), indent=2))
    (out_dir / VANILLA_FILE).write_text(json.dumps(vanilla.to_dict(), indent=2))
    return Report(
        counts={"steps": plan.total_steps, "tokens": plan.total_tokens},
        markdown={
            "plan": plan_table_markdown(plan),
            "schedule": plot_plan(plan, out_dir / PLAN_PLOT, compare=vanilla),
            "vanilla_wsd": plan_table_markdown(vanilla),
        },
    )


def write_stage_plan(plan_dir: Path, stage: str, out_dir: Path) -> Report:
    """A ``plan_<stage>`` version: the slice of the FG-WSD plan in ``plan_dir`` that
    ``stage`` trains on (see :func:`stage_slice`)."""
    part = stage_slice(Plan.load(Path(plan_dir) / PLAN_FILE), stage)
    (Path(out_dir) / STAGE_PLAN_FILE).write_text(json.dumps(part.to_dict(), indent=2))
    entry = next(s for s in part.stages if s.name == stage)
    return Report(counts={"steps": entry.steps, "tokens": entry.tokens, "stages": len(part.stages)})


def check_plans(plan_dir: Path, curriculum: CurriculumConfig) -> tuple[bool, dict]:
    """The ``fgwsd_plan`` gate: both plans valid for the recipe's curriculum."""
    problems = {
        name: check_plan(Plan.load(Path(plan_dir) / name), curriculum)
        for name in (PLAN_FILE, VANILLA_FILE)
    }
    return not any(problems.values()), {"problems": problems}


def check_stage_plan(plan_dir: Path, stage: str) -> tuple[bool, dict]:
    """A ``plan_<stage>`` gate: the slice is a valid plan and holds its stage."""
    plan = Plan.load(Path(plan_dir) / STAGE_PLAN_FILE)
    problems = check_plan(plan)
    if stage not in [s.name for s in plan.stages]:
        problems.append(f"stage {stage!r} is not in its slice")
    return not problems, {"problems": problems}


# --- checks ------------------------------------------------------------------------------


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= _REL_TOL * max(abs(a), abs(b))


def check_plan(plan: Plan, curriculum: CurriculumConfig | None = None) -> list[str]:
    """Problems with a plan as readable strings; empty when it is fine."""
    problems = _check_stages(plan)
    if curriculum is not None:
        problems += _check_budget(plan, curriculum)
    for prev, nxt in zip(plan.stages, plan.stages[1:], strict=False):
        if not _close(prev.lr_end, nxt.lr_start):
            problems.append(
                f"LR jumps from {prev.lr_end:.6g} at the end of {prev.name} "
                f"to {nxt.lr_start:.6g} at the start of {nxt.name}"
            )
    if plan.bucket_available is not None:
        problems += _check_data(plan)
    return problems


def _check_stages(plan: Plan) -> list[str]:
    problems, step, token = [], 0, 0
    for position, s in enumerate(plan.stages):
        where = f"stage {s.name}"
        if s.index != position:
            problems.append(f"{where}: index {s.index} but position {position}")
            continue
        if s.steps < 1:
            problems.append(f"{where}: {s.steps} steps")
        if s.tokens_per_step != s.sequences_per_step * s.seq_len:
            problems.append(f"{where}: tokens_per_step is not sequences_per_step * seq_len")
        if s.tokens != s.steps * s.tokens_per_step:
            problems.append(f"{where}: tokens {s.tokens} != steps * tokens_per_step")
        if (s.start_step, s.start_token) != (step, token):
            problems.append(
                f"{where}: starts at step {s.start_step}, token {s.start_token}; "
                f"the stages before it end at step {step}, token {token}"
            )
        step, token = step + s.steps, token + s.tokens
        if abs(sum(s.mixture.values()) - 1.0) > 1e-6:
            problems.append(f"{where}: mixture sums to {sum(s.mixture.values()):.6g}, not 1")
        want = s.steps * s.sequences_per_step
        if sum(s.bucket_sequences.values()) != want:
            problems.append(
                f"{where}: bucket_sequences sum to {sum(s.bucket_sequences.values())}, not {want}"
            )
        if s.steps >= 1:
            end = plan.lr_peak * lr_factor(s, s.steps, plan)
            if not _close(end, s.lr_end):
                problems.append(f"{where}: lr_end {s.lr_end:.6g} but the schedule gives {end:.6g}")
    return problems


def _check_budget(plan: Plan, curriculum: CurriculumConfig) -> list[str]:
    names = [s.name for s in plan.stages]
    if names != [c.name for c in curriculum.stages]:
        return [f"plan stages {names} are not the recipe's {[c.name for c in curriculum.stages]}"]
    problems = []
    for s, cfg in zip(plan.stages, curriculum.stages, strict=True):
        if 2 * abs(s.tokens - cfg.tokens) > s.tokens_per_step:
            problems.append(
                f"stage {s.name}: plans {s.tokens} tokens, the recipe asks {cfg.tokens} "
                f"(more than half a step of {s.tokens_per_step} apart)"
            )
    slack = sum(s.tokens_per_step for s in plan.stages) / 2
    if abs(plan.total_tokens - curriculum.total_tokens) > slack:
        problems.append(
            f"plan totals {plan.total_tokens} tokens, the recipe "
            f"{curriculum.total_tokens} (rounding allows {slack:g})"
        )
    return problems


def _check_data(plan: Plan) -> list[str]:
    available = plan.bucket_available or {}
    problems = []
    for s in plan.stages:
        for bucket, n in s.bucket_sequences.items():
            if n > 0 and bucket not in available:
                problems.append(f"stage {s.name}: bucket {bucket} is not in the data")
    for bucket, epochs in (plan.bucket_epochs() or {}).items():
        limit = plan.max_epochs.get(bucket, 1.0)
        if bucket in available and epochs > limit * (1 + 1e-9):
            problems.append(
                f"bucket {bucket} is drawn for {epochs:.3g} epochs, more than its limit {limit:g}"
            )
    return problems


# --- reporting ---------------------------------------------------------------------------


def human(n: float) -> str:
    """12.4T, 163.8k, 512."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.4g}{unit}"
    return f"{n:.4g}"


def _sci(x: float) -> str:
    """4.5e-4, 1.5e-6, 0."""
    if x == 0:
        return "0"
    mantissa, exponent = f"{x:.3e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def plan_table_markdown(plan: Plan) -> str:
    """One row per stage, then one row per bucket (available, drawn, epochs, limit)."""
    buf = io.StringIO()
    buf.write(
        f"**{plan.name}**: {len(plan.stages)} stages, {plan.total_steps:,} steps, "
        f"{human(plan.total_tokens)} tokens, LR peak {_sci(plan.lr_peak)}, "
        f"min {_sci(plan.lr_min)} ({plan.decay_shape} decay)\n\n"
    )
    buf.write("| stage | tokens | steps | seq_len | rope_theta | LR | mixture (top) |\n")
    buf.write("|---|---|---|---|---|---|---|\n")
    for s in plan.stages:
        top = sorted(s.mixture.items(), key=lambda kv: (-kv[1], kv[0]))
        mix = ", ".join(f"{b} {w:.2f}" for b, w in top[:3])
        mix += f", +{len(top) - 3} more" if len(top) > 3 else ""
        buf.write(
            f"| {s.name} | {human(s.tokens)} | {s.steps:,} | {s.seq_len:,} | {s.rope_theta:g} | "
            f"{_sci(s.lr_start)} -> {_sci(s.lr_end)} | {mix} |\n"
        )
    drawn, epochs = plan.bucket_drawn(), plan.bucket_epochs()
    if epochs is None:
        buf.write("\n| bucket | drawn | max epochs | required unique |\n|---|---|---|---|\n")
        for b, need in plan.required_unique_tokens().items():
            buf.write(
                f"| {b} | {human(drawn[b])} | {plan.max_epochs.get(b, 1.0):g} | {human(need)} |\n"
            )
        return buf.getvalue()
    available = plan.bucket_available or {}
    buf.write("\n| bucket | available | drawn | epochs | max epochs |\n|---|---|---|---|---|\n")
    for b in sorted(epochs):
        limit = plan.max_epochs.get(b, 1.0)
        have = human(available[b]) if b in available else "**missing**"
        over = " **over**" if b in available and epochs[b] > limit * (1 + 1e-9) else ""
        buf.write(
            f"| {b} | {have} | {human(drawn.get(b, 0))} | {epochs[b]:.3g}{over} | {limit:g} |\n"
        )
    return buf.getvalue()


def plot_plan(plan: Plan, out_png: Path, compare: Plan | None = None) -> str:
    """LR (top) and stacked mixture weights (bottom) over tokens; returns a markdown image.

    ``compare`` (the vanilla plan) adds its LR dashed on top and its one mixture as dashed
    stack boundaries below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, (ax_lr, ax_mix) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for p, style, color in ((plan, "-", "k"), (compare, "--", "tab:red")):
        if p is not None:
            ax_lr.plot(*_lr_curve(p), style, color=color, label=p.name)
    ax_lr.set(ylabel="learning rate", title=f"{plan.name}: learning rate and data mixture")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    ax_lr.legend(fontsize=8, loc="lower center")
    buckets = sorted({b for s in plan.stages for b in s.mixture}, key=_bucket_order)
    xs = [x for s in plan.stages for x in (s.start_token, s.start_token + s.tokens)]
    ys = [[s.mixture.get(b, 0.0) for s in plan.stages for _ in (0, 1)] for b in buckets]
    ax_mix.stackplot(xs, ys, labels=buckets, colors=_bucket_colors(buckets), alpha=0.9)
    if compare is not None:
        vanilla, level = compare.stages[0].mixture, 0.0
        for b in sorted(vanilla, key=_bucket_order)[:-1]:
            level += vanilla[b]
            ax_mix.axhline(level, color="k", linestyle="--", linewidth=0.7)
        ax_mix.set_title(f"dashed: {compare.name}'s one mixture", fontsize=8)
    ax_mix.set(ylabel="mixture weight", xlabel="tokens", ylim=(0, 1))
    ax_mix.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax_mix.xaxis.set_major_formatter(FuncFormatter(lambda v, _: human(v)))
    for s in plan.stages:
        for ax in (ax_lr, ax_mix):
            ax.axvline(s.start_token, color="grey", linewidth=0.8)
        ax_lr.text(
            s.start_token,
            0.5,
            f" {s.name}",
            transform=ax_lr.get_xaxis_transform(),
            fontsize=7,
            rotation=90,
            va="center",
            bbox={"fc": "white", "ec": "none"},
        )
    fig.tight_layout()
    return figure_markdown(fig, out_png, "curriculum")


def _bucket_order(bucket: str) -> tuple:
    return ({"diverse": 0, "high": 1}.get(_tier(bucket), 2), bucket)


def _bucket_colors(buckets: list[str]) -> list:
    """One hue per domain (tab20 pairs): its high tier dark, its diverse tier light."""
    import matplotlib

    pairs = matplotlib.colormaps["tab20"].colors
    groups: list[str] = []
    colors = []
    for b in buckets:
        tier = _tier(b)
        group = b.split("/", 1)[0] if tier in ("diverse", "high") else b
        if group not in groups:
            groups.append(group)
        colors.append(pairs[2 * (groups.index(group) % 10) + (tier == "diverse")])
    return colors


def _lr_curve(plan: Plan, points: int = 200) -> tuple[list[int], list[float]]:
    """LR at each stage's start boundary and at up to ``points`` of its steps, over tokens."""
    xs, ys = [], []
    for s in plan.stages:
        xs.append(s.start_token)
        ys.append(s.lr_start)
        stride = max(1, s.steps // points)
        for k in sorted({*range(stride, s.steps + 1, stride), s.steps}):
            xs.append(s.start_token + k * s.tokens_per_step)
            ys.append(plan.lr_peak * lr_factor(s, k, plan))
    return xs, ys

"""One FG-WSD stage trained by torchtitan's stock Trainer, with the config generated in Python.

``StageSpec`` (a JSON file) is everything a stage needs: the plan and which stage, the token
shards, the tokenizer, the model shape, the work directory, where the previous stage's
checkpoint is, and the recipe's ``pretrain`` section itself (no field copied out of it).
:func:`trainer_config` turns it into a torchtitan ``Trainer.Config``: our model spec
(:mod:`nanbeige_train.model`), the curriculum dataloader (:mod:`nanbeige_train.data`), an LR
scheduler that follows the plan's segment for this stage, DCP checkpoints, and a metrics
processor that also writes ``metrics.jsonl`` (the loss curve the assets plot).

Hand-off and resume, decided here and nowhere else:

* fresh stage, previous stage given: ``initial_load_path`` = its final checkpoint, loading model
  *and* optimizer moments (one continuous WSD run, as in the paper) but not the dataloader,
  LR scheduler or step counter, which belong to the new stage;
* a crashed stage (``work_dir/checkpoint/step-*`` exists): no initial load and no exclusions, so
  torchtitan restores everything from the stage's own last checkpoint and continues -- not from
  scratch and not from the previous stage.

Precision (:func:`training_dtype`): ``pretrain.dtype`` is torchtitan's mixed-precision parameter
dtype (master weights, optimizer state and gradient reduction stay fp32). ``auto`` means bfloat16
on CUDA and float32 on a CPU -- also on one with AVX512-BF16/AMX, where ``models.resolve_dtype``
would pick bf16 for inference: the CPU run is the correctness run (its loss checks, the two-rank
vs one-rank equality and the stored reference curve in ``tests/data`` are fp32 numbers), and
bf16 there would change them from host to host. An explicit ``float32``/``bfloat16`` wins. The
dtype used is in ``result.json``.

Progress: rank 0 prints one ``PROGRESS_TAG`` line of JSON per logged step (stage, step, of how
many, loss, tokens, tokens/s since the last logged step); ``stage.progress`` turns them into the
time-throttled lines a person reads.

Run it as ``torchrun --nproc_per_node N -m nanbeige_train.pretrain.trainer spec.json`` (the
launcher does); on CPU it applies :mod:`nanbeige_train.compat` first and uses gloo. Several
spec files train those stages in order in one launch (:func:`run_chain`: the ablation's runs).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from nanbeige_data.pretraining.config import PretrainConfig
from nanbeige_train import compat

CODE_VERSION = "1"
# files of a stage's work directory (copied into its version by stage.train_stage)
SPEC_FILE, RESULT_FILE, METRICS_FILE = "spec.json", "result.json", "metrics.jsonl"
PROGRESS_TAG = "[nanbeige-progress] "  # a rank-0 stdout line: this tag, then one JSON object


@dataclass
class StageSpec:
    plan_path: str
    stage: str
    shards_dir: str
    tokenizer_dir: str
    model: dict[str, Any]  # ModelShape fields
    work_dir: str
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)  # the recipe's section
    init_checkpoint: str | None = None  # previous stage's final checkpoint (DCP folder)
    seed: int = 0
    attention: str = "sdpa"
    log_freq: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return {**out, "pretrain": self.pretrain.model_dump(mode="json")}

    def save(self, path: Path) -> Path:
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def load(cls, path: Path) -> StageSpec:
        raw = json.loads(Path(path).read_text())
        return cls(**{**raw, "pretrain": PretrainConfig.model_validate(raw.get("pretrain", {}))})

    def plan_stage(self):
        """(Plan, StagePlan) of this stage, read from the plan JSON."""
        from nanbeige_data.pretraining.curriculum import Plan

        plan = Plan.load(self.plan_path)
        for stage in plan.stages:
            if stage.name == self.stage:
                return plan, stage
        raise KeyError(f"stage {self.stage!r} is not in plan {self.plan_path}")


def checkpoints(work_dir: Path) -> list[Path]:
    """The stage's own DCP checkpoints, oldest first."""
    folder = Path(work_dir) / "checkpoint"
    found = [p for p in folder.glob("step-*") if p.is_dir() and (p / ".metadata").exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def stage_lr_factor(plan, stage, step: int) -> float:
    """LR factor (of lr_peak) at 1-based ``step`` of a plan stage; past the end it holds.

    LambdaLR evaluates once more after the last optimizer step; that value is never used."""
    from nanbeige_data.pretraining.curriculum import lr_factor

    return lr_factor(stage, min(max(step, 1), stage.steps), plan)


def _lr_scheduler_config(plan, stage):
    from torchtitan.components.optimizer import LRSchedulersContainer

    @dataclass(kw_only=True, slots=True)
    class PlanLR(LRSchedulersContainer.Config):
        """LambdaLR over the plan's LR segment for this stage (factor of lr_peak)."""

        def build(self, *, optimizers, training_steps):
            def factor(step0: int) -> float:  # LambdaLR counts from 0; optimizer steps from 1
                return stage_lr_factor(plan, stage, step0 + 1)

            return LRSchedulersContainer(optimizers, factor)

    return PlanLR()


def _metrics_config(work_dir: Path, log_freq: int, stage: str, steps: int):
    from torchtitan.components.metrics import MetricsProcessor

    class JsonlMetrics(MetricsProcessor):
        """torchtitan's metrics plus, per logged step on rank 0, one JSON line in
        ``metrics.jsonl`` (the loss curve) and one ``PROGRESS_TAG`` line on stdout."""

        def log(self, step, global_avg_loss, global_max_loss, grad_norm, extra_metrics=None):
            import torch.distributed as dist

            seconds = max(time.perf_counter() - self.time_last_log, 1e-9)  # super() resets it
            dims = self.parallel_dims
            # ntokens_since_last_log is this rank's; every data-parallel rank saw as many
            tokens = self.ntokens_since_last_log * dims.world_size / dims.non_data_parallel_size
            super().log(step, global_avg_loss, global_max_loss, grad_norm, extra_metrics)
            if dist.is_initialized() and dist.get_rank() != 0:
                return
            lr = next((v for k, v in (extra_metrics or {}).items() if k.startswith("lr")), None)
            row = {
                "step": step,
                "steps": steps,
                "loss": global_avg_loss,
                "grad_norm": grad_norm,
                "lr": lr,
                "tokens": (extra_metrics or {}).get("n_tokens_seen"),
                # global tokens/s since the last logged step (all data-parallel ranks)
                "tokens_per_second": tokens / seconds,
                "time": time.time(),
            }
            with open(work_dir / METRICS_FILE, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(PROGRESS_TAG + json.dumps({"stage": stage, **row}), flush=True)

    @dataclass(kw_only=True, slots=True)
    class Config(MetricsProcessor.Config):
        pass

    Config._owner = JsonlMetrics
    JsonlMetrics.Config = Config
    return Config(log_freq=log_freq, disable_color_printing=True)


def training_dtype(requested: str) -> str:
    """The mixed-precision parameter dtype a stage trains in (module docstring): ``auto`` is
    bfloat16 on CUDA and float32 on any CPU; an explicit ``float32``/``bfloat16`` wins."""
    if requested == "auto" and compat.needed():
        return "float32"
    from nanbeige_data.models import resolve_dtype

    return resolve_dtype(requested)


def seed_checkpoint(work_dir: Path) -> Path:
    """Where a first stage's initial weights are written by one process before training."""
    return Path(work_dir) / "seed" / "step-0"


def trainer_config(spec: StageSpec, *, world_size: int = 1, create_seed: bool = False):
    """A torchtitan ``Trainer.Config`` for this stage; resume vs. hand-off decided from disk.

    A first stage starts from a seed checkpoint that one process writes (``create_seed``):
    initialising sharded parameters draws different random numbers than initialising whole
    ones, so without it one and two processes would train different models."""
    from torchtitan.components.checkpoint import CheckpointManager
    from torchtitan.components.loss import CrossEntropyLoss
    from torchtitan.components.optimizer import default_adamw
    from torchtitan.config import ParallelismConfig, TrainingConfig
    from torchtitan.config.configs import CommConfig, DebugConfig
    from torchtitan.trainer import Trainer

    from nanbeige_train.data import CurriculumDataLoader
    from nanbeige_train.model import ModelShape, model_spec

    plan, stage = spec.plan_stage()
    work = Path(spec.work_dir)
    pretrain = spec.pretrain
    dp = pretrain.data_parallel_shard
    if dp <= 0:
        dp = world_size // pretrain.tensor_parallel
    per_step = stage.sequences_per_step
    if per_step % dp:
        raise ValueError(f"{per_step} sequences per step do not split over {dp} data ranks")
    resume = bool(checkpoints(work)) and not create_seed
    handoff = None
    if not resume and not create_seed:
        handoff = spec.init_checkpoint or str(seed_checkpoint(work))
    shape = ModelShape(**spec.model)
    on_cpu = compat.needed()
    return Trainer.Config(
        model_spec=model_spec(
            shape,
            rope_theta=stage.rope_theta,
            max_seq_len=stage.seq_len,
            attention=spec.attention,
        ),
        hf_assets_path=spec.tokenizer_dir,
        dump_folder=str(work),
        loss=CrossEntropyLoss.Config(),
        optimizer=default_adamw(lr=plan.lr_peak),
        lr_scheduler=_lr_scheduler_config(plan, stage),
        training=TrainingConfig(
            local_batch_size=per_step // dp,
            global_batch_size=per_step,
            seq_len=stage.seq_len,
            steps=stage.steps,
            dtype="float32",
            mixed_precision_param=training_dtype(pretrain.dtype),
            disable_cuda_graphs=on_cpu,
            max_norm=1.0,
        ),
        dataloader=CurriculumDataLoader.Config(
            shards_dir=spec.shards_dir, plan_path=spec.plan_path, stage=spec.stage
        ),
        metrics=_metrics_config(work, spec.log_freq, spec.stage, stage.steps),
        parallelism=ParallelismConfig(
            data_parallel_shard_degree=pretrain.data_parallel_shard,
            tensor_parallel_degree=pretrain.tensor_parallel,
            spmd_backend="partial_dtensor",
        ),
        checkpoint=CheckpointManager.Config(
            enable=True,
            folder="seed" if create_seed else "checkpoint",
            create_seed_checkpoint=create_seed,
            interval=pretrain.checkpoint_every,
            initial_load_path=handoff,
            initial_load_model_only=False,
            exclude_from_loading=["dataloader", "lr_scheduler", "train_state"] if handoff else [],
            last_save_model_only=False,
            keep_latest_k=2,
        ),
        activation_checkpoint=None,  # tiny activations; on GPUs a recipe field can add SAC
        comm=CommConfig(init_timeout_seconds=300, train_timeout_seconds=300),
        debug=DebugConfig(seed=spec.seed, deterministic=True),
    )


def final_checkpoint(spec: StageSpec) -> Path:
    """Where a stage's last step writes its checkpoint: the next stage of a chain loads it."""
    _, stage = spec.plan_stage()
    return Path(spec.work_dir) / "checkpoint" / f"step-{stage.steps}"


def run_chain(
    specs: list[StageSpec], *, seed_first: bool = False, seed_only: bool = False
) -> list[dict[str, Any]]:
    """Train stages in order in this process (under torchrun); rank 0 writes each one's
    ``result.json`` as it finishes. Each stage gets a torchtitan Trainer of its own (built from
    its spec, closed before the next), all in one process group: the start-up a separate
    launch per stage would pay again (interpreter, torch and torchtitan imports, process
    group) is paid once. A later stage's ``init_checkpoint`` is typically the previous one's
    :func:`final_checkpoint`. torchtitan re-seeds (``debug.seed``) and rebuilds the model,
    optimizer, dataloader and meshes in every Trainer, so a stage trains the same numbers as
    in a launch of its own (``tests/test_pretrain.py`` compares them bit for bit).

    ``seed_first`` (one process only) writes the first stage's initial weights before
    training; ``seed_only`` writes them and returns (no results)."""
    compat.isolate_imports()
    import torch.distributed as dist
    from torchtitan.tools.logging import init_logger

    if (seed_first or seed_only) and int(os.environ.get("WORLD_SIZE", "1")) != 1:
        raise ValueError("a seed checkpoint is written by one process (WORLD_SIZE=1)")
    compat.apply()
    init_logger()
    if seed_first or seed_only:
        _write_seed(specs[0])
    results = []
    for spec in [] if seed_only else specs:
        _release_memory()  # the previous Trainer's model and optimizer, before this one's
        results.append(_train(spec))
    if dist.is_initialized():  # (after a failure the rank just exits; torchrun stops the rest)
        dist.destroy_process_group()
    return results


def _release_memory() -> None:
    """Free a closed Trainer's tensors now (its reference cycles would keep them until a
    later garbage collection), and on CUDA the cached blocks, so two stages never coexist."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _write_seed(spec: StageSpec) -> None:
    Path(spec.work_dir).mkdir(parents=True, exist_ok=True)
    trainer = trainer_config(spec, create_seed=True).build()
    try:
        trainer.checkpointer.save(curr_step=0, last_step=True)
    finally:
        trainer.close()


def _train(spec: StageSpec) -> dict[str, Any]:
    """One stage in this process; rank 0 writes its ``result.json``, then all ranks meet."""
    import torch.distributed as dist

    work = Path(spec.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    config = trainer_config(spec, world_size=world)
    resumed_from = checkpoints(work)[-1].name if checkpoints(work) else None
    start_step = int(resumed_from.split("-")[1]) if resumed_from else 0
    trainer = config.build()
    started = time.monotonic()
    try:
        trainer.train()
        seconds = time.monotonic() - started
        tokens = (trainer.step - start_step) * config.training.global_batch_size
        result = {
            "stage": spec.stage,
            "steps": trainer.step,
            "resumed_from": resumed_from,
            "start_step": start_step,
            "initial_load": config.checkpoint.initial_load_path,
            "tokens_seen": trainer.dataloader.tokens_seen(),
            "seconds": seconds,
            "tokens_per_second": _steady_tokens_per_second(read_metrics(work))
            or tokens * config.training.seq_len / max(seconds, 1e-9),
            "world_size": world,
            "dtype": config.training.mixed_precision_param,
            "checkpoint": str(checkpoints(work)[-1]),
        }
    finally:
        trainer.close()
    if not dist.is_initialized() or dist.get_rank() == 0:
        (work / RESULT_FILE).write_text(json.dumps(result, indent=2))
    if dist.is_initialized():
        dist.barrier()
    return result


def read_metrics(work_dir: Path) -> list[dict[str, Any]]:
    """The loss curve rows of a stage, one per logged step (the last write of a step wins)."""
    path = Path(work_dir) / METRICS_FILE
    rows: dict[int, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[row["step"]] = row
    return [rows[k] for k in sorted(rows)]


def _steady_tokens_per_second(rows: list[dict[str, Any]]) -> float | None:
    """Tokens/s between the first and the last logged step (no start-up, no shutdown)."""
    if len(rows) < 3 or rows[-1]["tokens"] is None:
        return None
    span = rows[-1]["time"] - rows[0]["time"]
    return (rows[-1]["tokens"] - rows[0]["tokens"]) / span if span > 0 else None


def loss_ok(
    rows: list[dict[str, Any]], window: int = 5, reference: float | None = None
) -> tuple[bool, dict[str, float]]:
    """Finite losses, and the last ``window`` steps' mean below the first steps' loss.

    ``reference`` is the first-steps loss of the whole run (a later stage, whose loss has
    plateaued, is judged against where training started, not against its own noisy start);
    without it, the stage's own first ``window`` steps."""
    losses = [r["loss"] for r in rows]
    if not losses:
        return False, {}
    k = max(1, min(window, len(losses) // 4))
    first = sum(losses[:k]) / k if reference is None else reference
    last = sum(losses[-k:]) / k
    finite = all(math.isfinite(x) for x in losses)
    return finite and last < first, {"first_loss": first, "last_loss": last, "finite": finite}


def main(argv: list[str]) -> None:
    """``spec.json [spec.json ...] [--seed | --seed-first]`` (see :func:`run_chain`)."""
    paths = [a for a in argv if not a.startswith("--")]
    if not paths:
        raise SystemExit("usage: trainer SPEC.json [SPEC.json ...] [--seed | --seed-first]")
    specs = [StageSpec.load(Path(p)) for p in paths]
    run_chain(specs, seed_first="--seed-first" in argv, seed_only="--seed" in argv)


if __name__ == "__main__":
    main(sys.argv[1:])

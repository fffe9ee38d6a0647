"""Launching a training stage: torchrun on this machine, one process per rank.

Assets never build command lines; they hand a
:class:`~nanbeige_train.pretrain.trainer.StageSpec` to a launcher. :class:`LocalLauncher` runs
``torchrun --standalone`` here (gloo on CPU, NCCL on GPUs), streams the log to a file and to a
progress callback, and turns a failed run into a :class:`TrainingError` carrying the log's tail.
A cluster launcher (Slurm ``srun torchrun``, a Kubernetes job) implements the same ``run_stage``
and ``run_chain``: several stages in order in one launch (the ablation's runs, whose start-up --
process, imports, process group -- would otherwise be paid once per stage).

Threads: each rank gets ``cpu_count // nproc`` intra-op threads (or ``threads_per_rank``) so
two gloo ranks on a 2-core machine do not oversubscribe it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanbeige_train.pretrain.trainer import (
    RESULT_FILE,
    SPEC_FILE,
    StageSpec,
    checkpoints,
    seed_checkpoint,
)

CODE_VERSION = "1"


class TrainingError(RuntimeError):
    """A training process failed; the message ends with the tail of its log."""


@dataclass(frozen=True)
class LocalLauncher:
    nproc_per_node: int = 1
    python: str = sys.executable
    timeout_s: float | None = None
    threads_per_rank: int | None = None  # None: cpu_count // nproc (the numerics guard pins 1)

    def run_stage(
        self, spec: StageSpec, *, on_line: Callable[[str], None] | None = None
    ) -> dict[str, Any]:
        """Train one stage (writing its seed first, in a launch of its own, if it is a first
        stage); its result."""
        return self.run_chain([spec], on_line=on_line, separate_seed=True)[0]

    def run_chain(
        self,
        specs: Sequence[StageSpec],
        *,
        on_line: Callable[[str], None] | None = None,
        separate_seed: bool = False,
    ) -> list[dict[str, Any]]:
        """Train stages in order in one torchrun launch; their results, in order.

        Each spec names its own ``init_checkpoint`` (a later stage's is typically the previous
        one's ``trainer.final_checkpoint``). A fresh first stage's seed is written in the same
        launch when it has one rank (unless ``separate_seed``), else in a one-process launch
        before it. The log is the first stage's ``train.log`` (``seed.log`` for a separate
        seed). A failure names the first stage that did not finish and ends with the log's
        tail; the stages before it have their ``result.json``."""
        if not specs:
            return []
        paths = []
        for spec in specs:
            work = Path(spec.work_dir)
            work.mkdir(parents=True, exist_ok=True)
            paths.append(spec.save(work / SPEC_FILE))
            (work / RESULT_FILE).unlink(missing_ok=True)
        first = Path(specs[0].work_dir)
        extra: tuple[str, ...] = ()
        fresh = not checkpoints(first) and specs[0].init_checkpoint is None
        if fresh and not (seed_checkpoint(first) / ".metadata").exists():
            if separate_seed or self.nproc_per_node != 1:
                self._launch(specs[:1], paths[:1], 1, first / "seed.log", on_line, "--seed")
            else:
                extra = ("--seed-first",)
        self._launch(specs, paths, self.nproc_per_node, first / "train.log", on_line, *extra)
        results = []
        for spec in specs:
            result_path = Path(spec.work_dir) / RESULT_FILE
            if not result_path.exists():
                raise TrainingError(f"stage {spec.stage}: training exited without {result_path}")
            results.append(json.loads(result_path.read_text()))
        return results

    def _launch(
        self,
        specs: Sequence[StageSpec],
        paths: Sequence[Path],
        nproc: int,
        log: Path,
        on_line: Callable[[str], None] | None,
        *extra: str,
    ) -> None:
        """One torchrun; a failure names the first stage without a ``result.json``."""
        try:
            self._torchrun(paths, nproc, log, on_line, *extra)
        except TrainingError as err:
            done = [(Path(s.work_dir) / RESULT_FILE).exists() for s in specs]
            stage = specs[done.index(False) if False in done else -1].stage
            raise TrainingError(f"stage {stage}: {err}") from None

    def _torchrun(
        self,
        spec_paths: Sequence[Path],
        nproc: int,
        log: Path,
        on_line: Callable[[str], None] | None,
        *extra: str,
    ) -> None:
        cmd = [
            self.python, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", "-m", "nanbeige_train.pretrain.trainer",
            *map(str, spec_paths), *extra,
        ]  # fmt: skip
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(self.threads_per_rank or max(1, (os.cpu_count() or 1) // nproc)),
            "PYTHONUNBUFFERED": "1",
            "TF_CPP_MIN_LOG_LEVEL": "3",
        }
        with open(log, "a") as sink:
            sink.write(f"$ {' '.join(cmd)}\n")
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
            assert proc.stdout is not None
            try:
                for line in proc.stdout:
                    sink.write(line)
                    if on_line is not None:
                        on_line(line.rstrip("\n"))
                code = proc.wait(timeout=self.timeout_s)
            except BaseException:  # interrupted (run cancelled, callback raised): no orphans
                _stop(proc)
                raise
        if code != 0:
            tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
            raise TrainingError(f"{' '.join(cmd[3:])} exited with {code}; log {log}:\n{tail}")


# libc, resolved in the parent: the child between fork and exec must not load anything
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    """In the torchrun child before exec: SIGTERM when the process that launched it dies.

    torchrun runs in a session of its own (so a terminal's Ctrl-C reaches it only through us),
    which also means a SIGKILLed Dagster run (OOM killer, pre-emption, `kill -9`) would leave
    it training on as an orphan, racing the re-run in the same work directory. Linux's
    PR_SET_PDEATHSIG closes that hole; torchrun passes the SIGTERM on to its ranks."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _stop(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """Stop torchrun and its ranks. The ranks run in sessions of their own, so they are
    reached through torchrun: SIGTERM makes it terminate them; SIGKILL if it hangs."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

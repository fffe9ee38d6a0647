"""Corpus shards as datatrove documents, and the one way the refinery runs a datatrove stage.

* ``corpus_shards``: the top-level ``*.parquet`` shards of corpus directories, each checked for
  the corpus columns (a missing directory or a bad shard is a ``CorpusError`` naming it).
* ``CorpusReader`` / ``corpus_writer`` with the one pair of adapters ``read_row`` /
  ``write_row``: a corpus row is a ``Document`` whose metadata holds ``domain``, ``source`` and
  ``meta``; written back it is exactly ``corpus.SCHEMA``, one ``part-RRRRR.parquet`` per task.
* ``run_stages``: a list of ``Stage`` (pipeline + task count) on the recipe's executor
  (``refinery.execution``): ``local`` runs them one after the other in processes; ``slurm``
  submits them as one chain of dependent job arrays and waits for every task's completion marker
  (a job that leaves the queue with tasks missing raises, and cancels the rest of the chain);
  ``ray`` runs them one after the other on the connected Ray cluster.

Trade-offs: every call starts from fresh log folders, because its outputs go to a fresh staging
directory (a resumed task would have written into an older one); inside one call a requeued
Slurm task resumes from datatrove's completion markers. On Slurm the caller's input, output and
``execution.work_dir`` must be on a filesystem the nodes see; nothing here can check that.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from datatrove.data import Document
from datatrove.executor import LocalPipelineExecutor, RayPipelineExecutor, SlurmPipelineExecutor
from datatrove.executor.base import PipelineExecutor
from datatrove.pipeline.readers import ParquetReader
from datatrove.pipeline.writers import ParquetWriter

from nanbeige_data.corpus.build import FIELDS, SCHEMA, CorpusError
from nanbeige_data.refinery.config import ExecutionConfig

log = logging.getLogger(__name__)

SLURM_POLL_SECONDS = 30.0
# imported once by datatrove's forkserver instead of by every pool worker (~2 s each)
_PRELOAD = tuple(f"nanbeige_data.refinery.{m}" for m in ("docs", "filters", "dedup", "decontam"))


# --------------------------------------------------------------------------- shards


def corpus_shards(*folders: Path | str, columns: Sequence[str] = FIELDS) -> list[Path]:
    """The sorted top-level ``*.parquet`` shards of each folder (folders in the order given),
    each holding ``columns`` as strings; a missing folder or a bad shard raises CorpusError."""
    shards: list[Path] = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise CorpusError(str(folder), None, "corpus directory not found")
        shards += [_checked(shard, columns) for shard in sorted(folder.glob("*.parquet"))]
    return shards


def _checked(shard: Path, columns: Sequence[str]) -> Path:
    try:
        schema = pq.read_schema(shard)
    except (OSError, pa.ArrowException) as exc:
        raise CorpusError(str(shard), None, f"unreadable Parquet ({exc})") from exc
    for name in columns:
        if name not in schema.names:
            raise CorpusError(str(shard), None, f"missing column {name!r} ({schema.names})")
        kind = schema.field(name).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise CorpusError(str(shard), None, f"column {name!r} is {kind}, not string")
    return shard


def row_count(shards: Sequence[Path]) -> int:
    """Rows in the shards, from their footers."""
    return sum(pq.ParquetFile(shard).metadata.num_rows for shard in shards)


# --------------------------------------------------------------------------- documents


def read_row(self: ParquetReader, data: dict, path: str, id_in_file: int | str) -> dict:
    """Reader adapter: a corpus row -> Document fields (domain/source/meta in metadata)."""
    missing = [name for name in FIELDS if data.get(name) is None]
    if missing:  # ValueError, not CorpusError: it must pickle back from worker processes
        where = self.data_folder.resolve_paths(path)
        raise ValueError(f"{where}: row {int(id_in_file) + 1}: null or missing {missing}")
    meta = {"domain": data["domain"], "source": data["source"], "meta": data["meta"]}
    return {"id": data["id"], "text": data["text"], "metadata": meta}


def write_row(self: object, doc: Document) -> dict:
    """Writer adapter: a Document -> a row of exactly ``corpus.SCHEMA``."""
    md = doc.metadata
    return {"id": doc.id, "text": doc.text, **{k: md[k] for k in ("domain", "source", "meta")}}


class CorpusReader(ParquetReader):
    """The top-level ``*.parquet`` of a corpus dir (never ``removed/`` or ``excluded/``).

    datatrove skips empty texts silently; ``keep_empty=True`` passes them on, so that a filter
    can count them and keep them for audit."""

    def __init__(self, folder: Path | str, keep_empty: bool = False) -> None:
        super().__init__(str(folder), adapter=read_row, glob_pattern="*.parquet", recursive=False)
        self.keep_empty = keep_empty

    def get_document_from_dict(self, data: dict, source_file: str, id_in_file: int | str):
        if self.keep_empty:
            return Document(**self.adapter(data, source_file, id_in_file))
        return super().get_document_from_dict(data, source_file, id_in_file)


def corpus_writer(folder: Path | str) -> ParquetWriter:
    """Writes Documents as ``folder/part-RRRRR.parquet`` (one file per task), corpus schema."""
    return ParquetWriter(
        str(folder),
        output_filename="part-${rank}.parquet",
        compression="zstd",
        adapter=write_row,
        schema=SCHEMA,
        max_file_size=-1,  # no size split: names stay part-RRRRR.parquet
    )


# --------------------------------------------------------------------------- execution


@dataclass(frozen=True)
class Stage:
    """One datatrove stage: its pipeline and how many tasks split it."""

    name: str  # its log folder and the suffix of its Slurm job name
    pipeline: list
    tasks: int = 1


def work_dir(execution: ExecutionConfig, scratch: Path | str, prefix: str) -> Path:
    """A fresh folder for one call's datatrove logs and intermediate files: under
    ``execution.work_dir`` when set (Slurm: a shared filesystem), else under ``scratch``."""
    root = Path(execution.work_dir or scratch)
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=root))


def build_executor(
    stage: Stage,
    execution: ExecutionConfig,
    logging_dir: Path,
    job: str,
    depends: PipelineExecutor | None = None,
) -> PipelineExecutor:
    """The datatrove executor that runs ``stage`` as ``execution`` says; nothing is run."""
    tasks, logs = max(1, stage.tasks), str(logging_dir)
    if execution.executor == "local":
        workers = max(1, min(execution.workers, tasks))
        return _QuietLocalExecutor(stage.pipeline, tasks=tasks, workers=workers, logging_dir=logs)
    if execution.executor == "slurm":
        venv = Path(sys.prefix) / "bin" / "activate"
        return SlurmPipelineExecutor(
            stage.pipeline,
            tasks=tasks,
            time=execution.slurm_time,
            partition=execution.slurm_partition,
            cpus_per_task=execution.slurm_cpus_per_task,
            mem_per_cpu_gb=execution.slurm_mem_per_cpu_gb,
            qos=execution.slurm_qos,
            sbatch_args=dict(execution.slurm_sbatch_args),
            job_name=f"nanbeige-{job}-{stage.name}",
            logging_dir=logs,
            venv_path=str(venv) if sys.prefix != sys.base_prefix else None,
            depends=depends,
        )
    return RayPipelineExecutor(stage.pipeline, tasks=tasks, logging_dir=logs)


def run_stages(
    stages: Sequence[Stage], execution: ExecutionConfig, logs: Path, job: str
) -> list[PipelineExecutor]:
    """Run ``stages`` in order, stage ``s`` logging to ``logs/<s.name>``; returns the executors
    (their ``logging_dir`` holds each task's stats). Raises if any task did not complete."""
    logs = Path(logs)
    if execution.executor == "slurm":
        return _run_slurm_chain(stages, execution, logs, job)
    executors = []
    for stage in stages:
        executor = build_executor(stage, execution, logs / stage.name, job)
        with _terminable_workers(), _console_warnings_only():
            if isinstance(executor, LocalPipelineExecutor) and executor.workers > 1:
                _preload_forkserver()
            executor.run()
        executors.append(executor)
    return executors


class _QuietLocalExecutor(LocalPipelineExecutor):
    """datatrove's local executor, its tasks logging to their log files only (errors still reach
    the console): datatrove prints a banner and a stats table per task to stderr otherwise, for
    every stage of every domain. ``local_rank`` is used for nothing but that choice; a task run
    in this process re-installs datatrove's default DEBUG console sink when it ends, so the
    console is put back to warnings-only after each."""

    def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1):
        try:
            return super()._run_for_rank(rank, local_rank + 1, node_rank)
        finally:
            _warnings_only()


def _warnings_only() -> None:
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING", filter=_not_a_reminder)


def _not_a_reminder(record: dict) -> bool:
    # ExactDedupSignature's "Remember to also set the number of tasks of the finder block":
    # dedup.py does (the finder runs with as many tasks as the signature has finder_workers)
    return not record["message"].startswith("Remember to also set")


@contextlib.contextmanager
def _terminable_workers() -> Iterator[None]:
    """Pool workers must die on SIGTERM: an exiting ``Pool`` terminates its idle workers with it
    and then joins them. Dagster maps SIGTERM to SIGINT's handler, which is SIG_IGN in a
    background job (CI, ``nohup``); the forkserver started in that state passes the ignored
    SIGTERM to every worker and the pool's exit then waits forever (seen here: decontamination
    after an in-process materialization). So SIGTERM has its default action while a local pool
    starts and runs; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        yield
    finally:
        if previous is signal.SIG_IGN:
            signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _console_warnings_only() -> Iterator[None]:
    """While a local executor runs here, datatrove's own (loguru) console lines below WARNING --
    the merged stats table -- are dropped; the stats stay in each stage's logging_dir."""
    _warnings_only()
    try:
        yield
    finally:
        _warnings_only()


def _run_slurm_chain(
    stages: Sequence[Stage], execution: ExecutionConfig, logs: Path, job: str
) -> list[PipelineExecutor]:
    executors: list[SlurmPipelineExecutor] = []
    for stage in stages:
        depends = executors[-1] if executors else None
        executors.append(build_executor(stage, execution, logs / stage.name, job, depends))
    executors[-1].run()  # submits the dependencies first, each with --dependency=afterok
    job_ids = [str(e.job_id) for e in executors]  # launching cleared each executor's `depends`
    for i, executor in enumerate(executors):
        try:
            await_slurm(executor)
        except RuntimeError:
            _cancel([j for j in job_ids[i + 1 :] if j not in ("-1", "None")])
            raise
    return list(executors)


def await_slurm(executor: SlurmPipelineExecutor, poll_seconds: float = SLURM_POLL_SECONDS) -> None:
    """Block until every task of a submitted Slurm job completed; raise if the job left the
    queue with tasks missing."""
    while missing := executor.get_incomplete_ranks():
        queued = subprocess.run(
            ["squeue", "-h", "-j", str(executor.job_id)], capture_output=True, text=True
        ).stdout.strip()
        if not queued and (missing := executor.get_incomplete_ranks()):
            raise RuntimeError(
                f"slurm job {executor.job_id} ({executor.job_name}) ended with tasks {missing} "
                f"incomplete; logs: {executor.logging_dir.path}"
            )
        log.info("slurm job %s: %d tasks to go", executor.job_id, len(missing))
        time.sleep(poll_seconds)


def _cancel(job_ids: list[str]) -> None:
    if job_ids:
        subprocess.run(["scancel", *job_ids], capture_output=True, text=True)


def _preload_forkserver() -> None:
    """Have datatrove's forkserver import the refinery modules once, not every pool worker.

    Only takes effect if the forkserver has not started yet in this process; ``__main__`` stays
    in the list (the multiprocessing default)."""
    import multiprocess

    multiprocess.get_context("forkserver").set_forkserver_preload(["__main__", *_PRELOAD])

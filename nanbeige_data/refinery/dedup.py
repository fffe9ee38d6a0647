"""Remove exact and near-duplicate documents across all domains with datatrove's own stages.

The domains' shards are staged side by side (symlinks in the scratch dir) and read as one
corpus, so a web page copied into the papers domain is caught. Two passes run on a
``LocalPipelineExecutor``, stage by stage, as datatrove lays them out:

1. exact: ``ExactDedupSignature`` (xxhash64 of the text) -> ``ExactFindDedups`` ->
   ``ExactDedupFilter``; the first copy read is kept.
2. near: ``MinhashDedupSignature`` -> ``MinhashDedupBuckets`` -> ``MinhashDedupCluster`` ->
   ``MinhashDedupFilter`` on word n-gram shingles (LSH: ``buckets`` bands of
   ``hashes_per_bucket`` hashes); one document per cluster is kept.

Removed documents go to ``out_dir/removed/{exact,near}/`` (the corpus columns plus ``reason``
and ``cluster``) for audit; the kept ones to ``out_dir/*.parquet`` in the corpus schema
(datatrove names them ``NNN_part-RRRRR.parquet``: file counter, task rank).

Trade-offs:

* MinHash shingles use a regex word tokenizer on datatrove's simplified text (lowercase, no
  punctuation, numbers folded) instead of datatrove's default for ``en`` (a blank spaCy
  pipeline): the same words on this text, about 5x faster, nothing to download. In this venv
  ``spacy.blank("en")`` also fails: spaCy loads every registered entry point, and the
  ``spacy_universal_sentence_encoder`` that ``evals`` pulls in imports ``tensorflow_hub``,
  which needs the missing ``pkg_resources``. ``tokenizer="spacy"`` restores datatrove's default
  where spaCy loads.
* LSH is probabilistic: with 14 x 8 hashes a pair at Jaccard 0.8 is caught with p ~ 0.92 and a
  pair at 0.5 almost never; texts shorter than ``ngram`` words get no signature (exact only).
* Which copy survives follows read order (domains in the order of ``inputs``), not quality.
* Cluster membership is logged to the scratch dir so stats can say which id was kept for
  which removed ids; the log holds only duplicates, not the corpus.
"""

from __future__ import annotations

import json
import re
import struct
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import xxhash
from datatrove.data import Document, DocumentsPipeline
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup import (
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.dedup.exact_dedup import (
    ExactDedupConfig,
    ExactDedupFilter,
    ExactDedupSignature,
    ExactFindDedups,
)
from datatrove.pipeline.readers import ParquetReader
from datatrove.pipeline.writers import ParquetWriter
from datatrove.utils.hashing import HashConfig
from datatrove.utils.word_tokenizers import WordTokenizer

from nanbeige_data.corpus.build import SCHEMA, check_shards

CODE_VERSION = "1"  # bump when the documents kept for the same input change
AUDIT_SCHEMA: pa.Schema = SCHEMA.append(pa.field("reason", pa.string())).append(
    pa.field("cluster", pa.string())
)
SNIPPET_CHARS = 200


@dataclass(frozen=True)
class DedupConfig:
    ngram: int = 5  # MinHash shingle size (words)
    buckets: int = 14  # LSH bands; more bands catch lower-similarity pairs
    hashes_per_bucket: int = 8  # hashes per band; more hashes demand higher similarity
    workers: int = 1  # datatrove tasks (and processes) for the per-document stages
    executor: str = "local"  # only "local" is wired here (Slurm/Ray need a cluster)
    examples: int = 5  # duplicate clusters of each kind (exact, near) sampled into stats
    tokenizer: str = "regex"  # MinHash words: "regex" (fast, offline) or "spacy" (see above)


@dataclass
class DedupStats:
    documents_in: int = 0
    documents_out: int = 0
    exact_removed: int = 0
    near_removed: int = 0
    clusters: int = 0  # near-duplicate clusters with more than one member
    per_domain: dict[str, dict[str, int]] = field(default_factory=dict)
    cluster_examples: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    empty_skipped: int = 0  # rows with empty text (datatrove's reader drops them)

    def as_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- corpus I/O


class RegexWordTokenizer(WordTokenizer):
    """Words as ``\\w+`` runs: enough on datatrove's simplified text, and nothing to load."""

    def __init__(self) -> None:
        super().__init__("en")
        self._word = re.compile(r"\w+")
        self._sent = re.compile(r"[^.!?\n]+[.!?\n]*")

    def word_tokenize(self, text: str) -> list[str]:
        return self._word.findall(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return [s.strip() for s in self._sent.findall(text) if s.strip()]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in self._sent.finditer(text) if m.group().strip()]


def corpus_shards(folder: Path) -> list[Path]:
    """The ``*.parquet`` shards of a corpus dir, each checked for the corpus columns."""
    return check_shards(folder)


def domain_counts(shards: list[Path]) -> Counter[str]:
    """Rows per value of the ``domain`` column (reads that column only)."""
    counts: Counter[str] = Counter()
    for shard in shards:
        for batch in pq.ParquetFile(shard).iter_batches(columns=["domain"], batch_size=65536):
            counts.update(batch.column(0).to_pylist())
    return counts


def _from_row(self: ParquetReader, data: dict, path: str, id_in_file: int | str) -> dict:
    meta = {"domain": data["domain"], "source": data["source"], "meta": data["meta"]}
    return {"text": data["text"], "id": data["id"], "metadata": meta}


def _to_row(self: ParquetWriter, doc: Document) -> dict:
    m = doc.metadata
    return {
        "id": doc.id,
        "text": doc.text,
        "domain": m["domain"],
        "source": m["source"],
        "meta": m["meta"],
    }


def corpus_reader(folder: Path) -> ParquetReader:
    """Reads the top-level ``*.parquet`` of a corpus dir (never ``removed/``) as Documents."""
    return ParquetReader(str(folder), adapter=_from_row, recursive=False, glob_pattern="*.parquet")


def corpus_writer(folder: Path, filename: str = "part-${rank}.parquet") -> ParquetWriter:
    """Writes Documents as rows with exactly the corpus schema."""
    return ParquetWriter(
        str(folder), output_filename=filename, adapter=_to_row, schema=SCHEMA, compression="zstd"
    )


def text_key(text: str) -> str:
    return "exact:" + xxhash.xxh64_hexdigest(text)


def _exact_audit_row(self: ParquetWriter, doc: Document) -> dict:
    return _to_row(self, doc) | {"reason": "exact_duplicate", "cluster": text_key(doc.text)}


def _near_audit_row(self: ParquetWriter, doc: Document) -> dict:
    cluster = f"minhash:{doc.metadata.get('minhash_cluster_id', -1)}"
    return _to_row(self, doc) | {"reason": "near_duplicate", "cluster": cluster}


def _audit_writer(folder: Path, adapter) -> ParquetWriter:
    return ParquetWriter(str(folder), adapter=adapter, schema=AUDIT_SCHEMA, compression="zstd")


# --------------------------------------------------------------------------- logging steps


def _doc_text(doc: Document) -> str:
    return doc.text


class ExactKeptLog(PipelineStep):
    """After ExactDedupFilter: logs kept documents that had exact copies (key, id, domain)."""

    name = "exact kept log"

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = Path(folder)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> Iterator:
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / f"{rank:05d}.jsonl").open("w", encoding="utf-8") as log:
            for doc in data:
                if doc.metadata.pop("duplicate_count", 0):
                    log.write(_log_line(text_key(doc.text), doc))
                    self.stat_update("logged")
                yield doc


class ClusterMembersLog(PipelineStep):
    """Before MinhashDedupFilter: logs every member of a MinHash cluster (cluster, id, domain).

    Reads ``{rank:06d}.clusters`` written by ``MinhashDedupCluster(save_cluster_id=True)``:
    pairs (document index in this task, cluster id).
    """

    name = "minhash cluster log"

    def __init__(self, clusters_folder: Path, folder: Path) -> None:
        super().__init__()
        self.clusters_folder, self.folder = Path(clusters_folder), Path(folder)

    def _members(self, rank: int) -> dict[int, int]:
        path = self.clusters_folder / f"{rank:06d}.clusters"
        raw = path.read_bytes() if path.exists() else b""
        return dict(struct.iter_unpack("<2I", raw))

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> Iterator:
        members = self._members(rank)
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / f"{rank:05d}.jsonl").open("w", encoding="utf-8") as log:
            for idx, doc in enumerate(data):
                if idx in members:
                    log.write(_log_line(f"minhash:{members[idx]}", doc))
                    self.stat_update("logged")
                yield doc


def _log_line(key: str, doc: Document) -> str:
    row = {
        "key": key,
        "id": doc.id,
        "domain": doc.metadata["domain"],
        "snippet": doc.text[:SNIPPET_CHARS],
    }
    return json.dumps(row, ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------- stages


def run_local(
    pipeline: list, tasks: int, workers: int, logs: Path, executor: str = "local"
) -> None:
    """Run one datatrove stage on a ``LocalPipelineExecutor`` (other executors are not wired)."""
    if executor != "local":
        raise ValueError(f"executor {executor!r} is not wired in this library; use 'local'")
    workers = max(1, min(workers, tasks))
    if workers > 1:
        _preload_forkserver()
    LocalPipelineExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=str(logs)).run()


def _run(pipeline: list, tasks: int, cfg: DedupConfig, logs: Path) -> None:
    run_local(pipeline, tasks, cfg.workers, logs, cfg.executor)


def _preload_forkserver() -> None:
    """Have datatrove's forkserver import this module once, not every pool worker (~2 s each).

    Only takes effect if the forkserver has not started yet in this process; ``__main__`` stays
    in the list (the multiprocessing default).
    """
    import multiprocess

    ctx = multiprocess.get_context("forkserver")
    ctx.set_forkserver_preload(["__main__", __name__])


def _exact_pass(staged: Path, work: Path, out_dir: Path, cfg: DedupConfig) -> Path:
    """Exact dedup of the staged corpus; returns the dir of survivors (in scratch)."""
    exact = ExactDedupConfig(content_getter=_doc_text, hash_config=HashConfig(64, "xxhash"))
    sigs, dups, kept = work / "exact_sigs", work / "exact_dups", work / "exact_kept"
    tasks = cfg.workers
    signature = ExactDedupSignature(str(sigs), config=exact, finder_workers=tasks)
    _run([corpus_reader(staged), signature], tasks, cfg, work / "logs/exact_1")
    _run([ExactFindDedups(str(sigs), str(dups), config=exact)], tasks, cfg, work / "logs/exact_2")
    audit = _audit_writer(out_dir / "removed" / "exact", _exact_audit_row)
    steps = [
        corpus_reader(staged),
        ExactDedupFilter(str(dups), config=exact, exclusion_writer=audit),
        ExactKeptLog(work / "log" / "exact"),
        corpus_writer(kept),
    ]
    _run(steps, tasks, cfg, work / "logs/exact_3")
    return kept


def _minhash_pass(source: Path, work: Path, out_dir: Path, cfg: DedupConfig) -> None:
    """MinHash near-dup removal of ``source``; survivors go to ``out_dir``."""
    tokenizer = RegexWordTokenizer() if cfg.tokenizer == "regex" else "en"
    mh = MinhashConfig(
        n_grams=cfg.ngram,
        num_buckets=cfg.buckets,
        hashes_per_bucket=cfg.hashes_per_bucket,
        hash_config=HashConfig(64, "xxhash"),
    )
    sigs, buckets, clusters = work / "mh_sigs", work / "mh_buckets", work / "mh_clusters"
    tasks = cfg.workers
    signature = MinhashDedupSignature(str(sigs), config=mh, language=tokenizer)
    _run([corpus_reader(source), signature], tasks, cfg, work / "logs/minhash_1")
    _run(
        [MinhashDedupBuckets(str(sigs), str(buckets), config=mh)],
        cfg.buckets,
        cfg,
        work / "logs/minhash_2",
    )
    cluster = MinhashDedupCluster(str(buckets), str(clusters), config=mh, save_cluster_id=True)
    _run([cluster], 1, cfg, work / "logs/minhash_3")
    audit = _audit_writer(out_dir / "removed" / "near", _near_audit_row)
    steps = [
        corpus_reader(source),
        ClusterMembersLog(clusters, work / "log" / "near"),
        MinhashDedupFilter(str(clusters), exclusion_writer=audit, load_cluster_ids=True),
        corpus_writer(out_dir),
    ]
    _run(steps, tasks, cfg, work / "logs/minhash_4")


def _stage_inputs(inputs: dict[str, Path], staged: Path) -> list[Path]:
    """Symlink every domain's shards into one dir, named so read order follows ``inputs``."""
    staged.mkdir(parents=True)
    links = []
    for i, (domain, folder) in enumerate(inputs.items()):
        for shard in corpus_shards(folder):
            link = staged / f"{i:03d}-{domain}-{shard.name}"
            link.symlink_to(shard.resolve())
            links.append(link)
    return links


# --------------------------------------------------------------------------- stats


def _read_log(folder: Path) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        with path.open(encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                groups[row["key"]].append(row)
    return groups


def _audit_rows(folder: Path) -> list[dict]:
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    cols = ["id", "domain", "cluster"]
    return [row for f in files for row in pq.read_table(f, columns=cols).to_pylist()]


def _examples(groups: dict[str, list[dict]], removed: list[dict], kind: str, n: int) -> list:
    """Largest clusters first: the kept id (not in ``removed``), the removed ids, a snippet."""
    removed_ids = {r["id"] for r in removed}
    by_key: dict[str, list[str]] = defaultdict(list)
    for r in removed:
        by_key[r["cluster"]].append(r["id"])
    out = []
    for key, gone in sorted(by_key.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:n]:
        kept = [m for m in groups.get(key, []) if m["id"] not in removed_ids]
        head = kept[0] if kept else {"id": None, "snippet": ""}
        out.append(
            {"kind": kind, "kept": head["id"], "removed": sorted(gone), "snippet": head["snippet"]}
        )
    return out


def _per_domain(
    counts_in: Counter[str], counts_out: Counter[str], exact: list[dict], near: list[dict]
) -> dict[str, dict[str, int]]:
    """Counts by the ``domain`` column; an input domain with no rows appears with zeros."""
    ex, nr = Counter(r["domain"] for r in exact), Counter(r["domain"] for r in near)
    return {
        d: {"in": counts_in[d], "out": counts_out[d], "exact_removed": ex[d], "near_removed": nr[d]}
        for d in sorted(set(counts_in) | set(counts_out))
    }


def _check_config(cfg: DedupConfig) -> None:
    for name in ("ngram", "buckets", "hashes_per_bucket", "workers"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"DedupConfig.{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.tokenizer not in ("regex", "spacy"):
        raise ValueError(f"DedupConfig.tokenizer must be 'regex' or 'spacy', got {cfg.tokenizer!r}")


# --------------------------------------------------------------------------- entry point


def dedup_corpus(
    inputs: dict[str, Path], out_dir: Path, cfg: DedupConfig, work_dir: Path
) -> DedupStats:
    """Exact then MinHash dedup of all domains together into ``out_dir/*.parquet``."""
    start = time.perf_counter()
    _check_config(cfg)
    out_dir, work_dir = Path(out_dir), Path(work_dir)
    if any(out_dir.glob("*.parquet")):
        raise ValueError(f"{out_dir} already holds *.parquet shards; give a fresh directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dedup-", dir=work_dir))  # never resume stale tasks
    links = _stage_inputs(inputs, work / "input")
    counts_in = domain_counts(links)
    counts_in.update({domain: 0 for domain in inputs})  # empty domains are counted as 0
    stats = DedupStats(documents_in=sum(counts_in.values()))
    if stats.documents_in:
        kept = _exact_pass(work / "input", work, out_dir, cfg)
        if any(kept.glob("*.parquet")):  # none when every text was empty
            _minhash_pass(kept, work, out_dir, cfg)
    _fill_stats(stats, counts_in, out_dir, work, cfg)
    stats.seconds = round(time.perf_counter() - start, 3)
    return stats


def _fill_stats(
    stats: DedupStats, counts_in: Counter[str], out_dir: Path, work: Path, cfg: DedupConfig
) -> None:
    counts_out = domain_counts(sorted(out_dir.glob("*.parquet")))
    exact = _audit_rows(out_dir / "removed" / "exact")
    near = _audit_rows(out_dir / "removed" / "near")
    stats.documents_out = sum(counts_out.values())
    stats.exact_removed, stats.near_removed = len(exact), len(near)
    stats.empty_skipped = stats.documents_in - stats.documents_out - len(exact) - len(near)
    if stats.empty_skipped < 0:
        raise RuntimeError(f"dedup accounting broke: {stats.as_dict()}")
    if stats.documents_in and not stats.documents_out:
        raise RuntimeError(
            f"dedup removed every one of {stats.documents_in} documents (out_dir {out_dir})"
        )
    near_groups = _read_log(work / "log" / "near")
    stats.clusters = len(near_groups)
    stats.per_domain = _per_domain(counts_in, counts_out, exact, near)
    stats.cluster_examples = _examples(
        _read_log(work / "log" / "exact"), exact, "exact", cfg.examples
    ) + _examples(near_groups, near, "near", cfg.examples)

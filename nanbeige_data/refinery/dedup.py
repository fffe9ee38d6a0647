"""Remove exact and near-duplicate documents across all domains with datatrove's own stages.

The domains' shards are staged side by side (symlinks in the work dir) and read as one
corpus, so a web page copied into the papers domain is caught. Two passes run on the recipe's
datatrove executor (``refinery.execution``: local, Slurm or Ray; ``docs.run_stages``), stage
by stage, as datatrove lays them out:

1. exact: ``ExactDedupSignature`` (xxhash64 of the text) -> ``ExactFindDedups`` ->
   ``ExactDedupFilter``; the first copy read is kept.
2. near: ``MinhashDedupSignature`` -> ``MinhashDedupBuckets`` -> ``MinhashDedupCluster`` ->
   ``MinhashDedupFilter`` on word n-gram shingles (LSH: ``buckets`` bands of
   ``hashes_per_bucket`` hashes); one document per cluster is kept.

Removed documents go to ``out_dir/removed/{exact,near}/`` (the corpus columns plus ``reason``
and ``cluster``) for audit; the kept ones to ``out_dir/part-RRRRR.parquet`` (one per task) in
the corpus schema. ``dedup_corpus`` returns a Report (counts, per-domain table, clusters).

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
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import xxhash
from datatrove.data import Document, DocumentsPipeline
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
from datatrove.pipeline.writers import ParquetWriter
from datatrove.utils.hashing import HashConfig
from datatrove.utils.word_tokenizers import WordTokenizer

from nanbeige_data.corpus.build import SCHEMA
from nanbeige_data.refinery.config import DedupConfig, ExecutionConfig
from nanbeige_data.refinery.docs import (
    CorpusReader,
    Stage,
    corpus_shards,
    corpus_writer,
    run_stages,
    work_dir,
    write_row,
)
from nanbeige_data.report import Report

CODE_VERSION = "1"  # bump when the documents kept for the same input change
AUDIT_SCHEMA: pa.Schema = SCHEMA.append(pa.field("reason", pa.string())).append(
    pa.field("cluster", pa.string())
)
SNIPPET_CHARS = 200
LOCAL = ExecutionConfig()  # the default execution: local processes


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
    executor: str = "local"

    def as_dict(self) -> dict:
        return asdict(self)

    def report(self) -> Report:
        counts = ("documents_in", "documents_out", "exact_removed", "near_removed", "clusters")
        values = {k: getattr(self, k) for k in counts}
        values["documents"] = values.pop("documents_out")
        return Report(
            counts=values,
            json={"per_domain": self.per_domain, "cluster_examples": self.cluster_examples},
            extra={"stats": self.as_dict()},
        )


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


def domain_counts(shards: list[Path]) -> Counter[str]:
    """Rows per value of the ``domain`` column (reads that column only)."""
    counts: Counter[str] = Counter()
    for shard in shards:
        for batch in pq.ParquetFile(shard).iter_batches(columns=["domain"], batch_size=65536):
            counts.update(batch.column(0).to_pylist())
    return counts


def text_key(text: str) -> str:
    return "exact:" + xxhash.xxh64_hexdigest(text)


def _exact_audit_row(self: ParquetWriter, doc: Document) -> dict:
    return write_row(self, doc) | {"reason": "exact_duplicate", "cluster": text_key(doc.text)}


def _near_audit_row(self: ParquetWriter, doc: Document) -> dict:
    cluster = f"minhash:{doc.metadata.get('minhash_cluster_id', -1)}"
    return write_row(self, doc) | {"reason": "near_duplicate", "cluster": cluster}


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

_HASH = HashConfig(64, "xxhash")


def _exact_stages(staged: Path, work: Path, out_dir: Path, tasks: int) -> list[Stage]:
    """Exact dedup of the staged corpus; survivors go to ``work/exact_kept``."""
    exact = ExactDedupConfig(content_getter=_doc_text, hash_config=_HASH)
    sigs, dups = str(work / "exact_sigs"), str(work / "exact_dups")
    audit = _audit_writer(out_dir / "removed" / "exact", _exact_audit_row)
    signature = ExactDedupSignature(sigs, config=exact, finder_workers=tasks)
    return [
        Stage("exact_1", [CorpusReader(staged), signature], tasks),
        Stage("exact_2", [ExactFindDedups(sigs, dups, config=exact)], tasks),
        Stage(
            "exact_3",
            [
                CorpusReader(staged),
                ExactDedupFilter(dups, config=exact, exclusion_writer=audit),
                ExactKeptLog(work / "log" / "exact"),
                corpus_writer(work / "exact_kept"),
            ],
            tasks,
        ),
    ]


def _minhash_stages(source: Path, work: Path, out_dir: Path, cfg: DedupConfig, tasks: int):
    """MinHash near-dup removal of ``source``; survivors go to ``out_dir``."""
    tokenizer = RegexWordTokenizer() if cfg.tokenizer == "regex" else "en"
    mh = MinhashConfig(
        n_grams=cfg.ngram,
        num_buckets=cfg.buckets,
        hashes_per_bucket=cfg.hashes_per_bucket,
        hash_config=_HASH,
    )
    sigs, buckets, clusters = work / "mh_sigs", str(work / "mh_buckets"), work / "mh_clusters"
    signature = MinhashDedupSignature(str(sigs), config=mh, language=tokenizer)
    cluster = MinhashDedupCluster(buckets, str(clusters), config=mh, save_cluster_id=True)
    audit = _audit_writer(out_dir / "removed" / "near", _near_audit_row)
    return [
        Stage("minhash_1", [CorpusReader(source), signature], tasks),
        Stage("minhash_2", [MinhashDedupBuckets(str(sigs), buckets, config=mh)], cfg.buckets),
        Stage("minhash_3", [cluster], 1),
        Stage(
            "minhash_4",
            [
                CorpusReader(source),
                ClusterMembersLog(clusters, work / "log" / "near"),
                MinhashDedupFilter(str(clusters), exclusion_writer=audit, load_cluster_ids=True),
                corpus_writer(out_dir),
            ],
            tasks,
        ),
    ]


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


# --------------------------------------------------------------------------- entry point


def dedup_corpus(
    inputs: dict[str, Path],
    out_dir: Path,
    cfg: DedupConfig,
    work: Path,
    execution: ExecutionConfig = LOCAL,
) -> Report:
    """Exact then MinHash dedup of all domains together (``inputs``: domain -> corpus dir, read
    in that order) into ``out_dir/*.parquet``; datatrove's files go to a fresh folder under
    ``work`` (or ``execution.work_dir``)."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    if any(out_dir.glob("*.parquet")):
        raise ValueError(f"{out_dir} already holds *.parquet shards; give a fresh directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = work_dir(execution, work, "dedup-")
    links = _stage_inputs(inputs, scratch / "input")
    counts_in = domain_counts(links)
    counts_in.update(dict.fromkeys(inputs, 0))  # empty domains are counted as 0
    stats = DedupStats(documents_in=sum(counts_in.values()), executor=execution.executor)
    tasks, logs = execution.workers, scratch / "logs"
    if stats.documents_in:
        exact = _exact_stages(scratch / "input", scratch, out_dir, tasks)
        run_stages(exact, execution, logs, "dedup")
        if any((scratch / "exact_kept").glob("*.parquet")):  # none when every text was empty
            near = _minhash_stages(scratch / "exact_kept", scratch, out_dir, cfg, tasks)
            run_stages(near, execution, logs, "dedup")
    _fill_stats(stats, counts_in, out_dir, scratch, cfg)
    stats.seconds = round(time.perf_counter() - start, 3)
    return stats.report()


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

"""Cross-domain exact + MinHash dedup on the embedded corpus with injected copies."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanbeige_data.corpus.build import SCHEMA, CorpusError, build_domain
from nanbeige_data.corpus.config import DomainSource
from nanbeige_data.refinery.config import DedupConfig, ExecutionConfig
from nanbeige_data.refinery.dedup import DedupStats
from nanbeige_data.refinery.dedup import dedup_corpus as dedup_report

BYTES = 200_000
ONE = ExecutionConfig(workers=1)


def dedup_corpus(inputs, out, cfg, work, execution=ONE) -> DedupStats:
    """dedup_corpus, its Report checked against its stats (what the asset's metadata shows)."""
    report = dedup_report(inputs, out, cfg, work, execution)
    stats = DedupStats(**report.extra["stats"])
    assert report.counts == {
        "documents_in": stats.documents_in,
        "documents": stats.documents_out,
        "exact_removed": stats.exact_removed,
        "near_removed": stats.near_removed,
        "clusters": stats.clusters,
    }
    assert report.json == {
        "per_domain": stats.per_domain,
        "cluster_examples": stats.cluster_examples,
    }
    return stats


def _rows(folder: Path) -> list[dict]:
    return [r for f in sorted(folder.glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def _ids(folder: Path) -> set[str]:
    return {r["id"] for r in _rows(folder)}


def _near_copy(text: str) -> str:
    """Three words changed in a long text."""
    words = text.split(" ")
    for i in (len(words) // 4, len(words) // 2, 3 * len(words) // 4):
        words[i] = "zebra"
    return " ".join(words)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("raw")
    dirs = {}
    for domain in ("web", "papers"):
        dirs[domain] = root / domain
        dirs[domain].mkdir()
        build_domain(
            domain,
            DomainSource(max_bytes=BYTES),
            out_dir=dirs[domain],
        )
    return dirs


@pytest.fixture(scope="module")
def injected(corpus, tmp_path_factory) -> tuple[dict[str, Path], dict[str, str]]:
    """papers + 3 exact and 3 near copies of web docs; returns inputs and copy id -> original."""
    web = _rows(corpus["web"])
    long_docs = sorted((r for r in web if len(r["text"].split()) > 400), key=lambda r: r["id"])
    assert len(long_docs) >= 6, "the embedded web sample should hold long articles"
    papers = tmp_path_factory.mktemp("papers_injected")
    for shard in corpus["papers"].glob("*.parquet"):
        (papers / shard.name).symlink_to(shard)
    copies, origin = [], {}
    for i, doc in enumerate(long_docs[:3]):
        copies.append({**doc, "id": f"papers/injected/exact-{i}", "domain": "papers"})
    for i, doc in enumerate(long_docs[3:6]):
        text = _near_copy(doc["text"])
        copies.append({**doc, "id": f"papers/injected/near-{i}", "domain": "papers", "text": text})
    for copy, doc in zip(copies, long_docs[:6], strict=True):
        origin[copy["id"]] = doc["id"]
    pq.write_table(pa.Table.from_pylist(copies, schema=SCHEMA), papers / "zz-injected.parquet")
    return {"web": corpus["web"], "papers": papers}, origin


@pytest.fixture(scope="module")
def clean_run(corpus, tmp_path_factory) -> tuple[DedupStats, Path]:
    out = tmp_path_factory.mktemp("clean") / "out"
    stats = dedup_corpus(corpus, out, DedupConfig(examples=50), out.parent / "work")
    return stats, out


@pytest.fixture(scope="module")
def dirty_run(injected, tmp_path_factory) -> tuple[DedupStats, Path]:
    out = tmp_path_factory.mktemp("dirty") / "out"
    stats = dedup_corpus(injected[0], out, DedupConfig(examples=50), out.parent / "work")
    return stats, out


def test_injected_copies_removed_and_originals_kept(dirty_run, injected):
    stats, out = dirty_run
    origin = injected[1]
    kept = _ids(out)
    exact_gone = _ids(out / "removed" / "exact")
    near_gone = _ids(out / "removed" / "near")
    assert stats.exact_removed >= 3
    assert {i for i in origin if "exact" in i} <= exact_gone
    assert {i for i in origin if "near" in i} <= near_gone
    assert set(origin.values()) <= kept
    assert not kept & set(origin)
    assert len(kept) == stats.documents_out


def test_only_the_injected_copies_are_new_removals(clean_run, dirty_run, injected):
    (clean, clean_out), (dirty, dirty_out) = clean_run, dirty_run
    gone = _ids(dirty_out / "removed" / "exact") | _ids(dirty_out / "removed" / "near")
    clean_gone = _ids(clean_out / "removed" / "exact") | _ids(clean_out / "removed" / "near")
    assert gone == clean_gone | set(injected[1])
    assert dirty.documents_in == clean.documents_in + 6
    assert dirty.documents_out == clean.documents_out


def test_cluster_examples_name_kept_and_removed_ids(dirty_run, injected):
    stats, _ = dirty_run
    pairs = {(r, e["kept"]) for e in stats.cluster_examples for r in e["removed"]}
    for copy, original in injected[1].items():
        assert (copy, original) in pairs
    example = next(e for e in stats.cluster_examples if e["kept"] in injected[1].values())
    assert example["snippet"] and len(example["snippet"]) <= 200
    assert stats.clusters >= 3


def test_counts_add_up_per_domain(dirty_run):
    stats, _ = dirty_run
    assert set(stats.per_domain) == {"web", "papers"}
    for counts in stats.per_domain.values():
        assert counts["in"] == counts["out"] + counts["exact_removed"] + counts["near_removed"]
    totals = {k: sum(c[k] for c in stats.per_domain.values()) for k in ("in", "out")}
    assert totals == {"in": stats.documents_in, "out": stats.documents_out}
    assert stats.per_domain["papers"]["exact_removed"] == 3  # copies sit in papers
    assert stats.as_dict()["per_domain"] == stats.per_domain


def test_output_has_corpus_schema_and_nothing_else(dirty_run, injected):
    _, out = dirty_run
    shards = sorted(out.glob("*.parquet"))
    assert shards
    for shard in shards:
        assert pq.read_schema(shard).remove_metadata() == SCHEMA
    assert {p.name for p in out.iterdir()} - {s.name for s in shards} == {"removed"}
    rows = _rows(out)
    assert len({r["id"] for r in rows}) == len(rows)
    originals = {r["id"]: r for r in _rows(injected[0]["web"]) + _rows(injected[0]["papers"])}
    assert all(r == originals[r["id"]] for r in rows)  # kept rows pass through unchanged
    assert {r["domain"] for r in rows} == {"web", "papers"}
    audit = pq.read_table(next((out / "removed" / "near").glob("*.parquet")))
    assert set(audit.column("reason").to_pylist()) == {"near_duplicate"}


def test_clean_corpus_loses_almost_nothing(clean_run):
    stats, _ = clean_run
    assert stats.exact_removed == 0  # build_domain already drops exact repeats
    assert stats.documents_out >= 0.97 * stats.documents_in
    assert stats.documents_out + stats.near_removed == stats.documents_in


def test_two_workers_match_one(injected, dirty_run, tmp_path):
    stats, out = dirty_run
    two = dedup_corpus(
        injected[0], tmp_path / "out", DedupConfig(), tmp_path / "work", ExecutionConfig(workers=2)
    )
    assert (two.documents_out, two.exact_removed, two.near_removed) == (
        stats.documents_out,
        stats.exact_removed,
        stats.near_removed,
    )
    assert _ids(tmp_path / "out") == _ids(out)


def test_empty_domain_dir_is_counted_as_zero(corpus, tmp_path):
    empty = tmp_path / "code"
    empty.mkdir()
    inputs = {"web": corpus["web"], "code": empty}
    stats = dedup_corpus(inputs, tmp_path / "out", DedupConfig(), tmp_path / "work")
    assert stats.per_domain["code"] == {"in": 0, "out": 0, "exact_removed": 0, "near_removed": 0}
    assert stats.documents_out > 0
    none = dedup_corpus({"code": empty}, tmp_path / "out2", DedupConfig(), tmp_path / "work")
    assert (none.documents_in, none.documents_out) == (0, 0)


def test_bad_input_names_the_file(corpus, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    pq.write_table(pa.table({"id": ["a"], "text": ["x"]}), bad / "part-00000.parquet")
    with pytest.raises(CorpusError, match=r"part-00000\.parquet.*missing column 'domain'"):
        dedup_corpus({"web": bad}, tmp_path / "out", DedupConfig(), tmp_path / "work")
    with pytest.raises(CorpusError, match="not found"):
        dedup_corpus({"web": tmp_path / "nope"}, tmp_path / "o2", DedupConfig(), tmp_path / "w")
    with pytest.raises(ValueError, match="ngram"):  # the section is validated when it is made
        DedupConfig(ngram=0)

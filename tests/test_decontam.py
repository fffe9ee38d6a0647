"""Decontamination against the eval sets shipped by installed packages, on real corpus data."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datatrove.data import Document

from nanbeige_data.corpus.build import SCHEMA, CorpusError, build_domain
from nanbeige_data.corpus.config import DomainSource
from nanbeige_data.refinery.config import DecontaminationConfig as DecontamConfig
from nanbeige_data.refinery.decontam import (
    EVALS_SETS,
    GYM_TASKS,
    DecontaminationFilter,
    DecontamStats,
    EvalItem,
    build_ngram_index,
    eval_items,
    residual_overlaps,
)
from nanbeige_data.refinery.decontam import decontaminate as decontam_report


def decontaminate(input_dir, out_dir, cfg, work, items=None) -> DecontamStats:
    """decontaminate, its Report checked against its stats (what the asset's metadata shows)."""
    report = decontam_report(input_dir, out_dir, cfg, work, items=items)
    stats = DecontamStats(**report.extra["stats"])
    assert report.counts == {
        "documents_in": stats.documents_in,
        "documents": stats.documents_out,
        "removed": stats.removed,
        "index_ngrams": stats.index_ngrams,
    }
    assert report.json == {"eval_items": stats.benchmarks, "examples": stats.examples}
    table = report.markdown["removed_by_benchmark"]
    assert all(f"| {b} | {n} |" in table for b, n in stats.per_benchmark.items())
    return stats


def _rows(folder: Path) -> list[dict]:
    return [r for f in sorted(folder.glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


@pytest.fixture(scope="module")
def items() -> list[EvalItem]:
    return list(eval_items())


@pytest.fixture(scope="module")
def index(items):
    return build_ngram_index(items, 13)


@pytest.fixture(scope="module")
def web(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("web")
    build_domain(
        "web",
        DomainSource(max_bytes=150_000),
        out_dir=out,
    )
    return out


@pytest.fixture(scope="module")
def pasted(web, items, tmp_path_factory) -> tuple[Path, dict[str, tuple[str, str]]]:
    """The web sample plus two docs with an eval problem pasted inside; id -> (bench, item)."""
    folder = tmp_path_factory.mktemp("pasted")
    for shard in web.glob("*.parquet"):
        (folder / shard.name).symlink_to(shard)
    rows = _rows(web)
    humaneval = next(i for i in items if i.item_id == "HumanEval/0")
    champ = next(i for i in items if i.benchmark == "champ" and len(i.text.split()) > 40)
    pastes = {
        "web/pasted/humaneval": (humaneval, humaneval.text[:600]),
        "web/pasted/champ": (champ, champ.text.split("\n")[0]),
    }
    docs = []
    for (doc_id, (_, snippet)), host in zip(pastes.items(), rows, strict=False):
        half = len(host["text"]) // 2
        text = f"{host['text'][:half]}\n{snippet}\n{host['text'][half:]}"
        docs.append({**host, "id": doc_id, "text": text})
    pq.write_table(pa.Table.from_pylist(docs, schema=SCHEMA), folder / "zz-pasted.parquet")
    return folder, {k: (v[0].benchmark, v[0].item_id) for k, v in pastes.items()}


@pytest.fixture(scope="module")
def pasted_run(pasted, items, tmp_path_factory):
    out = tmp_path_factory.mktemp("decontam") / "out"
    stats = decontaminate(pasted[0], out, DecontamConfig(), out.parent / "work", items=items)
    return stats, out


def test_every_benchmark_is_loaded(items, index):
    per = {}
    for item in items:
        per[item.benchmark] = per.get(item.benchmark, 0) + 1
    assert per["humaneval"] == 164
    assert per["champ"] == 270
    expected = {f"evals/{n}" for n, _ in EVALS_SETS} | {f"reasoning_gym/{t}" for t in GYM_TASKS}
    assert expected <= set(per)
    assert all(count > 0 for count in per.values())
    assert all(item.text.strip() for item in items)
    assert len(index) > 50_000  # HumanEval + CHAMP alone hold tens of thousands of 13-grams


def test_filter_gives_benchmark_reason_for_one_document(items, index):
    item = next(i for i in items if i.item_id == "HumanEval/3")
    f = DecontaminationFilter(index)
    doc = Document(text=f"Some preamble words here.\n{item.text}", id="x", metadata={})
    keep, reason = f.filter(doc)
    assert (keep, reason) == (False, "contaminated:humaneval")
    assert doc.metadata["decontam"]["item_id"] == "HumanEval/3"
    clean = Document(text="The river rises in the hills and runs to the sea. " * 20, id="y")
    assert f.filter(clean) is True


def test_pasted_docs_removed_with_benchmark_and_item(pasted_run, pasted):
    stats, out = pasted_run
    removed = {r["id"]: r for r in _rows(out / "removed")}
    for doc_id, (benchmark, item_id) in pasted[1].items():
        row = removed[doc_id]
        assert row["reason"] == f"contaminated:{benchmark}"
        assert (row["benchmark"], row["item_id"]) == (benchmark, item_id)
        assert len(row["ngram"].split()) == 13
    assert stats.per_benchmark.get("humaneval", 0) >= 1 and stats.per_benchmark.get("champ", 0) >= 1
    assert {e["id"] for e in stats.examples} >= set(pasted[1])


def test_clean_docs_stay_with_schema(pasted_run, web):
    stats, out = pasted_run
    kept = _rows(out)
    assert {r["id"] for r in _rows(web)} <= {r["id"] for r in kept}
    assert stats.documents_in == stats.documents_out + stats.removed
    for shard in out.glob("*.parquet"):
        assert pq.read_schema(shard).remove_metadata() == SCHEMA
    assert stats.benchmarks["humaneval"] == 164 and stats.index_ngrams > 0


def test_residual_overlaps_zero_after(pasted_run, pasted, index):
    _, out = pasted_run
    assert residual_overlaps(pasted[0], index) > 10
    assert residual_overlaps(out, index) == 0


def test_short_items_whole_text_rule(tmp_path):
    items = [
        EvalItem("toy", "long9", "alpha beta gamma delta epsilon zeta eta theta iota"),
        EvalItem("toy", "short5", "one two three four five"),
    ]
    index = build_ngram_index(items, 13)
    assert index.short_lengths == (9,) and len(index) == 1
    hit = index.match("x ALPHA, beta gamma delta epsilon zeta eta theta iota! y")
    assert hit is not None and hit.item_id == "long9"
    assert index.match("one two three four five six seven") is None
    assert index.match("alpha beta gamma delta epsilon zeta eta theta", min_overlaps=1) is None


def test_min_overlaps_keeps_a_single_shared_ngram(items, index):
    item = next(i for i in items if i.item_id == "HumanEval/0")
    one_gram = " ".join(item.text.split()[:13])
    assert index.match(one_gram, min_overlaps=1) is not None
    assert index.match(one_gram, min_overlaps=5) is None


def test_embedded_corpus_loses_few_docs(items, tmp_path):
    total_in = total_removed = 0
    for domain in ("code", "papers"):
        raw = tmp_path / domain
        raw.mkdir()
        build_domain(
            domain,
            DomainSource(max_bytes=300_000),
            out_dir=raw,
        )
        stats = decontaminate(
            raw, tmp_path / f"{domain}-out", DecontamConfig(), tmp_path, items=items
        )
        total_in, total_removed = total_in + stats.documents_in, total_removed + stats.removed
    assert total_in > 100
    assert total_removed <= 0.01 * total_in


def test_empty_and_bad_input(items, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    stats = decontaminate(empty, tmp_path / "out", DecontamConfig(), tmp_path, items=items[:5])
    assert (stats.documents_in, stats.documents_out, stats.removed) == (0, 0, 0)
    with pytest.raises(CorpusError, match="not found"):
        decontaminate(tmp_path / "nope", tmp_path / "o2", DecontamConfig(), tmp_path, items=[])
    bad = tmp_path / "bad"
    bad.mkdir()
    pq.write_table(pa.table({"id": ["a"], "text": [1]}), bad / "part-00000.parquet")
    with pytest.raises(CorpusError, match=r"part-00000\.parquet"):
        decontaminate(bad, tmp_path / "o3", DecontamConfig(), tmp_path, items=[])

"""Tests for nanbeige_data.retrieval on real embedded-corpus documents with the packaged MiniLM."""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanbeige_data.corpus.build import DOMAINS, SCHEMA, embedded_documents
from nanbeige_data.models import resolve_dtype
from nanbeige_data.recipe import RetrievalConfig
from nanbeige_data.refinery.retrieval import (
    DIM,
    EXEMPLAR_SETS,
    INDEX_DIR,
    SCORES_FILE,
    TABLE,
    build_index,
    exemplar_texts,
    percentile_scores,
    score_documents,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PER_DOMAIN = 50
CFG = RetrievalConfig(top_k=20)


def write_shard(directory: Path, rows: list[dict]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "part-00000.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path)
    return path


def row(doc_id: str, text: str, domain: str, source: str = "test") -> dict:
    return {"id": doc_id, "text": text, "domain": domain, "source": source, "meta": "{}"}


@pytest.fixture(scope="module")
def exemplars() -> list[tuple[str, str]]:
    return exemplar_texts(("reasoning_gym", "britannica"), limit=16, seed=0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, exemplars) -> dict:
    """50 real documents per domain, one empty document and one near-copy of an exemplar."""
    root = tmp_path_factory.mktemp("corpus")
    docs: dict[str, list[dict]] = {}
    for domain in DOMAINS:
        stream = embedded_documents(
            domain, max_bytes=120_000, target_doc_chars=1500, min_doc_chars=200
        )
        docs[domain] = [d for d, _ in zip(stream, range(PER_DOMAIN), strict=False)]
    problem = exemplars[0][1]  # a reasoning_gym word problem with its worked solution
    near = problem.replace("Give the result as your final answer.", "What is the answer?")
    docs["papers"].append(row("papers/test/near-exemplar", near, "papers"))
    docs["web"].append(row("web/test/empty", "   \n", "web"))
    dirs = [write_shard(root / d, docs[d]).parent for d in DOMAINS]
    return {"dirs": dirs, "docs": docs, "near": near}


@pytest.fixture(scope="module")
def index(tmp_path_factory, corpus) -> dict:
    db = tmp_path_factory.mktemp("index")
    lines: list[str] = []
    report = build_index(corpus["dirs"], db, CFG, progress=lines.append)
    table = lancedb.connect(db / INDEX_DIR).open_table(TABLE)
    rows = table.to_arrow().to_pylist()
    return {"db": db, "report": report, "rows": rows, "table": table, "lines": lines}


@pytest.fixture(scope="module")
def scores(tmp_path_factory, index, exemplars) -> dict:
    out = tmp_path_factory.mktemp("scores")
    report = score_documents(index["db"], out, CFG, seed=0, exemplars=exemplars)
    return {"report": report, "table": pq.read_table(out / SCORES_FILE)}


def test_exemplar_sets_are_real_named_and_seeded() -> None:
    for name in EXEMPLAR_SETS:
        got = exemplar_texts([name], limit=6, seed=3)
        assert len(got) == 6 and {n for n, _ in got} == {name}
        assert all(len(text) >= 100 for _, text in got)
        assert len({text for _, text in got}) == 6
        assert exemplar_texts([name], limit=6, seed=3) == got
        assert exemplar_texts([name], limit=6, seed=4) != got
    rg = [t for _, t in exemplar_texts(["reasoning_gym"], limit=8, seed=0)]
    assert "####" in rg[0]  # gsm_symbolic comes with its worked solution
    assert all("Answer:" in t or "####" in t for t in rg)
    brit = exemplar_texts(["britannica"], limit=64, seed=0)
    assert sum("Shakespeare" in t for _, t in brit) >= 10
    both = exemplar_texts(["britannica", "python_docs"], limit=5)
    assert [n for n, _ in both] == ["britannica"] * 5 + ["python_docs"] * 5
    with pytest.raises(ValueError, match="unknown exemplar set"):
        exemplar_texts(["mmlu"])


def test_index_holds_every_nonempty_document(index, corpus) -> None:
    report, rows = index["report"], index["rows"]
    stats = report.extra["stats"]
    want = {d: len([x for x in corpus["docs"][d] if x["text"].strip()]) for d in DOMAINS}
    assert report.counts["documents"] == len(rows) == sum(want.values()) == 4 * PER_DOMAIN + 1
    assert stats["skipped_empty"] == 1 and stats["per_domain"] == want
    assert stats["fts"] and stats["vector_index"] is None and stats["dim"] == DIM
    assert report.values["embeddings_per_s"] > 0 and stats["embed_seconds"] > 0
    assert report.values["dtype"] == report.extra["dtype"] == resolve_dtype("auto")
    assert index["lines"][-1].startswith(f"embedding: {len(rows) + 1}/{len(rows) + 1} rows, ")
    assert all(len(r["text"]) <= CFG.embed_max_chars for r in rows)
    norms = np.linalg.norm(np.array([r["vector"] for r in rows]), axis=1)
    assert np.allclose(norms, 1.0, atol=1e-3)
    by_id = {r["id"]: r for r in rows}
    some = corpus["docs"]["code"][3]
    assert by_id[some["id"]]["text"] == some["text"][: CFG.embed_max_chars]
    assert by_id[some["id"]]["domain"] == "code" and by_id[some["id"]]["source"] == some["source"]


def test_full_text_search_finds_a_rare_word(index) -> None:
    rows = index["rows"]
    vocab = [set(re.findall(r"[A-Za-z]{6,}", r["text"])) for r in rows]
    stems = Counter(w[:6].lower() for words in vocab for w in words)
    words = [  # long words whose first 6 letters occur in no other document (stemming-proof)
        (w, r["id"])
        for r, ws in zip(rows, vocab, strict=True)
        for w in sorted(ws)
        if len(w) >= 9 and stems[w[:6].lower()] == 1
    ]
    assert len(words) > 20
    for word, doc_id in words[:: len(words) // 5][:5]:
        found = index["table"].search(word, query_type="fts").limit(3).to_arrow()
        assert found["id"].to_pylist()[:1] == [doc_id], word


def test_vector_search_returns_the_document_itself(index) -> None:
    table, rows = index["table"], index["rows"]
    texts = Counter(r["text"] for r in rows)
    picked = [r for r in rows[::17] if texts[r["text"]] == 1]
    assert len(picked) >= 8
    for r in picked:
        top = table.search(r["vector"]).distance_type("cosine").limit(2).to_arrow()
        assert top["id"][0].as_py() == r["id"]
        assert top["_distance"][0].as_py() < 1e-3 < top["_distance"][1].as_py()


def test_scores_cover_every_document_in_range(scores, index, exemplars) -> None:
    table, report = scores["table"], scores["report"]
    stats = report.extra["stats"]
    assert table.schema.names == [
        "id",
        "domain",
        "retrieval_raw",
        "retrieval_score",
        "best_exemplar",
    ]
    assert table.num_rows == report.counts["documents"] == len(index["rows"])
    assert sorted(table["id"].to_pylist()) == sorted(r["id"] for r in index["rows"])
    for name in ("id", "domain", "retrieval_raw", "retrieval_score"):
        assert table[name].null_count == 0
    raw = np.array(table["retrieval_raw"].to_pylist())
    score = np.array(table["retrieval_score"].to_pylist())
    best = table["best_exemplar"].to_pylist()
    assert score.min() >= 0 and score.max() == pytest.approx(9.0)
    hit = raw > 0
    assert report.counts["hit_documents"] == int(hit.sum()) and 0 < hit.sum() < len(raw)
    assert np.all(score[~hit] == 0) and all(
        b is None for b, h in zip(best, hit, strict=True) if not h
    )
    assert {b for b, h in zip(best, hit, strict=True) if h} == {"reasoning_gym", "britannica"}
    order = np.argsort(raw, kind="stable")
    assert np.all(np.diff(score[order]) >= -1e-9)  # more raw never scores lower
    assert raw.max() <= len(exemplars) / (CFG.rrf_k + 1) + 1e-9
    assert report.counts["exemplars"] == len(exemplars) and stats["queries_per_s"] > 0
    assert set(stats["score_quantiles"]) == {"p10", "p25", "p50", "p75", "p90", "p99"}
    assert sum(stats["best_exemplar"].values()) == stats["hit_documents"]
    assert report.values["dtype"] == resolve_dtype("auto")


def test_documents_close_to_exemplars_score_at_the_top(scores, index, exemplars, tmp_path) -> None:
    table = scores["table"].to_pylist()
    top = max(table, key=lambda r: r["retrieval_raw"])
    assert top["id"].startswith("books/britannica_1911/")  # the exemplar text itself
    near = next(r for r in table if r["id"] == "papers/test/near-exemplar")
    assert near["retrieval_score"] >= 8.0 and near["best_exemplar"] == "reasoning_gym"
    code = [r["retrieval_raw"] for r in table if r["domain"] == "code"]
    assert near["retrieval_raw"] > max(code)  # a math word problem, not a Python file
    reasoning = [e for e in exemplars if e[0] == "reasoning_gym"]
    stats = score_documents(index["db"], tmp_path, CFG, 0, reasoning).extra["stats"]
    alone = pq.read_table(tmp_path / SCORES_FILE).to_pylist()
    near = next(r for r in alone if r["id"] == "papers/test/near-exemplar")
    assert near["retrieval_score"] == 9.0 and stats["best_exemplar"] == {
        "reasoning_gym": stats["hit_documents"]
    }


def test_percentile_scores_handle_ties_and_unhit() -> None:
    hit = np.sort(np.array([0.1, 0.2, 0.2, 0.5]))
    got = percentile_scores(np.array([0.0, 0.1, 0.2, 0.5]), hit, total=9)
    # 5 unhit documents; 0.1 is rank 5 (0-based) of 9, the tied 0.2s average 6.5, 0.5 is last
    assert got.tolist() == pytest.approx([0.0, 9 * 5 / 8, 9 * 6.5 / 8, 9.0])


def test_large_table_gets_a_vector_index(tmp_path, corpus, exemplars) -> None:
    cfg = RetrievalConfig(top_k=10, vector_index_min_rows=40)
    report = build_index(corpus["dirs"][1:2], tmp_path / "db", cfg)  # books only
    assert report.extra["stats"]["vector_index"] == "IVF_FLAT"
    assert report.counts["documents"] == PER_DOMAIN
    table = lancedb.connect(tmp_path / "db" / INDEX_DIR).open_table(TABLE)
    assert {i.index_type for i in table.list_indices()} == {"FTS", "IvfFlat"}
    (tmp_path / "out").mkdir()
    scored = score_documents(tmp_path / "db", tmp_path / "out", cfg, 0, exemplars[-4:])
    assert scored.counts["documents"] == PER_DOMAIN and scored.counts["hit_documents"] >= 10


def test_empty_inputs_fail_clearly(tmp_path, exemplars) -> None:
    with pytest.raises(ValueError, match="nothing: corpus directory not found"):
        build_index([tmp_path / "nothing"], tmp_path / "db0", CFG)
    (tmp_path / "none").mkdir()
    with pytest.raises(ValueError, match="no \\*.parquet corpus shards"):
        build_index([tmp_path / "none"], tmp_path / "db0", CFG)
    blank = write_shard(tmp_path / "blank", [row("a", "", "web"), row("b", " \n\t", "web")])
    with pytest.raises(ValueError, match="2 empty-text documents skipped"):
        build_index([blank.parent], tmp_path / "db1", CFG)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "part-00000.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match="part-00000.parquet: unreadable Parquet"):
        build_index([blank.parent, tmp_path / "bad"], tmp_path / "db2", CFG)
    with pytest.raises(ValueError, match="no exemplars"):
        score_documents(tmp_path / "db1", tmp_path, CFG, 0, [])
    with pytest.raises(FileNotFoundError, match="no retrieval index at"):
        score_documents(tmp_path / "nothing", tmp_path, CFG, 0, exemplars[:1])

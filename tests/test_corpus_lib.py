"""Tests for nanbeige_data.corpus on the real embedded texts and real user files (no mocks)."""

from __future__ import annotations

import gzip
import json
import statistics
import sysconfig
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanbeige_data.corpus.build import (
    DOMAINS,
    EMBEDDED_SOURCES,
    SCHEMA,
    CorpusError,
    CorpusStats,
    build_domain,
    build_raw,
    embedded_documents,
    excluded,
    location,
    read_documents,
)
from nanbeige_data.corpus.config import CorpusChecks, DomainSource
from nanbeige_data.quality import corpus_frame, corpus_suite, validate_frame

KNOBS = {"target_doc_chars": 4000, "min_doc_chars": 200}


def nbytes(docs: list[dict]) -> int:
    return sum(len(d["text"].encode("utf-8")) for d in docs)


@pytest.fixture(scope="module")
def full_docs() -> dict[str, list[dict]]:
    return {d: list(embedded_documents(d, max_bytes=1_500_000, **KNOBS)) for d in DOMAINS}


def test_schema_and_sources_are_declared() -> None:
    assert SCHEMA.names == ["id", "text", "domain", "source", "meta"]
    assert all(f.type == pa.string() and not f.nullable for f in SCHEMA)
    assert set(EMBEDDED_SOURCES) == set(DOMAINS)
    for domain, sources in EMBEDDED_SOURCES.items():
        assert sources
        for src in sources:
            assert src.domain == domain and src.license and src.origin and src.description


@pytest.mark.parametrize("domain", DOMAINS)
def test_embedded_domain_is_large_clean_and_unique(full_docs, domain: str) -> None:
    docs = full_docs[domain]
    assert 1_000_000 <= nbytes(docs) <= 1_500_000
    assert len({d["id"] for d in docs}) == len(docs)
    assert len({d["text"] for d in docs}) == len(docs)
    names = {s.name for s in EMBEDDED_SOURCES[domain]}
    assert {d["source"] for d in docs} == names  # every source contributes
    sizes = [len(d["text"]) for d in docs]
    assert min(sizes) >= 200 and max(sizes) <= 5 * 4000
    assert 500 <= statistics.median(sizes) <= 4000
    for doc in docs:
        assert set(doc) == set(SCHEMA.names)
        assert doc["domain"] == domain and doc["text"].strip() == doc["text"]
        assert doc["id"].startswith(f"{domain}/{doc['source']}/")
        meta = json.loads(doc["meta"])
        assert isinstance(meta, dict) and meta["license"]


@pytest.mark.parametrize("domain", DOMAINS)
def test_small_budget_is_respected_deterministic_and_a_prefix(full_docs, domain: str) -> None:
    first = list(embedded_documents(domain, max_bytes=50_000, **KNOBS))
    again = list(embedded_documents(domain, max_bytes=50_000, **KNOBS))
    assert first == again
    assert 50_000 - 20_000 <= nbytes(first) <= 50_000
    assert first == full_docs[domain][: len(first)]


def test_embedded_text_is_clean(full_docs) -> None:
    web = " ".join(d["text"] for d in full_docs["web"] if d["source"] == "enwiki")
    assert "'''" not in web and "[[" not in web and "{{" not in web and "==" not in web
    books = " ".join(d["text"] for d in full_docs["books"])
    assert "Gutenberg" not in books and "### START" not in books
    plays = [json.loads(d["meta"]) for d in full_docs["books"] if "gutenberg" in d["source"]]
    assert plays[0]["title"] == "All's Well That Ends Well"
    papers = [d for d in full_docs["papers"] if d["source"] == "abstract2title"]
    assert all(d["text"].startswith(json.loads(d["meta"])["title"]) for d in papers)


def test_code_split_keeps_every_line(full_docs) -> None:
    docs = full_docs["code"]
    biggest = max(docs, key=lambda d: json.loads(d["meta"]).get("parts", 1))
    rel = json.loads(biggest["meta"])["path"]
    parts = [d for d in docs if d["id"].split("#")[0] == biggest["id"].split("#")[0]]
    meta = [json.loads(d["meta"]) for d in parts]
    assert len(parts) > 4 and [m["part"] for m in meta] == list(range(meta[0]["parts"]))
    source = (Path(sysconfig.get_paths()["stdlib"]) / rel).read_text(encoding="utf-8")
    assert "".join("".join(d["text"] for d in parts).split()) == "".join(source.split())


def test_build_embedded_domain_writes_schema_shards(tmp_path: Path, full_docs) -> None:
    stats = build_domain(
        "books",
        DomainSource(max_bytes=1_500_000, **KNOBS),
        out_dir=tmp_path,
        shard_docs=100,
    )
    shards = sorted(tmp_path.glob("*.parquet"))
    assert [p.name for p in shards] == [f"part-{i:05d}.parquet" for i in range(stats.shards)]
    assert stats.shards == 4 and stats.documents == len(full_docs["books"])
    table = pa.concat_tables([pq.read_table(p) for p in shards])
    assert all(pq.read_schema(p).equals(SCHEMA) for p in shards)
    assert table.num_rows == stats.documents
    assert stats.bytes == nbytes(table.to_pylist())
    assert table.to_pylist() == full_docs["books"]
    assert sum(stats.per_source.values()) == stats.documents and stats.skipped == {}
    assert stats.as_dict()["per_source"] == stats.per_source


def write_jsonl(path: Path, lines: list[object]) -> Path:
    text = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_user_jsonl_glob_and_parquet_with_defaults(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "in" / "a.jsonl",
        [
            {"text": "first"},
            "",
            {"text": "second", "id": "x-2", "meta": {"k": 1}},
            {"text": "third", "source": "s", "domain": "books", "meta": "raw"},
        ],
    )
    with gzip.open(tmp_path / "in" / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text": "zipped"}) + "\n")
    pq.write_table(pa.table({"text": ["p0", "p1"], "id": [7, None]}), tmp_path / "c.parquet")
    docs = list(
        read_documents([str(tmp_path / "in" / "*.jsonl*"), str(tmp_path / "c.parquet")], "web")
    )
    assert [d["text"] for d in docs] == ["first", "second", "third", "zipped", "p0", "p1"]
    assert [d["id"] for d in docs] == ["web/a/1", "x-2", "web/a/4", "web/b/1", "7", "web/c/2"]
    assert [d["source"] for d in docs] == ["a.jsonl", "a.jsonl", "s", "b.jsonl.gz"] + [
        "c.parquet"
    ] * 2
    assert docs[2]["domain"] == "books"  # kept as given, checked downstream
    assert {d["domain"] for d in docs[:2] + docs[3:]} == {"web"}
    # a meta object gains the document's file and line; any other meta string is kept as given
    a = str(tmp_path / "in" / "a.jsonl")
    assert [json.loads(d["meta"]) for d in docs[:2]] == [
        {"source_file": a, "source_line": 1},
        {"k": 1, "source_file": a, "source_line": 3},
    ]
    assert docs[2]["meta"] == "raw"
    assert [location(d["meta"]) for d in docs] == [
        (a, 1), (a, 3), (None, None), (str(tmp_path / "in" / "b.jsonl.gz"), 1),
        (str(tmp_path / "c.parquet"), 1), (str(tmp_path / "c.parquet"), 2),
    ]  # fmt: skip


def test_same_stem_in_two_folders_gets_distinct_ids(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "x" / "data.jsonl", [{"text": "one"}])
    write_jsonl(tmp_path / "y" / "data.jsonl", [{"text": "two"}])
    docs = list(read_documents(str(tmp_path / "**" / "*.jsonl"), "code"))
    assert [d["id"] for d in docs] == ["code/x/data.jsonl/1", "code/y/data.jsonl/1"]


def test_build_files_skips_empty_text(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "d.jsonl", [{"text": "a b"}, {"text": "  \n"}, {"text": "c"}])
    out = tmp_path / "out"
    out.mkdir()
    stats = build_domain(
        "web",
        DomainSource(source="files", paths=[str(src)], max_bytes=10, **KNOBS),
        out_dir=out,
        shard_docs=1,
    )
    assert stats == CorpusStats(2, 4, 2, {"d.jsonl": 2}, {"empty_text": 1})
    assert pq.read_table(out).column("text").to_pylist() == ["a b", "c"]


def test_corrupt_line_names_file_and_line_and_writes_nothing(tmp_path: Path) -> None:
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "ok"}, {"text": "fine"}, '{"text": "x"'])
    with pytest.raises(CorpusError, match="invalid JSON") as info:
        list(read_documents(str(bad), "web"))
    assert f"{bad}:3:" in str(info.value) and info.value.line == 3
    assert info.value.path == str(bad)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CorpusError, match=":3: invalid JSON"):
        build_domain(
            "web",
            DomainSource(source="files", paths=[str(bad)], max_bytes=1, **KNOBS),
            out_dir=out,
            shard_docs=1,
        )
    assert list(out.iterdir()) == []  # shards written before the error are removed


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "latin.jsonl"
    bad.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(CorpusError, match="UTF-8") as info:
        list(read_documents(str(bad), "web"))
    assert f"{bad}:2:" in str(info.value)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ({"txt": "typo"}, "missing 'text'"),
        ({"text": 5}, "'text' must be a string"),
        ([1, 2], "expected a JSON object"),
        ({"text": "t", "meta": [1]}, "'meta' must be an object or string"),
        ({"text": "t", "id": ""}, "'id' must be a non-empty string"),
    ],
)
def test_bad_records_fail_fast(tmp_path: Path, line: object, reason: str) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", [{"text": "ok"}, line])
    with pytest.raises(CorpusError, match=f":2: {reason}"):
        list(read_documents(str(path), "web"))


def test_duplicate_ids_pass_the_reader_for_the_gate_to_count(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", [{"text": "a", "id": "k"}, {"text": "b", "id": "k"}])
    assert [d["id"] for d in read_documents(str(path), "web")] == ["k", "k"]


def test_parquet_without_text_column(tmp_path: Path) -> None:
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "p.parquet")
    pq.write_table(pa.table({"text": [1]}), tmp_path / "q.parquet")
    with pytest.raises(CorpusError, match="p.parquet: missing column 'text'"):
        list(read_documents(str(tmp_path / "p.parquet"), "web"))
    with pytest.raises(CorpusError, match="q.parquet: column 'text' has type int64"):
        list(read_documents(str(tmp_path / "q.parquet"), "web"))


def test_missing_inputs(tmp_path: Path) -> None:
    pattern = str(tmp_path / "nothing" / "*.jsonl")
    with pytest.raises(CorpusError, match="no files match") as info:
        read_documents([pattern], "web")
    assert pattern in str(info.value)
    with pytest.raises(CorpusError, match="file not found"):
        read_documents(str(tmp_path / "gone.jsonl"), "web")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(CorpusError, match="unsupported file type"):
        read_documents(str(tmp_path / "*.txt"), "web")


def test_empty_corpus_names_domain_and_paths(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "blank.jsonl", [{"text": " "}, ""])
    with pytest.raises(CorpusError, match="domain 'papers': no documents") as info:
        build_domain(
            "papers",
            DomainSource(source="files", paths=[str(src)], max_bytes=1, **KNOBS),
            out_dir=tmp_path,
        )
    assert str(src) in str(info.value)
    with pytest.raises(CorpusError, match="embedded:code"):
        build_domain(
            "code",
            DomainSource(max_bytes=10, **KNOBS),
            out_dir=tmp_path,
        )
    assert not list(tmp_path.glob("*.parquet"))


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown domain"):
        embedded_documents("poetry", max_bytes=1, **KNOBS)
    with pytest.raises(ValueError, match="Input should be 'embedded' or 'files'"):
        build_domain("web", DomainSource(source="s3", max_bytes=1, **KNOBS), out_dir=tmp_path)


def test_refuses_to_mix_with_existing_shards(tmp_path: Path) -> None:
    pq.write_table(pa.table({"x": [1]}), tmp_path / "part-00000.parquet")
    with pytest.raises(ValueError, match="already holds"):
        build_domain("web", DomainSource(max_bytes=1, **KNOBS), out_dir=tmp_path)


def test_bom_and_lone_surrogate(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "with bom"}\n{"text": "x", "source": "\\ud800"}\n')
    with pytest.raises(CorpusError, match=":2: 'source' is not valid Unicode"):
        list(read_documents(str(path), "web"))
    assert next(read_documents(str(path), "web"))["text"] == "with bom"


def test_documents_outside_the_bounds_are_counted_recorded_skips(tmp_path: Path) -> None:
    src = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"text": "a" * 50, "id": "ok"},
            {"text": "b" * 500, "id": "long"},
            {"text": "c", "id": "s"},
        ],
    )
    out = tmp_path / "out"
    out.mkdir()
    report = build_raw(
        "web",
        DomainSource(source="files", paths=[str(src)]),
        CorpusChecks(min_chars=10, max_chars=100),
        out,
    )
    assert report.counts == {"documents": 1, "bytes": 50, "shards": 1}
    assert report.json["skipped"] == {"too_long": 1, "too_short": 1}
    [long] = excluded(out, "too_long")
    assert long == {
        "id": "long", "source": "d.jsonl", "file": str(src), "line": 2, "chars": 500,
        "reason": "too_long", "head": "b" * 200,
    }  # fmt: skip
    assert report.json["skipped_examples"]["too_short"][0]["line"] == 3
    assert pq.read_table(out / "part-00000.parquet").column("id").to_pylist() == ["ok"]
    assert report.extra["provenance"] == {"files": [str(src)]}
    # the gate never sees them: it passes on what was written
    gate = validate_frame(corpus_frame(out), corpus_suite(DOMAINS, 10, 100), "gate")
    assert gate.success, gate.summary()


def test_a_gate_failure_names_ids_files_and_lines(tmp_path: Path) -> None:
    src = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"text": "one text", "id": "k"},
            {"text": "two", "id": "k"},
            {"text": "x", "domain": "mars"},
        ],
    )
    out = tmp_path / "out"
    out.mkdir()
    build_domain(
        "web", DomainSource(source="files", paths=[str(src)], max_bytes=1, **KNOBS), out_dir=out
    )
    frame = corpus_frame(out)
    assert frame[["file", "line"]].values.tolist() == [[str(src), 1], [str(src), 2], [str(src), 3]]
    report = validate_frame(frame, corpus_suite(DOMAINS, 1, 100), "raw_web.gate")
    unique = next(r for r in report.failures if r.column == "id")
    assert [(r["id"], r["line"]) for r in unique.rows] == [("k", 1), ("k", 2)]
    assert f"id 'k' ({src}:1)" in unique.line()
    text = report.description()
    assert text.startswith("raw_web.gate FAILED: ")
    assert "expect_column_values_to_be_unique[id] 2 of 3 rows: id 'k'" in text
    assert f"id 'web/d/3' ({src}:3)" in text  # the unknown domain, by its default id


def test_an_empty_version_fails_the_gate_instead_of_crashing(tmp_path: Path) -> None:
    report = validate_frame(corpus_frame(tmp_path), corpus_suite(DOMAINS, 1, 100), "gate")
    assert not report.success and report.rows == 0
    assert [r.expectation for r in report.failures] == ["expect_table_row_count_to_be_between"]

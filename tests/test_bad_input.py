"""A corpus of bad inputs: each gives an error naming what and where, or a counted, recorded
skip -- never a bare traceback, and nothing half-written in the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nanbeige_data.corpus.build import CorpusError, build_domain
from nanbeige_data.refinery.filters import FilterConfig, filter_domain
from nanbeige_data.quality import corpus_frame, corpus_suite, validate_frame
from nanbeige_data.recipe import RecipeError, parse_recipe

BAD = {
    "truncated.jsonl": b'{"id": "a", "text": "a fine first line"}\n{"id": "b", "text": "cu',
    "bad_utf8.jsonl": b'{"id": "a", "text": "ok \xff\xfe then bytes"}\n',
    "wrong_schema.jsonl": b'{"id": 5, "body": "no text field here"}\n',
    "empty.jsonl": b"",
    "not_json.jsonl": b"<html>this is not json</html>\n",
}
EXPECTED = {
    "truncated.jsonl": r"truncated.jsonl:2: invalid JSON",
    "bad_utf8.jsonl": r"bad_utf8.jsonl:1: invalid UTF-8",
    "wrong_schema.jsonl": r"wrong_schema.jsonl:1: missing 'text' field",
    "empty.jsonl": r"empty.jsonl: domain 'web': no documents",
    "not_json.jsonl": r"not_json.jsonl:1: invalid JSON",
}


def _build(path: Path, out: Path):
    return build_domain(
        "web",
        source="files",
        paths=[str(path)],
        max_bytes=None,
        target_doc_chars=4000,
        min_doc_chars=10,
        out_dir=out,
        shard_docs=1000,
    )


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_files_name_the_file_and_line_and_write_nothing(name, tmp_path):
    path = tmp_path / name
    path.write_bytes(BAD[name])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CorpusError, match=EXPECTED[name]):
        _build(path, out)
    assert not list(out.glob("*.parquet"))


def test_duplicate_ids_are_read_and_then_fail_the_corpus_gate(tmp_path):
    path = tmp_path / "dup.jsonl"
    rows = [{"id": "same", "text": "first copy of the text"}, {"id": "same", "text": "second"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    assert _build(path, out).documents == 2  # streamed without an id set: the gate counts them
    report = validate_frame(corpus_frame(out), corpus_suite(["web"], 1, 10_000), "corpus")
    assert not report.success
    assert any("unique" in r.expectation for r in report.failures)


def test_a_50_mb_document_is_a_counted_recorded_skip(tmp_path):
    path = tmp_path / "big.jsonl"
    small = {"id": "small", "text": "A short and perfectly ordinary English sentence. " * 20}
    with open(path, "w") as f:
        f.write(json.dumps({"id": "big", "text": "word " * 10_000_000}) + "\n")
        f.write(json.dumps(small) + "\n")
    raw, out, work = tmp_path / "raw", tmp_path / "filtered", tmp_path / "work"
    for d in (raw, out, work):
        d.mkdir()
    assert _build(path, raw).documents == 2
    stats = filter_domain("web", raw, out, FilterConfig(max_doc_chars=200_000), work)
    assert stats.documents_in == 2 and stats.documents_out <= 1
    assert any("too_long" in reason for reason in stats.reasons), stats.reasons
    dropped_ids = {e["id"] for examples in stats.examples.values() for e in examples}
    assert "big" in dropped_ids  # recorded for audit (excluded/ keeps the document), not lost


def test_a_recipe_with_wrong_types_names_the_field():
    raw = {"name": "bad", "curriculum": {"stages": "not a list"}, "pretrain": {"batch_size": "8x"}}
    with pytest.raises(RecipeError) as err:
        parse_recipe(raw, "bad.yaml")
    message = str(err.value)
    assert "bad.yaml" in message and "curriculum.stages" in message
    assert "pretrain.batch_size" in message

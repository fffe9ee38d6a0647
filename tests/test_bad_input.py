"""A corpus of bad inputs, each run through Dagster as a user runs it (raw_web and its gate, and
filtered_web for the cases that get past the corpus): every one ends in a message naming what
and where, or in a counted, recorded skip -- never a bare traceback, never a half-written
version, and the earlier version of the asset stays current and intact."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
import yaml
from conftest import prose

from assets.console import check_line, failure_text
from nanbeige_data.corpus.build import embedded_documents, excluded
from nanbeige_data.recipe import RECIPES_DIR
from nanbeige_data.store.versioned import VersionedStore, _hash_dir


def _lines(*docs: dict) -> bytes:
    return b"".join(json.dumps(d).encode() + b"\n" for d in docs)


# ordinary documents: real web text from the embedded sample (passes the refinery's filters)
REAL_WEB = list(
    embedded_documents("web", max_bytes=12_000, target_doc_chars=2000, min_doc_chars=200)
)
GOOD = _lines(*({"id": f"good-{i}", "text": prose(i, "web")} for i in range(3)))
BAD = {  # file content -> what the user is told (file:line: reason)
    "truncated.jsonl": (GOOD + b'{"id": "b", "text": "cu', r"truncated.jsonl:4: invalid JSON"),
    "bad_utf8.jsonl": (
        b'{"id": "a", "text": "ok \xff\xfe then"}\n',
        r"bad_utf8.jsonl:1: invalid UTF-8",
    ),
    "wrong_schema.jsonl": (
        b'{"id": 5, "body": "no text"}\n',
        r"wrong_schema.jsonl:1: missing 'text'",
    ),
    "wrong_type.jsonl": (
        b'{"id": "x", "text": 42}\n',
        r"wrong_type.jsonl:1: 'text' must be a string",
    ),
    "empty.jsonl": (b"", r"empty.jsonl: domain 'web': no documents"),
    "not_json.jsonl": (b"<html>this is not json</html>\n", r"not_json.jsonl:1: invalid JSON"),
    "not_an_object.jsonl": (b"[1, 2, 3]\n", r"not_an_object.jsonl:1: expected a JSON object"),
}


@pytest.fixture
def web_files(tmp_path, monkeypatch, store_root):
    """Point the web domain of a recipe at one user file; returns (write, run) helpers."""
    corpus = tmp_path / "corpus" / "web.jsonl"
    raw = yaml.safe_load((RECIPES_DIR / "tiny.yaml").read_text())
    raw["corpus"]["web"] = {"source": "files", "paths": [str(corpus)]}
    raw["name"] = "user-web"
    recipe = tmp_path / "user-web.yaml"
    recipe.write_text(yaml.safe_dump(raw, sort_keys=False))
    monkeypatch.setenv("NANBEIGE_RECIPE", str(recipe))

    def write(content: bytes) -> Path:
        corpus.parent.mkdir(parents=True, exist_ok=True)
        corpus.write_bytes(content)
        return corpus

    return write, corpus


def _materialize(*assets: str) -> dg.ExecuteInProcessResult:
    from assets.definitions import defs

    return defs.resolve_job_def("main").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
        asset_selection=[dg.AssetKey(a) for a in assets],
    )


def _failures(result) -> dict[str, str]:
    """What the console prints for each failed step (the same function renders it)."""
    return {
        e.step_key or "run": failure_text(e.step_key, e.event_specific_data)
        for e in result.all_events
        if e.is_step_failure or e.event_type_value == "RESOURCE_INIT_FAILURE"
    }


def _checks(result) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.asset_key.to_user_string(): e for e in result.get_asset_check_evaluations()}


@pytest.fixture
def earlier(web_files, store_root):
    """A good raw_web version committed first: a bad input must leave it current and intact."""
    write, _ = web_files
    write(GOOD)
    assert _materialize("raw_web").success
    return VersionedStore(store_root).require("raw_web")


def _untouched(store_root: Path, earlier) -> None:
    store = VersionedStore(store_root)
    assert [v.version_id for v in store.versions("raw_web")] == [earlier.version_id]
    assert store.require("raw_web").version_id == earlier.version_id
    assert _hash_dir(earlier.local_path)[0] == earlier.data_version
    assert not [p for p in (store_root / "raw_web").iterdir() if p.name.startswith(".")]


def test_every_bad_file_names_file_and_line_and_leaves_the_earlier_version(
    web_files, earlier, store_root
):
    write, path = web_files
    for name, (content, expected) in sorted(BAD.items()):
        write(content)
        result = _materialize("raw_web")
        assert not result.success, name
        failures = _failures(result)
        assert list(failures) == ["raw_web"], (name, failures)
        message = failures["raw_web"]
        assert str(path) in message and expected.split(":", 1)[1] in message, (name, message)
        assert "Traceback" not in message and "DEBUG" not in message, message  # a Failure
        assert not result.get_asset_check_evaluations()  # nothing committed, nothing checked
        _untouched(store_root, earlier)


def test_duplicate_ids_fail_the_gate_naming_ids_files_and_lines(web_files, earlier, store_root):
    write, path = web_files
    doc = {"id": "same", "text": prose(7, "web")}
    write(GOOD + (json.dumps(doc) + "\n" + json.dumps(doc) + "\n").encode())
    result = _materialize("raw_web", "filtered_web")
    assert not result.success
    gate = _checks(result)["raw_web"]
    assert not gate.passed
    failure = gate.metadata["failures"].value["expect_column_values_to_be_unique[id]"]
    assert failure["unexpected"] == 2
    assert [(r["id"], r["file"], r["line"]) for r in failure["rows"]] == [
        ("same", str(path), 4),
        ("same", str(path), 5),
    ]
    line = check_line(gate)  # what the console prints
    assert line.startswith("check raw_web:corpus_schema_gate FAILED: ")
    assert f"id 'same' ({path}:4)" in line and f"({path}:5)" in line, line
    assert "filtered_web" not in {
        e.asset_key.to_user_string() for e in result.get_asset_materialization_events()
    }  # the blocking gate stopped it
    assert len(VersionedStore(store_root).versions("raw_web")) == 2  # committed, then gated


def test_a_50_mb_document_is_a_counted_recorded_skip_before_the_gate(web_files, store_root):
    write, path = web_files
    big = {"id": "big", "text": "word " * 10_000_000}  # 50 MB
    short = {"id": "short", "text": "hi"}  # under corpus.checks.min_chars
    docs = [{"id": d["id"], "text": d["text"]} for d in REAL_WEB[:4]]  # real text: kept
    write(_lines(docs[0], big, *docs[1:], short))  # big on line 2, short on line 6
    result = _materialize("raw_web", "filtered_web")
    assert result.success, _failures(result)
    assert _checks(result)["raw_web"].passed
    raw = VersionedStore(store_root).require("raw_web")
    assert raw.manifest["counts"]["documents"] == 4
    assert raw.manifest["extra"]["stats"]["skipped"] == {"too_long": 1, "too_short": 1}
    [record] = excluded(raw.local_path, "too_long")  # kept for audit: id, file, line, size
    assert (record["id"], record["file"], record["line"]) == ("big", str(path), 2)
    assert record["chars"] == 50_000_000 and record["reason"] == "too_long"
    assert [r["id"] for r in excluded(raw.local_path, "too_short")] == ["short"]
    mats = {e.asset_key.to_user_string(): e for e in result.get_asset_materialization_events()}
    meta = mats["raw_web"].step_materialization_data.materialization.metadata
    assert meta["skipped"].value == {"too_long": 1, "too_short": 1}
    assert meta["skipped_examples"].value["too_long"][0]["id"] == "big"
    filtered = mats["filtered_web"].step_materialization_data.materialization.metadata
    assert filtered["documents_in"].value == 4  # the refinery never saw the 50 MB document
    assert filtered["documents"].value >= 1 and _checks(result)["filtered_web"].passed


def test_a_corpus_of_only_skipped_documents_says_so(web_files, earlier, store_root):
    write, path = web_files
    write(json.dumps({"id": "big", "text": "x" * 300_000}).encode() + b"\n")
    result = _materialize("raw_web")
    assert not result.success
    message = _failures(result)["raw_web"]
    assert f"{path}: domain 'web': no documents" in message and "1 too_long skipped" in message
    _untouched(store_root, earlier)


def test_a_recipe_with_wrong_types_names_the_file_and_fields(store_root, tmp_path, monkeypatch):
    from assets.definitions import defs  # built from a valid recipe; the run reads this one

    raw = {"name": "bad", "curriculum": {"stages": "not a list"}, "pretrain": {"batch_size": "8x"}}
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("NANBEIGE_RECIPE", str(recipe))
    result = _materialize("raw_web")
    assert not result.success and defs is not None
    message = _failures(result)["run"]  # the recipe resource fails before any asset runs
    assert message.startswith(f"recipe {recipe}: 2 invalid field(s)"), message
    assert "curriculum.stages" in message, message
    assert "pretrain.batch_size" in message and "Traceback" not in message
    assert not result.get_asset_materialization_events()
    assert VersionedStore(store_root).latest("raw_web") is None

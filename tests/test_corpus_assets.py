"""Corpus assets materialized through Dagster: user globs, bad input, blocking gates."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest
from conftest import prose

from nanbeige_data.store.versioned import VersionedStore

DOMAINS = ("web", "books", "code", "papers")


def _docs(domain: str, n: int = 5) -> list[dict]:
    return [{"id": f"{domain}-{i}", "text": prose(i, domain), "meta": {"n": i}} for i in range(n)]


def _run(select: str | None = None) -> dg.ExecuteInProcessResult:
    from assets.definitions import defs

    keys = None
    if select:
        keys = list(dg.AssetSelection.from_string(select).resolve(defs.resolve_asset_graph()))
    return defs.resolve_job_def("main").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False, asset_selection=keys
    )


def paths_of(version) -> list[str]:
    return version.manifest["extra"]["provenance"]["files"]


def _materialized(result) -> set[str]:
    return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}


def test_user_glob_corpus_materializes_with_lineage(files_recipe, store_root):
    files_recipe({d: _docs(d) for d in DOMAINS})
    result = _run("group:corpus")
    assert result.success
    assert _materialized(result) == {f"raw_{d}" for d in DOMAINS} | {"corpus_summary"}
    assert all(ev.passed for ev in result.get_asset_check_evaluations())
    store = VersionedStore(store_root)
    web = store.require("raw_web")
    table = pq.read_table(sorted(web.local_path.glob("*.parquet"))[0])
    assert table.column_names == ["id", "text", "domain", "source", "meta"]
    user_file = str(Path(paths_of(web)[0]))
    assert table.num_rows == 5
    assert json.loads(table["meta"][0].as_py()) == {
        "n": 0,
        "source_file": user_file,
        "source_line": 1,
    }
    summary = store.require("corpus_summary")
    assert set(summary.manifest["inputs"]) == {f"raw_{d}" for d in DOMAINS}
    assert summary.manifest["inputs"]["raw_web"] == web.ref()
    assert summary.manifest["recipe_name"] == "files"
    assert summary.manifest["code_version"].startswith("1+")
    # the recipe values behind the hash are recorded: the exact recipe is recoverable
    sections = web.manifest["extra"]["recipe_sections"]
    assert sections["corpus.web"]["source"] == "files"
    paths = sections["corpus.web"]["paths"]
    assert [Path(p).parts[-2:] for p in paths] == [("web", "part-0.jsonl")]


def test_failing_blocking_check_stops_downstream_in_the_same_run(
    files_recipe, store_root, tmp_path
):
    docs = {d: _docs(d) for d in DOMAINS}
    docs["web"].append(dict(docs["web"][0]))  # a duplicate id: the gate must fail
    docs["web"].append(
        {"id": "w-odd", "text": "a document from an unknown domain", "domain": "klingon"}
    )
    files_recipe(docs)
    result = _run("group:corpus")
    assert not result.success
    checks = {e.asset_key.to_user_string(): e for e in result.get_asset_check_evaluations()}
    assert not checks["raw_web"].passed and checks["raw_books"].passed
    failures = checks["raw_web"].metadata["failures"].value
    assert failures["expect_column_values_to_be_unique[id]"]["unexpected"] == 2
    assert failures["expect_column_values_to_be_in_set[domain]"]["examples"] == ["klingon"]
    web_file = str(tmp_path / "corpus" / "web" / "part-0.jsonl")
    rows = failures["expect_column_values_to_be_unique[id]"]["rows"]
    assert [(r["id"], r["file"], r["line"]) for r in rows] == [
        ("web-0", web_file, 1),
        ("web-0", web_file, 6),
    ]
    description = checks["raw_web"].description  # what the console and the UI show
    assert f"id 'web-0' ({web_file}:1)" in description and f"({web_file}:6)" in description
    assert f"id 'w-odd' ({web_file}:7)" in description  # unknown domain "klingon"
    assert "corpus_summary" not in _materialized(result)
    assert VersionedStore(store_root).latest("corpus_summary") is None


def test_corrupt_jsonl_names_file_and_line_and_writes_nothing(files_recipe, store_root, tmp_path):
    recipe = files_recipe({d: _docs(d) for d in DOMAINS})
    assert _run("raw_web").success
    before = VersionedStore(store_root).require("raw_web")
    bad = tmp_path / "corpus" / "web" / "part-0.jsonl"
    lines = bad.read_text().splitlines()
    lines[2] = '{"id": "web-2", "text": "unterminated'
    bad.write_text("\n".join(lines) + "\n")
    result = _run("raw_web")
    assert not result.success and recipe.exists()
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.step_failure_data.error.message
    assert f"{bad}:3" in message, message
    store = VersionedStore(store_root)
    assert [v.version_id for v in store.versions("raw_web")] == [before.version_id]
    assert not [p for p in (store_root / "raw_web").iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_embedded_corpus_materializes_every_domain(store_root, monkeypatch):
    monkeypatch.setenv("NANBEIGE_RECIPE", "tiny")
    result = _run("group:corpus")
    assert result.success
    checks = result.get_asset_check_evaluations()
    assert len(checks) == 4 and all(c.passed for c in checks)
    store = VersionedStore(store_root)
    for domain in DOMAINS:
        version = store.require(f"raw_{domain}")
        assert version.manifest["counts"]["bytes"] >= 1_000_000, domain
        assert version.manifest["extra"]["provenance"], domain
    summary = store.require("corpus_summary")
    assert summary.manifest["counts"]["documents"] > 400

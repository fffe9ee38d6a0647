"""The Dagster layer: the Definitions load, the instance is valid, automation is an opt-in, and
a code location runs only its own recipe (import directions: tests/test_layout.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import yaml

REPO = Path(__file__).resolve().parent.parent


def test_definitions_load_with_groups_checks_and_code_versions():
    from assets.definitions import defs

    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"raw_web", "raw_books", "raw_code", "raw_papers", "corpus_summary"} <= keys
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.code_version, f"{key} has no code_version"
        assert node.group_name, f"{key} has no group"
    checks = {c.asset_key.to_user_string() for c in graph.asset_check_keys}
    assert {"raw_web", "raw_books", "raw_code", "raw_papers"} <= checks
    assert all(graph.get_check_spec(c).blocking for c in graph.asset_check_keys)
    assert defs.resolve_job_def("main") is not None


def test_dagster_definitions_validate_cli():
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "dagster"),
            "definitions",
            "validate",
            "-w",
            str(REPO / "workspace.yaml"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={"DAGSTER_HOME": str(REPO / "dagster_home"), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_instance_config_is_valid(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster_home" / "dagster.yaml").read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        assert not instance.telemetry_enabled
        assert type(instance.run_storage).__name__.startswith("Sqlite")


def test_declarative_automation_is_an_opt_in():
    import os
    import subprocess
    import sys

    probe = (
        "from assets.definitions import defs\n"
        "g = defs.resolve_asset_graph()\n"
        "print(sum(g.get(k).automation_condition is not None for k in g.get_all_asset_keys()),"
        " len(list(g.get_all_asset_keys())))"
    )
    for mode, expect_all in (("eager", True), ("", False)):
        env = {**os.environ, "NANBEIGE_AUTOMATION": mode}
        out = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300
        )
        with_condition, total = map(int, out.stdout.split()[-2:])
        assert total > 20 and with_condition == (total if expect_all else 0)


def _raw_web_with_recipe(path: Path) -> dg.ExecuteInProcessResult:
    from assets.definitions import defs

    return defs.resolve_job_def("corpus").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
        asset_selection=[dg.AssetKey("raw_web")],
        run_config={"resources": {"recipe": {"config": {"path": str(path)}}}},
    )


def _failure(result: dg.ExecuteInProcessResult) -> str:
    return "\n".join(
        str(e.event_specific_data.error) if getattr(e.event_specific_data, "error", None) else ""
        for e in result.all_events
        if e.is_failure or e.event_type_value == "RESOURCE_INIT_FAILURE"
    )


def test_a_run_config_recipe_must_be_the_code_locations_recipe(files_recipe, store_root, tmp_path):
    from conftest import prose

    from nanbeige_data.store.versioned import VersionedStore

    docs = [{"id": f"web-{i}", "text": prose(i, "web")} for i in range(4)]
    built = files_recipe({"web": docs})  # $NANBEIGE_RECIPE: the code location's recipe
    raw = yaml.safe_load(built.read_text())
    other = json.loads(json.dumps(raw))
    other["refinery"]["dedup"]["ngram"] += 1
    other["eval"]["sets"] = other["eval"]["sets"][:1]
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other, sort_keys=False))

    result = _raw_web_with_recipe(tmp_path / "other.yaml")
    assert not result.success
    message = _failure(result)
    names = [s["name"] for s in raw["eval"]["sets"]]
    assert f"graph shape: eval sets {names} -> {names[:1]}" in message
    assert "section refinery.dedup (ngram)" in message
    assert "section eval (sets)" in message and "section corpus" not in message
    assert f"NANBEIGE_RECIPE={tmp_path / 'other.yaml'} dagster dev" in message
    assert f"nanbeige run --recipe {tmp_path / 'other.yaml'}" in message
    assert not [e for e in result.all_events if e.event_type_value == "STEP_START"]
    assert VersionedStore(store_root).latest("raw_web") is None  # nothing ran

    # the same recipe by another path, one execution setting changed: the same run
    same = json.loads(json.dumps(raw))
    same["eval"]["batch_size"] = same["eval"].get("batch_size", 1) + 1
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "same.yaml").write_text(yaml.safe_dump(same, sort_keys=False))
    result = _raw_web_with_recipe(tmp_path / "copy" / "same.yaml")
    assert result.success, _failure(result)
    assert VersionedStore(store_root).require("raw_web").manifest["counts"]["documents"] == 4

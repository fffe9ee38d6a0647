"""The Dagster layer: Definitions load, libraries stay Dagster-free, the instance is valid."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import dagster as dg

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


def test_libraries_never_import_dagster():
    for package in ("nanbeige_data", "nanbeige_train"):
        for path in (REPO / package).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                bad = [n for n in names if n.split(".")[0] in ("dagster", "assets")]
                assert not bad, f"{path.relative_to(REPO)} imports {bad}"


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

"""Incremental re-runs: a one-field recipe change stales exactly what reads it and everything
downstream of that (the cascade), and `nanbeige run --stale` re-materializes only those."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from nanbeige_data.store import VersionedStore


def _cli(*args: str, env: dict) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "assets.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out.stdout


@pytest.mark.slow
def test_one_recipe_field_stales_exactly_its_downstream(small_recipe, store_root, tmp_path):
    recipe = small_recipe(max_bytes=20_000)
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home), "NANBEIGE_STORE": str(store_root)}
    _cli("run", "--recipe", str(recipe), "--select", "group:corpus", env=env)
    report = _cli("stale", "--recipe", str(recipe), env=env)
    assert "stale " not in report  # fresh after a run (only never-built assets listed)
    before = {k: VersionedStore(store_root).require(k).version_id for k in ("raw_web", "raw_code")}

    raw = yaml.safe_load(recipe.read_text())
    raw["corpus"]["web"]["max_bytes"] = 15_000  # one field of one section
    recipe.write_text(yaml.safe_dump(raw, sort_keys=False))
    report = _cli("stale", "--recipe", str(recipe), env=env)
    stale = {line.split()[1] for line in report.splitlines() if line.startswith("stale ")}
    assert "raw_web" in stale and "corpus_summary" in stale  # the field's reader and its child
    assert not {"raw_books", "raw_code", "raw_papers"} & stale  # unrelated sections: fresh
    assert "upstream: raw_web is stale" in report  # the cascade, with its reason

    out = _cli("run", "--recipe", str(recipe), "--select", "group:corpus", "--stale", env=env)
    assert "re-materializing 2 stale asset(s): raw_web, corpus_summary" in out
    store = VersionedStore(store_root)
    assert store.require("raw_web").version_id != before["raw_web"]
    assert store.require("raw_code").version_id == before["raw_code"]  # not re-run
    assert len(store.versions("raw_web")) == 2  # the earlier version is kept
    assert "stale " not in _cli("stale", "--recipe", str(recipe), env=env)

"""Incremental re-runs: a one-field recipe change stales exactly what reads it and everything
downstream of that (the cascade), and `nanbeige run --stale` re-materializes only those."""

from __future__ import annotations

import dagster as dg
import pytest
import yaml

from assets.staleness import frontier, staleness
from nanbeige_data.store.versioned import VersionedStore


@pytest.mark.slow
def test_one_recipe_field_stales_exactly_its_downstream(small_recipe, store_root, cli):
    recipe = small_recipe(max_bytes=20_000)
    cli("run", "--recipe", str(recipe), "--select", "group:corpus")
    report = cli("stale", "--recipe", str(recipe))
    assert "stale " not in report  # fresh after a run (only never-built assets listed)
    before = {k: VersionedStore(store_root).require(k).version_id for k in ("raw_web", "raw_code")}

    raw = yaml.safe_load(recipe.read_text())
    raw["corpus"]["web"]["max_bytes"] = 15_000  # one field of one section
    recipe.write_text(yaml.safe_dump(raw, sort_keys=False))
    report = cli("stale", "--recipe", str(recipe))
    stale = {line.split()[1] for line in report.splitlines() if line.startswith("stale ")}
    pending = {line.split()[1] for line in report.splitlines() if line.startswith("pending ")}
    # the field's reader, and corpus_summary, which reads the whole corpus section
    assert stale == {"raw_web", "corpus_summary"} and not pending
    assert "upstream: raw_web is stale" in report  # the cascade, with its reason

    out = cli("run", "--recipe", str(recipe), "--select", "group:corpus", "--stale")
    assert "round 1: re-materializing 2 stale asset(s): raw_web, corpus_summary\n" in out
    assert "round 2" not in out
    store = VersionedStore(store_root)
    assert store.require("raw_web").version_id != before["raw_web"]
    assert store.require("raw_code").version_id == before["raw_code"]  # not re-run
    assert len(store.versions("raw_web")) == 2  # the earlier version is kept
    assert "stale " not in cli("stale", "--recipe", str(recipe))


def _graph(code: str) -> dg.Definitions:
    """plan -> stage_a, stage_b -> model: only the graph and code versions are read."""

    @dg.asset(code_version=code)
    def plan() -> None: ...

    @dg.asset(code_version="1")
    def stage_a(plan) -> None: ...

    @dg.asset(code_version="1")
    def stage_b(plan) -> None: ...

    @dg.asset(code_version="1")
    def model(stage_b) -> None: ...

    return dg.Definitions(assets=[plan, stage_a, stage_b, model])


def _commit(store: VersionedStore, key: str, payload: str, code: str = "1", **kw):
    with store.stage(key) as staging:
        (staging.path / "data.txt").write_text(payload)
        return store.commit(staging, code_version=code, **kw)


def test_pending_assets_wait_and_stay_fresh_when_their_parent_reruns_to_the_same_data(tmp_path):
    store = VersionedStore(tmp_path / "store")
    plan = _commit(store, "plan", "v1")
    for key in ("stage_a", "stage_b"):
        _commit(store, key, key, inputs={"plan": plan})
    _commit(store, "model", "m", inputs={"stage_b": store.require("stage_b")})
    assert {s.state for s in staleness(_graph("1"), store).values()} == {"fresh"}

    # the plan's code version changes: it is stale, everything below it must wait
    report = staleness(_graph("2"), store)
    assert report["plan"].state == "stale" and report["plan"].reasons[0].startswith("code:")
    assert [report[k].state for k in ("stage_a", "stage_b", "model")] == ["pending"] * 3
    assert report["model"].reasons == ["upstream: stage_b is pending"]
    assert frontier(report) == ["plan"]

    # it re-ran to the same bytes (a new version id, the same data version): nothing to do
    again = _commit(store, "plan", "v1", code="2")
    assert again.version_id != plan.version_id and again.data_version == plan.data_version
    assert {s.state for s in staleness(_graph("2"), store).values()} == {"fresh"}

    # it re-ran to other bytes: both stages are stale by data and run next; the model waits
    _commit(store, "plan", "v2", code="2")
    report = staleness(_graph("2"), store)
    assert report["stage_a"].state == "stale" and report["stage_a"].reasons[0].startswith("data:")
    assert report["model"].state == "pending"
    assert frontier(report) == ["stage_a", "stage_b"]

"""The refinery group materialized through Dagster on a small real corpus, every gate green."""

from __future__ import annotations

import dagster as dg
import duckdb
import pytest

from nanbeige_data.store import VersionedStore

REFINERY = [
    "deduped",
    "decontaminated",
    "quality_tags",
    "retrieval_index",
    "retrieval_scores",
    "quality_tiers",
]


@pytest.mark.slow
def test_refinery_materializes_with_lineage_and_gates(small_recipe, store_root):
    small_recipe(max_bytes=40_000, sample=8)
    from assets.definitions import defs

    graph = defs.resolve_asset_graph()
    keys = list(dg.AssetSelection.from_string("group:corpus or group:refinery").resolve(graph))
    result = defs.resolve_job_def("main").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False, asset_selection=keys
    )
    assert result.success
    checks = result.get_asset_check_evaluations()
    assert len(checks) >= 16 and all(c.passed for c in checks), [
        (c.asset_key, c.check_name) for c in checks if not c.passed
    ]

    store = VersionedStore(store_root)
    tiers = store.require("quality_tiers")
    # lineage: tiers -> decontaminated -> deduped -> filtered_<domain> -> raw_<domain>
    assert set(tiers.manifest["inputs"]) == {"decontaminated", "quality_tags", "retrieval_scores"}
    decont = store.get("decontaminated", tiers.manifest["inputs"]["decontaminated"]["version_id"])
    deduped = store.get("deduped", decont.manifest["inputs"]["deduped"]["version_id"])
    filtered = store.get("filtered_web", deduped.manifest["inputs"]["filtered_web"]["version_id"])
    assert "raw_web" in filtered.manifest["inputs"]
    for key in REFINERY:
        assert store.require(key).manifest["recipe_name"] == "small"

    db = tiers.local_path / "tiers.duckdb"
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.sql("SELECT tier, sum(documents) FROM tier_tokens GROUP BY tier").fetchall()
        n = con.sql("SELECT count(*) FROM tiers").fetchall()[0][0]
    assert {t for t, _ in rows} == {"rejected", "diverse", "high"}
    assert sum(c for _, c in rows) == n == decont.manifest["counts"]["documents"]
    tags = store.require("quality_tags")
    assert tags.manifest["counts"]["annotated"] == 8
    assert len(tags.manifest["extra"]["stats"]["agreement"]) == 20

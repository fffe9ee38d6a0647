"""The main job materialized through Dagster on a small real corpus, every gate green: corpus,
refinery, curriculum, pretraining (tiny stages) to the Hugging Face base model, and the eval
reports of the base model and the reference model."""

from __future__ import annotations

import json

import dagster as dg
import duckdb
import pytest
import yaml

from nanbeige_data.recipe import RECIPES_DIR
from nanbeige_data.store.versioned import VersionedStore

REFINERY = [
    "deduped",
    "decontaminated",
    "quality_tags",
    "retrieval_index",
    "retrieval_scores",
    "quality_tiers",
]


def _small_stages() -> list[dict]:
    """The tiny recipe's stages with budgets a 240 kB corpus holds (batch 4 x 64 tokens)."""
    stages = yaml.safe_load((RECIPES_DIR / "tiny.yaml").read_text())["curriculum"]["stages"]
    for stage, tokens in zip(stages, [2048, 4096, 2048, 2048], strict=True):
        stage.update(tokens=tokens, seq_len=128 if stage["lr"] == "decay" else 64)
    return stages


@pytest.mark.slow
def test_main_job_materializes_with_lineage_and_gates(small_recipe, store_root):
    small_recipe(
        max_bytes=60_000,
        sample=8,
        curriculum__stages=_small_stages(),
        curriculum__ablation_seeds=1,
        pretrain__batch_size=4,
        tokenizer__vocab_size=2048,
        model__dim=32,
        model__ffn_dim=64,
        eval__sets=[{"name": "arithmetic"}, {"name": "humaneval"}],
        eval__max_items=6,
        eval__k={"default": 2},
        eval__max_new_tokens=64,
    )
    from assets.definitions import defs

    result = defs.resolve_job_def("main").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
    )
    assert result.success
    checks = result.get_asset_check_evaluations()
    assert len(checks) >= 35 and all(c.passed for c in checks), [
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

    # curriculum and pretraining: every stage resumed from the one before, tokens as planned
    plan = json.loads((store.require("fgwsd_plan").local_path / "fgwsd.json").read_text())
    previous = None
    for stage in plan["stages"]:
        version = store.require(f"pretrain_{stage['name']}")
        report = version.manifest["extra"]["report"]
        assert report["steps"] == stage["steps"]
        assert sum(report["tokens_seen"].values()) == stage["tokens"]
        assert f"plan_{stage['name']}" in version.manifest["inputs"]  # its slice of the plan
        if previous is not None:
            assert version.manifest["inputs"][previous]["version_id"]
        previous = f"pretrain_{stage['name']}"
    base = store.require("base_model")
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {
        p.name for p in base.local_path.iterdir()
    }
    ablation = store.require("pretrain_ablation").manifest["extra"]["summary"]
    assert "heldout/reasoning" in ablation["buckets"]

    # evaluation: both reports, per-sample rows, the reference model scores on arithmetic
    for model in ("eval_base_model", "eval_reference_model"):
        report = store.require(model)
        summary = report.manifest["extra"]["summary"]
        # the eval sets are the Definitions' (built from the first recipe this session loaded)
        assert {"arithmetic", "humaneval"} <= set(summary)
        assert all(s["items"] <= 6 and s["k"] == 2 for s in summary.values())
        assert report.manifest["counts"]["samples"] == sum(s["items"] * 2 for s in summary.values())
        assert report.manifest["extra"]["sandbox"]["mode"] == "bubblewrap"  # HumanEval ran there
        assert "no network" in (report.local_path / "report.md").read_text()
    reference = store.require("eval_reference_model").manifest["extra"]["summary"]
    assert reference["arithmetic"]["avg"] > 0

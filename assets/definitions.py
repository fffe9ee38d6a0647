"""The Definitions: every asset, check, resource and job of the pipeline, in one place."""

import os

import dagster as dg

from assets import curriculum, evaluation, pretrain, refinery
from assets.console import quiet_framework_warnings
from assets.corpus import RAW_ASSETS, RAW_CHECKS, corpus_summary
from assets.resources import (
    RecipeResource,
    StoreResource,
    TeacherResource,
    VersionedStoreIOManager,
)

quiet_framework_warnings()  # Dagster's beta/preview API notices, for `dagster dev` runs too

ALL_ASSETS = [
    *RAW_ASSETS,
    corpus_summary,
    *refinery.ASSETS,
    *curriculum.ASSETS,
    *pretrain.ASSETS,
    *evaluation.ASSETS,
]
ALL_CHECKS = [
    *RAW_CHECKS,
    *refinery.CHECKS,
    *curriculum.CHECKS,
    *pretrain.CHECKS,
    *evaluation.CHECKS,
]

main_job = dg.define_asset_job(
    "main",
    selection=dg.AssetSelection.all(),
    description="The whole asset graph with the recipe's settings (tiny recipe on CPU by default).",
    executor_def=dg.in_process_executor,
)
corpus_job = dg.define_asset_job(
    "corpus",
    selection=dg.AssetSelection.groups("corpus"),
    description="The raw corpus of every domain and its summary table (seconds on CPU).",
    executor_def=dg.in_process_executor,
)
refinery_job = dg.define_asset_job(
    "refinery",
    selection=dg.AssetSelection.groups("corpus", "refinery"),
    description="Corpus, filtering, dedup, decontamination, tagging, retrieval and tiers.",
    executor_def=dg.in_process_executor,
)
eval_job = dg.define_asset_job(
    "eval",
    selection=dg.AssetSelection.groups("eval"),
    description="Eval sets and the eval reports (base_model must exist).",
    executor_def=dg.in_process_executor,
)
pretrain_job = dg.define_asset_job(
    "pretrain",
    selection=dg.AssetSelection.groups("curriculum", "pretrain"),
    description="Tokenizer, shards, plan, every FG-WSD stage and the HF export (refinery done).",
    executor_def=dg.in_process_executor,
)


def build_resources(store_root: str = "", recipe: str = "") -> dict:
    return {
        "recipe": RecipeResource(path=recipe),
        "store": StoreResource(root=store_root),
        "io_manager": VersionedStoreIOManager(root=store_root),
        "launcher": pretrain.LauncherResource(),
        "teacher": TeacherResource(),
    }


AUTOMATION_ENV = "NANBEIGE_AUTOMATION"  # "eager": re-materialize when upstream or code changes


def with_automation(assets: list, mode: str) -> list:
    """Opt-in declarative automation: every asset gets Dagster's eager condition (materialize
    when a parent updates or its code version changes); the default automation sensor runs it
    once `dagster dev` (or the daemon) is up and the sensor is switched on."""
    if mode != "eager":
        return assets
    condition = dg.AutomationCondition.eager() | dg.AutomationCondition.code_version_changed()
    return list(
        dg.map_asset_specs(
            lambda spec: spec.replace_attributes(automation_condition=condition), assets
        )
    )


defs = dg.Definitions(
    assets=with_automation(ALL_ASSETS, os.environ.get(AUTOMATION_ENV, "")),
    asset_checks=ALL_CHECKS,
    jobs=[main_job, corpus_job, refinery_job, pretrain_job, eval_job],
    resources=build_resources(),
)

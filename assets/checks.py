"""Blocking quality gates in a few lines: a Great Expectations suite as a Dagster asset check.

    gx_check("raw_web", suite=lambda r: corpus_suite(...), frame=corpus_frame)

makes a blocking check that validates the version the asset just committed; a failure stops
everything downstream in the same run, shows counts and failing examples as metadata, and says
in its description which documents failed (id, and file:line for user files).
"""

from collections.abc import Callable

import dagster as dg
import pandas as pd

from assets.resources import RecipeResource, StoreResource
from nanbeige_data.quality import CheckReport, validate_frame
from nanbeige_data.recipe import Recipe
from nanbeige_data.store.versioned import Version, VersionedStore


def committed_version(
    context: dg.AssetCheckExecutionContext, store: VersionedStore, key: dg.AssetKey
) -> Version:
    """The version recorded by the asset's latest materialization (the one this run made)."""
    event = context.instance.get_latest_materialization_event(key)
    if event is not None and event.asset_materialization is not None:
        recorded = event.asset_materialization.metadata.get("version_id")
        if recorded is not None:
            return store.localize(store.get(key.to_python_identifier(), str(recorded.value)))
    return store.localize(store.require(key.to_python_identifier()))


def report_metadata(report: CheckReport) -> dict:
    failures = {
        r.name: {
            "unexpected": r.unexpected_count,
            "of": r.element_count,
            "examples": [str(x)[:200] for x in r.examples[:5]],
            "rows": r.rows,  # which documents: id, and file/line for user files
        }
        for r in report.failures
    }
    return {
        "rows": report.rows,
        "expectations": len(report.results),
        "failed_expectations": len(report.failures),
        "failures": dg.MetadataValue.json(failures),
        "report": dg.MetadataValue.md("```\n" + report.summary() + "\n```"),
    }


def version_check(
    asset: str,
    *,
    name: str,
    evaluate: Callable[[Version, Recipe], tuple[bool, dict] | tuple[bool, dict, str]],
    description: str = "",
) -> dg.AssetChecksDefinition:
    """A blocking check computed by a plain function of the committed version and the recipe;
    ``evaluate`` returns (passed, metadata) or (passed, metadata, what-failed text)."""

    @dg.asset_check(asset=asset, name=name, blocking=True, description=description)
    def _check(
        context: dg.AssetCheckExecutionContext, recipe: RecipeResource, store: StoreResource
    ) -> dg.AssetCheckResult:
        version = committed_version(context, store.open(), dg.AssetKey(asset))
        passed, metadata, *said = evaluate(version, recipe.load())
        context.log.debug(f"{asset}:{name} {'passed' if passed else 'FAILED'} {metadata}")
        return dg.AssetCheckResult(
            passed=bool(passed),
            metadata={"version_id": version.version_id, **metadata},
            description=said[0] if said and not passed else None,
        )

    return _check


def gx_check(
    asset: str,
    *,
    name: str,
    suite: Callable[[Recipe], list],
    frame: Callable[[Version], pd.DataFrame],
    description: str = "",
) -> dg.AssetChecksDefinition:
    """A blocking asset check that runs a GE suite on a frame built from the asset's version."""

    def evaluate(version: Version, recipe: Recipe) -> tuple[bool, dict, str]:
        report = validate_frame(frame(version), suite(recipe), suite_name=f"{asset}.{name}")
        return report.success, report_metadata(report), report.description()

    return version_check(asset, name=name, evaluate=evaluate, description=description)

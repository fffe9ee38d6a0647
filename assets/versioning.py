"""One way for every asset to write a version: stage, let the library fill it, commit, report.

    return materialize(context, recipe, store, "refinery.dedup", inputs,
                       lambda rcp, out: dedup.dedup_corpus(..., out.path, rcp.refinery.dedup))

``materialize`` opens a staging directory, calls the library (which returns a
:class:`~nanbeige_data.report.Report`), seals the version with its manifest and returns it as a
Dagster output whose metadata is the report's.

`code_version` of an asset = its library module's CODE_VERSION + the hash of the recipe section
it reads, so a recipe change marks exactly the assets that read that section stale.
"""

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import dagster as dg

from assets.resources import RecipeResource, StoreResource, definition_recipe
from nanbeige_data.corpus.build import CorpusError
from nanbeige_data.recipe import Recipe, RecipeError
from nanbeige_data.report import Report
from nanbeige_data.store.lineage import lineage, markdown
from nanbeige_data.store.versioned import Staging, StoreError, Version, VersionedStore


def code_version(module_version: str, *sections: str) -> str:
    """Definition-time code version: module version + the sections' hash in the recipe the
    Definitions are built from ($NANBEIGE_RECIPE; see assets.resources, one recipe per code
    location)."""
    return f"{module_version}+{definition_recipe().section_hash(*sections)}"


INPUT_ERRORS = (CorpusError, RecipeError, StoreError)


@contextlib.contextmanager
def staged(store: VersionedStore, context: dg.AssetExecutionContext) -> Iterator[Staging]:
    """A staging dir for this asset; bad input becomes a clear Failure, not a traceback."""
    try:
        with store.stage(context.asset_key.to_python_identifier()) as staging:
            yield staging
    except INPUT_ERRORS as exc:
        raise dg.Failure(
            description=f"{context.asset_key.to_user_string()}: {exc}",
            metadata={"error": type(exc).__name__, "nothing_written": True},
        ) from exc


def report_metadata(report: Report) -> dict[str, Any]:
    """A stage's report as Dagster metadata (markdown, JSON and plain values)."""
    return {
        **{k: dg.MetadataValue.md(v) for k, v in report.markdown.items()},
        **{k: dg.MetadataValue.json(v) for k, v in report.json.items()},
        **report.values,
    }


def materialize(
    context: dg.AssetExecutionContext,
    recipe: RecipeResource,
    store: StoreResource,
    section: str | tuple[str, ...],
    inputs: Mapping[str, Version],
    run: Callable[[Recipe, Staging], Report],
) -> dg.Output[Version]:
    """Stage -> call the library -> commit: the body of every asset that writes a version.

    ``run(recipe, staging)`` fills ``staging.path`` and returns the stage's report."""
    rcp, vstore = recipe.load(), store.open()
    sections = (section,) if isinstance(section, str) else section
    with staged(vstore, context) as stage:
        report = run(rcp, stage)
        version = vstore.commit(
            stage,
            inputs=dict(inputs),
            code_version=context.assets_def.code_versions_by_key.get(context.asset_key) or "",
            recipe_hash=rcp.section_hash(*sections),
            recipe_name=rcp.name,
            counts=dict(report.counts),
            extra={**_provenance(context, rcp, sections), **report.extra},
        )
    context.log.info(f"committed {version.key} {version.version_id} at {version.path}")
    meta = {**_version_metadata(vstore, version, rcp, sections), **report_metadata(report)}
    return dg.Output(version, data_version=dg.DataVersion(version.data_version), metadata=meta)


def _provenance(context: dg.AssetExecutionContext, recipe: Recipe, sections: tuple) -> dict:
    """What the manifest records beside the report: the run, the seed, and the values behind
    recipe_hash, so the exact recipe is recoverable from the store."""
    return {
        "run_id": context.run_id,
        "seed": recipe.seed,
        "recipe_sections": {n: recipe.section(n).model_dump(mode="json") for n in sections},
    }


def _version_metadata(
    store: VersionedStore, version: Version, recipe: Recipe, sections: tuple
) -> dict[str, Any]:
    return {
        "version_id": version.version_id,
        "data_version": version.data_version,
        "path": dg.MetadataValue.path(version.path),
        "recipe": recipe.name,
        "recipe_hash": recipe.section_hash(*sections),
        "inputs": dg.MetadataValue.json(version.manifest["inputs"]),
        # every version behind this one, each asset name a link to its page in the UI
        "lineage": dg.MetadataValue.md(markdown(lineage(store, version.key, version.version_id))),
        **{k: int(v) for k, v in version.manifest["counts"].items()},
    }

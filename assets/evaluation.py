"""The eval group: evalset_<name> (one asset per evaluation set) and eval_<model> reports for
the pretrained base model and the packaged reference model (SmolLM2-135M-Instruct)."""

import dagster as dg
import polars as pl

from assets.checks import version_check
from assets.resources import RecipeResource, StoreResource, definition_recipe
from assets.versioning import code_version, materialize
from nanbeige_data.evaluation import evalsets
from nanbeige_data.recipe import Recipe
from nanbeige_data.store.versioned import Version
from nanbeige_train import evaluate

GROUP = "eval"


def evalset_asset(name: str) -> dg.AssetsDefinition:
    @dg.asset(
        name=f"evalset_{name}",
        group_name=GROUP,
        code_version=code_version(evalsets.CODE_VERSION, "eval"),
        description=f"The '{name}' evaluation set as JSONL items (prompt, reference, verifier).",
        kinds={"json"},
    )
    def _set(
        context: dg.AssetExecutionContext, recipe: RecipeResource, store: StoreResource
    ) -> dg.Output[Version]:
        try:
            return materialize(
                context,
                recipe,
                store,
                "eval",
                {},
                lambda rcp, out: evalsets.build_set(name, rcp.eval, out.path),
            )
        except evalsets.EvalSetError as exc:
            raise dg.Failure(description=f"evalset_{name}: {exc}") from exc

    return _set


def _set_names() -> list[str]:
    return [s.name for s in definition_recipe().eval.sets]


SETS = _set_names()
SET_ASSETS = [evalset_asset(name) for name in SETS]
SET_INS = {f"evalset_{n}": dg.AssetIn(f"evalset_{n}") for n in SETS}


def _evaluate(
    context: dg.AssetExecutionContext,
    recipe: RecipeResource,
    store: StoreResource,
    inputs: dict[str, Version],
    chat: bool,
    model: str | None = None,
    label: str | None = None,
) -> dg.Output[Version]:
    """materialize() around evaluate.evaluate_model (model None: the recipe's reference model),
    its progress lines into the run's log."""
    set_dirs = {n: inputs[f"evalset_{n}"].local_path for n in SETS}
    return materialize(
        context,
        recipe,
        store,
        ("eval", "sandbox"),
        inputs,
        lambda rcp, out: evaluate.evaluate_model(
            model or rcp.eval.reference_model,
            set_dirs,
            rcp.eval,
            out.path,
            chat=chat,
            label=label or rcp.eval.reference_model,
            progress=context.log.info,
            sandbox=rcp.sandbox,
        ),
    )


@dg.asset(
    group_name=GROUP,
    ins={"base_model": dg.AssetIn("base_model"), **SET_INS},
    code_version=code_version(evaluate.CODE_VERSION, "eval", "sandbox"),
    description="avg@k / pass@k of the pretrained base model on every eval set (completion "
    "prompts), per-sample results in results.parquet.",
    kinds={"pytorch", "duckdb"},
)
def eval_base_model(
    context: dg.AssetExecutionContext,
    recipe: RecipeResource,
    store: StoreResource,
    base_model: Version,
    **sets: Version,
) -> dg.Output[Version]:
    inputs = {"base_model": base_model, **sets}
    path = str(base_model.local_path)
    return _evaluate(context, recipe, store, inputs, chat=False, model=path, label="base_model")


@dg.asset(
    group_name=GROUP,
    ins=SET_INS,
    code_version=code_version(evaluate.CODE_VERSION, "eval", "sandbox"),
    description="The same harness on the reference model (recipe eval.reference_model; the "
    "packaged SmolLM2-135M-Instruct by default, chat prompts): a model that can answer, so "
    "the harness is seen to give non-zero scores.",
    kinds={"pytorch", "duckdb"},
)
def eval_reference_model(
    context: dg.AssetExecutionContext,
    recipe: RecipeResource,
    store: StoreResource,
    **sets: Version,
) -> dg.Output[Version]:
    return _evaluate(context, recipe, store, sets, chat=True)


def _complete(version: Version, rcp: Recipe) -> tuple[bool, dict]:
    """Every item got its k samples and every sample a verdict."""
    summary = version.manifest["extra"]["summary"]
    rows = pl.read_parquet(version.local_path / evaluate.RESULTS_FILE)
    expected = sum(s["items"] * s["k"] for s in summary.values())
    missing = rows.filter(pl.col("reason").is_null()).height
    return rows.height == expected and missing == 0, {"samples": rows.height, "expected": expected}


def _nonzero(version: Version, rcp: Recipe) -> tuple[bool, dict]:
    summary = version.manifest["extra"]["summary"]
    best = max(summary.items(), key=lambda kv: kv[1]["avg"])
    return best[1]["avg"] > 0, {"best_set": best[0], "best_avg": best[1]["avg"]}


ASSETS = [*SET_ASSETS, eval_base_model, eval_reference_model]
CHECKS = [
    version_check(
        "eval_base_model",
        name="every_sample_verified",
        evaluate=_complete,
        description="k samples per item, a verdict for each.",
    ),
    version_check(
        "eval_reference_model",
        name="every_sample_verified",
        evaluate=_complete,
        description="k samples per item, a verdict for each.",
    ),
    version_check(
        "eval_reference_model",
        name="harness_scores_a_capable_model",
        evaluate=_nonzero,
        description="The reference model scores above zero on at least one set.",
    ),
]

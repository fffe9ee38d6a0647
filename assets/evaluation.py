"""The eval group: evalset_<name> (one asset per evaluation set) and eval_<model> reports for
the pretrained base model and the packaged reference model (SmolLM2-135M-Instruct)."""

import json
import os

import dagster as dg
import polars as pl

from assets.checks import version_check
from assets.resources import RecipeResource, StoreResource
from assets.versioning import _definition_recipe, code_version, commit, staged
from nanbeige_data.evaluation import evalsets
from nanbeige_data.recipe import RECIPE_ENV, Recipe
from nanbeige_data.store.versioned import Version
from nanbeige_train import evaluate
from nanbeige_train.generation.engines import load_engine

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
        rcp, vstore = recipe.load(), store.open()
        cfg = next((s for s in rcp.eval.sets if s.name == name), None)
        with staged(vstore, context) as stage:
            try:
                items, info = evalsets.load_items(
                    name,
                    path=cfg.path if cfg else None,
                    verifier=cfg.verifier if cfg else "exact",
                    max_items=rcp.eval.max_items,
                )
            except evalsets.EvalSetError as exc:
                raise dg.Failure(description=f"evalset_{name}: {exc}") from exc
            evalsets.write_items(items, stage.path / "items.jsonl")
            return commit(
                context,
                vstore,
                stage,
                recipe=rcp,
                section="eval",
                counts={"items": info.items, "available": info.available},
                metadata={
                    "license": info.license,
                    "source": info.source,
                    "verifier": info.verifier,
                },
                extra={"info": info.as_dict()},
            )

    return _set


def _set_names() -> list[str]:
    return [s.name for s in _definition_recipe(os.environ.get(RECIPE_ENV, "")).eval.sets]


SETS = _set_names()
SET_ASSETS = [evalset_asset(name) for name in SETS]
SET_INS = {f"evalset_{n}": dg.AssetIn(f"evalset_{n}") for n in SETS}


def _run_eval(
    context: dg.AssetExecutionContext,
    rcp: Recipe,
    store: StoreResource,
    model_spec: str,
    chat: bool,
    label: str,
    inputs: dict[str, Version],
) -> dg.Output[Version]:
    vstore = store.open()
    e = rcp.eval
    config = evaluate.EvalConfig(
        temperature=e.temperature,
        top_p=e.top_p,
        k=dict(e.k),
        max_new_tokens=e.max_new_tokens,
        seed=e.seed,
        chat=chat,
        code_timeout_s=e.code_timeout_s,
        code_memory_mb=e.code_memory_mb,
    )
    sets = {
        key.removeprefix("evalset_"): evalsets.read_items(v.local_path / "items.jsonl")
        for key, v in inputs.items()
        if key.startswith("evalset_")
    }
    engine = load_engine(
        model_spec, backend=e.backend, batch_size=e.batch_size, chat=chat, dtype=e.dtype
    )
    with staged(vstore, context) as stage:
        rows, summary = evaluate.evaluate(engine, sets, config, log=context.log.info)
        pl.DataFrame(rows).write_parquet(stage.path / "results.parquet")
        (stage.path / "summary.json").write_text(json.dumps(summary, indent=2))
        report = evaluate.report_markdown(label, summary)
        (stage.path / "report.md").write_text(report)
        plot = evaluate.plot_report(summary, stage.path / "report.png", label)
        return commit(
            context,
            vstore,
            stage,
            recipe=rcp,
            section="eval",
            inputs=inputs,
            counts={"samples": len(rows), "items": sum(s["items"] for s in summary.values())},
            metadata={
                "report": dg.MetadataValue.md(report),
                "plot": dg.MetadataValue.md(plot),
                **{f"{n}_avg@{s['k']}": round(s["avg"], 4) for n, s in summary.items()},
                "config": dg.MetadataValue.json(config.as_dict()),
            },
            extra={"summary": summary, "config": config.as_dict(), "model": model_spec},
        )


@dg.asset(
    group_name=GROUP,
    ins={"base_model": dg.AssetIn("base_model"), **SET_INS},
    code_version=code_version(evaluate.CODE_VERSION, "eval"),
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
    return _run_eval(
        context, recipe.load(), store, str(base_model.local_path), False, "base_model", inputs
    )


@dg.asset(
    group_name=GROUP,
    ins=SET_INS,
    code_version=code_version(evaluate.CODE_VERSION, "eval"),
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
    rcp = recipe.load()
    return _run_eval(
        context, rcp, store, rcp.eval.reference_model, True, rcp.eval.reference_model, sets
    )


def _complete(version: Version, rcp: Recipe) -> tuple[bool, dict]:
    """Every item got its k samples and every sample a verdict."""
    summary = version.manifest["extra"]["summary"]
    rows = pl.read_parquet(version.local_path / "results.parquet")
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

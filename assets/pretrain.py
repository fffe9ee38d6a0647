"""The pretrain group: pretrain_<stage> (one asset per FG-WSD stage, each resuming from the
previous stage) -> base_model (Hugging Face export), and the FG-WSD vs vanilla-WSD ablation.

Stages come from the recipe the Definitions are built from; training is launched through the
``launcher`` resource (local torchrun here; a cluster launcher elsewhere). What a stage trains
and writes is :mod:`nanbeige_train.pretrain.stage`'s business, the ablation
:mod:`nanbeige_train.pretrain.ablation`'s; here they get their recipe sections, a work
directory that outlives a crashed attempt, and a progress callback into the run's log."""

import contextlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import dagster as dg

from assets.checks import version_check
from assets.curriculum import stage_names
from assets.resources import RecipeResource, StoreResource
from assets.versioning import code_version, materialize
from nanbeige_data.recipe import Recipe
from nanbeige_data.report import Report
from nanbeige_data.store.versioned import Staging, Version
from nanbeige_train import export
from nanbeige_train.launch import LocalLauncher, TrainingError
from nanbeige_train.pretrain import ablation
from nanbeige_train.pretrain import stage as runner

GROUP = "pretrain"
SECTIONS = ("model", "pretrain")


class LauncherResource(dg.ConfigurableResource):
    """How training processes start: torchrun on this machine with ``nproc_per_node`` ranks
    (0 = the recipe's ``pretrain.nproc_per_node``)."""

    nproc_per_node: int = 0
    timeout_s: int = 0

    def launcher(self, rcp: Recipe) -> LocalLauncher:
        return LocalLauncher(
            nproc_per_node=self.nproc_per_node or rcp.pretrain.nproc_per_node,
            timeout_s=self.timeout_s or None,
        )


def _train(
    context: dg.AssetExecutionContext,
    recipe: RecipeResource,
    store: StoreResource,
    launcher: LauncherResource,
    section: tuple[str, ...],
    inputs: Mapping[str, Version],
    train: Callable[[Recipe, runner.TrainingRun], Report],
) -> dg.Output[Version]:
    """``materialize`` with a work directory that outlives a crash (same code and inputs ->
    same directory, so the next attempt resumes), discarded once the version is committed;
    the training log's progress goes to the run's log."""
    key = context.asset_key.to_python_identifier()
    code = context.assets_def.code_versions_by_key.get(context.asset_key) or ""
    work = runner.work_dir(store.open(), key, code, inputs)

    def run(rcp: Recipe, out: Staging) -> Report:
        on_line = runner.progress(context.log.info, context.log.warning)
        launch = launcher.launcher(rcp)
        return train(rcp, runner.TrainingRun(work, out.path, launch, on_line, context.log.info))

    with _failure_with_log_tail(key, work):
        version = materialize(context, recipe, store, section, inputs, run)
    store.open().discard_workdir(work)
    return version


@contextlib.contextmanager
def _failure_with_log_tail(key: str, work: Path) -> Iterator[None]:
    """A failed training process becomes a Dagster failure naming it, with its log's tail."""
    try:
        yield
    except TrainingError as exc:
        raise dg.Failure(
            description=f"{key}: {str(exc).splitlines()[0]}",
            metadata={
                "log_tail": dg.MetadataValue.text(str(exc)[-4000:]),
                "work_dir": dg.MetadataValue.path(str(work)),
            },
        ) from exc


def pretrain_stage_asset(stage: str, previous: str | None) -> dg.AssetsDefinition:
    """``pretrain_<stage>``; it depends on ``pretrain_<previous>`` when there is one."""
    ins = {name: dg.AssetIn(name) for name in (f"plan_{stage}", "token_shards", "tokenizer")}
    if previous:
        ins[f"pretrain_{previous}"] = dg.AssetIn(f"pretrain_{previous}")

    @dg.asset(
        name=f"pretrain_{stage}",
        group_name=GROUP,
        ins=ins,
        code_version=code_version(runner.CODE_VERSION, *SECTIONS),
        description=f"FG-WSD stage '{stage}' trained by torchtitan"
        + (f", resuming from pretrain_{previous}'s checkpoint" if previous else "")
        + ". Holds the DCP checkpoint, loss curve and tokens seen per bucket.",
        kinds={"torchtitan", "pytorch"},
    )
    def _stage(
        context: dg.AssetExecutionContext,
        recipe: RecipeResource,
        store: StoreResource,
        launcher: LauncherResource,
        **inputs: Version,
    ) -> dg.Output[Version]:
        return _train(
            context,
            recipe,
            store,
            launcher,
            SECTIONS,
            inputs,
            lambda rcp, run: runner.train_stage_version(
                stage,
                plan=inputs[f"plan_{stage}"],
                shards=inputs["token_shards"],
                tokenizer=inputs["tokenizer"],
                previous=inputs.get(f"pretrain_{previous}"),
                model=rcp.model,
                pretrain=rcp.pretrain,
                seed=rcp.seed,
                run=run,
            ),
        )

    return _stage


def stage_checks(stage: str) -> list[dg.AssetChecksDefinition]:
    asset = f"pretrain_{stage}"
    return [
        version_check(
            asset,
            name="loss_finite_and_falling",
            evaluate=lambda version, rcp: runner.check_loss(version),
            description="Every loss is finite; the last steps' mean is below the first steps' "
            "(the run's first steps for a later stage, whose loss has plateaued).",
        ),
        version_check(
            asset,
            name="tokens_match_plan",
            evaluate=lambda version, rcp: runner.check_tokens(version),
            description="Tokens seen per bucket are within 1% of the plan.",
        ),
        version_check(
            asset,
            name="checkpoint_reloads",
            evaluate=lambda version, rcp: runner.check_reloads(version),
            description="The DCP checkpoint loads into the model and gives finite logits.",
        ),
    ]


STAGES = stage_names()
STAGE_ASSETS = [
    pretrain_stage_asset(name, STAGES[i - 1] if i else None) for i, name in enumerate(STAGES)
]
LAST_STAGE = f"pretrain_{STAGES[-1]}"


@dg.asset(
    group_name=GROUP,
    ins={"final": dg.AssetIn(LAST_STAGE), "tokenizer": dg.AssetIn("tokenizer")},
    code_version=code_version(export.CODE_VERSION, "model"),
    description="The pretrained base model in Hugging Face format (safetensors, config.json, "
    "tokenizer) that transformers loads as a Llama causal LM.",
    kinds={"huggingface", "safetensors"},
)
def base_model(
    context: dg.AssetExecutionContext,
    recipe: RecipeResource,
    store: StoreResource,
    final: Version,
    tokenizer: Version,
) -> dg.Output[Version]:
    return materialize(
        context,
        recipe,
        store,
        "model",
        {LAST_STAGE: final, "tokenizer": tokenizer},
        lambda rcp, out: export.export_version(final, tokenizer, rcp.model, out.path),
    )


@dg.asset(
    group_name=GROUP,
    ins={
        **{f"pretrain_{s}": dg.AssetIn(f"pretrain_{s}") for s in STAGES},
        **{name: dg.AssetIn(name) for name in ("fgwsd_plan", "token_shards", "tokenizer")},
    },
    code_version=code_version(runner.CODE_VERSION, *SECTIONS, "curriculum"),
    description="FG-WSD vs vanilla WSD on the same token budget and LR: the vanilla plan (one "
    "fixed mixture) is trained here, both are scored on every held-out bucket and the "
    "reasoning set; extra seeds of both plans when the recipe asks for them.",
    kinds={"torchtitan"},
)
def pretrain_ablation(
    context: dg.AssetExecutionContext,
    recipe: RecipeResource,
    store: StoreResource,
    launcher: LauncherResource,
    fgwsd_plan: Version,
    token_shards: Version,
    tokenizer: Version,
    **stages: Version,
) -> dg.Output[Version]:
    inputs = {"fgwsd_plan": fgwsd_plan, "token_shards": token_shards, "tokenizer": tokenizer}
    return _train(
        context,
        recipe,
        store,
        launcher,
        (*SECTIONS, "curriculum"),
        {**inputs, **stages},
        lambda rcp, run: ablation.run_ablation(
            stages=stages,
            plans=fgwsd_plan,
            shards=token_shards,
            tokenizer=tokenizer,
            model=rcp.model,
            pretrain=rcp.pretrain,
            curriculum=rcp.curriculum,
            seed=rcp.seed,
            run=run,
        ),
    )


ASSETS = [*STAGE_ASSETS, base_model, pretrain_ablation]
CHECKS = [
    *[check for name in STAGES for check in stage_checks(name)],
    version_check(
        "base_model",
        name="logits_match_training_model",
        evaluate=lambda version, rcp: export.check_export(version),
        description="transformers' logits on a fixed batch equal the training model's (1e-4).",
    ),
    version_check(
        "pretrain_ablation",
        name="heldout_losses_finite",
        evaluate=lambda version, rcp: ablation.check_ablation(version),
        description="Both plans were scored on every held-out set with finite losses.",
    ),
]

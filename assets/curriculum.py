"""The curriculum group: tokenizer -> token_shards -> fgwsd_plan (FG-WSD and vanilla WSD) ->
plan_<stage> (what each pretraining stage reads of the plan).

Each asset calls one function of :mod:`nanbeige_data.pretraining.tokenizer` or
:mod:`nanbeige_data.pretraining.curriculum`, which writes the version's files and its report."""

import dagster as dg

from assets.checks import version_check
from assets.resources import RecipeResource, StoreResource, definition_recipe
from assets.versioning import code_version, materialize
from nanbeige_data.pretraining import curriculum
from nanbeige_data.pretraining import tokenizer as tokenization  # the asset is named tokenizer
from nanbeige_data.store.versioned import Version

GROUP = "curriculum"


def stage_names() -> list[str]:
    """The FG-WSD stages of the recipe the Definitions are built from (one asset each)."""
    return [s.name for s in definition_recipe().curriculum.stages]


@dg.asset(
    group_name=GROUP,
    code_version=code_version(tokenization.CODE_VERSION, "tokenizer"),
    description="Byte-level BPE trained on the refined corpus (or the recipe's tokenizer.json), "
    "chat / thinking / tool-call special tokens reserved at ids 0..n-1.",
    kinds={"huggingface"},
)
def tokenizer(
    context: dg.AssetExecutionContext,
    recipe: RecipeResource,
    store: StoreResource,
    decontaminated: Version,
) -> dg.Output[Version]:
    return materialize(
        context,
        recipe,
        store,
        "tokenizer",
        {"decontaminated": decontaminated},
        lambda rcp, out: tokenization.build_tokenizer(
            decontaminated.local_path, rcp.tokenizer, out.path, seed=rcp.seed, log=context.log.info
        ),
    )


@dg.asset(
    group_name=GROUP,
    code_version=code_version(tokenization.CODE_VERSION, "tokenizer"),
    description="Packed token shards per (domain, tier) bucket, train and held-out splits "
    "(uint16/uint32 memmaps, EOS between documents), plus a reasoning held-out set.",
    kinds={"numpy"},
)
def token_shards(
    context: dg.AssetExecutionContext,
    recipe: RecipeResource,
    store: StoreResource,
    decontaminated: Version,
    quality_tiers: Version,
    tokenizer: Version,
) -> dg.Output[Version]:
    inputs = {"decontaminated": decontaminated, "quality_tiers": quality_tiers}
    return materialize(
        context,
        recipe,
        store,
        "tokenizer",
        {**inputs, "tokenizer": tokenizer},
        lambda rcp, out: tokenization.build_token_shards(
            decontaminated.local_path,
            quality_tiers.local_path,
            tokenizer.local_path,
            out.path,
            seed=rcp.seed,
            log=context.log.info,
        ),
    )


@dg.asset(
    group_name=GROUP,
    code_version=code_version(curriculum.CODE_VERSION, "curriculum", "pretrain", "refinery.tiers"),
    description="The FG-WSD plan: per stage its token budget, steps, LR segment, mixture, "
    "sequence length and RoPE theta; epochs per bucket; and the vanilla-WSD plan (same LR and "
    "budget, one fixed mixture) for the ablation.",
    kinds={"json"},
)
def fgwsd_plan(
    context: dg.AssetExecutionContext,
    recipe: RecipeResource,
    store: StoreResource,
    token_shards: Version,
) -> dg.Output[Version]:
    return materialize(
        context,
        recipe,
        store,
        ("curriculum", "pretrain", "refinery.tiers"),
        {"token_shards": token_shards},
        lambda rcp, out: curriculum.build_plans(
            rcp.curriculum,
            rcp.pretrain,
            tokenization.load_index(token_shards.local_path).bucket_tokens("train"),
            out.path,
            high_quality_epochs=rcp.refinery.tiers.high_quality_epochs,
        ),
    )


def stage_plan_asset(stage: str) -> dg.AssetsDefinition:
    """``plan_<stage>``: the slice of the FG-WSD plan that ``pretrain_<stage>`` trains on.

    Its bytes change only when that slice does, and its code version reads no recipe section
    (the plan already carries them), so a change to another stage -- the decay mixture, say --
    re-runs this asset to the same data version and leaves the stage's checkpoint fresh, in
    Dagster's UI as in ``nanbeige stale``."""

    @dg.asset(
        name=f"plan_{stage}",
        group_name=GROUP,
        code_version=code_version(curriculum.CODE_VERSION),
        description=f"What stage '{stage}' reads of the FG-WSD plan: the stages up to it and "
        "the rest of its LR segment, with the LR globals.",
        kinds={"json"},
    )
    def _stage_plan(
        context: dg.AssetExecutionContext,
        recipe: RecipeResource,
        store: StoreResource,
        fgwsd_plan: Version,
    ) -> dg.Output[Version]:
        return materialize(
            context,
            recipe,
            store,
            (),
            {"fgwsd_plan": fgwsd_plan},
            lambda rcp, out: curriculum.write_stage_plan(fgwsd_plan.local_path, stage, out.path),
        )

    return _stage_plan


STAGE_PLANS = [stage_plan_asset(name) for name in stage_names()]
ASSETS = [tokenizer, token_shards, fgwsd_plan, *STAGE_PLANS]
CHECKS = [
    version_check(
        "tokenizer",
        name="roundtrip_exact",
        evaluate=lambda version, rcp: tokenization.check_roundtrip(version.local_path),
        description="Decoding the encoding of sampled corpus documents gives them back exactly.",
    ),
    version_check(
        "token_shards",
        name="shards_match_index",
        evaluate=lambda version, rcp: tokenization.check_shards(version.local_path),
        description="File sizes equal the indexed token counts; no train bucket is empty.",
    ),
    version_check(
        "fgwsd_plan",
        name="plan_valid",
        evaluate=lambda version, rcp: curriculum.check_plans(version.local_path, rcp.curriculum),
        description="Budgets add up to the recipe, mixtures sum to 1, LR is continuous, every "
        "bucket exists and none is drawn for more epochs than allowed (both plans).",
    ),
    *(
        version_check(
            f"plan_{name}",
            name="slice_valid",
            evaluate=lambda version, rcp, name=name: curriculum.check_stage_plan(
                version.local_path, name
            ),
            description="The slice holds its stage, mixtures sum to 1, LR is continuous, no "
            "bucket is drawn past its epochs.",
        )
        for name in stage_names()
    ),
]

"""The curriculum group: tokenizer -> token_shards -> fgwsd_plan (FG-WSD and vanilla WSD) ->
plan_<stage> (what each pretraining stage reads of the plan)."""

import json
import os

import dagster as dg
import numpy as np

from assets.checks import version_check
from assets.resources import RecipeResource, StoreResource
from assets.versioning import _definition_recipe, code_version, commit, staged
from nanbeige_data.pretraining import curriculum, tokenizer as tokenization
from nanbeige_data.recipe import RECIPE_ENV, Recipe
from nanbeige_data.store.versioned import Version

GROUP = "curriculum"
ROUNDTRIP_DOCS_PER_DOMAIN = 50
PLAN_FILE, VANILLA_FILE = "fgwsd.json", "vanilla_wsd.json"
STAGE_PLAN_FILE = "stage_plan.json"


def stage_names() -> list[str]:
    """The FG-WSD stages of the recipe the Definitions are built from (one asset each)."""
    return [s.name for s in _definition_recipe(os.environ.get(RECIPE_ENV, "")).curriculum.stages]


def _spec(rcp: Recipe) -> tokenization.TokenizerSpec:
    t = rcp.tokenizer
    return tokenization.TokenizerSpec(
        vocab_size=t.vocab_size, special_tokens=tuple(t.special_tokens)
    )


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
    rcp, vstore = recipe.load(), store.open()
    with staged(vstore, context) as stage:
        sample = tokenization.roundtrip_sample(
            decontaminated.local_path, ROUNDTRIP_DOCS_PER_DOMAIN, rcp.seed
        )
        if rcp.tokenizer.path:
            stats = tokenization.install_tokenizer(
                rcp.tokenizer.path, _spec(rcp), stage.path, sample=[t for _, t in sample]
            )
        else:
            texts = tokenization.corpus_texts(decontaminated.local_path)
            stats = tokenization.train_tokenizer(texts, _spec(rcp), stage.path)
        (stage.path / "roundtrip_sample.json").write_text(json.dumps(sample))
        context.log.info(f"tokenizer: {stats.vocab_size} ids, {stats.chars_per_token:.2f} ch/tok")
        return commit(
            context,
            vstore,
            stage,
            recipe=rcp,
            section="tokenizer",
            inputs={"decontaminated": decontaminated},
            counts={"vocab_size": stats.vocab_size, "documents": stats.documents},
            metadata={
                "chars_per_token": round(stats.chars_per_token, 3),
                "special_tokens": dg.MetadataValue.json(stats.special_token_ids),
                "seconds": round(stats.seconds, 2),
            },
            extra={"stats": stats.as_dict()},
        )


def _roundtrip(version: Version, rcp: Recipe) -> tuple[bool, dict]:
    sample = json.loads((version.local_path / "roundtrip_sample.json").read_text())
    result = tokenization.roundtrip(version.local_path, [tuple(x) for x in sample])
    return result.ok, {
        "documents": result.documents,
        "exact": result.exact,
        "failures": dg.MetadataValue.json(result.failures[:10]),
    }


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
    rcp, vstore = recipe.load(), store.open()
    with staged(vstore, context) as stage:
        index = tokenization.write_token_shards(
            str(decontaminated.local_path / "*.parquet"),
            quality_tiers.local_path / "tiers.parquet",
            tokenizer.local_path,
            stage.path,
            seed=rcp.seed,
            extra_heldout={"reasoning": tokenization.reasoning_heldout()},
        )
        context.log.info(
            f"token_shards: {index.total_tokens} tokens at {index.tokens_per_second:,.0f} tok/s"
        )
        lines = ["| bucket | split | documents | tokens |", "|---|---|---:|---:|"]
        lines += [f"| {r.bucket} | {r.split} | {r.documents} | {r.tokens} |" for r in index.rows]
        return commit(
            context,
            vstore,
            stage,
            recipe=rcp,
            section="tokenizer",
            inputs={
                "decontaminated": decontaminated,
                "quality_tiers": quality_tiers,
                "tokenizer": tokenizer,
            },
            counts={"tokens": index.total_tokens, "files": len(index.rows)},
            metadata={
                "buckets": dg.MetadataValue.md("\n".join(lines)),
                "tokens_per_second": round(index.tokens_per_second),
                "skipped": dg.MetadataValue.json(index.skipped),
            },
            extra={"index": index.as_dict()},
        )


def _shards_consistent(version: Version, rcp: Recipe) -> tuple[bool, dict]:
    """Every file holds exactly the tokens the index says; every train bucket is non-empty."""
    index = tokenization.load_index(version.local_path)
    wrong = [
        r.path
        for r in index.rows
        if (version.local_path / r.path).stat().st_size != r.tokens * np.dtype(r.dtype).itemsize
    ]
    empty = [r.bucket for r in index.rows if r.split == "train" and r.tokens == 0]
    return not wrong and not empty, {
        "files": len(index.rows),
        "size_mismatch": dg.MetadataValue.json(wrong),
        "empty_train_buckets": dg.MetadataValue.json(empty),
    }


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
    rcp, vstore = recipe.load(), store.open()
    available = tokenization.load_index(token_shards.local_path).bucket_tokens("train")
    with staged(vstore, context) as stage:
        plan = curriculum.plan_curriculum(
            rcp.curriculum,
            rcp.pretrain,
            bucket_tokens=available,
            high_quality_epochs=rcp.refinery.tiers.high_quality_epochs,
        )
        vanilla = curriculum.vanilla_plan(plan)
        (stage.path / PLAN_FILE).write_text(json.dumps(plan.to_dict(), indent=2))
        (stage.path / VANILLA_FILE).write_text(json.dumps(vanilla.to_dict(), indent=2))
        figure = curriculum.plot_plan(plan, stage.path / "plan.png", compare=vanilla)
        return commit(
            context,
            vstore,
            stage,
            recipe=rcp,
            section=("curriculum", "pretrain", "refinery.tiers"),
            inputs={"token_shards": token_shards},
            counts={"steps": plan.total_steps, "tokens": plan.total_tokens},
            metadata={
                "plan": dg.MetadataValue.md(curriculum.plan_table_markdown(plan)),
                "schedule": dg.MetadataValue.md(figure),
                "vanilla_wsd": dg.MetadataValue.md(curriculum.plan_table_markdown(vanilla)),
            },
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
        rcp, vstore = recipe.load(), store.open()
        plan = curriculum.Plan.load(fgwsd_plan.local_path / PLAN_FILE)
        with staged(vstore, context) as out:
            part = curriculum.stage_slice(plan, stage)
            (out.path / STAGE_PLAN_FILE).write_text(json.dumps(part.to_dict(), indent=2))
            entry = next(s for s in part.stages if s.name == stage)
            return commit(
                context,
                vstore,
                out,
                recipe=rcp,
                section=(),
                inputs={"fgwsd_plan": fgwsd_plan},
                counts={"steps": entry.steps, "tokens": entry.tokens, "stages": len(part.stages)},
            )

    return _stage_plan


def _plan_valid(version: Version, rcp: Recipe) -> tuple[bool, dict]:
    problems = {}
    for name in (PLAN_FILE, VANILLA_FILE):
        plan = curriculum.Plan.load(version.local_path / name)
        problems[name] = curriculum.check_plan(plan, rcp.curriculum)
    ok = not any(problems.values())
    return ok, {"problems": dg.MetadataValue.json(problems)}


STAGE_PLANS = [stage_plan_asset(name) for name in stage_names()]


def _slice_valid(version: Version, rcp: Recipe) -> tuple[bool, dict]:
    plan = curriculum.Plan.load(version.local_path / STAGE_PLAN_FILE)
    stage = version.key.removeprefix("plan_")
    problems = curriculum.check_plan(plan)
    if stage not in [s.name for s in plan.stages]:
        problems.append(f"stage {stage!r} is not in its slice")
    return not problems, {"problems": dg.MetadataValue.json(problems)}


ASSETS = [tokenizer, token_shards, fgwsd_plan, *STAGE_PLANS]
CHECKS = [
    version_check(
        "tokenizer",
        name="roundtrip_exact",
        evaluate=_roundtrip,
        description="Decoding the encoding of sampled corpus documents gives them back exactly.",
    ),
    version_check(
        "token_shards",
        name="shards_match_index",
        evaluate=_shards_consistent,
        description="File sizes equal the indexed token counts; no train bucket is empty.",
    ),
    version_check(
        "fgwsd_plan",
        name="plan_valid",
        evaluate=_plan_valid,
        description="Budgets add up to the recipe, mixtures sum to 1, LR is continuous, every "
        "bucket exists and none is drawn for more epochs than allowed (both plans).",
    ),
    *(
        version_check(
            f"plan_{name}",
            name="slice_valid",
            evaluate=_slice_valid,
            description="The slice holds its stage, mixtures sum to 1, LR is continuous, no "
            "bucket is drawn past its epochs.",
        )
        for name in stage_names()
    ),
]

"""The refinery group: filtered_<domain> -> deduped -> decontaminated -> quality_tags,
retrieval_index -> retrieval_scores -> quality_tiers. Each asset calls one library function."""

import json

import dagster as dg

from assets.checks import gx_check, version_check
from assets.resources import RecipeResource, StoreResource
from assets.versioning import code_version, materialize
from nanbeige_data.corpus import build as corpus
from nanbeige_data.quality import corpus_frame, corpus_suite, score_suite, table_frame
from nanbeige_data.recipe import Recipe
from nanbeige_data.refinery import decontam, dedup, filters, retrieval, tagging, tiers
from nanbeige_data.store.versioned import Version

GROUP = "refinery"


def filtered_domain_asset(domain: str) -> dg.AssetsDefinition:
    @dg.asset(
        name=f"filtered_{domain}",
        group_name=GROUP,
        ins={"raw": dg.AssetIn(f"raw_{domain}")},
        code_version=code_version(filters.CODE_VERSION, "refinery.filters"),
        description=f"{domain} after its datatrove filter chain (refinery.filters.{domain}: "
        "language id, Gopher, C4, FineWeb; code-specific rules for code); dropped documents "
        "kept under excluded/ for audit.",
        kinds={"datatrove", "parquet"},
    )
    def _filtered(
        context: dg.AssetExecutionContext,
        recipe: RecipeResource,
        store: StoreResource,
        raw: Version,
    ) -> dg.Output[Version]:
        return materialize(
            context,
            recipe,
            store,
            "refinery.filters",
            {f"raw_{domain}": raw},
            lambda rcp, out: filters.filter_domain(
                domain,
                raw.local_path,
                out.path,
                rcp.refinery.filters,
                out.scratch,
                rcp.refinery.execution,
            ),
        )

    return _filtered


def _corpus_gate(asset: str) -> dg.AssetChecksDefinition:
    return gx_check(
        asset,
        name="corpus_schema_gate",
        suite=lambda r: corpus_suite(corpus.DOMAINS, 1, r.refinery.filters.max_doc_chars),
        frame=lambda v: corpus_frame(v.path),
        description="GE: at least one document, non-null unique ids, known domains, lengths.",
    )


FILTERED = [filtered_domain_asset(d) for d in corpus.DOMAINS]


@dg.asset(
    group_name=GROUP,
    ins={f"filtered_{d}": dg.AssetIn() for d in corpus.DOMAINS},
    code_version=code_version(dedup.CODE_VERSION, "refinery.dedup"),
    description="Exact and MinHash near-duplicate removal across all domains (datatrove).",
    kinds={"datatrove", "parquet"},
)
def deduped(
    context: dg.AssetExecutionContext,
    recipe: RecipeResource,
    store: StoreResource,
    **filtered: Version,
) -> dg.Output[Version]:
    domains = {d: filtered[f"filtered_{d}"].local_path for d in corpus.DOMAINS}  # read order
    return materialize(
        context,
        recipe,
        store,
        "refinery.dedup",
        filtered,
        lambda rcp, out: dedup.dedup_corpus(
            domains, out.path, rcp.refinery.dedup, out.scratch, rcp.refinery.execution
        ),
    )


@dg.asset(
    group_name=GROUP,
    code_version=code_version(decontam.CODE_VERSION, "refinery.decontamination"),
    description="Documents sharing an n-gram with any shipped evaluation set removed.",
    kinds={"datatrove", "parquet"},
)
def decontaminated(
    context: dg.AssetExecutionContext,
    recipe: RecipeResource,
    store: StoreResource,
    deduped: Version,
) -> dg.Output[Version]:
    return materialize(
        context,
        recipe,
        store,
        "refinery.decontamination",
        {"deduped": deduped},
        lambda rcp, out: decontam.decontaminate(
            deduped.local_path,
            out.path,
            rcp.refinery.decontamination,
            out.scratch,
            rcp.refinery.execution,
        ),
    )


def _no_eval_ngrams_left(version: Version, rcp: Recipe) -> tuple[bool, dict]:
    left = decontam.residual_eval_ngrams(version.local_path, rcp.refinery.decontamination)
    return left == 0, {"eval_ngrams_left": left}


@dg.asset(
    group_name=GROUP,
    code_version=code_version(tagging.CODE_VERSION, "refinery.tagging"),
    description="The score table: 20 dimensions scored 0-9 (content and format apart) -- an LLM "
    "judge labels a sample from digit log-probabilities, a fast classifier scores every document.",
    kinds={"transformers", "parquet"},
)
def quality_tags(
    context: dg.AssetExecutionContext,
    recipe: RecipeResource,
    store: StoreResource,
    decontaminated: Version,
) -> dg.Output[Version]:
    return materialize(
        context,
        recipe,
        store,
        "refinery.tagging",
        {"decontaminated": decontaminated},
        lambda rcp, out: tagging.tag_corpus(
            [decontaminated.local_path],
            out.path,
            rcp.refinery.tagging,
            seed=rcp.seed,
            progress=context.log.info,
        ),
    )


@dg.asset(
    group_name=GROUP,
    code_version=code_version(retrieval.CODE_VERSION, "refinery.retrieval"),
    description="LanceDB table over the corpus: MiniLM vectors + a native full-text index.",
    kinds={"lancedb"},
)
def retrieval_index(
    context: dg.AssetExecutionContext,
    recipe: RecipeResource,
    store: StoreResource,
    decontaminated: Version,
) -> dg.Output[Version]:
    return materialize(
        context,
        recipe,
        store,
        "refinery.retrieval",
        {"decontaminated": decontaminated},
        lambda rcp, out: retrieval.build_index(
            [decontaminated.local_path], out.path, rcp.refinery.retrieval, context.log.info
        ),
    )


@dg.asset(
    group_name=GROUP,
    code_version=code_version(retrieval.CODE_VERSION, "refinery.retrieval"),
    description="Hybrid (vector + full-text, reciprocal rank fusion) similarity of each document "
    "to the recipe's high-quality exemplar sets, 0-9.",
    kinds={"lancedb", "parquet"},
)
def retrieval_scores(
    context: dg.AssetExecutionContext,
    recipe: RecipeResource,
    store: StoreResource,
    retrieval_index: Version,
) -> dg.Output[Version]:
    return materialize(
        context,
        recipe,
        store,
        "refinery.retrieval",
        {"retrieval_index": retrieval_index},
        lambda rcp, out: retrieval.score_documents(
            retrieval_index.local_path,
            out.path,
            rcp.refinery.retrieval,
            seed=rcp.seed,
            progress=context.log.info,
        ),
    )


@dg.asset(
    group_name=GROUP,
    code_version=code_version(tiers.CODE_VERSION, "refinery.tiers"),
    description="Utility = tags (content over format) + retrieval, cut into rejected / diverse / "
    "high-quality tiers; token counts per (domain, tier) in DuckDB.",
    kinds={"duckdb"},
)
def quality_tiers(
    context: dg.AssetExecutionContext,
    recipe: RecipeResource,
    store: StoreResource,
    decontaminated: Version,
    quality_tags: Version,
    retrieval_scores: Version,
) -> dg.Output[Version]:
    return materialize(
        context,
        recipe,
        store,
        "refinery.tiers",
        {
            "decontaminated": decontaminated,
            "quality_tags": quality_tags,
            "retrieval_scores": retrieval_scores,
        },
        lambda rcp, out: tiers.assign_tiers(
            decontaminated.local_path,
            quality_tags.local_path,
            retrieval_scores.local_path,
            out.path,
            rcp.refinery.tiers,
        ),
    )


def _tier_bounds(version: Version, rcp: Recipe) -> tuple[bool, dict]:
    stats = version.manifest["extra"]["stats"]
    n = stats["documents"]
    kept = (n - stats["per_tier"]["rejected"]["documents"]) / n
    high = stats["per_tier"]["high"]["documents"] / n
    lo, hi = rcp.refinery.tiers.high_fraction_bounds
    ok = kept >= rcp.refinery.tiers.min_kept_fraction and lo <= high <= hi
    return ok, {
        "kept_fraction": round(kept, 4),
        "high_fraction": round(high, 4),
        "bounds": json.dumps({"min_kept": rcp.refinery.tiers.min_kept_fraction, "high": [lo, hi]}),
    }


def _index_complete(version: Version, rcp: Recipe) -> tuple[bool, dict]:
    indexed = version.manifest["counts"]["documents"]
    source = version.manifest["inputs"]["decontaminated"]
    return indexed > 0, {"indexed": indexed, "source_version": source["version_id"]}


def _dedup_kept_some(version: Version, rcp: Recipe) -> tuple[bool, dict]:
    c = version.manifest["counts"]
    return 0 < c["documents"] <= c["documents_in"], {
        "kept": c["documents"],
        "of": c["documents_in"],
    }


ASSETS = [
    *FILTERED,
    deduped,
    decontaminated,
    quality_tags,
    retrieval_index,
    retrieval_scores,
    quality_tiers,
]
CHECKS = [
    *[_corpus_gate(f"filtered_{d}") for d in corpus.DOMAINS],
    _corpus_gate("deduped"),
    version_check(
        "deduped",
        name="dedup_keeps_documents",
        evaluate=_dedup_kept_some,
        description="Dedup never drops everything.",
    ),
    _corpus_gate("decontaminated"),
    version_check(
        "decontaminated",
        name="no_eval_ngrams_left",
        evaluate=_no_eval_ngrams_left,
        description="No n-gram of any evaluation set is left in the corpus.",
    ),
    gx_check(
        "quality_tags",
        name="scores_in_range",
        suite=lambda r: score_suite(
            [d.name for d in r.refinery.tagging.dimensions] + ["content_score", "format_score"]
        ),
        frame=lambda v: table_frame(v.local_path / tagging.SCORES_FILE),
        description="GE: every dimension scored, 0-9, no nulls, one row per document.",
    ),
    version_check("retrieval_index", name="index_not_empty", evaluate=_index_complete),
    gx_check(
        "retrieval_scores",
        name="scores_in_range",
        suite=lambda r: score_suite(["retrieval_score"]),
        frame=lambda v: table_frame(
            v.local_path / retrieval.SCORES_FILE, ["id", "retrieval_score"]
        ),
        description="GE: retrieval scores 0-9, no nulls, one row per document.",
    ),
    version_check(
        "quality_tiers",
        name="tier_sizes_within_bounds",
        evaluate=_tier_bounds,
        description="Kept share and high-quality share within the recipe's bounds.",
    ),
]

"""The refinery group: filtered_<domain> -> deduped -> decontaminated -> quality_tags,
retrieval_index -> retrieval_scores -> quality_tiers. Each asset calls one library function."""

import json

import dagster as dg

from assets.checks import gx_check, version_check
from assets.resources import RecipeResource, StoreResource
from assets.versioning import code_version, commit, staged
from nanbeige_data.corpus import build as corpus
from nanbeige_data.refinery import decontam, dedup, filters, retrieval, tagging, tiers
from nanbeige_data.quality import corpus_frame, corpus_suite, score_suite, table_frame
from nanbeige_data.recipe import Recipe
from nanbeige_data.store.versioned import Version

GROUP = "refinery"


def _md_table(rows: dict[str, int], header: tuple[str, str]) -> dg.MetadataValue:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows.items()]
    return dg.MetadataValue.md("\n".join(lines))


def _filter_cfg(r: Recipe) -> filters.FilterConfig:
    f = r.refinery.filters
    return filters.FilterConfig(
        language=f.language,
        min_language_score=f.min_language_score,
        max_doc_chars=f.max_doc_chars,
        max_replacement_fraction=f.max_replacement_fraction,
        executor=r.refinery.executor,
        workers=r.refinery.workers,
        slurm_partition=r.refinery.slurm_partition,
        slurm_time=r.refinery.slurm_time,
    )


def filtered_domain_asset(domain: str) -> dg.AssetsDefinition:
    @dg.asset(
        name=f"filtered_{domain}",
        group_name=GROUP,
        ins={"raw": dg.AssetIn(f"raw_{domain}")},
        code_version=code_version(filters.CODE_VERSION, "refinery.filters"),
        description=f"{domain} after datatrove's filters (language id, Gopher, C4, FineWeb; "
        "code-specific rules for code); dropped documents kept under excluded/ for audit.",
        kinds={"datatrove", "parquet"},
    )
    def _filtered(
        context: dg.AssetExecutionContext,
        recipe: RecipeResource,
        store: StoreResource,
        raw: Version,
    ) -> dg.Output[Version]:
        rcp, vstore = recipe.load(), store.open()
        with staged(vstore, context) as stage:
            stats = filters.filter_domain(
                domain, raw.local_path, stage.path, _filter_cfg(rcp), stage.scratch
            )
            context.log.info(f"{domain}: kept {stats.documents_out}/{stats.documents_in}")
            return commit(
                context,
                vstore,
                stage,
                recipe=rcp,
                section="refinery.filters",
                inputs={f"raw_{domain}": raw},
                counts={"documents_in": stats.documents_in, "documents": stats.documents_out},
                metadata={
                    "dropped_by_filter": _md_table(stats.dropped, ("filter", "dropped")),
                    "drop_reasons": dg.MetadataValue.json(stats.reasons),
                    "dropped_examples": dg.MetadataValue.json(stats.examples),
                },
                extra={"stats": stats.as_dict()},
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
    code_version=code_version(dedup.CODE_VERSION, "refinery.dedup"),
    description="Exact and MinHash near-duplicate removal across all domains (datatrove).",
    kinds={"datatrove", "parquet"},
)
def deduped(
    context: dg.AssetExecutionContext,
    recipe: RecipeResource,
    store: StoreResource,
    filtered_web: Version,
    filtered_books: Version,
    filtered_code: Version,
    filtered_papers: Version,
) -> dg.Output[Version]:
    filtered = {
        "filtered_web": filtered_web,
        "filtered_books": filtered_books,
        "filtered_code": filtered_code,
        "filtered_papers": filtered_papers,
    }
    rcp, vstore = recipe.load(), store.open()
    d = rcp.refinery.dedup
    cfg = dedup.DedupConfig(
        ngram=d.ngram,
        buckets=d.buckets,
        hashes_per_bucket=d.hashes_per_bucket,
        workers=rcp.refinery.workers,
        executor=rcp.refinery.executor,
    )
    inputs = {k.removeprefix("filtered_"): v.local_path for k, v in filtered.items()}
    with staged(vstore, context) as stage:
        stats = dedup.dedup_corpus(inputs, stage.path, cfg, stage.scratch)
        return commit(
            context,
            vstore,
            stage,
            recipe=rcp,
            section="refinery.dedup",
            inputs=filtered,
            counts={
                "documents_in": stats.documents_in,
                "documents": stats.documents_out,
                "exact_removed": stats.exact_removed,
                "near_removed": stats.near_removed,
                "clusters": stats.clusters,
            },
            metadata={
                "per_domain": dg.MetadataValue.json(stats.per_domain),
                "cluster_examples": dg.MetadataValue.json(stats.cluster_examples),
            },
            extra={"stats": stats.as_dict()},
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
    rcp, vstore = recipe.load(), store.open()
    d = rcp.refinery.decontamination
    cfg = decontam.DecontamConfig(ngram=d.ngram, min_overlaps=d.min_overlaps)
    with staged(vstore, context) as stage:
        stats = decontam.decontaminate(deduped.local_path, stage.path, cfg, stage.scratch)
        return commit(
            context,
            vstore,
            stage,
            recipe=rcp,
            section="refinery.decontamination",
            inputs={"deduped": deduped},
            counts={
                "documents_in": stats.documents_in,
                "documents": stats.documents_out,
                "removed": stats.removed,
                "index_ngrams": stats.index_ngrams,
            },
            metadata={
                "removed_by_benchmark": _md_table(stats.per_benchmark, ("benchmark", "docs")),
                "eval_items": dg.MetadataValue.json(stats.benchmarks),
                "examples": dg.MetadataValue.json(stats.examples),
            },
            extra={"stats": stats.as_dict()},
        )


def _no_eval_ngrams_left(version: Version, rcp: Recipe) -> tuple[bool, dict]:
    index = decontam.build_ngram_index(decontam.eval_items(), rcp.refinery.decontamination.ngram)
    left = decontam.residual_overlaps(version.local_path, index)
    return left == 0, {"eval_ngrams_left": left}


def _dims(rcp: Recipe) -> list[tagging.Dimension]:
    return [tagging.Dimension(d.name, d.kind, d.question) for d in rcp.refinery.tagging.dimensions]


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
    rcp, vstore = recipe.load(), store.open()
    t = rcp.refinery.tagging
    annotator = tagging.make_annotator(t.annotator, max_doc_tokens=t.max_doc_tokens)
    cfg = tagging.TaggerConfig(
        sample_size=t.sample, holdout_fraction=t.holdout_fraction, seed=rcp.seed
    )
    with staged(vstore, context) as stage:
        stats = tagging.tag_corpus(
            [decontaminated.local_path], stage.path, _dims(rcp), annotator, cfg
        )
        agreement = {
            k: "n/a" if v.get("spearman") is None else round(v["spearman"], 3)
            for k, v in stats.agreement.items()
        }
        return commit(
            context,
            vstore,
            stage,
            recipe=rcp,
            section="refinery.tagging",
            inputs={"decontaminated": decontaminated},
            counts={"documents": stats.documents, "annotated": stats.annotated},
            metadata={
                "annotator": stats.annotator,
                "heldout_spearman": _md_table(agreement, ("dimension", "spearman")),
                "agreement": dg.MetadataValue.json(stats.agreement),
                "label_distribution": dg.MetadataValue.json(stats.label_distribution),
            },
            extra={"stats": stats.as_dict()},
        )


def _retrieval_cfg(rcp: Recipe) -> retrieval.RetrievalConfig:
    r = rcp.refinery.retrieval
    return retrieval.RetrievalConfig(
        embed_max_chars=r.embed_max_chars,
        top_k=r.top_k,
        rrf_k=r.rrf_k,
        exemplars=tuple(r.exemplars),
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
    rcp, vstore = recipe.load(), store.open()
    with staged(vstore, context) as stage:
        stats = retrieval.build_index(
            [decontaminated.local_path], stage.path / "lancedb", _retrieval_cfg(rcp)
        )
        return commit(
            context,
            vstore,
            stage,
            recipe=rcp,
            section="refinery.retrieval",
            inputs={"decontaminated": decontaminated},
            counts={"documents": stats.documents},
            metadata={"embeddings_per_s": round(stats.embeddings_per_s, 1)},
            extra={"stats": stats.as_dict()},
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
    rcp, vstore = recipe.load(), store.open()
    r = rcp.refinery.retrieval
    exemplars = retrieval.exemplar_texts(r.exemplars, limit=r.exemplars_per_set, seed=rcp.seed)
    with staged(vstore, context) as stage:
        stats = retrieval.score_documents(
            retrieval_index.local_path / "lancedb", stage.path, _retrieval_cfg(rcp), exemplars
        )
        return commit(
            context,
            vstore,
            stage,
            recipe=rcp,
            section="refinery.retrieval",
            inputs={"retrieval_index": retrieval_index},
            counts={
                "documents": stats.documents,
                "exemplars": stats.exemplars,
                "hit_documents": stats.hit_documents,
            },
            extra={"stats": stats.as_dict()},
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
    rcp, vstore = recipe.load(), store.open()
    t = rcp.refinery.tiers
    cfg = tiers.TierConfig(
        content_weight=t.content_weight,
        retrieval_weight=t.retrieval_weight,
        mode=t.mode,
        cutoffs=t.cutoffs,
        quantiles=t.quantiles,
        high_epochs=t.high_quality_epochs,
    )
    with staged(vstore, context) as stage:
        stats = tiers.assign_tiers(
            decontaminated.local_path,
            quality_tags.local_path / "scores.parquet",
            retrieval_scores.local_path / "retrieval_scores.parquet",
            stage.path,
            cfg,
        )
        plot = tiers.plot_tiers(stage.path / "tiers.parquet", stats, stage.path / "tiers.png")
        table = tiers.tier_table_markdown(stage.path / "tier_tokens.parquet")
        return commit(
            context,
            vstore,
            stage,
            recipe=rcp,
            section="refinery.tiers",
            inputs={
                "decontaminated": decontaminated,
                "quality_tags": quality_tags,
                "retrieval_scores": retrieval_scores,
            },
            counts={
                "documents": stats.documents,
                **{f"{k}_documents": int(v["documents"]) for k, v in stats.per_tier.items()},
            },
            metadata={
                "tier_tokens": dg.MetadataValue.md(table),
                "cutoffs": dg.MetadataValue.json(stats.cuts_per_domain),
                "distribution": dg.MetadataValue.md(plot),
            },
            extra={"stats": stats.as_dict()},
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
        frame=lambda v: table_frame(v.local_path / "scores.parquet"),
        description="GE: every dimension scored, 0-9, no nulls, one row per document.",
    ),
    version_check("retrieval_index", name="index_not_empty", evaluate=_index_complete),
    gx_check(
        "retrieval_scores",
        name="scores_in_range",
        suite=lambda r: score_suite(["retrieval_score"]),
        frame=lambda v: table_frame(
            v.local_path / "retrieval_scores.parquet", ["id", "retrieval_score"]
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

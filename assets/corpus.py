"""The corpus group: one raw_<domain> asset per domain (a factory), its gate, and corpus_summary."""

import dagster as dg

from assets.checks import gx_check
from assets.resources import RecipeResource, StoreResource
from assets.versioning import code_version, materialize
from nanbeige_data.corpus import build as corpus
from nanbeige_data.corpus import summary
from nanbeige_data.quality import corpus_frame, corpus_suite
from nanbeige_data.store.versioned import Version

RAW = {d: f"raw_{d}" for d in corpus.DOMAINS}


def raw_domain_asset(domain: str) -> dg.AssetsDefinition:
    # the length bounds of corpus.checks decide which documents are skipped: part of the version
    sections = (f"corpus.{domain}", "corpus.checks")

    @dg.asset(
        name=RAW[domain],
        group_name="corpus",
        code_version=code_version(corpus.CODE_VERSION, *sections),
        description=f"{domain} documents (id, text, domain, source, meta) as Parquet shards: "
        "the embedded real sample or the user's files named in the recipe; documents outside "
        "the length bounds are skipped and kept under excluded/ for audit.",
        metadata={"provenance": dg.MetadataValue.md(corpus.provenance_markdown(domain))},
        kinds={"parquet"},
    )
    def _raw(
        context: dg.AssetExecutionContext, recipe: RecipeResource, store: StoreResource
    ) -> dg.Output[Version]:
        return materialize(
            context,
            recipe,
            store,
            sections,
            {},
            lambda rcp, out: corpus.build_raw(
                domain, rcp.corpus.domain(domain), rcp.corpus.checks, out.path
            ),
        )

    return _raw


def raw_domain_check(domain: str) -> dg.AssetChecksDefinition:
    return gx_check(
        RAW[domain],
        name="corpus_schema_gate",
        suite=lambda r: corpus_suite(
            corpus.DOMAINS, r.corpus.checks.min_chars, r.corpus.checks.max_chars
        ),
        frame=lambda version: corpus_frame(version.path),
        description="GE suite: non-null text and ids, unique ids, known domain, length bounds; "
        "a failure names the documents (id, file:line).",
    )


RAW_ASSETS = [raw_domain_asset(d) for d in corpus.DOMAINS]
RAW_CHECKS = [raw_domain_check(d) for d in corpus.DOMAINS]


@dg.asset(
    group_name="corpus",
    ins={key: dg.AssetIn(key) for key in RAW.values()},
    code_version=code_version(summary.CODE_VERSION, "corpus"),
    description="Documents and characters per (domain, source), a DuckDB-queryable table.",
    kinds={"duckdb"},
)
def corpus_summary(
    context: dg.AssetExecutionContext,
    recipe: RecipeResource,
    store: StoreResource,
    **raw: Version,
) -> dg.Output[Version]:
    dirs = {domain: raw[key].path for domain, key in RAW.items()}
    return materialize(
        context,
        recipe,
        store,
        "corpus",
        raw,
        lambda rcp, out: summary.summary_report(dirs, out.path),
    )

"""The corpus group: one raw_<domain> asset per domain (a factory) and corpus_summary."""

import dagster as dg

from assets.checks import gx_check
from assets.resources import RecipeResource, StoreResource
from assets.versioning import code_version, commit, staged
from nanbeige_data.corpus import build as corpus
from nanbeige_data.corpus import summary
from nanbeige_data.quality import corpus_frame, corpus_suite
from nanbeige_data.store.versioned import Version


def _provenance(domain: str) -> str:
    rows = ["| source | license | origin |", "|---|---|---|"]
    rows += [f"| {s.name} | {s.license} | `{s.origin}` |" for s in corpus.EMBEDDED_SOURCES[domain]]
    return "\n".join(rows)


def raw_domain_asset(domain: str) -> dg.AssetsDefinition:
    @dg.asset(
        name=f"raw_{domain}",
        group_name="corpus",
        code_version=code_version(corpus.CODE_VERSION, f"corpus.{domain}"),
        description=f"{domain} documents (id, text, domain, source, meta) as Parquet shards: "
        "the embedded real sample or the user's files named in the recipe.",
        metadata={"provenance": dg.MetadataValue.md(_provenance(domain))},
        kinds={"parquet"},
    )
    def _raw(
        context: dg.AssetExecutionContext, recipe: RecipeResource, store: StoreResource
    ) -> dg.Output[Version]:
        rcp = recipe.load()
        cfg = rcp.corpus.domain(domain)
        vstore = store.open()
        with staged(vstore, context) as staging:
            stats = corpus.build_domain(
                domain,
                source=cfg.source,
                paths=cfg.paths,
                max_bytes=cfg.max_bytes,
                target_doc_chars=cfg.target_doc_chars,
                min_doc_chars=cfg.min_doc_chars,
                out_dir=staging.path,
            )
            origin = (
                {
                    s.name: {"license": s.license, "origin": s.origin}
                    for s in corpus.EMBEDDED_SOURCES[domain]
                }
                if cfg.source == "embedded"
                else {"files": cfg.paths}
            )
            return commit(
                context,
                vstore,
                staging,
                recipe=rcp,
                section=f"corpus.{domain}",
                counts={"documents": stats.documents, "bytes": stats.bytes, "shards": stats.shards},
                metadata={
                    "source": cfg.source,
                    "per_source": dg.MetadataValue.json(stats.per_source),
                    "skipped": dg.MetadataValue.json(stats.skipped),
                    "recipe_path": recipe.location(),
                },
                extra={"provenance": origin, "stats": stats.as_dict()},
            )

    return _raw


def raw_domain_check(domain: str) -> dg.AssetChecksDefinition:
    return gx_check(
        f"raw_{domain}",
        name="corpus_schema_gate",
        suite=lambda r: corpus_suite(
            corpus.DOMAINS, r.corpus.checks.min_chars, r.corpus.checks.max_chars
        ),
        frame=lambda version: corpus_frame(version.path),
        description="GE suite: non-null text and ids, unique ids, known domain, length bounds.",
    )


RAW_ASSETS = [raw_domain_asset(d) for d in corpus.DOMAINS]
RAW_CHECKS = [raw_domain_check(d) for d in corpus.DOMAINS]


@dg.asset(
    group_name="corpus",
    code_version=code_version(summary.CODE_VERSION, "corpus"),
    description="Documents and characters per (domain, source), a DuckDB-queryable table.",
    kinds={"duckdb"},
)
def corpus_summary(
    context: dg.AssetExecutionContext,
    recipe: RecipeResource,
    store: StoreResource,
    raw_web: Version,
    raw_books: Version,
    raw_code: Version,
    raw_papers: Version,
) -> dg.Output[Version]:
    raw = {
        "raw_web": raw_web,
        "raw_books": raw_books,
        "raw_code": raw_code,
        "raw_papers": raw_papers,
    }
    rcp = recipe.load()
    vstore = store.open()
    with staged(vstore, context) as staging:
        table = summary.summarize_corpus(
            {key.removeprefix("raw_"): v.path for key, v in raw.items()}, staging.path
        )
        return commit(
            context,
            vstore,
            staging,
            recipe=rcp,
            section="corpus",
            inputs=raw,
            counts={"documents": int(table["documents"].sum()), "chars": int(table["chars"].sum())},
            metadata={"table": dg.MetadataValue.md(table.to_pandas().to_markdown(index=False))},
        )

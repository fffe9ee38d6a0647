"""Corpus summary: documents, characters and sources per domain, computed with DuckDB.

Reads the Parquet shards of each domain's version in place (no copy, no texts in Python) and
writes one ``summary.parquet`` table that DuckDB, Polars or pandas can query; the report carries
the table as markdown and the corpus totals as counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import duckdb
import polars as pl

from nanbeige_data.report import Report, md_table

CODE_VERSION = "1"
SUMMARY_FILE = "summary.parquet"


def summarize_corpus(domain_dirs: Mapping[str, str | Path], out_dir: Path) -> pl.DataFrame:
    """One row per (domain, source): documents, chars, mean/max chars; written to out_dir."""
    parts = []
    with duckdb.connect() as con:
        for domain, version_dir in sorted(domain_dirs.items()):
            pattern = str(Path(version_dir) / "*.parquet")
            parts.append(
                con.sql(
                    """
                    SELECT ? AS domain, source, count(*) AS documents,
                           sum(length(text)) AS chars, round(avg(length(text))) AS mean_chars,
                           max(length(text)) AS max_chars
                    FROM read_parquet(?) GROUP BY source ORDER BY source
                    """,
                    params=[domain, pattern],
                ).pl()
            )
    table = pl.concat(parts).with_columns(
        pl.col("documents").cast(pl.Int64),
        pl.col("chars").cast(pl.Int64),
        pl.col("mean_chars").cast(pl.Int64),
        pl.col("max_chars").cast(pl.Int64),
    )
    table.write_parquet(Path(out_dir) / SUMMARY_FILE)
    return table


def summary_report(domain_dirs: Mapping[str, str | Path], out_dir: Path) -> Report:
    """``summarize_corpus`` as a stage report: totals as counts, the table as markdown."""
    table = summarize_corpus(domain_dirs, out_dir)
    return Report(
        counts={"documents": int(table["documents"].sum()), "chars": int(table["chars"].sum())},
        markdown={"table": md_table(table.columns, table.rows(), "ll" + "r" * 4)},
    )

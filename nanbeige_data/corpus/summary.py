"""Corpus summary: documents, characters and sources per domain, computed with DuckDB.

Reads the Parquet shards of each domain's version in place (no copy, no texts in Python) and
writes one ``summary.parquet`` table that DuckDB, Polars or pandas can query.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import duckdb
import polars as pl

CODE_VERSION = "1"


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
    table.write_parquet(out_dir / "summary.parquet")
    return table

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


def store_views(store_root: str | Path) -> dict[str, str]:
    """View name -> Parquet glob for the newest version of every asset in a local store.

    Sharded data (``part-*.parquet``) is one view named after the asset; a named table file
    (``scores.parquet``) is a view ``<asset>_<stem>``, also ``<stem>`` while that name is free,
    and the asset's own name when it is the version's only table."""
    views: dict[str, str] = {}
    root = Path(store_root)
    if not root.is_dir():
        return views
    for asset_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        versions = sorted(v for v in asset_dir.iterdir() if (v / "manifest.json").exists())
        if not versions:
            continue
        files = sorted(versions[-1].glob("*.parquet"))
        shards = [f for f in files if f.name.startswith("part-")]
        named = [f for f in files if not f.name.startswith("part-")]
        if shards:
            views[asset_dir.name] = str(versions[-1] / "part-*.parquet")
        for f in named:
            views[f"{asset_dir.name}_{f.stem}"] = str(f)
            views.setdefault(f.stem, str(f))
        if len(named) == 1 and not shards:
            views[asset_dir.name] = str(named[0])
    return views


def query_store(store_root: str | Path, sql: str) -> pl.DataFrame:
    """Run SQL over the store's newest versions (see ``store_views`` for the view names)."""
    with duckdb.connect() as con:
        for name, pattern in store_views(store_root).items():
            escaped = pattern.replace("'", "''")
            con.sql(f"CREATE VIEW \"{name}\" AS SELECT * FROM read_parquet('{escaped}')")
        return con.sql(sql).pl()


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

"""SQL over the store: every asset's newest version as a DuckDB view (``nanbeige sql``)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl


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

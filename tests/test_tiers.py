"""Tiers: utility = weighted tags + retrieval; cut-offs; per-(domain, tier) token counts."""

from __future__ import annotations

import duckdb
import polars as pl
import pytest

from nanbeige_data.corpus.build import build_domain
from nanbeige_data.refinery.tiers import TierConfig, assign_tiers, plot_tiers


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiers")
    corpus = root / "corpus"
    corpus.mkdir()
    for domain in ("books", "papers"):
        build_domain(
            domain,
            source="embedded",
            paths=[],
            max_bytes=60_000,
            target_doc_chars=4000,
            min_doc_chars=200,
            out_dir=corpus,
            shard_docs=10_000,
        )
        for i, shard in enumerate(sorted(corpus.glob("part-*.parquet"))):
            shard.rename(corpus / f"{domain}-{i}.parquet")
    docs = pl.read_parquet(corpus / "*.parquet").select("id", "domain")
    n = docs.height
    rank = pl.Series(range(n), dtype=pl.Float64) / (n - 1) * 9  # a spread of scores 0..9
    docs.with_columns(content_score=rank, format_score=9 - rank).write_parquet(
        root / "tags.parquet"
    )
    docs.head(n // 2).with_columns(retrieval_score=pl.lit(9.0)).write_parquet(root / "ret.parquet")
    return root, n


def test_quantile_tiers_split_as_configured(scored, tmp_path):
    root, n = scored
    cfg = TierConfig(mode="quantile", quantiles=(0.2, 0.6), per_domain=False)
    stats = assign_tiers(
        root / "corpus", root / "tags.parquet", root / "ret.parquet", tmp_path, cfg
    )
    assert stats.documents == n
    counts = {t: v["documents"] for t, v in stats.per_tier.items()}
    assert sum(counts.values()) == n
    assert abs(counts["rejected"] - 0.2 * n) <= 2 and abs(counts["high"] - 0.4 * n) <= 2
    with duckdb.connect(str(tmp_path / "tiers.duckdb")) as con:
        rows = con.sql(
            "SELECT tier, sum(train_tokens), sum(tokens) FROM tier_tokens GROUP BY tier"
        ).fetchall()
        by_tier = {t: (train, tok) for t, train, tok in rows}
        assert by_tier["high"][0] == 2 * by_tier["high"][1]  # upsampled for two epochs
        assert by_tier["rejected"][0] == 0
        worst = con.sql("SELECT max(utility) FROM tiers WHERE tier='rejected'").fetchall()[0][0]
        best = con.sql("SELECT min(utility) FROM tiers WHERE tier='high'").fetchall()[0][0]
        assert worst < stats.cut_rejected <= stats.cut_high <= best


def test_content_outweighs_format_and_retrieval_recalls(scored, tmp_path):
    root, _ = scored
    cfg = TierConfig(mode="absolute", cutoffs=(3.0, 6.0), content_weight=0.7, retrieval_weight=0.3)
    assign_tiers(root / "corpus", root / "tags.parquet", root / "ret.parquet", tmp_path, cfg)
    tiers = pl.read_parquet(tmp_path / "tiers.parquet")
    expected = (
        0.7 * (0.7 * tiers["content_score"] + 0.3 * tiers["format_score"])
        + 0.3 * tiers["retrieval"]
    )
    assert (tiers["utility"] - expected).abs().max() < 1e-9
    # same tags, but retrieved: a higher utility than the identical un-retrieved score
    assert tiers.filter(pl.col("retrieval") == 9)["utility"].min() >= 0.3 * 9


def test_plot(scored, tmp_path):
    root, _ = scored
    stats = assign_tiers(
        root / "corpus", root / "tags.parquet", root / "ret.parquet", tmp_path, TierConfig()
    )
    md = plot_tiers(tmp_path / "tiers.parquet", stats, tmp_path / "tiers.png")
    assert md.startswith("![tiers](data:image/png;base64,") and (tmp_path / "tiers.png").exists()


def test_rank_normalization_spreads_a_compressed_judge(scored, tmp_path):
    root, n = scored
    tags = pl.read_parquet(root / "tags.parquet")
    squeezed = tags.with_columns(
        content_score=2 + pl.col("content_score") / 90, format_score=pl.lit(2.0)
    )
    squeezed.write_parquet(tmp_path / "squeezed.parquet")
    out = tmp_path / "out"
    out.mkdir()
    assign_tiers(
        root / "corpus",
        tmp_path / "squeezed.parquet",
        root / "ret.parquet",
        out,
        TierConfig(normalize=True, retrieval_weight=0.0, content_weight=1.0),
    )
    tiers = pl.read_parquet(out / "tiers.parquet").sort("content_score")
    assert tiers["utility"].min() == 0 and abs(tiers["utility"].max() - 9) < 1e-9
    assert tiers["utility"].is_sorted()  # the order of the judge is kept, only spread


def test_per_domain_quantiles_give_every_domain_every_tier(scored, tmp_path):
    root, _ = scored
    assign_tiers(
        root / "corpus",
        root / "tags.parquet",
        root / "ret.parquet",
        tmp_path,
        TierConfig(mode="quantile", quantiles=(0.2, 0.6), per_domain=True),
    )
    counts = pl.read_parquet(tmp_path / "tiers.parquet").group_by("domain", "tier").len()
    for domain in ("books", "papers"):
        part = counts.filter(pl.col("domain") == domain)
        assert set(part["tier"]) == {"rejected", "diverse", "high"}
        share = part.filter(pl.col("tier") == "rejected")["len"].sum() / part["len"].sum()
        assert 0.1 <= share <= 0.3


def test_missing_score_table_is_named(scored, tmp_path):
    root, _ = scored
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        assign_tiers(
            root / "corpus", root / "nope.parquet", root / "ret.parquet", tmp_path, TierConfig()
        )


def test_quantile_tiers_hold_their_sizes_when_utilities_tie(scored, tmp_path):
    """A domain whose documents all score the same still gets every tier, in the set sizes."""
    root, n = scored
    tags = pl.read_parquet(root / "tags.parquet").with_columns(
        content_score=pl.lit(4.0), format_score=pl.lit(4.0)
    )
    tags.write_parquet(tmp_path / "flat.parquet")
    tags.select("id", retrieval_score=pl.lit(0.0)).write_parquet(tmp_path / "ret0.parquet")
    out = tmp_path / "out"
    out.mkdir()
    assign_tiers(
        root / "corpus",
        tmp_path / "flat.parquet",
        tmp_path / "ret0.parquet",
        out,
        TierConfig(mode="quantile", quantiles=(0.2, 0.6), per_domain=True, retrieval_weight=0.0),
    )
    counts = pl.read_parquet(out / "tiers.parquet").group_by("domain", "tier").len()
    for domain in ("books", "papers"):
        part = {r["tier"]: r["len"] for r in counts.filter(pl.col("domain") == domain).to_dicts()}
        total = sum(part.values())
        assert set(part) == {"rejected", "diverse", "high"}
        assert abs(part["rejected"] - 0.2 * total) <= 1
        assert abs(part["high"] - 0.4 * total) <= 1

"""Tiers: utility = weighted tags + retrieval; cut-offs; per-(domain, tier) token counts."""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl
import pytest

from nanbeige_data.corpus.build import build_domain
from nanbeige_data.corpus.config import DomainSource
from nanbeige_data.recipe import TierConfig
from nanbeige_data.refinery.retrieval import SCORES_FILE as RETRIEVAL_FILE
from nanbeige_data.refinery.tagging import SCORES_FILE as TAGS_FILE
from nanbeige_data.refinery.tiers import (
    DB_FILE,
    PLOT_FILE,
    TIER_TOKENS_FILE,
    TIERS_FILE,
    assign_tiers,
)


def write_table(frame: pl.DataFrame, directory: Path, name: str) -> Path:
    """``frame`` as the score table ``name`` of a version directory."""
    directory.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(directory / name)
    return directory


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiers")
    corpus = root / "corpus"
    corpus.mkdir()
    for domain in ("books", "papers"):
        build_domain(
            domain,
            DomainSource(max_bytes=60_000),
            out_dir=corpus,
            shard_docs=10_000,
        )
        for i, shard in enumerate(sorted(corpus.glob("part-*.parquet"))):
            shard.rename(corpus / f"{domain}-{i}.parquet")
    docs = pl.read_parquet(corpus / "*.parquet").select("id", "domain")
    n = docs.height
    rank = pl.Series(range(n), dtype=pl.Float64) / (n - 1) * 9  # a spread of scores 0..9
    tags = docs.with_columns(content_score=rank, format_score=9 - rank)
    write_table(tags, root / "tags", TAGS_FILE)
    ret = docs.head(n // 2).with_columns(retrieval_score=pl.lit(9.0))
    write_table(ret, root / "ret", RETRIEVAL_FILE)
    return root, n


def test_quantile_tiers_split_as_configured(scored, tmp_path):
    root, n = scored
    cfg = TierConfig(mode="quantile", quantiles=(0.2, 0.6), per_domain=False)
    report = assign_tiers(root / "corpus", root / "tags", root / "ret", tmp_path, cfg)
    stats = report.extra["stats"]
    assert report.counts["documents"] == stats["documents"] == n
    counts = {t: v["documents"] for t, v in stats["per_tier"].items()}
    assert sum(counts.values()) == n
    assert {f"{t}_documents": c for t, c in counts.items()} == {
        k: v for k, v in report.counts.items() if k != "documents"
    }
    assert abs(counts["rejected"] - 0.2 * n) <= 2 and abs(counts["high"] - 0.4 * n) <= 2
    with duckdb.connect(str(tmp_path / DB_FILE)) as con:
        rows = con.sql(
            "SELECT tier, sum(train_tokens), sum(tokens) FROM tier_tokens GROUP BY tier"
        ).fetchall()
        by_tier = {t: (train, tok) for t, train, tok in rows}
        assert by_tier["high"][0] == 2 * by_tier["high"][1]  # upsampled for two epochs
        assert by_tier["rejected"][0] == 0
        worst = con.sql("SELECT max(utility) FROM tiers WHERE tier='rejected'").fetchall()[0][0]
        best = con.sql("SELECT min(utility) FROM tiers WHERE tier='high'").fetchall()[0][0]
        assert worst < stats["cut_rejected"] <= stats["cut_high"] <= best


def test_content_outweighs_format_and_retrieval_recalls(scored, tmp_path):
    root, _ = scored
    cfg = TierConfig(mode="absolute", cutoffs=(3.0, 6.0), content_weight=0.7, retrieval_weight=0.3)
    assign_tiers(root / "corpus", root / "tags", root / "ret", tmp_path, cfg)
    tiers = pl.read_parquet(tmp_path / TIERS_FILE)
    expected = (
        0.7 * (0.7 * tiers["content_score"] + 0.3 * tiers["format_score"])
        + 0.3 * tiers["retrieval"]
    )
    assert (tiers["utility"] - expected).abs().max() < 1e-9
    # same tags, but retrieved: a higher utility than the identical un-retrieved score
    assert tiers.filter(pl.col("retrieval") == 9)["utility"].min() >= 0.3 * 9


def test_report_has_the_plot_the_token_table_and_the_cuts(scored, tmp_path):
    root, _ = scored
    cfg = TierConfig(diverse_epochs=1.5)
    report = assign_tiers(root / "corpus", root / "tags", root / "ret", tmp_path, cfg)
    md = report.markdown["distribution"]
    assert md.startswith("![tiers](data:image/png;base64,") and (tmp_path / PLOT_FILE).exists()
    table = report.markdown["tier_tokens"].splitlines()
    assert table[0] == "| domain | tier | documents | tokens | epochs | train tokens |"
    assert len(table) == 2 + pl.read_parquet(tmp_path / TIER_TOKENS_FILE).height
    assert any("| diverse |" in row and "| 1.5 |" in row for row in table)
    assert set(report.json["cutoffs"]) == {"books", "papers"}


def test_rank_normalization_spreads_a_compressed_judge(scored, tmp_path):
    root, n = scored
    tags = pl.read_parquet(root / "tags" / TAGS_FILE)
    squeezed = tags.with_columns(
        content_score=2 + pl.col("content_score") / 90, format_score=pl.lit(2.0)
    )
    out = tmp_path / "out"
    out.mkdir()
    assign_tiers(
        root / "corpus",
        write_table(squeezed, tmp_path / "squeezed", TAGS_FILE),
        root / "ret",
        out,
        TierConfig(normalize=True, retrieval_weight=0.0, content_weight=1.0),
    )
    tiers = pl.read_parquet(out / TIERS_FILE).sort("content_score")
    assert tiers["utility"].min() == 0 and abs(tiers["utility"].max() - 9) < 1e-9
    assert tiers["utility"].is_sorted()  # the order of the judge is kept, only spread


def test_per_domain_quantiles_give_every_domain_every_tier(scored, tmp_path):
    root, _ = scored
    assign_tiers(
        root / "corpus",
        root / "tags",
        root / "ret",
        tmp_path,
        TierConfig(mode="quantile", quantiles=(0.2, 0.6), per_domain=True),
    )
    counts = pl.read_parquet(tmp_path / TIERS_FILE).group_by("domain", "tier").len()
    for domain in ("books", "papers"):
        part = counts.filter(pl.col("domain") == domain)
        assert set(part["tier"]) == {"rejected", "diverse", "high"}
        share = part.filter(pl.col("tier") == "rejected")["len"].sum() / part["len"].sum()
        assert 0.1 <= share <= 0.3


def test_missing_score_table_is_named(scored, tmp_path):
    root, _ = scored
    with pytest.raises(FileNotFoundError, match=f"nope/{TAGS_FILE}"):
        assign_tiers(root / "corpus", root / "nope", root / "ret", tmp_path, TierConfig())


def test_quantile_tiers_hold_their_sizes_when_utilities_tie(scored, tmp_path):
    """A domain whose documents all score the same still gets every tier, in the set sizes."""
    root, n = scored
    tags = pl.read_parquet(root / "tags" / TAGS_FILE).with_columns(
        content_score=pl.lit(4.0), format_score=pl.lit(4.0)
    )
    flat = write_table(tags, tmp_path / "flat", TAGS_FILE)
    ret0 = write_table(
        tags.select("id", retrieval_score=pl.lit(0.0)), tmp_path / "ret0", RETRIEVAL_FILE
    )
    out = tmp_path / "out"
    out.mkdir()
    assign_tiers(
        root / "corpus",
        flat,
        ret0,
        out,
        TierConfig(mode="quantile", quantiles=(0.2, 0.6), per_domain=True, retrieval_weight=0.0),
    )
    counts = pl.read_parquet(out / TIERS_FILE).group_by("domain", "tier").len()
    for domain in ("books", "papers"):
        part = {r["tier"]: r["len"] for r in counts.filter(pl.col("domain") == domain).to_dicts()}
        total = sum(part.values())
        assert set(part) == {"rejected", "diverse", "high"}
        assert abs(part["rejected"] - 0.2 * total) <= 1
        assert abs(part["high"] - 0.4 * total) <= 1

"""Quality tiers: tag scores and retrieval scores combined into one utility, cut into tiers.

    utility = (1 - w_r) * (w_c * content + (1 - w_c) * format) + w_r * retrieval      (all 0-9)

Content is weighted over format (the paper found content labels more predictive) and the
retrieval score recalls documents the tagger undervalues. Documents are cut into three tiers:
``rejected`` (dropped), ``diverse`` (the paper's 12.5T "high-quality" pool, seen
``diverse_epochs`` times) and ``high`` (its 6.5T higher-quality subset, upsampled for
``high_quality_epochs`` >= 2 epochs). Cut-offs are either absolute utilities or quantiles of
the utility distribution (robust to a judge whose scores are compressed into a narrow band, as
small judges' are); quantile tiers are cut by rank, ties broken by id, so their sizes hold even
when many documents share one utility.

Everything is computed in DuckDB over Parquet; ``tiers.duckdb`` in the output holds the tables
``tiers`` (one row per document) and ``tier_tokens`` (per domain and tier: documents, tokens,
epochs, tokens to train on), with Parquet copies (``TIERS_FILE``, ``TIER_TOKENS_FILE``) and a
plot of the distributions (``PLOT_FILE``).

Trade-off: tokens are estimated as characters / 4 here; the exact counts come later from the
trained tokenizer (token shards), which re-counts every bucket.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import duckdb
import polars as pl

from nanbeige_data.refinery import retrieval, tagging
from nanbeige_data.refinery.config import TierConfig
from nanbeige_data.report import Report, figure_markdown, md_table

CODE_VERSION = "2"
TIERS = ("rejected", "diverse", "high")
CHARS_PER_TOKEN = 4.0
DB_FILE = "tiers.duckdb"  # tables tiers and tier_tokens
TIERS_FILE = "tiers.parquet"  # one row per document: scores, utility, tier
TIER_TOKENS_FILE = "tier_tokens.parquet"  # per (domain, tier): documents, tokens, epochs
PLOT_FILE = "tiers.png"


@dataclass
class TierStats:
    documents: int
    cut_rejected: float  # utility below which documents are rejected
    cut_high: float  # utility from which documents are high-quality
    cuts_per_domain: dict[str, list[float]] = field(default_factory=dict)
    per_tier: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def _utility_sql(cfg: TierConfig) -> str:
    wc, wr = cfg.content_weight, cfg.retrieval_weight
    return f"(1 - {wr}) * ({wc} * content + (1 - {wc}) * format) + {wr} * retrieval"


def _component_sql(column: str, cfg: TierConfig) -> str:
    """A score column, rank-normalized to 0-9 when cfg.normalize (ties share a rank)."""
    if not cfg.normalize:
        return column
    return f"9 * percent_rank() OVER (ORDER BY {column})"


def assign_tiers(
    corpus_dir: Path, tags_dir: Path, retrieval_dir: Path, out_dir: Path, cfg: TierConfig
) -> Report:
    """Join the corpus in ``corpus_dir``, the tag scores of a ``quality_tags`` version
    (``tags_dir``) and the retrieval scores of a ``retrieval_scores`` version
    (``retrieval_dir``) by id; write the tiers, per-bucket token counts and a plot to
    ``out_dir``."""
    started = time.monotonic()
    tags_path = Path(tags_dir) / tagging.SCORES_FILE
    retrieval_path = Path(retrieval_dir) / retrieval.SCORES_FILE
    for path in (tags_path, retrieval_path):
        if not path.exists():
            raise FileNotFoundError(f"score table {path} does not exist")
    out_dir = Path(out_dir)
    with duckdb.connect(str(out_dir / DB_FILE)) as con:
        _score(con, corpus_dir, tags_path, retrieval_path, cfg)
        n = con.sql("SELECT count(*) FROM scored").fetchall()[0][0]
        if n == 0:
            raise ValueError(f"no document of {corpus_dir} has a tag score in {tags_path}")
        _cuts(con, cfg)
        _tier(con, cfg)
        cuts = {d: [float(lo), float(hi)] for d, lo, hi in con.sql("SELECT * FROM cuts").fetchall()}
        per_tier = _tier_tokens(con, cfg, out_dir)
    low = sum(c[0] for c in cuts.values()) / len(cuts)
    high = sum(c[1] for c in cuts.values()) / len(cuts)
    stats = TierStats(n, low, high, cuts, per_tier, time.monotonic() - started)
    return _report(stats, out_dir)


def _score(
    con: duckdb.DuckDBPyConnection,
    corpus_dir: Path,
    tags_path: Path,
    retrieval_path: Path,
    cfg: TierConfig,
) -> None:
    """Table ``scored``: each tagged document with its token estimate, components and utility."""
    con.sql(f"""
        CREATE TABLE joined AS
        SELECT c.id, c.domain, c.source, length(c.text) AS chars,
               ceil(length(c.text) / {CHARS_PER_TOKEN})::BIGINT AS tokens,
               t.content_score, t.format_score, coalesce(r.retrieval_score, 0) AS retrieval
        FROM read_parquet('{_glob(corpus_dir)}') c
        JOIN read_parquet('{tags_path}') t USING (id)
        LEFT JOIN read_parquet('{retrieval_path}') r USING (id)
    """)
    con.sql(f"""
        CREATE TABLE scored AS
        SELECT *, {_utility_sql(cfg)} AS utility FROM (
          SELECT *, {_component_sql("content_score", cfg)} AS content,
                    {_component_sql("format_score", cfg)} AS format
          FROM joined)
    """)
    con.sql("DROP TABLE joined")


def _tier(con: duckdb.DuckDBPyConnection, cfg: TierConfig) -> None:
    """Table ``tiers``: ``scored`` with each document's tier, by id."""
    con.sql(f"""
        CREATE TABLE tiers AS SELECT * EXCLUDE (position), {_tier_sql(cfg)} AS tier FROM (
          SELECT s.*, k.low, k.high, {_position_sql(cfg)} AS position
          FROM scored s JOIN cuts k USING (domain))
        ORDER BY id
    """)
    con.sql("ALTER TABLE tiers DROP COLUMN low")
    con.sql("ALTER TABLE tiers DROP COLUMN high")
    con.sql("DROP TABLE scored")


def _tier_tokens(
    con: duckdb.DuckDBPyConnection, cfg: TierConfig, out_dir: Path
) -> dict[str, dict[str, float]]:
    """Table ``tier_tokens``; both tables copied to Parquet; per tier: documents and tokens."""
    con.sql(f"""
        CREATE TABLE tier_tokens AS
        SELECT domain, tier, count(*) AS documents, sum(tokens)::BIGINT AS tokens,
               CASE tier WHEN 'high' THEN {cfg.high_quality_epochs}
                         WHEN 'diverse' THEN {cfg.diverse_epochs} ELSE 0 END AS epochs,
               (sum(tokens) * epochs)::BIGINT AS train_tokens,
               round(avg(utility), 3) AS mean_utility
        FROM tiers GROUP BY domain, tier ORDER BY domain, tier
    """)
    con.sql(f"COPY tiers TO '{out_dir / TIERS_FILE}' (FORMAT parquet)")
    con.sql(f"COPY tier_tokens TO '{out_dir / TIER_TOKENS_FILE}' (FORMAT parquet)")
    per_tier = {
        row[0]: {"documents": row[1], "tokens": row[2], "train_tokens": row[3]}
        for row in con.sql(
            "SELECT tier, sum(documents), sum(tokens), sum(train_tokens) "
            "FROM tier_tokens GROUP BY tier"
        ).fetchall()
    }
    for tier in TIERS:
        per_tier.setdefault(tier, {"documents": 0, "tokens": 0, "train_tokens": 0})
    return per_tier


def _report(stats: TierStats, out_dir: Path) -> Report:
    tiers = {f"{k}_documents": int(v["documents"]) for k, v in stats.per_tier.items()}
    return Report(
        counts={"documents": stats.documents, **tiers},
        markdown={
            "tier_tokens": tier_table_markdown(out_dir / TIER_TOKENS_FILE),
            "distribution": plot_tiers(out_dir / TIERS_FILE, stats, out_dir / PLOT_FILE),
        },
        json={"cutoffs": stats.cuts_per_domain},
        extra={"stats": stats.as_dict()},
    )


def _position_sql(cfg: TierConfig) -> str:
    """A document's rank fraction in [0, 1) within its quantile group, ties broken by id.

    Cutting by rank rather than by utility value keeps tier sizes at the configured quantiles
    even when many documents share one utility (a small judge and a constant retrieval score
    tie whole domains: cutting by value once left code with no diverse tier at all).
    """
    group = "PARTITION BY domain" if cfg.per_domain else ""
    return (
        f"(row_number() OVER ({group} ORDER BY utility, id) - 1)::DOUBLE / count(*) OVER ({group})"
    )


def _tier_sql(cfg: TierConfig) -> str:
    if cfg.mode == "absolute":
        low, high = "utility < low", "utility >= high"
    else:
        qa, qb = cfg.quantiles
        low, high = f"position < {qa}", f"position >= {qb}"
    return f"CASE WHEN {low} THEN 'rejected' WHEN {high} THEN 'high' ELSE 'diverse' END"


def _glob(corpus_dir: Path) -> str:
    return str(Path(corpus_dir) / "*.parquet")


def _cuts(con: duckdb.DuckDBPyConnection, cfg: TierConfig) -> None:
    """Table ``cuts(domain, low, high)``: absolute, global quantiles, or per-domain quantiles."""
    if cfg.mode == "absolute":
        a, b = cfg.cutoffs
        con.sql(f"CREATE TABLE cuts AS SELECT DISTINCT domain, {a} AS low, {b} AS high FROM scored")
        return
    qa, qb = cfg.quantiles
    quantiles = f"quantile_cont(utility, {qa}) AS low, quantile_cont(utility, {qb}) AS high"
    if cfg.per_domain:
        con.sql(f"CREATE TABLE cuts AS SELECT domain, {quantiles} FROM scored GROUP BY domain")
    else:
        con.sql(f"""CREATE TABLE cuts AS SELECT d.domain, q.low, q.high
                    FROM (SELECT DISTINCT domain FROM scored) d,
                         (SELECT {quantiles} FROM scored) q""")


def plot_tiers(tiers_path: Path, stats: TierStats, out_png: Path) -> str:
    """Histogram of utility per domain with the two cut-offs; returns a markdown image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = pl.read_parquet(tiers_path)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for (domain,), part in sorted(frame.group_by("domain"), key=lambda g: g[0]):
        axes[0].hist(part["utility"].to_numpy(), bins=40, range=(0, 9), alpha=0.5, label=domain)
    top = axes[0].get_ylim()[1]
    for height, (cut, name) in zip(
        (0.95, 0.85), ((stats.cut_rejected, "rejected <"), (stats.cut_high, "high >=")), strict=True
    ):
        axes[0].axvline(cut, color="k", linestyle="--")
        axes[0].text(cut, top * height, f" {name} {cut:.2f}", fontsize=8)
    distinct = {tuple(cuts) for cuts in stats.cuts_per_domain.values()}
    title = "utility by domain" + (
        " (dashed: mean of per-domain cuts)" if len(distinct) > 1 else ""
    )
    axes[0].set(xlabel="utility (0-9)", ylabel="documents", title=title)
    axes[0].legend(fontsize=8)
    for col, color in (
        ("content_score", "tab:blue"),
        ("format_score", "tab:orange"),
        ("retrieval", "tab:green"),
    ):
        axes[1].hist(
            frame[col].to_numpy(), bins=40, range=(0, 9), alpha=0.45, label=col, color=color
        )
    axes[1].set(xlabel="score (0-9)", title="score components")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return figure_markdown(fig, out_png, "tiers")


def tier_table_markdown(tier_tokens_path: Path) -> str:
    frame = pl.read_parquet(tier_tokens_path)
    header = ("domain", "tier", "documents", "tokens", "epochs", "train tokens")
    rows = [
        (r["domain"], r["tier"], r["documents"], r["tokens"], f"{r['epochs']:g}", r["train_tokens"])
        for r in frame.iter_rows(named=True)
    ]
    return md_table(header, rows) + "\n"

"""Data-quality suites: Great Expectations 1.x expectations run on a table, with a plain report.

A suite is a list of GE expectations; ``validate_frame`` runs it on a pandas frame in an
ephemeral GE context (no project directory, nothing written) and returns a ``CheckReport``
with per-expectation counts and failing examples that any caller can show or gate on.
``corpus_frame`` builds the frame for a corpus version with DuckDB, keeping only ``id``,
``domain``, ``source`` and the text length (``chars``) so the suite never holds the texts.

Trade-off: GE's import costs a few seconds and each validation a fixed overhead; in exchange,
suites are the standard GE objects a team already knows and can extend or export.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


@dataclass(frozen=True)
class ExpectationResult:
    expectation: str
    column: str | None
    success: bool
    element_count: int
    unexpected_count: int
    examples: list[Any] = field(default_factory=list)

    def line(self) -> str:
        mark = "ok" if self.success else "FAILED"
        where = f"[{self.column}]" if self.column else ""
        tail = f" e.g. {self.examples[:5]}" if self.examples and not self.success else ""
        return (
            f"{mark}: {self.expectation}{where} unexpected {self.unexpected_count}"
            f"/{self.element_count}{tail}"
        )


@dataclass(frozen=True)
class CheckReport:
    suite: str
    success: bool
    rows: int
    results: list[ExpectationResult]

    @property
    def failures(self) -> list[ExpectationResult]:
        return [r for r in self.results if not r.success]

    def summary(self) -> str:
        head = f"suite {self.suite}: {'passed' if self.success else 'FAILED'} on {self.rows} rows"
        return "\n".join([head, *(r.line() for r in self.results)])


def corpus_suite(domains: Sequence[str], min_chars: int, max_chars: int) -> list:
    """The corpus gate: non-null text, unique ids, a known domain, lengths within bounds."""
    import great_expectations as gx

    ex = gx.expectations
    return [
        ex.ExpectColumnValuesToNotBeNull(column="chars"),
        ex.ExpectColumnValuesToNotBeNull(column="id"),
        ex.ExpectColumnValuesToBeUnique(column="id"),
        ex.ExpectColumnValuesToBeInSet(column="domain", value_set=list(domains)),
        ex.ExpectColumnValuesToBeBetween(column="chars", min_value=min_chars, max_value=max_chars),
        ex.ExpectTableRowCountToBeBetween(min_value=1),
    ]


def score_suite(columns: Sequence[str], low: float = 0.0, high: float = 9.0) -> list:
    """Score tables: every score column present, non-null and within [low, high]."""
    import great_expectations as gx

    ex = gx.expectations
    suite: list = [
        ex.ExpectColumnValuesToBeUnique(column="id"),
        ex.ExpectTableRowCountToBeBetween(min_value=1),
    ]
    for col in columns:
        suite += [
            ex.ExpectColumnValuesToNotBeNull(column=col),
            ex.ExpectColumnValuesToBeBetween(column=col, min_value=low, max_value=high),
        ]
    return suite


def table_frame(path: str | Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Selected columns of a Parquet table (or a glob of shards), through DuckDB."""
    cols = ", ".join(f'"{c}"' for c in columns) if columns else "*"
    with duckdb.connect() as con:
        return con.sql(f"SELECT {cols} FROM read_parquet(?)", params=[str(path)]).df()


def corpus_frame(version_dir: str | Path) -> pd.DataFrame:
    """id, domain, source and text length of every document in a corpus version's shards."""
    pattern = str(Path(version_dir) / "*.parquet")
    query = "SELECT id, domain, source, length(text) AS chars FROM read_parquet(?)"
    with duckdb.connect() as con:
        return con.sql(query, params=[pattern]).df()


def validate_frame(frame: pd.DataFrame, expectations: list, suite_name: str) -> CheckReport:
    """Run GE expectations on a frame; never raises for failing data, only reports it."""
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    batch_def = (
        context.data_sources.add_pandas(suite_name)
        .add_dataframe_asset("table")
        .add_batch_definition_whole_dataframe("whole")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=suite_name, expectations=expectations))
    batch = batch_def.get_batch(batch_parameters={"dataframe": frame})
    run = batch.validate(suite, result_format="SUMMARY")
    results = []
    for res in run.results:
        cfg = res.expectation_config
        detail = res.result or {}
        results.append(
            ExpectationResult(
                expectation=cfg.type,
                column=cfg.kwargs.get("column"),
                success=bool(res.success),
                element_count=int(
                    detail.get("element_count", detail.get("observed_value", 0)) or 0
                ),
                unexpected_count=int(detail.get("unexpected_count", 0) or 0),
                examples=list(detail.get("partial_unexpected_list", []) or [])[:10],
            )
        )
    return CheckReport(suite_name, bool(run.success), len(frame), results)

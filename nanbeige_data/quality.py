"""Data-quality suites: Great Expectations 1.x expectations run on a table, with a plain report.

A suite is a list of GE expectations; ``validate_frame`` runs it on a pandas frame in an
ephemeral GE context (no project directory, nothing written) and returns a ``CheckReport``
with per-expectation counts and failing examples that any caller can show or gate on.
``corpus_frame`` builds the frame for a corpus version with DuckDB, keeping only ``id``,
``domain``, ``source``, the text length (``chars``) and a user document's ``file`` and ``line``,
so the suite never holds the texts and a failure can name the documents behind it: each failed
expectation carries its first offending rows (id, file, line), found in the frame by the
unexpected values GE reports.

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
    rows: list[dict] = field(default_factory=list)  # offending rows: id (file, line) and value

    @property
    def name(self) -> str:
        return f"{self.expectation}[{self.column or ''}]"

    def line(self) -> str:
        mark = "ok" if self.success else "FAILED"
        where = f"[{self.column}]" if self.column else ""
        tail = f" e.g. {self.examples[:5]}" if self.examples and not self.success else ""
        if self.rows and not self.success:
            tail += " at " + ", ".join(describe_row(r) for r in self.rows[:5])
        return (
            f"{mark}: {self.expectation}{where} unexpected {self.unexpected_count}"
            f"/{self.element_count}{tail}"
        )


def describe_row(row: dict) -> str:
    """``id 'x' (file:line)`` for an offending row; the file part only where it is known."""
    text = f"id {row.get('id')!r}" if row.get("id") is not None else "a row"
    if row.get("file"):
        text += f" ({row['file']}" + (f":{row['line']})" if row.get("line") else ")")
    return text


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

    def description(self) -> str:
        """One paragraph for a person: what failed, how often, and which documents (id, file,
        line) -- the text a failing gate shows on the console and in the UI."""
        if self.success:
            return f"{self.suite}: passed on {self.rows} rows"
        parts = []
        for r in self.failures:
            text = f"{r.name} {r.unexpected_count} of {r.element_count or self.rows} rows"
            if r.rows:
                text += ": " + ", ".join(describe_row(row) for row in r.rows[:5])
            elif r.examples:
                text += f", e.g. {r.examples[:5]}"
            parts.append(text)
        return f"{self.suite} FAILED: " + "; ".join(parts)


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


# a user document's file and line, where build.py recorded them in its meta object
_LOCATION_SQL = """
    CASE WHEN json_valid(meta) AND json_type(meta) = 'OBJECT'
         THEN json_extract_string(meta, '$.source_file') END AS file,
    CASE WHEN json_valid(meta) AND json_type(meta) = 'OBJECT'
         THEN TRY_CAST(json_extract_string(meta, '$.source_line') AS BIGINT) END AS line
"""


_CORPUS_COLUMNS = {"id": object, "domain": object, "source": object, "chars": "int64"}
_CORPUS_COLUMNS |= {"file": object, "line": "float64"}


def corpus_frame(version_dir: str | Path) -> pd.DataFrame:
    """id, domain, source, text length (``chars``) and, for user documents, the ``file`` and
    ``line`` they came from, for every document in a corpus version's shards."""
    pattern = str(Path(version_dir) / "*.parquet")
    query = (
        f"SELECT id, domain, source, length(text) AS chars, {_LOCATION_SQL} FROM read_parquet(?)"
    )
    if not any(Path(version_dir).glob("*.parquet")):  # every document dropped: the gate says so
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in _CORPUS_COLUMNS.items()})
    with duckdb.connect() as con:
        return con.sql(query, params=[pattern]).df()


LOCATE = ("id", "file", "line")  # the columns that say which row failed, where the frame has them


def _offending_rows(frame: pd.DataFrame, column: str | None, examples: list, limit: int = 5):
    """The first rows whose ``column`` holds one of the unexpected ``examples`` (a null
    example matches null cells), with the LOCATE columns, as plain dicts."""
    if column is None or column not in frame.columns or not examples:
        return []
    values = frame[column]
    mask = values.isin([x for x in examples if not pd.isna(x)])
    if any(pd.isna(x) for x in examples):
        mask |= values.isna()
    keep = [c for c in LOCATE if c in frame.columns and c != column] + [column]
    picked = frame.loc[mask, keep].head(limit)
    return [{k: _plain(k, v) for k, v in row.items()} for row in picked.to_dict("records")]


def _plain(column: str, value: Any) -> Any:
    """A frame cell as a JSON-ready Python value (NaN -> None, numpy -> Python, line -> int)."""
    if value is None or (not isinstance(value, (list, dict)) and pd.isna(value)):
        return None
    value = value.item() if hasattr(value, "item") else value
    return int(value) if column == "line" else value


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
        column = cfg.kwargs.get("column")
        examples = list(detail.get("partial_unexpected_list", []) or [])[:10]
        results.append(
            ExpectationResult(
                expectation=cfg.type,
                column=column,
                success=bool(res.success),
                element_count=int(
                    detail.get("element_count", detail.get("observed_value", 0)) or 0
                ),
                unexpected_count=int(detail.get("unexpected_count", 0) or 0),
                examples=examples,
                rows=[] if res.success else _offending_rows(frame, column, examples),
            )
        )
    return CheckReport(suite_name, bool(run.success), len(frame), results)

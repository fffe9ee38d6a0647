"""The corpus sections of the recipe: where each domain's documents come from, and the gate."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from nanbeige_data.config import PositiveInt, Section


class DomainSource(Section):
    source: Literal["embedded", "files"] = "embedded"
    paths: list[str] = []  # globs of JSONL/Parquet files when source == "files"
    max_bytes: PositiveInt = 1_500_000  # text budget for the embedded sample
    target_doc_chars: PositiveInt = 4000  # split long texts into documents near this size
    min_doc_chars: Annotated[int, Field(ge=0)] = 200

    @model_validator(mode="after")
    def _files_need_paths(self) -> DomainSource:
        if self.source == "files" and not self.paths:
            raise ValueError("source is 'files' but no paths are given")
        return self


class CorpusChecks(Section):
    # the length bounds of a document: one outside them is skipped when the domain is built
    # (counted, and recorded in the version's excluded/too_short.jsonl or too_long.jsonl), and
    # the corpus gate checks them again on what was written
    min_chars: Annotated[int, Field(ge=0)] = 1
    max_chars: PositiveInt = 1_000_000


class CorpusConfig(Section):
    web: DomainSource = DomainSource()
    books: DomainSource = DomainSource()
    code: DomainSource = DomainSource()
    papers: DomainSource = DomainSource()
    checks: CorpusChecks = CorpusChecks()

    def domain(self, name: str) -> DomainSource:
        return getattr(self, name)

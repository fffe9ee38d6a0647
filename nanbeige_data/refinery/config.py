"""The refinery sections of the recipe: filters, dedup, decontamination, tagging, retrieval,
tiers, and how datatrove stages execute."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from nanbeige_data.config import Dtype, Fraction, PositiveInt, Section


class TagDimension(Section):
    name: str
    kind: Literal["content", "format"]
    question: str


class FilterConfig(Section):
    language: str = "en"  # documents in other languages are dropped (prose domains)
    min_language_score: Fraction = 0.65
    max_doc_chars: PositiveInt = 1_000_000  # longer documents are dropped as "too_long"
    max_replacement_fraction: Fraction = 0.01  # more U+FFFD than this: "bad_encoding"


class DedupConfig(Section):
    ngram: PositiveInt = 5  # MinHash shingle size in words
    buckets: PositiveInt = 14
    hashes_per_bucket: PositiveInt = 8


class DecontaminationConfig(Section):
    ngram: PositiveInt = 13  # a document sharing an n-gram with any eval item is removed
    min_overlaps: PositiveInt = 1


class TaggingConfig(Section):
    annotator: str = (
        "smollm2-135m-instruct"  # packaged GGUF, a model path, or http://host/v1::model
    )
    sample: PositiveInt = 200  # documents the LLM judge labels; a classifier scores the rest
    holdout_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.25
    max_doc_tokens: PositiveInt = 384
    dimensions: list[TagDimension] = []

    @field_validator("dimensions")
    @classmethod
    def _unique_dims(cls, v: list[TagDimension]) -> list[TagDimension]:
        names = [d.name for d in v]
        if len(set(names)) != len(names):
            raise ValueError(f"tag dimension names must be unique, got {names}")
        if v and {d.kind for d in v} != {"content", "format"}:
            raise ValueError("tag dimensions need both content and format dimensions")
        return v


class RetrievalConfig(Section):
    exemplars: list[str] = ["reasoning_gym", "britannica"]  # named high-quality exemplar sets
    exemplars_per_set: PositiveInt = 64
    top_k: PositiveInt = 50
    rrf_k: PositiveInt = 60
    embed_max_chars: PositiveInt = 1000


class TierConfig(Section):
    content_weight: Fraction = 0.7  # content over format, as the paper found
    retrieval_weight: Fraction = 0.3
    mode: Literal["quantile", "absolute"] = "quantile"
    normalize: bool = True  # rank-normalize tag scores to 0-9 before weighting
    per_domain: bool = True  # quantile cuts within each domain (every domain keeps every tier)
    cutoffs: tuple[float, float] = (3.0, 6.0)  # absolute utility: < a rejected, >= b high
    quantiles: tuple[float, float] = (0.2, 0.6)  # the same cuts as utility quantiles
    high_quality_epochs: Annotated[float, Field(ge=2.0)] = 2.0  # paper: upsampled >= 2 epochs
    min_kept_fraction: Fraction = 0.2  # gate: at least this share of documents is kept
    high_fraction_bounds: tuple[Fraction, Fraction] = (0.05, 0.8)  # gate on the high tier's share

    @field_validator("cutoffs")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= v[0] < v[1] <= 9:
            raise ValueError("tier cut-offs must satisfy 0 <= rejected < high_quality <= 9")
        return v

    @field_validator("quantiles", "high_fraction_bounds")
    @classmethod
    def _increasing(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not v[0] < v[1]:
            raise ValueError(f"must be increasing, got {v}")
        return v


class RefineryConfig(Section):
    executor: Literal["local", "slurm", "ray"] = "local"  # datatrove executor
    workers: PositiveInt = 2  # datatrove tasks
    slurm_partition: str = ""  # for executor: slurm
    slurm_time: str = "04:00:00"
    filters: FilterConfig = FilterConfig()
    dedup: DedupConfig = DedupConfig()
    decontamination: DecontaminationConfig = DecontaminationConfig()
    tagging: TaggingConfig = TaggingConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    tiers: TierConfig = TierConfig()

"""The recipe: one typed, validated description of a whole Nanbeige4 run.

A recipe is a YAML file (``recipes/tiny.yaml`` for CPU, ``recipes/nanbeige4-3b.yaml`` for the
paper's scale) parsed into the pydantic models below. Every value is checked before any stage
runs, and an error names the file, the field path and the reason. Each stage reads only its own
section, and that section's hash is what enters the stage's version: changing the decay mixture
re-versions the curriculum, not the corpus.

Trade-off: sections for stages that are not built yet are part of the schema already, so a
recipe written today stays valid as stages land; unknown keys are rejected (typos fail loudly).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
DEFAULT_RECIPE = "tiny"
RECIPE_ENV = "NANBEIGE_RECIPE"

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(gt=0)]


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the file, the field and the reason."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # fields that say how a stage runs, not what it computes: never part of its version
    execution_fields: ClassVar[frozenset[str]] = frozenset()

    def version_hash(self) -> str:
        """Hash of this section's resolved values: what enters a stage's version."""
        values = self.model_dump(mode="json", exclude=set(self.execution_fields))
        blob = json.dumps(values, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# --- corpus ------------------------------------------------------------------------------


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
    min_chars: Annotated[int, Field(ge=0)] = 1  # a document shorter than this fails the gate
    max_chars: PositiveInt = 1_000_000  # a document longer than this fails the gate


class CorpusConfig(Section):
    web: DomainSource = DomainSource()
    books: DomainSource = DomainSource()
    code: DomainSource = DomainSource()
    papers: DomainSource = DomainSource()
    checks: CorpusChecks = CorpusChecks()

    def domain(self, name: str) -> DomainSource:
        return getattr(self, name)


# --- refinery ----------------------------------------------------------------------------


class TagDimension(Section):
    name: str
    kind: Literal["content", "format"]
    question: str


class FilterSection(Section):
    language: str = "en"  # documents in other languages are dropped (prose domains)
    min_language_score: Fraction = 0.65
    max_doc_chars: PositiveInt = 1_000_000  # longer documents are dropped as "too_long"
    max_replacement_fraction: Fraction = 0.01  # more U+FFFD than this: "bad_encoding"


class DedupSection(Section):
    ngram: PositiveInt = 5  # MinHash shingle size in words
    buckets: PositiveInt = 14
    hashes_per_bucket: PositiveInt = 8


class DecontaminationSection(Section):
    ngram: PositiveInt = 13  # a document sharing an n-gram with any eval item is removed
    min_overlaps: PositiveInt = 1


class TaggingSection(Section):
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


class RetrievalSection(Section):
    exemplars: list[str] = ["reasoning_gym", "britannica"]  # named high-quality exemplar sets
    exemplars_per_set: PositiveInt = 64
    top_k: PositiveInt = 50
    rrf_k: PositiveInt = 60
    embed_max_chars: PositiveInt = 1000


class TierSection(Section):
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
    filters: FilterSection = FilterSection()
    dedup: DedupSection = DedupSection()
    decontamination: DecontaminationSection = DecontaminationSection()
    tagging: TaggingSection = TaggingSection()
    retrieval: RetrievalSection = RetrievalSection()
    tiers: TierSection = TierSection()


# --- tokenizer, model, curriculum, pretraining ------------------------------------------


class TokenizerConfig(Section):
    vocab_size: PositiveInt = 8192
    path: str | None = None  # a user-given tokenizer.json instead of training one
    special_tokens: list[str] = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<think>",
        "</think>",
        "<tool_call>",
        "</tool_call>",
        "<tool_response>",
        "</tool_response>",
    ]


class ModelConfig(Section):
    dim: PositiveInt = 64
    n_layers: PositiveInt = 2
    n_heads: PositiveInt = 4
    n_kv_heads: PositiveInt = 2
    ffn_dim: PositiveInt = 256
    norm_eps: float = 1e-5

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads {self.n_heads} not divisible by n_kv_heads {self.n_kv_heads}"
            )
        return self


class StageConfig(Section):
    name: str
    tokens: PositiveInt
    lr: Literal["warmup", "constant", "decay"]
    seq_len: PositiveInt
    rope_theta: Annotated[float, Field(gt=0)]
    mixture: dict[str, Fraction]  # bucket ("domain/tier" or "synthetic/<kind>") -> weight

    @field_validator("mixture")
    @classmethod
    def _sums_to_one(cls, v: dict[str, float]) -> dict[str, float]:
        total = sum(v.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"mixture weights sum to {total:.6g}, not 1")
        return v


class CurriculumConfig(Section):
    lr_peak: Annotated[float, Field(gt=0)] = 4.5e-4
    lr_min: Annotated[float, Field(ge=0)] = 1.5e-6
    decay_shape: Literal["linear", "cosine", "sqrt"] = "linear"
    stages: list[StageConfig]
    vanilla_wsd: bool = True  # also build the one-mixture WSD plan for the ablation
    ablation_seeds: PositiveInt = 1  # FG-WSD vs vanilla WSD, each trained with this many seeds

    @model_validator(mode="after")
    def _shape(self) -> CurriculumConfig:
        if self.lr_min >= self.lr_peak:
            raise ValueError(f"lr_min {self.lr_min} must be below lr_peak {self.lr_peak}")
        kinds = [s.lr for s in self.stages]
        if not kinds or kinds[0] != "warmup" or kinds[-1] != "decay":
            raise ValueError(f"stages must start with a warmup and end with a decay, got {kinds}")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        return self

    @property
    def total_tokens(self) -> int:
        return sum(s.tokens for s in self.stages)


class PretrainConfig(Section):
    execution_fields: ClassVar[frozenset[str]] = frozenset(
        {"checkpoint_every", "data_parallel_shard", "tensor_parallel", "nproc_per_node"}
    )

    batch_size: PositiveInt = 8  # global sequences per micro-step over all data-parallel ranks
    grad_accumulation: PositiveInt = 1
    checkpoint_every: PositiveInt = 50
    dtype: Literal["float32", "bfloat16"] = "float32"
    data_parallel_shard: int = -1  # torchtitan FSDP degree (-1: all ranks)
    tensor_parallel: PositiveInt = 1
    nproc_per_node: PositiveInt = 1


# --- post-training and evaluation --------------------------------------------------------


class SFTConfig(Section):
    cold_start_mixture: dict[str, Fraction] = {"math": 0.5, "science": 0.3, "code": 0.2}
    cold_start_seq_len: PositiveInt = 32768
    general_seq_len: PositiveInt = 65536
    lr: Annotated[float, Field(gt=0)] = 1e-5

    @field_validator("cold_start_mixture")
    @classmethod
    def _sums_to_one(cls, v: dict[str, float]) -> dict[str, float]:
        if abs(sum(v.values()) - 1.0) > 1e-6:
            raise ValueError(f"cold-start mixture sums to {sum(v.values()):.6g}, not 1")
        return v


class RLConfig(Section):
    stages: list[Literal["stem", "code", "preference"]] = ["stem", "code", "preference"]
    pass_rate_k: PositiveInt = 16  # avg@k used to filter the prompt pool
    pass_rate_low: Fraction = 0.1  # keep prompts strictly between low and high
    pass_rate_high: Fraction = 0.9
    group_size: PositiveInt = 16

    @model_validator(mode="after")
    def _band(self) -> RLConfig:
        if not self.pass_rate_low < self.pass_rate_high:
            raise ValueError(
                f"pass_rate_low {self.pass_rate_low} must be below pass_rate_high "
                f"{self.pass_rate_high}"
            )
        return self


class EvalSetConfig(Section):
    name: str
    path: str | None = None  # a user's JSONL set (prompt, reference[, id]); None = built-in
    verifier: Literal["math", "choice", "exact", "code"] = "exact"  # for a user's set


class EvalConfig(Section):
    execution_fields: ClassVar[frozenset[str]] = frozenset({"backend", "batch_size"})

    temperature: Annotated[float, Field(ge=0)] = 0.6
    top_p: Annotated[float, Field(gt=0, le=1)] = 0.95
    k: dict[str, PositiveInt] = {"aime": 8, "default": 3}  # samples per item, by set name
    max_new_tokens: PositiveInt = 32768
    seed: int = 0
    sets: list[EvalSetConfig] = [
        EvalSetConfig(name=n) for n in ("humaneval", "champ", "aime", "gsm_symbolic", "arithmetic")
    ]
    max_items: PositiveInt | None = None  # per set (None: all)
    reference_model: str = "smollm2-135m-instruct"  # packaged GGUF, a .gguf or a HF model dir
    code_timeout_s: Annotated[float, Field(gt=0)] = 5.0
    code_memory_mb: PositiveInt = 512
    backend: Literal["torch", "vllm"] = "torch"
    batch_size: PositiveInt = 8
    dtype: Literal["float32", "bfloat16"] = "bfloat16"  # generation dtype (bf16: ~3x on CPU)

    @field_validator("sets")
    @classmethod
    def _unique_sets(cls, v: list[EvalSetConfig]) -> list[EvalSetConfig]:
        names = [s.name for s in v]
        if len(set(names)) != len(names):
            raise ValueError(f"eval set names must be unique, got {names}")
        return v

    def k_for(self, name: str) -> int:
        return self.k.get(name, self.k.get("default", 1))


class Recipe(Section):
    name: str
    seed: int = 0
    corpus: CorpusConfig = CorpusConfig()
    refinery: RefineryConfig = RefineryConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    model: ModelConfig = ModelConfig()
    curriculum: CurriculumConfig
    pretrain: PretrainConfig = PretrainConfig()
    sft: SFTConfig = SFTConfig()
    rl: RLConfig = RLConfig()
    eval: EvalConfig = EvalConfig()

    def section(self, path: str) -> Section:
        """A section by dotted path, e.g. ``refinery.tiers``."""
        part = self
        for name in path.split("."):
            part = getattr(part, name)
        return part

    def section_hash(self, *paths: str) -> str:
        """Version of one or more sections plus the global seed (which every stage consumes).

        Execution settings (executor, workers) are not part of any stage's identity."""
        parts = [self.section(p).version_hash() for p in paths]
        return hashlib.sha256(f"{':'.join(parts)}:{self.seed}".encode()).hexdigest()[:16]


def resolve_recipe_path(name_or_path: str | os.PathLike | None = None) -> Path:
    """A recipe name (``tiny``) or a path; defaults to $NANBEIGE_RECIPE, then ``tiny``."""
    ref = str(name_or_path or os.environ.get(RECIPE_ENV) or DEFAULT_RECIPE)
    path = Path(ref)
    if path.suffix not in (".yaml", ".yml"):
        path = RECIPES_DIR / f"{ref}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
        raise RecipeError(f"recipe {ref!r}: no file at {path} (known recipes: {known})")
    return path


def load_recipe(name_or_path: str | os.PathLike | None = None) -> Recipe:
    """Parse and validate a recipe; any problem raises RecipeError naming file and field."""
    path = resolve_recipe_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RecipeError(f"recipe {path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe {path}: top level must be a mapping, got {type(raw).__name__}")
    return parse_recipe(raw, origin=str(path))


def parse_recipe(raw: dict, origin: str = "<dict>") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        lines = [f"recipe {origin}: {exc.error_count()} invalid field(s)"]
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "<top level>"
            got = repr(err["input"])
            got = got if len(got) <= 80 else got[:77] + "..."
            value = f" (got {got})" if err["type"] != "missing" else ""
            lines.append(f"  {field}: {err['msg']}{value}")
        raise RecipeError("\n".join(lines)) from None

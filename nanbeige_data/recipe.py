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
import os
from pathlib import Path

import yaml
from pydantic import ValidationError, field_validator

from nanbeige_data.config import RecipeError, SandboxConfig, Section, TeacherConfig
from nanbeige_data.corpus.config import CorpusChecks, CorpusConfig, DomainSource
from nanbeige_data.evaluation.config import EvalConfig, EvalSetConfig
from nanbeige_data.posttraining.config import RLConfig, SFTConfig
from nanbeige_data.pretraining.config import (
    CurriculumConfig,
    ModelConfig,
    PretrainConfig,
    StageConfig,
    TokenizerConfig,
)
from nanbeige_data.refinery.config import (
    DecontaminationConfig,
    DedupConfig,
    FilterConfig,
    RefineryConfig,
    RetrievalConfig,
    TagDimension,
    TaggingConfig,
    TierConfig,
)

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
DEFAULT_RECIPE = "tiny"
RECIPE_ENV = "NANBEIGE_RECIPE"


__all__ = [
    "CorpusChecks",
    "CorpusConfig",
    "CurriculumConfig",
    "DecontaminationConfig",
    "DedupConfig",
    "DomainSource",
    "EvalConfig",
    "EvalSetConfig",
    "FilterConfig",
    "ModelConfig",
    "PretrainConfig",
    "RLConfig",
    "Recipe",
    "RecipeError",
    "RefineryConfig",
    "RetrievalConfig",
    "SFTConfig",
    "SandboxConfig",
    "Section",
    "StageConfig",
    "TeacherConfig",
    "TagDimension",
    "TaggingConfig",
    "TierConfig",
    "TokenizerConfig",
]


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
    sandbox: SandboxConfig = SandboxConfig()  # how model-written code runs (eval, SFT, RL)
    teacher: TeacherConfig = TeacherConfig()  # who writes synthetic data and SFT/DPD targets

    @field_validator("sandbox", mode="before")
    @classmethod
    def _sandbox_mode_alone(cls, v: object) -> object:
        """``sandbox: limits-only`` is short for ``sandbox: {mode: limits-only}``."""
        return {"mode": v} if isinstance(v, str) else v

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

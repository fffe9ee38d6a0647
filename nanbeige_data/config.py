"""The base of every recipe section: frozen, typo-proof, hashable into a stage's version.

Each stage package defines its own sections in its ``config.py`` (the config its library
functions take); ``nanbeige_data.recipe`` composes them into one ``Recipe``. Nothing here imports
a stage, so parsing a recipe stays cheap.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(gt=0)]
# "auto": bf16 where the hardware runs it natively (CUDA, a CPU with AVX512-BF16 or AMX), fp32
# elsewhere; see nanbeige_data.models.resolve_dtype
Dtype = Literal["auto", "float32", "bfloat16"]


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the file, the field and the reason."""


class Section(BaseModel):
    """A recipe section: unknown keys rejected, frozen, hashed into the stages that read it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # fields that say how a stage runs, not what it computes: never part of its version
    execution_fields: ClassVar[frozenset[str]] = frozenset()

    def version_hash(self) -> str:
        """Hash of this section's resolved values: what enters a stage's version."""
        values = self.model_dump(mode="json", exclude=set(self.execution_fields))
        blob = json.dumps(values, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


class SandboxConfig(Section):
    """How model-written code runs (``nanbeige_data.sandbox``); it enters the version of every
    asset that runs code, since a weaker sandbox can turn a failing program into a passing one.
    A recipe may say just ``sandbox: limits-only``."""

    # bubblewrap: namespaces (no network, read-only system, private /tmp) plus resource limits;
    # limits-only: resource limits only (no isolation), for hosts where namespaces are forbidden
    mode: Literal["bubblewrap", "limits-only"] = "bubblewrap"
    max_processes: PositiveInt = 32  # processes (threads included) a run may hold at once
    tmp_mb: PositiveInt = 64  # size of the private /tmp, the run's only writable place


class TeacherConfig(Section):
    """The model that writes synthetic data, SFT targets and distillation positives: the
    packaged SmolLM2-135M-Instruct, a ``.gguf``, a Hugging Face model directory, or an
    OpenAI-compatible server (``http://host:port/v1``; ``vllm serve`` at scale)."""

    # how the teacher runs, not which teacher it is
    execution_fields: ClassVar[frozenset[str]] = frozenset(
        {"backend", "dtype", "batch_size", "timeout_s", "max_retries"}
    )

    model: str = "smollm2-135m-instruct"  # packaged name, .gguf, model dir, or http(s) URL
    served_name: str | None = None  # the server's model name (None: the first of /v1/models)
    chat: bool = True  # prompts go in as a user turn of the model's chat template
    backend: Literal["torch", "vllm"] = "torch"  # for a local model
    dtype: Dtype = "auto"
    batch_size: PositiveInt = 32  # rows decoded together (local torch engine)
    timeout_s: Annotated[float, Field(gt=0)] = 300.0  # per server request
    max_retries: Annotated[int, Field(ge=0)] = 2  # per server request, on timeouts and 5xx

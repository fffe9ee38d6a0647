"""The evaluation section of the recipe: sets, sampling, verifier limits, the engine."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator

from nanbeige_data.config import Dtype, PositiveInt, Section


class EvalSetConfig(Section):
    name: str
    path: str | None = None  # a user's JSONL set (prompt, reference[, id]); None = built-in
    verifier: Literal["math", "choice", "exact", "code"] = "exact"  # for a user's set


class EvalConfig(Section):
    # how generation runs, not what is evaluated (dtype moves the last digits of the logits only)
    execution_fields: ClassVar[frozenset[str]] = frozenset({"backend", "batch_size", "dtype"})

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
    # rows (prompt x sample) decoded together by the torch engine: a decode step costs about
    # the same for 8 rows as for 32 on CPU (weights are read once per step), so 32 halves the
    # tiny recipe's eval time against 8; the KV cache grows with it
    batch_size: PositiveInt = 32
    dtype: Dtype = "auto"  # generation dtype; auto: bf16 where native, else fp32 (resolve_dtype)

    @field_validator("sets")
    @classmethod
    def _unique_sets(cls, v: list[EvalSetConfig]) -> list[EvalSetConfig]:
        names = [s.name for s in v]
        if len(set(names)) != len(names):
            raise ValueError(f"eval set names must be unique, got {names}")
        return v

    def k_for(self, name: str) -> int:
        return self.k.get(name, self.k.get("default", 1))

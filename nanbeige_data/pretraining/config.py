"""The pretraining sections of the recipe: tokenizer, model shape, FG-WSD curriculum, trainer."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from nanbeige_data.config import Dtype, Fraction, PositiveInt, Section


class TokenizerConfig(Section):
    """What ``tokenizer.train_tokenizer`` / ``install_tokenizer`` take, as the recipe says it."""

    # target vocabulary, special tokens included (a small corpus may fall short of it)
    vocab_size: PositiveInt = 8192
    path: str | None = None  # a user-given tokenizer.json instead of training one
    # ids 0..n-1 when trained here; added at the end of a user-given vocabulary when missing
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
    min_frequency: PositiveInt = 2  # a byte pair must occur this often to be merged
    eos_token: str = "<|endoftext|>"  # document separator in the shards; also HF's pad token

    @model_validator(mode="after")
    def _eos_and_room(self) -> TokenizerConfig:
        if self.eos_token not in self.special_tokens:
            raise ValueError(f"eos_token {self.eos_token!r} must be one of the special_tokens")
        if self.vocab_size <= len(self.special_tokens) + 256:
            raise ValueError(
                f"vocab_size {self.vocab_size} leaves no room beyond the 256 bytes and "
                f"{len(self.special_tokens)} special tokens"
            )
        return self


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
    """The trainer's settings; ``nanbeige_train.pretrain.trainer.StageSpec`` carries it whole."""

    # how a stage runs, not what it computes: kept out of the stages' versions
    execution_fields: ClassVar[frozenset[str]] = frozenset(
        {"checkpoint_every", "dtype", "data_parallel_shard", "tensor_parallel", "nproc_per_node"}
    )

    batch_size: PositiveInt = 8  # global sequences per micro-step over all data-parallel ranks
    grad_accumulation: PositiveInt = 1
    checkpoint_every: PositiveInt = 50
    # torchtitan's mixed-precision parameter dtype. Training's "auto" is bfloat16 on CUDA and
    # float32 on every CPU (even one with AVX512-BF16: the CPU run is the correctness run, its
    # loss checks and the stored reference curve are fp32); see trainer.training_dtype
    dtype: Dtype = "auto"
    data_parallel_shard: int = -1  # torchtitan FSDP degree (-1: all ranks)
    tensor_parallel: PositiveInt = 1
    nproc_per_node: PositiveInt = 1

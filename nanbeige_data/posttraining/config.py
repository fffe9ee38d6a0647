"""The post-training sections of the recipe (SFT, RL); their stages land with the second half."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from nanbeige_data.config import Fraction, PositiveInt, Section


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

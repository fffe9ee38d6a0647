"""Models as the data stages see them: the engine Protocol every sampling stage takes.

A data stage that needs a model (tagging, synthetic data, refinement, evaluation) receives an
object satisfying :class:`GenerationEngine`; ``nanbeige_train.generation`` implements it with
plain torch (a KV cache) or vLLM, and a server-backed engine can implement it too. The data
library never imports the training library.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 0.6  # 0 = greedy
    top_p: float = 0.95
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 1 or self.max_tokens < 1:
            raise ValueError(f"n and max_tokens must be >= 1, got {self.n}, {self.max_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1: {self}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Sample:
    text: str
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" (stop string), "eos", "length"

    @property
    def logprob(self) -> float:
        return float(sum(self.logprobs))


class GenerationEngine(Protocol):
    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Sample]]: ...

    def score(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[list[float]]: ...

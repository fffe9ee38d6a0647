"""Generation engines: one interface for sampling and scoring, a torch engine and a vLLM engine.

``engine.generate(prompts, SamplingParams(n=8, temperature=0.6, top_p=0.95, max_tokens=256,
stop=("</answer>",), seed=0))`` returns, per prompt, ``n`` :class:`Sample` s with the text, the
token ids and each token's log-probability; ``engine.score(prompts, continuations)`` returns the
log-probabilities of given continuations. Every later stage that samples (evaluation, synthetic
data, rejection sampling, distillation, RL rollouts) goes through this interface, the
:class:`~nanbeige_data.models.GenerationEngine` Protocol of the data library.

:class:`TorchEngine` (default, :mod:`.torch_engine`) runs any HF Llama-architecture causal LM on
CPU or GPU with a KV cache; :class:`VLLMEngine` (:mod:`.vllm_engine`) wraps ``vllm.LLM``.
:func:`load_engine` picks one by the recipe's backend name.
"""

from __future__ import annotations

from typing import Any

from nanbeige_data.models import GenerationEngine, Sample, SamplingParams
from nanbeige_train.generation.torch_engine import TorchEngine, row_seed
from nanbeige_train.generation.vllm_engine import VLLMEngine

CODE_VERSION = "1"
BACKENDS = ("torch", "vllm")

__all__ = [
    "BACKENDS",
    "CODE_VERSION",
    "GenerationEngine",
    "Sample",
    "SamplingParams",
    "TorchEngine",
    "VLLMEngine",
    "load_engine",
    "row_seed",
]


def load_engine(
    spec: str, *, backend: str = "torch", dtype: str = "auto", chat: bool = False, **kw: Any
) -> GenerationEngine:
    """An engine by backend name: ``torch`` (default; ``kw`` go to :class:`TorchEngine`, e.g.
    ``batch_size``) or ``vllm``. ``dtype`` "auto" is resolved by
    :func:`nanbeige_data.models.resolve_dtype` for both backends."""
    if backend == "torch":
        return TorchEngine.load(spec, dtype=dtype, chat=chat, **kw)
    if backend == "vllm":
        from nanbeige_data.models import resolve_dtype

        return VLLMEngine(spec, chat=chat, engine_kwargs={"dtype": resolve_dtype(dtype)})
    raise ValueError(f"unknown generation backend {backend!r}: one of {', '.join(BACKENDS)}")

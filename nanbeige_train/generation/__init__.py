"""Generation engines: one interface for sampling and scoring, a torch engine and a vLLM engine.

``engine.generate(prompts, SamplingParams(n=8, temperature=0.6, top_p=0.95, max_tokens=256,
stop=("</answer>",), seed=0))`` returns, per prompt, ``n`` :class:`Sample` s with the text, the
token ids and each token's log-probability; ``engine.score(prompts, continuations)`` returns the
log-probabilities of given continuations. Every later stage that samples (evaluation, synthetic
data, rejection sampling, distillation, RL rollouts) goes through this interface, the
:class:`~nanbeige_data.models.GenerationEngine` Protocol of the data library.

:class:`TorchEngine` (default, :mod:`.torch_engine`) runs any HF Llama-architecture causal LM on
CPU or GPU with a KV cache; :class:`VLLMEngine` (:mod:`.vllm_engine`) wraps ``vllm.LLM``.
:func:`load_engine` picks one by the recipe's backend name. :class:`OpenAIEngine`
(:mod:`.openai_engine`) is the same interface over an OpenAI-compatible server, and
:func:`load_teacher` picks a local engine or a server for the recipe's ``teacher``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nanbeige_data.models import GenerationEngine, Sample, SamplingParams
from nanbeige_train.generation.openai_engine import OpenAIEngine, TeacherError
from nanbeige_train.generation.torch_engine import TorchEngine, row_seed
from nanbeige_train.generation.vllm_engine import VLLMEngine

if TYPE_CHECKING:
    from nanbeige_data.config import TeacherConfig

CODE_VERSION = "1"
BACKENDS = ("torch", "vllm")

__all__ = [
    "BACKENDS",
    "CODE_VERSION",
    "GenerationEngine",
    "OpenAIEngine",
    "Sample",
    "SamplingParams",
    "TeacherError",
    "TorchEngine",
    "VLLMEngine",
    "load_engine",
    "load_teacher",
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


def load_teacher(cfg: TeacherConfig) -> GenerationEngine:
    """The engine for a :class:`~nanbeige_data.config.TeacherConfig`: an :class:`OpenAIEngine`
    for an http(s) URL (checked now: the server answers and serves ``served_name``), else a
    local model by :func:`load_engine`. A teacher that cannot be loaded or reached is a
    :class:`TeacherError` naming it and the cause."""
    if cfg.model.startswith(("http://", "https://")):
        return OpenAIEngine.from_config(cfg)
    try:
        return load_engine(
            cfg.model,
            backend=cfg.backend,
            dtype=cfg.dtype,
            chat=cfg.chat,
            batch_size=cfg.batch_size,
        )
    except (OSError, ValueError, ImportError) as exc:
        raise TeacherError(f"teacher {cfg.model!r} cannot be loaded: {exc}") from exc

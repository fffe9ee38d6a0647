"""CPU compatibility for torchtitan 0.3 -- isolated, and a no-op wherever an accelerator exists.

torchtitan 0.3 has no CPU device option. This is exactly what it assumes and what is filled in
(measured against torch 2.13 CPU; DESIGN.md "Stack facts"):

1. ``torchtitan.tools.utils`` picks ``device_type = "cuda"`` when no accelerator is found, and
   five modules import ``device_type`` / ``device_module`` by name. They are rebound to
   ``"cpu"`` and to :data:`CPU_DEVICE_MODULE`, a small module that answers the CUDA calls the
   trainer makes (``set_device``, ``get_device_name``, ``get_device_properties``,
   ``memory_stats``, ``reset_peak_memory_stats``, ``empty_cache``, ``synchronize``): peak
   memory is the process's peak RSS.
2. ``torch.distributed.set_timeout`` is new in torch 2.14 (torchtitan's pin); on 2.13 the
   trainer's post-first-step timeout change becomes a no-op.
3. Import order: ``torch.utils.tensorboard`` (imported by torchtitan) imports TensorFlow when it
   is installed (other packages here pull it in), which takes 4 s and, loaded before triton's
   C extension, makes that import segfault. :func:`isolate_imports` imports triton first and,
   in a training process, hides TensorFlow (tensorboard then uses its own stub).
4. FSDP reduce-scatters gradients with ``ReduceOp.PREMUL_SUM``, which gloo lacks.
   torchtitan already divides the loss by the global token count (gradient divide factor 1),
   so :func:`gloo_parallelize` wraps the model's parallelize function and switches every FSDP
   module to plain-sum reduction -- the same numbers, an op gloo has.
5. The process group: ``dist_utils.init_distributed`` maps ``cpu`` to gloo through torch's
   default device-backend map, so nothing is needed there.

Attention on CPU is SDPA (FlexAttention has no CPU backward in torch 2.13); that choice lives
in :mod:`nanbeige_train.model`, not here. Call :func:`apply` before building a Trainer.
"""

from __future__ import annotations

import contextlib
import platform
import resource
import sys
import types
from datetime import timedelta

import torch

_PATCHED_MODULES = (
    "torchtitan.tools.utils",
    "torchtitan.components.metrics",
    "torchtitan.distributed.parallel_dims",
    "torchtitan.distributed.utils",
    "torchtitan.models.common.token_dispatcher",
    "torchtitan.tools.profiler",
)


def _peak_rss_bytes() -> int:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib * 1024 if sys.platform != "darwin" else kib


def _total_memory_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 34


def _memory_stats(device=None) -> dict[str, int]:
    peak = _peak_rss_bytes()
    return {
        "active_bytes.all.peak": peak,
        "reserved_bytes.all.peak": peak,
        "num_alloc_retries": 0,
        "num_ooms": 0,
    }


CPU_DEVICE_MODULE = types.SimpleNamespace(
    is_available=lambda: True,
    device_count=lambda: 1,
    current_device=lambda: 0,
    set_device=lambda device=None: None,
    synchronize=lambda device=None: None,
    empty_cache=lambda: None,
    reset_peak_memory_stats=lambda device=None: None,
    memory_stats=_memory_stats,
    get_device_name=lambda device=None: platform.processor() or platform.machine() or "cpu",
    get_device_properties=lambda device=None: types.SimpleNamespace(
        total_memory=_total_memory_bytes(), name="cpu"
    ),
    manual_seed=torch.manual_seed,
    manual_seed_all=torch.manual_seed,
)


def isolate_imports(hide_tensorflow: bool = True) -> None:
    """Import triton before anything loads TensorFlow; optionally make TensorFlow unimportable.

    Call at the top of a process that imports torchtitan (a no-op when already done)."""
    if hide_tensorflow and "tensorflow" not in sys.modules:
        sys.modules["tensorflow"] = None  # import tensorflow -> ImportError -> tensorboard stub
    with contextlib.suppress(ImportError):
        import triton  # noqa: F401


def needed() -> bool:
    """True when torch sees no accelerator: the only case in which :func:`apply` acts."""
    return torch.accelerator.current_accelerator() is None


def apply() -> bool:
    """Make the stock torchtitan Trainer run on CPU. Returns whether anything was patched."""
    if not needed():
        return False
    import importlib

    for name in _PATCHED_MODULES:
        module = importlib.import_module(name)
        if hasattr(module, "device_type"):
            module.device_type = "cpu"
        if hasattr(module, "device_module"):
            module.device_module = CPU_DEVICE_MODULE
    utils = importlib.import_module("torchtitan.tools.utils")
    utils.get_device_info = lambda: ("cpu", CPU_DEVICE_MODULE)
    if not hasattr(torch.distributed, "set_timeout"):
        torch.distributed.set_timeout = _set_timeout_noop
    return True


def _set_timeout_noop(timeout: timedelta, group=None) -> None:
    """torch < 2.14 cannot change a live process group's timeout; gloo keeps its own."""


def gloo_parallelize(parallelize_fn):
    """Wrap a torchtitan parallelize function: on CPU, FSDP reduces with a plain sum (gloo)."""
    if not needed():
        return parallelize_fn

    def parallelize(model, **kwargs):
        from torch.distributed.fsdp import FSDPModule

        model = parallelize_fn(model, **kwargs)
        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.set_force_sum_reduction_for_comms(True)
        return model

    return parallelize

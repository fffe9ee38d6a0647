"""What every benchmark reports beside its numbers, and how it writes them down.

* :func:`machine` -- the facts a figure needs to be read: CPU model and cores, the flags that
  decide which dtype is fast (AVX2, AVX512-BF16, AMX), torch's CPU capability and any override
  of it in the environment, threads, versions, the dtype ``auto`` resolves to, the load, and
  the matmul ceiling in fp32 and bf16 *measured in the same run* (the roofline of that minute:
  on an AVX2-only host bf16 runs about 100x below fp32).
* :func:`machine_line` -- those facts as one printed line.
* :func:`md_table` -- a markdown table (the library's own renderer).
* :func:`printed` and :func:`write_results` -- print as usual, keep a copy, and write the report
  as JSON plus the printed text as markdown under ``benchmarks/results/``.

Trade-off: the matmul ceiling costs about a second per dtype (a little more where bf16 is
emulated), paid once per benchmark run so that every result file carries its own roofline.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import io
import json
import os
import platform
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
# CPU flags that decide which dtypes run natively (see nanbeige_data.models.resolve_dtype)
DTYPE_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
# environment settings that make torch/oneDNN behave as a weaker CPU (emulating an AVX2 host)
CPU_OVERRIDES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")


def cpu_model_and_flags() -> tuple[str, list[str]]:
    """The CPU's model name and its dtype-relevant flags (from /proc/cpuinfo on Linux)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), []
    fields = dict(
        (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in info.splitlines())
    )
    flags = set(fields.get("flags", "").split())
    model = fields.get("model name") or platform.processor() or platform.machine()
    return model, [f for f in DTYPE_FLAGS if f in flags]


def version(package: str) -> str | None:
    try:
        return md.version(package)
    except md.PackageNotFoundError:
        return None


def matmul_gflops(dtype: str, n: int = 512, budget_s: float = 0.5) -> float:
    """Best GFLOP/s of an n x n x n torch matmul in ``dtype`` on this CPU, with torch's
    current thread count: one warm-up call, then calls until ``budget_s`` has passed."""
    import torch

    a = torch.randn(n, n).to(getattr(torch, dtype))
    b = torch.randn(n, n).to(getattr(torch, dtype))
    torch.mm(a, b)
    best, started = float("inf"), time.perf_counter()
    while time.perf_counter() - started < budget_s or best == float("inf"):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def auto_dtype() -> str | None:
    """What the recipe's ``dtype: auto`` resolves to here (None if the rule is not there)."""
    try:
        from nanbeige_data.models import resolve_dtype
    except ImportError:
        return None
    return resolve_dtype("auto")


def machine(packages: Sequence[str] = ("torch", "torchtitan"), measure: bool = True) -> dict:
    """The facts of this host and minute; ``measure`` adds the fp32/bf16 matmul ceilings."""
    import torch

    model, flags = cpu_model_and_flags()
    facts: dict[str, Any] = {
        "cpu": model,
        "cores": os.cpu_count(),
        "cpu_flags": flags,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_overrides": {k: os.environ[k] for k in CPU_OVERRIDES if k in os.environ},
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        **{p: version(p) for p in packages},
        "auto_dtype": auto_dtype(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    if measure:
        facts["matmul_gflops"] = {d: round(matmul_gflops(d), 1) for d in ("float32", "bfloat16")}
    return facts


def machine_line(m: dict) -> str:
    """The facts as one line, e.g. for the head of a printed report."""
    flags = ", ".join(m["cpu_flags"]) or "none known"
    overrides = " ".join(f"{k}={v}" for k, v in m["cpu_overrides"].items())
    versions = ", ".join(f"{k} {m[k]}" for k in ("torch", "torchtitan", "transformers") if m.get(k))
    line = (
        f"machine: {m['cpu']}, {m['cores']} cores (flags {flags}; torch capability "
        f"{m['torch_cpu_capability']}{'; ' + overrides if overrides else ''}), "
        f"{m['torch_threads']} torch threads, {versions}, python {m['python']}; "
        f"dtype auto -> {m['auto_dtype'] or 'n/a'}; load {m['load_average_1min']}"
    )
    if "matmul_gflops" in m:
        g = m["matmul_gflops"]
        line += f"; matmul ceiling fp32 {g['float32']:,} GFLOP/s, bf16 {g['bfloat16']:,} GFLOP/s"
    return line


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> str:
    """A markdown table; ``align`` is one ``l`` or ``r`` per column (default left)."""
    from nanbeige_data.report import md_table as render

    return render(header, rows, align)


class _Tee(io.TextIOBase):
    def __init__(self, out: Any, copy: io.StringIO):
        self.out, self.copy = out, copy

    def write(self, text: str) -> int:
        self.copy.write(text)
        return self.out.write(text)

    def flush(self) -> None:
        self.out.flush()


@contextlib.contextmanager
def printed() -> Iterator[io.StringIO]:
    """Inside the block, what is printed still goes to stdout and is also kept (the markdown
    that :func:`write_results` writes beside the JSON)."""
    copy = io.StringIO()
    with contextlib.redirect_stdout(_Tee(sys.stdout, copy)):
        yield copy


def results_path(name: str) -> Path:
    """The default JSON path of a benchmark's results."""
    return RESULTS / f"{name}.json"


def write_results(out: Path, report: dict, markdown: str = "") -> list[Path]:
    """``report`` as JSON at ``out`` and, when given, ``markdown`` beside it (``.md``)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    written = [out]
    if markdown:
        written.append(out.with_suffix(".md"))
        written[-1].write_text(markdown.strip() + "\n")
    return written

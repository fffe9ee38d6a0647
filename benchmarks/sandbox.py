"""Sandbox start-up cost: runs/s of the bubblewrap sandbox against the limits-only runner and
the runner before the sandbox issue, and the eval harness's code verification end to end.

    .venv/bin/python benchmarks/sandbox.py [--runs 40] [--items 164] [--baseline-rev 23c29af]
        [--out benchmarks/results/sandbox.json]

Methods, all in this run on this host:

* ``previous`` -- ``nanbeige_data/sandbox.py`` as it was at ``--baseline-rev`` (read with
  ``git show``; rlimits and a process-group watchdog, a wrapper interpreter that ``exec``s a
  second one); left out where git or the revision is missing;
* ``limits-only`` -- today's runner in its weaker mode (one interpreter, the same limits);
* ``bubblewrap`` -- the default: ``unshare`` + ``bwrap`` namespaces, then the same wrapper.

Workloads: a trivial program (``pass``) and a HumanEval-sized one (item 0's prompt, canonical
solution, tests and ``check``), ``--runs`` times each, one after another (as the eval harness
runs them) and then two at a time (a thread pool of 2, both cores busy). End to end: the
harness's code verifier (``verify_code``) on the canonical solutions of the first ``--items``
HumanEval items, sequentially, as ``nanbeige_train.evaluate`` does; every one must pass.
Printed: runs/s and the ratio to ``previous`` (or to ``limits-only``); results with the machine
facts of ``benchmarks/common.py`` go to ``benchmarks/results/sandbox.json``, the printed tables
beside it as ``.md``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import importlib.util
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import common  # noqa: E402
from nanbeige_data import sandbox  # noqa: E402
from nanbeige_data.config import SandboxConfig  # noqa: E402
from nanbeige_data.evaluation.evalsets import load_items  # noqa: E402
from nanbeige_data.evaluation.verifiers import verify_code  # noqa: E402

Runner = Callable[[str], bool]  # program -> ok


def previous_runner(rev: str) -> Runner | None:
    """The sandbox module as it was at ``rev``, or None where git cannot show it."""
    try:
        source = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{rev}:nanbeige_data/sandbox.py"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp(prefix="sandbox-bench-")) / "previous_sandbox.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("previous_sandbox", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return lambda program: module.run_code(program, must_finish=True).ok


def current_runner(mode: str) -> Runner:
    cfg = SandboxConfig(mode=mode)
    return lambda program: sandbox.run_code(program, sandbox=cfg, must_finish=True).ok


def humaneval_program(item: dict) -> str:
    return f"{item['prompt']}{item['reference']}\n{item['test']}\ncheck({item['entry_point']})\n"


def runs_per_second(run: Runner, program: str, runs: int, workers: int) -> float:
    assert run(program), "the benchmark program must pass"  # warm-up, and a sanity check
    started = time.perf_counter()
    with cf.ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda _: run(program), range(runs)))
    assert all(results)
    return runs / (time.perf_counter() - started)


def verify_all(items: list[dict], method: str, previous: Runner | None) -> float:
    """Seconds to verify every item's canonical solution, as the eval harness does (its own
    ``verify_code``; for ``previous``, the same program through the old runner)."""
    started = time.perf_counter()
    for item in items:
        if method == "previous":
            assert previous(humaneval_program(item)), item["id"]
            continue
        verdict = verify_code(
            item["reference"], item["test"], item["entry_point"], prompt=item["prompt"],
            box=SandboxConfig(mode=method),
        )  # fmt: skip
        assert verdict.correct, (item["id"], verdict.reason, verdict.output[-300:])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--items", type=int, default=164)
    parser.add_argument("--baseline-rev", default="23c29af")
    parser.add_argument("--out", type=Path, default=common.results_path("sandbox"))
    args = parser.parse_args()
    sandbox.ensure_available(SandboxConfig())
    items, _ = load_items("humaneval", max_items=args.items)
    methods: dict[str, Runner] = {}
    if (previous := previous_runner(args.baseline_rev)) is not None:
        methods["previous"] = previous
    methods |= {m: current_runner(m) for m in ("limits-only", "bubblewrap")}
    programs = {"trivial": "pass", "humaneval_sized": humaneval_program(items[0])}
    with common.printed() as out:
        facts = common.machine(measure=False)
        print(common.machine_line(facts))
        print(f"process count in bubblewrap: {sandbox.process_limit(SandboxConfig())}\n")
        rates = {
            (method, workload, workers): runs_per_second(run, program, args.runs, workers)
            for workers in (1, 2)
            for workload, program in programs.items()
            for method, run in methods.items()
        }
        base = next(iter(methods))
        rows = [
            (w, workers, m, f"{r:.1f}", f"{rates[(base, w, workers)] / r:.2f}x")
            for (m, w, workers), r in rates.items()
        ]
        print(f"runs/s ({args.runs} runs each; slowdown against {base})\n")
        header = ("workload", "workers", "method", "runs/s", "slowdown")
        print(common.md_table(header, rows, "lrlrr"))
        seconds = {m: verify_all(items, m, previous) for m in methods}
        ratio = seconds["bubblewrap"] / seconds[base]
        timings = ", ".join(f"{m} {t:.1f} s" for m, t in seconds.items())
        print(
            f"\neval code verification, {len(items)} HumanEval canonical solutions, sequential: "
            f"{timings}; bubblewrap / {base} = {ratio:.2f}x (the issue's bound: 1.5x)"
        )
    report = {
        "machine": facts,
        "runs": args.runs,
        "runs_per_second": [
            {"method": m, "workload": w, "workers": k, "runs_per_second": r}
            for (m, w, k), r in rates.items()
        ],
        "eval_verification_seconds": seconds,
        "eval_verification_items": len(items),
        "baseline": base,
        "bubblewrap_over_baseline": ratio,
        "process_limit": sandbox.process_limit(SandboxConfig()),
    }
    for path in common.write_results(args.out, report, out.getvalue()):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Incremental re-runs: the whole main job, then a re-run after a one-field recipe change.

    .venv/bin/python benchmarks/incremental.py [--recipe tiny] [--field decay-mixture]
                                               [--out benchmarks/results/incremental.json]

What a user does, through the CLI, in a temporary store and DAGSTER_HOME:

1. baseline -- ``nanbeige run`` on a fresh store: every asset of the main job;
2. ``nanbeige stale`` after changing one field of a copy of the recipe (by default the decay
   stage's mixture: two bucket weights swapped), printed;
3. ``nanbeige run --stale``: what it re-materializes, round by round, and how long it takes;
4. ``nanbeige run --stale`` once more: nothing should be stale (the no-op cost).

Printed: wall times, the ratio full / re-run, the assets re-materialized and the assets left
alone. The re-materialized set is compared with the graph: every asset downstream of what
reads the changed section must be there, and nothing else. Results (with the machine facts
of ``benchmarks/common.py``) go to ``benchmarks/results/incremental.json``, the printed
summary beside it as ``.md``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
NANBEIGE = Path(sys.executable).parent / "nanbeige"

from benchmarks import common  # noqa: E402


def change_decay_mixture(raw: dict) -> str:
    stage = raw["curriculum"]["stages"][-1]
    (a, wa), (b, wb) = list(stage["mixture"].items())[:2]
    stage["mixture"][a], stage["mixture"][b] = wb, wa
    return f"curriculum.stages[{stage['name']}].mixture: {a} {wa} -> {wb}, {b} {wb} -> {wa}"


def change_eval_items(raw: dict) -> str:
    old = raw["eval"]["max_items"]
    raw["eval"]["max_items"] = max(1, old - 1)
    return f"eval.max_items: {old} -> {raw['eval']['max_items']}"


def change_dedup_threshold(raw: dict) -> str:
    dedup = raw["refinery"]["dedup"]
    key = next(k for k in ("minhash_buckets", "buckets", "hashes_per_bucket") if k in dedup)
    dedup[key] = int(dedup[key]) + 1
    return f"refinery.dedup.{key}: {dedup[key] - 1} -> {dedup[key]}"


FIELDS = {
    "decay-mixture": change_decay_mixture,
    "eval-items": change_eval_items,
    "dedup": change_dedup_threshold,
}


def cli(*args: str, env: dict) -> tuple[float, str]:
    started = time.monotonic()
    proc = subprocess.run([str(NANBEIGE), *args], env=env, cwd=REPO, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"nanbeige {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}")
    return seconds, proc.stdout


def rematerialized(out: str) -> list[str]:
    match = re.search(r"^re-materialized \d+ asset\(s\): (.+)$", out, re.M)
    return match.group(1).split(", ") if match else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="tiny")
    parser.add_argument("--field", choices=sorted(FIELDS), default="decay-mixture")
    parser.add_argument("--out", type=Path, default=common.results_path("incremental"))
    args = parser.parse_args()
    machine = common.machine(packages=("torch", "dagster"))
    print(common.machine_line(machine))

    from nanbeige_data.recipe import resolve_recipe_path

    with tempfile.TemporaryDirectory(prefix="nanbeige-incremental-") as tmp:
        tmp_path = Path(tmp)
        recipe = tmp_path / "recipe.yaml"
        raw = yaml.safe_load(resolve_recipe_path(args.recipe).read_text())
        recipe.write_text(yaml.safe_dump(raw, sort_keys=False))
        (tmp_path / "home").mkdir()
        env = {
            **os.environ,
            "DAGSTER_HOME": str(tmp_path / "home"),
            "NANBEIGE_STORE": str(tmp_path / "store"),
        }
        load = os.getloadavg()[0]
        print(f"full main job ({args.recipe}, {os.cpu_count()} cores, load {load:.1f}) ...")
        full_s, full_out = cli("run", "--recipe", str(recipe), env=env)
        built = re.findall(r"^  (\S+)\s+\d{8}T", full_out, re.M)
        print(f"  {full_s:.0f} s, {len(built)} assets")

        change = FIELDS[args.field](raw)
        recipe.write_text(yaml.safe_dump(raw, sort_keys=False))
        print(f"\nchanged one field: {change}")
        _, report = cli("stale", "--recipe", str(recipe), env=env)
        print(report)

        print("re-run of what is stale ...")
        rerun_s, rerun_out = cli("run", "--recipe", str(recipe), "--stale", env=env)
        rounds = re.findall(r"^round \d+: .+$", rerun_out, re.M)
        redone = rematerialized(rerun_out)
        print("\n".join(f"  {line}" for line in rounds))
        noop_s, noop_out = cli("run", "--recipe", str(recipe), "--stale", env=env)
        assert "nothing is stale" in noop_out, noop_out[-2000:]

    untouched = sorted(set(built) - set(redone))
    result = {
        "recipe": args.recipe,
        "change": change,
        "full_s": round(full_s, 1),
        "rerun_s": round(rerun_s, 1),
        "noop_s": round(noop_s, 1),
        "ratio_full_over_rerun": round(full_s / rerun_s, 2),
        "assets_total": len(built),
        "rematerialized": redone,
        "rounds": rounds,
        "untouched": untouched,
        "load_before": round(load, 2),
        "machine": machine,
    }
    with common.printed() as text:
        print_result(result)
    print(
        f"results: {', '.join(map(str, common.write_results(args.out, result, text.getvalue())))}"
    )


def print_result(result: dict) -> None:
    print(common.machine_line(result["machine"]))
    print(
        f"\nfull main job {result['full_s']:.0f} s; re-run after the change "
        f"{result['rerun_s']:.0f} s ({result['ratio_full_over_rerun']}x faster); "
        f"nothing-stale check {result['noop_s']:.0f} s"
    )
    redone, total = result["rematerialized"], result["assets_total"]
    print(f"re-materialized {len(redone)} of {total}: {', '.join(redone)}")
    print(f"left alone: {', '.join(result['untouched'])}")


if __name__ == "__main__":
    main()

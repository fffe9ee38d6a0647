"""`nanbeige`: run the pipeline and look into the store from a terminal.

nanbeige run [--recipe tiny] [--select "group:corpus"]   materialize (the main job by default)
nanbeige recipe check [tiny|path.yaml]                   validate a recipe, print its sections
nanbeige versions <asset>                                list an asset's versions
nanbeige manifest <asset> [--version ID]                 print a version's manifest
nanbeige lineage <asset> [--version ID] [--json]         the versions it was made from
nanbeige stale [--recipe R] [--all]                      what is stale or missing, and why
nanbeige run --stale                                     re-materialize only those
nanbeige plan [tiny|nanbeige4-3b|path.yaml]              a recipe's FG-WSD plan, no data
nanbeige serve [--model smollm2-135m-instruct] [--port 8000]   an OpenAI-compatible teacher
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from nanbeige_data.recipe import RECIPE_ENV, RecipeError, load_recipe, resolve_recipe_path
from nanbeige_data.store.versioned import StoreError, VersionedStore

REPO = Path(__file__).resolve().parent.parent


class UsageError(ValueError):
    """A command line that cannot run (a bad --select); reported as one line, exit status 2."""


def _open_store(root: str | None) -> VersionedStore:
    """The store at ``--store``, else $NANBEIGE_STORE, else data/store (the one place that
    default is read), checked now: a root that cannot be opened or written is a StoreError."""
    from assets.resources import default_store_root

    url = root or default_store_root()
    try:
        store = VersionedStore(url)
    except (ValueError, ImportError, OSError) as exc:  # unknown protocol, missing fsspec driver
        raise StoreError(f"cannot open the store at {url}: {exc}") from None
    if store.is_local:
        if Path(store.root).exists() and not Path(store.root).is_dir():
            raise StoreError(f"cannot open the store at {url}: it is a file, not a directory")
        try:
            Path(store.root).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot open the store at {url}: {exc.strerror or exc}") from None
        if not os.access(store.root, os.W_OK | os.X_OK):
            raise StoreError(f"cannot open the store at {url}: not writable (permission denied)")
    return store


def _use_recipe(ref: str | None) -> None:
    if ref:
        os.environ[RECIPE_ENV] = str(resolve_recipe_path(ref))
    os.environ.setdefault("DAGSTER_HOME", str(REPO / "dagster_home"))


def cmd_run(args: argparse.Namespace) -> int:
    _use_recipe(args.recipe)
    recipe = load_recipe()  # fail before any asset runs
    from assets.console import quiet_framework_warnings

    quiet_framework_warnings()
    from assets.resources import STORE_ENV

    store = _open_store(args.store)
    os.environ[STORE_ENV] = store.url
    import dagster as dg

    from assets.definitions import defs

    keys = _selection(defs, args.select)
    print(
        f"recipe {recipe.name} ({resolve_recipe_path()}); store {store.url}; "
        f"DAGSTER_HOME {os.environ['DAGSTER_HOME']}",
        flush=True,
    )
    job = defs.resolve_job_def("main")
    if args.stale:
        return _run_stale(defs, job, store, keys, args.log_level)
    started = time.monotonic()
    with dg.DagsterInstance.get() as instance:
        result = _execute(job, instance, keys or _selection(defs, "*"), args.log_level)
        print(_summary([result], store, time.monotonic() - started))
    return 0 if result.success else 1


def _selection(defs, select: str | None) -> list | None:
    """The asset keys a --select string names; a bad string or an empty match is a UsageError."""
    if not select:
        return None
    import dagster as dg

    try:
        keys = dg.AssetSelection.from_string(select).resolve(defs.resolve_asset_graph())
    except dg.DagsterError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UsageError(f"invalid --select {select!r}: {first}") from None
    if not keys:
        raise UsageError(f"--select {select!r} matches no asset (try 'group:corpus' or 'raw_web+')")
    return sorted(keys, key=lambda k: k.to_user_string())


def _execute(job, instance, keys: list, log_level: str):
    """One in-process run of ``keys`` with the quiet console (assets/console.py)."""
    from assets.console import console_logger, run_config

    names = [k.to_python_identifier() for k in keys]
    return job.with_logger_defs({"console": console_logger}).execute_in_process(
        instance=instance,
        raise_on_error=False,
        asset_selection=keys,
        run_config=run_config(log_level, names),
    )


def _run_stale(defs, job, store: VersionedStore, keys, log_level: str) -> int:
    """Re-materialize exactly what is stale, in rounds: each round runs the frontier (see
    assets/staleness.py), then staleness is read again, so an asset whose parent re-ran to the
    same data is left alone."""
    import dagster as dg

    from assets.staleness import frontier, staleness

    allowed = None if keys is None else {k.to_python_identifier() for k in keys}
    done: list[str] = []
    results = []
    started = time.monotonic()
    with dg.DagsterInstance.get() as instance:
        while True:
            ready = [k for k in frontier(staleness(defs, store)) if allowed is None or k in allowed]
            if not ready:
                break
            again = sorted(set(ready) & set(done))
            if again:
                print(f"error: still stale after re-materializing: {', '.join(again)}")
                return 1
            print(
                f"round {len(results) + 1}: re-materializing {len(ready)} stale asset(s): "
                f"{', '.join(ready)}",
                flush=True,
            )
            result = _execute(job, instance, [dg.AssetKey(k) for k in ready], log_level)
            results.append(result)
            done += ready
            if not result.success:
                break
    if not results:
        print("nothing is stale")
        return 0
    print(f"re-materialized {len(done)} asset(s): {', '.join(done)}")
    print(_summary(results, store, time.monotonic() - started))
    return 0 if results[-1].success else 1


def _summary(results: list, store: VersionedStore, seconds: float) -> str:
    import dagster as dg

    success = all(r.success for r in results)
    runs = ", ".join(r.run_id for r in results)
    lines = [f"\n{'succeeded' if success else 'FAILED'} in {seconds:.0f}s (run {runs})", ""]
    events = [e for r in results for e in r.get_asset_materialization_events()]
    lines += ["assets:"] if events else []
    for event in events:
        mat = event.step_materialization_data.materialization
        meta = mat.metadata
        version = meta.get("version_id").value if meta.get("version_id") else "?"
        path = meta.get("path").value if meta.get("path") else ""
        counts = ", ".join(
            f"{k}={meta[k].value}" for k in ("documents", "bytes", "chars") if k in meta
        )
        lines.append(
            f"  {mat.asset_key.to_user_string():<18} {version}  {counts}\n  {'':<18} {path}"
        )
    checks = [ev for r in results for ev in r.get_asset_check_evaluations()]
    if checks:
        bad = [f"{e.asset_key.to_user_string()}:{e.check_name}" for e in checks if not e.passed]
        lines.append(
            f"checks: {len(checks) - len(bad)} passed"
            + (f", {len(bad)} FAILED ({', '.join(bad)})" if bad else "")
        )
    failed = [e.step_key for r in results for e in r.all_events if e.is_step_failure]
    if failed:  # each one's description was printed once, when it failed
        lines.append(f"failed: {', '.join(failed)} (reasons above)")
    planned = {k for r in results for k in (r.dagster_run.asset_selection or ())}
    made = {e.asset_key for e in events} | {dg.AssetKey(k) for k in failed}
    if not_run := sorted(k.to_user_string() for k in planned - made):
        lines.append(f"not run (an upstream step failed): {', '.join(not_run)}")
    lines += [
        "",
        f"store: {store.url}   (each version has a manifest.json with its lineage)",
        "UI:    make ui   (dagster dev on http://127.0.0.1:3000)",
        'query: .venv/bin/nanbeige sql "select * from corpus_summary"',
    ]
    return "\n".join(lines)


def cmd_recipe(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe)
    print(f"recipe {recipe.name} ({resolve_recipe_path(args.recipe)}) is valid")
    for section in type(recipe).model_fields:
        if section not in ("name", "seed"):
            print(f"  {section:<12} {recipe.section_hash(section)}")
    print(f"  total pretraining tokens {recipe.curriculum.total_tokens:,}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """The FG-WSD plan of a recipe without data or training: stages, steps, tokens, LR."""
    from nanbeige_data.pretraining import curriculum

    recipe = load_recipe(args.recipe)
    plan = curriculum.plan_curriculum(
        recipe.curriculum,
        recipe.pretrain,
        high_quality_epochs=recipe.refinery.tiers.high_quality_epochs,
    )
    print(curriculum.plan_table_markdown(plan))
    problems = curriculum.check_plan(plan, recipe.curriculum)
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(plan.to_dict(), indent=2))
    if args.plot:
        curriculum.plot_plan(plan, Path(args.plot), compare=curriculum.vanilla_plan(plan))
    return 1 if problems else 0


def cmd_stale(args: argparse.Namespace) -> int:
    """Which assets are stale or missing, and why (code, data, upstream)."""
    _use_recipe(args.recipe)
    load_recipe()
    from assets.console import quiet_framework_warnings

    quiet_framework_warnings()
    from assets.definitions import defs
    from assets.staleness import render, staleness

    print(render(staleness(defs, _open_store(args.store)), show_fresh=args.all))
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    """The versions, code versions and recipe sections behind an asset version."""
    from nanbeige_data.store.lineage import lineage, render

    tree = lineage(_open_store(args.store), args.asset, args.version)
    print(json.dumps(tree.as_dict(), indent=2) if args.json else render(tree))
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    for v in _open_store(args.store).versions(args.asset):
        counts = " ".join(f"{k}={n}" for k, n in v.manifest.get("counts", {}).items())
        print(f"{v.version_id}  {v.manifest['created_at']}  {counts}")
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    import polars as pl

    from nanbeige_data.store.queries import query_store

    with pl.Config(tbl_rows=args.rows, tbl_cols=-1, fmt_str_lengths=60):
        print(query_store(_open_store(args.store).url, args.sql))
    return 0


def cmd_manifest(args: argparse.Namespace) -> int:
    store = _open_store(args.store)
    v = store.get(args.asset, args.version) if args.version else store.require(args.asset)
    print(json.dumps(v.manifest, indent=2))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """An OpenAI-compatible server over our engine, until interrupted (nanbeige_train/serve.py)."""
    from nanbeige_train import serve
    from nanbeige_train.generation import TeacherError

    try:
        serve.serve_from_args(args)
    except TeacherError as exc:  # a model that cannot be loaded: one line, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nanbeige", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="materialize the main job (or a selection)")
    run.add_argument("--recipe", help="recipe name or YAML path (default $NANBEIGE_RECIPE/tiny)")
    run.add_argument("--store", help="store root, path or fsspec URL (default data/store)")
    run.add_argument("--select", help='asset selection, e.g. "group:corpus" or "raw_web+"')
    run.add_argument("--log-level", default="INFO", help="console log level (DEBUG for steps)")
    run.add_argument("--stale", action="store_true", help="only stale or missing assets")
    run.set_defaults(fn=cmd_run)
    rec = sub.add_parser("recipe", help="validate a recipe")
    rec.add_argument("action", choices=["check"])
    rec.add_argument("recipe", nargs="?")
    rec.set_defaults(fn=cmd_recipe)
    pln = sub.add_parser("plan", help="print a recipe's FG-WSD plan (no data, no training)")
    pln.add_argument("recipe", nargs="?", help="recipe name or YAML path (default tiny)")
    pln.add_argument("--json", help="also write the plan as JSON here")
    pln.add_argument("--plot", help="also write the LR / mixture plot (PNG) here")
    pln.set_defaults(fn=cmd_plan)
    stl = sub.add_parser("stale", help="which assets are stale and why")
    stl.add_argument("--recipe")
    stl.add_argument("--store")
    stl.add_argument("--all", action="store_true", help="also list fresh assets")
    stl.set_defaults(fn=cmd_stale)
    lin = sub.add_parser("lineage", help="the versions an asset version was made from")
    lin.add_argument("asset")
    lin.add_argument("--version")
    lin.add_argument("--store")
    lin.add_argument("--json", action="store_true")
    lin.set_defaults(fn=cmd_lineage)
    ver = sub.add_parser("versions", help="list an asset's versions")
    ver.add_argument("asset")
    ver.add_argument("--store")
    ver.set_defaults(fn=cmd_versions)
    man = sub.add_parser("manifest", help="print a version's manifest")
    man.add_argument("asset")
    man.add_argument("--version")
    man.add_argument("--store")
    man.set_defaults(fn=cmd_manifest)
    sql = sub.add_parser("sql", help="SQL (DuckDB) over the newest version of every table asset")
    sql.add_argument("sql")
    sql.add_argument("--store")
    sql.add_argument("--rows", type=int, default=40)
    sql.set_defaults(fn=cmd_sql)
    srv = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API")
    from nanbeige_train.serve import add_arguments

    add_arguments(srv)
    srv.set_defaults(fn=cmd_serve)
    args = parser.parse_args(argv)
    if getattr(args, "log_level", "INFO").upper() != "DEBUG":
        # third-party progress bars (datatrove's dedup, sentence-transformers) print over the
        # console's own progress lines; tqdm reads this when it is imported, so set it first
        os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        return args.fn(args)
    except (RecipeError, StoreError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

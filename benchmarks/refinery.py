"""Refinery throughput and memory: each stage and the whole refinery, at 1x and 4x corpus size.

    .venv/bin/python benchmarks/refinery.py [--scales 1 4] [--skip-slow]

For each scale it builds the embedded corpus (4x = four copies under fresh ids), then in a
fresh subprocess per stage runs the library function the asset calls and reports docs/s and the
peak resident memory of that process (or its largest worker). Dedup removes the copies, so the
later stages are fed the filtered corpus, which keeps the 4x size through every stage.
The baseline: the same datatrove filters as a plain
datatrove pipeline (reader -> filters -> writer, no Dagster, no store) against the
`filtered_<domain>` assets materialized through Dagster, in the same run -- the ratio is the
orchestration overhead. Memory growing much slower than 4x at 4x the data shows streaming.
Results: ``benchmarks/results/refinery.json`` and the printed tables as ``refinery.md``, with
the machine facts of ``benchmarks/common.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import common  # noqa: E402

DOMAINS = ("web", "books", "code", "papers")


def _peak_rss_mb() -> float:
    """Peak resident memory of this process or of its largest child (datatrove workers)."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def build_corpus(root: Path, scale: int) -> dict[str, Path]:
    """The embedded corpus per domain, repeated `scale` times under distinct ids."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from nanbeige_data.corpus.build import build_domain
    from nanbeige_data.corpus.config import DomainSource

    dirs = {}
    for domain in DOMAINS:
        base = root / f"raw_{domain}"
        base.mkdir(parents=True)
        build_domain(
            domain,
            DomainSource(max_bytes=1_500_000),
            out_dir=base,
        )
        shards = sorted(base.glob("part-*.parquet"))
        for copy in range(1, scale):
            for shard in shards:
                table = pq.read_table(shard)
                ids = pc.binary_join_element_wise(table["id"], pa.scalar(f"~copy{copy}"), "")
                table = table.set_column(0, "id", ids)
                pq.write_table(table, base / f"copy{copy}-{shard.name}")
        dirs[domain] = base
    return dirs


def stage(name: str, work: Path, scale: int) -> dict:
    """Run one stage in this process; returns docs, seconds and peak memory."""
    from nanbeige_data.recipe import load_recipe
    from nanbeige_data.refinery import decontam, dedup, filters, retrieval, tagging

    rcp = load_recipe("tiny")
    raw = {d: work / f"raw_{d}" for d in DOMAINS}
    out = work / name
    out.mkdir(exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    started = time.perf_counter()
    r = rcp.refinery
    two = r.execution.model_copy(update={"workers": 2})
    if name == "filters":
        docs = 0
        for d in DOMAINS:
            (out / d).mkdir()
            report = filters.filter_domain(d, raw[d], out / d, r.filters, scratch / d, two)
            docs += report.counts["documents_in"]
    elif name == "dedup":
        report = dedup.dedup_corpus(
            {d: work / "filters" / d for d in DOMAINS}, out, r.dedup, scratch, two
        )
        docs = report.counts["documents_in"]
    elif name == "decontam":
        # fed the filtered (not deduplicated) corpus, so a 4x copy stays 4x for every later stage
        merged = work / "filtered-all"
        merged.mkdir(exist_ok=True)
        for d in DOMAINS:
            for shard in sorted((work / "filters" / d).glob("*.parquet")):
                (merged / f"{d}-{shard.name}").symlink_to(shard)
        report = decontam.decontaminate(merged, out, r.decontamination, scratch, two)
        docs = report.counts["documents_in"]
    elif name == "tagging":
        report = tagging.tag_corpus([work / "decontam"], out, rcp.refinery.tagging, seed=0)
        docs = report.counts["documents"]
    elif name == "retrieval":
        report = retrieval.build_index([work / "decontam"], out, rcp.refinery.retrieval)
        retrieval.score_documents(out, out, rcp.refinery.retrieval, seed=0)
        docs = report.counts["documents"]
    else:
        raise ValueError(name)
    seconds = time.perf_counter() - started
    return {"stage": name, "docs": docs, "seconds": seconds, "peak_mb": _peak_rss_mb()}


def plain_datatrove(work: Path) -> dict:
    """Baseline: the same filters as a bare datatrove pipeline, no Dagster and no store."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers import ParquetWriter

    from nanbeige_data.recipe import load_recipe
    from nanbeige_data.refinery import filters

    cfg = load_recipe("tiny").refinery.filters
    started = time.perf_counter()
    for d in DOMAINS:
        pipeline = [
            ParquetReader(str(work / f"raw_{d}"), glob_pattern="*.parquet"),
            *filters.filter_steps(d, cfg),
            ParquetWriter(str(work / "plain" / d)),
        ]
        LocalPipelineExecutor(
            pipeline, tasks=2, workers=2, logging_dir=str(work / "plain-logs" / d)
        ).run()
    return {
        "stage": "plain_datatrove_filters",
        "seconds": time.perf_counter() - started,
        "peak_mb": _peak_rss_mb(),
    }


def dagster_filters(work: Path) -> dict:
    """The filtered_<domain> assets materialized through Dagster (raw_* from the store)."""
    import dagster as dg

    os.environ["NANBEIGE_STORE"] = str(work / "store")
    from assets.definitions import defs

    keys = [dg.AssetKey(f"{p}_{d}") for d in DOMAINS for p in ("raw", "filtered")]
    job = defs.resolve_job_def("main")
    with dg.DagsterInstance.ephemeral() as instance:
        raw_only = [k for k in keys if k.path[0].startswith("raw_")]
        job.execute_in_process(instance=instance, asset_selection=raw_only)
        started = time.perf_counter()
        result = job.execute_in_process(
            instance=instance, asset_selection=[k for k in keys if k not in raw_only]
        )
    assert result.success
    return {
        "stage": "dagster_filtered_assets",
        "seconds": time.perf_counter() - started,
        "peak_mb": _peak_rss_mb(),
    }


def _subprocess(fn: str, work: Path, scale: int) -> dict:
    code = (
        f"import json, sys; sys.path.insert(0, {str(REPO)!r}); "
        f"from benchmarks.refinery import *; from pathlib import Path; "
        f"print('RESULT' + json.dumps({fn}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    if proc.returncode:
        raise RuntimeError(f"{fn} failed:\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--skip-slow", action="store_true", help="skip tagging and retrieval")
    args = parser.parse_args()
    stages = ["filters", "dedup", "decontam"] + ([] if args.skip_slow else ["tagging", "retrieval"])
    report: dict = {"machine": common.machine(packages=("torch", "datatrove", "dagster"))}
    with common.printed() as text:
        print(common.machine_line(report["machine"]))
        run_scales(args, stages, report)
    written = common.write_results(common.results_path("refinery"), report, text.getvalue())
    print(f"\nwritten {', '.join(map(str, written))}")


def run_scales(args: argparse.Namespace, stages: list[str], report: dict) -> None:
    for scale in args.scales:
        with tempfile.TemporaryDirectory(prefix=f"bench-x{scale}-") as tmp:
            work = Path(tmp)
            build_corpus(work, scale)
            rows = [
                _subprocess(f"stage({s!r}, Path({str(work)!r}), {scale})", work, scale)
                for s in stages
            ]
            if scale == args.scales[0]:
                plain = _subprocess(f"plain_datatrove(Path({str(work)!r}))", work, scale)
                dag = _subprocess(f"dagster_filters(Path({str(work)!r}))", work, scale)
                report["overhead"] = {
                    "plain_s": plain["seconds"],
                    "dagster_s": dag["seconds"],
                    "ratio": dag["seconds"] / plain["seconds"],
                }
            report[f"x{scale}"] = rows
            total = sum(r["seconds"] for r in rows)
            print(
                f"\nscale x{scale}: {rows[0]['docs']} documents, refinery {total:.1f}s, "
                f"{rows[0]['docs'] / total:.1f} docs/s"
            )
            table = [
                (r["stage"], r["docs"], f"{r['seconds']:.1f}", f"{r['docs'] / r['seconds']:.1f}",
                 f"{r['peak_mb']:.0f}")
                for r in rows
            ]  # fmt: skip
            print(
                common.md_table(("stage", "docs", "seconds", "docs/s", "peak MB"), table, "lrrrr")
            )
    print_comparison(args.scales, report)


def print_comparison(scales: list[int], report: dict) -> None:
    """Dagster's overhead over plain datatrove, and how memory and time grow with scale."""
    o = report["overhead"]
    print(
        f"\nfilters, plain datatrove {o['plain_s']:.1f}s vs Dagster assets {o['dagster_s']:.1f}s:"
        f" ratio {o['ratio']:.2f}"
    )
    if len(scales) > 1:
        a, b = report[f"x{scales[0]}"], report[f"x{scales[-1]}"]
        for ra, rb in zip(a, b, strict=True):
            mem = rb["peak_mb"] / ra["peak_mb"]
            secs = rb["seconds"] / ra["seconds"]
            print(
                f"{ra['stage']:<12} x{scales[-1]}/x{scales[0]}: peak memory "
                f"{mem:.2f}, time {secs:.2f}"
            )


if __name__ == "__main__":
    main()

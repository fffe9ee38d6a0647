"""One datatrove execution path: filters, dedup and decontamination on local, Slurm and Ray.

There is no cluster here. The system edge is Slurm's command line: stub ``sbatch``, ``srun``,
``squeue``, ``scancel`` and ``scontrol`` on PATH record every submission (arguments and job
script). With ``EMULATE_SLURM`` set, the ``sbatch`` stub also runs each array task of a job
script right away, as a one-node cluster would, so the real pickled executor runs through
datatrove's own Slurm code (``launch_pickled_pipeline``) and its output is compared with a local
run.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from datatrove.executor import LocalPipelineExecutor

from nanbeige_data.corpus.build import build_domain
from nanbeige_data.corpus.config import DomainSource
from nanbeige_data.recipe import RECIPES_DIR, RecipeError, parse_recipe
from nanbeige_data.refinery import decontam, dedup, docs, filters
from nanbeige_data.refinery.config import (
    DecontaminationConfig,
    DedupConfig,
    ExecutionConfig,
    FilterConfig,
)

SBATCH = r"""#!/bin/bash
# sbatch stub: record the arguments and the job script; EMULATE_SLURM=1 runs its array tasks
id=$((1000 + $(ls "$SLURM_STUB_LOG" | grep -c '\.args$')))
script="${@: -1}"
printf '%s\n' "$@" > "$SLURM_STUB_LOG/$id.args"
cp "$script" "$SLURM_STUB_LOG/$id.sh"
last=$(sed -n 's/^#SBATCH --array=0-\([0-9]*\).*/\1/p' "$script")
offset=$(printf '%s\n' "$@" | sed -n 's/^--export=ALL,RUN_OFFSET=//p')
if [ -n "$EMULATE_SLURM" ] && grep -q launch_pickled_pipeline "$script"; then
  for i in $(seq 0 "$last"); do
    SLURM_ARRAY_TASK_ID=$i RUN_OFFSET=$offset SLURM_NODELIST=localhost \
      bash "$script" > "$SLURM_STUB_LOG/$id-$i.out" 2>&1
  done
fi
echo "Submitted batch job $id"
"""
STUBS = {
    "sbatch": SBATCH,
    # srun -l -n 1 CMD...: run CMD here
    "srun": "#!/bin/bash\nwhile [[ $1 == -* ]]; do [[ $1 == -n ]] && shift; shift; done\n"
    'exec "$@"\n',
    "squeue": "#!/bin/bash\n",  # nothing queued: a job with tasks missing has died
    "scancel": '#!/bin/bash\necho "$@" >> "$SLURM_STUB_LOG/scancel"\n',
    "scontrol": "#!/bin/bash\necho localhost\n",
}


@pytest.fixture
def slurm(tmp_path: Path, monkeypatch) -> Path:
    """Stub Slurm commands on PATH; returns the folder where submissions are recorded."""
    bin_dir, record = tmp_path / "slurm-bin", tmp_path / "slurm-record"
    bin_dir.mkdir()
    record.mkdir()
    for name, body in STUBS.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_STUB_LOG", str(record))
    return record


def submissions(record: Path) -> list[tuple[int, list[str], dict[str, str], str]]:
    """(job id, sbatch arguments, #SBATCH directives, job script) of each submission."""
    out = []
    for job_id in sorted(int(p.stem) for p in record.glob("*.args")):
        script = (record / f"{job_id}.sh").read_text()
        args = (record / f"{job_id}.args").read_text().split("\n")[:-1]
        out.append((job_id, args, directives(script), script))
    return out


def directives(script: str) -> dict[str, str]:
    lines = [ln[len("#SBATCH --") :] for ln in script.splitlines() if ln.startswith("#SBATCH")]
    return dict((ln.split("=", 1) + [""])[:2] for ln in lines)


def jobs(record: Path) -> list[tuple[int, list[str], dict[str, str], str]]:
    """The pipeline jobs (not datatrove's stats-merging jobs)."""
    return [s for s in submissions(record) if "launch_pickled_pipeline" in s[3]]


def slurm_exec(tmp_path: Path, **kw) -> ExecutionConfig:
    fields = {"slurm_partition": "cpu", "slurm_time": "01:30:00", "work_dir": str(tmp_path / "nfs")}
    return ExecutionConfig(executor="slurm", **(fields | kw))


def rows(folder: Path) -> list[dict]:
    return [r for f in sorted(folder.glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


@pytest.fixture(scope="module")
def web(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("web")
    build_domain(
        "web",
        DomainSource(max_bytes=40_000),
        out_dir=out,
    )
    return out


def assert_job_script(args: list[str], sbatch: dict[str, str], script: str, job: str) -> None:
    assert sbatch["partition"] == "cpu" and sbatch["time"] == "01:30:00"
    assert sbatch["job-name"] == job
    assert (sbatch["cpus-per-task"], sbatch["mem-per-cpu"]) == ("1", "2G")
    assert args[0] == "--export=ALL,RUN_OFFSET=0"
    assert f"source {Path(sys.prefix) / 'bin' / 'activate'}" in script
    pickle = script.split("launch_pickled_pipeline ")[1].split()[0]
    assert Path(pickle).name == "executor.pik" and Path(pickle).is_file()


# --------------------------------------------------------------------------- slurm


def test_filters_on_slurm_match_local(web, slurm, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EMULATE_SLURM", "1")
    local = filters.filter_domain("web", web, tmp_path / "local", FilterConfig(), tmp_path / "w")
    execution = slurm_exec(tmp_path, workers=2)
    remote = filters.filter_domain(
        "web", web, tmp_path / "slurm", FilterConfig(), tmp_path / "w", execution
    )
    assert remote.counts == local.counts and remote.json == local.json
    assert rows(tmp_path / "slurm") == rows(tmp_path / "local")
    assert remote.extra["stats"]["executor"] == "slurm"
    [(job_id, args, sbatch, script)] = jobs(slurm)
    assert_job_script(args, sbatch, script, "nanbeige-filter-web")
    assert sbatch["array"] == "0-0"  # one task per input shard at most
    assert script.split("launch_pickled_pipeline ")[1].startswith(str(tmp_path / "nfs"))
    merge = [d for _, _, d, s in submissions(slurm) if "merge_stats" in s]
    assert [d["dependency"] for d in merge] == [f"afterok:{job_id}"]


def test_dedup_submits_one_chain_per_pass_and_matches_local(web, slurm, tmp_path, monkeypatch):
    monkeypatch.setenv("EMULATE_SLURM", "1")
    inputs = {"web": web}
    cfg = DedupConfig(buckets=2, hashes_per_bucket=8)
    one = ExecutionConfig(workers=1)
    local = dedup.dedup_corpus(inputs, tmp_path / "local", cfg, tmp_path / "w", one)
    remote = dedup.dedup_corpus(
        inputs, tmp_path / "slurm", cfg, tmp_path / "w", slurm_exec(tmp_path, workers=1)
    )
    assert remote.counts == local.counts
    assert rows(tmp_path / "slurm") == rows(tmp_path / "local")
    submitted = jobs(slurm)
    stages = ["exact_1", "exact_2", "exact_3", "minhash_1", "minhash_2", "minhash_3", "minhash_4"]
    assert [sbatch["job-name"] for _, _, sbatch, _ in submitted] == [
        f"nanbeige-dedup-{s}" for s in stages
    ]
    first = {"exact_1", "minhash_1"}  # each pass is one chain: a stage waits for the one before
    for (_, args, sbatch, script), stage, before in zip(
        submitted, stages, [None, *submitted[:-1]], strict=True
    ):
        assert_job_script(args, sbatch, script, f"nanbeige-dedup-{stage}")
        waits = [a for a in args if a.startswith("--dependency")]
        assert waits == ([] if stage in first else [f"--dependency=afterok:{before[0]}"])
    arrays = {
        stage: sbatch["array"] for stage, (_, _, sbatch, _) in zip(stages, submitted, strict=True)
    }
    assert arrays["minhash_2"] == "0-1" and arrays["minhash_3"] == "0-0"  # buckets, one cluster


def test_decontamination_on_slurm_matches_local(web, slurm, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EMULATE_SLURM", "1")
    text = rows(web)[0]["text"]
    items = [decontam.EvalItem("bench", "1", " ".join(text.split()[:40]))]
    cfg = DecontaminationConfig()
    local = decontam.decontaminate(web, tmp_path / "local", cfg, tmp_path / "w", items=items)
    execution = slurm_exec(tmp_path, workers=2)
    remote = decontam.decontaminate(
        web, tmp_path / "slurm", cfg, tmp_path / "w", execution, items=items
    )
    assert remote.counts == local.counts and remote.counts["removed"] == 1
    assert rows(tmp_path / "slurm") == rows(tmp_path / "local")
    [(_, args, sbatch, script)] = jobs(slurm)
    assert_job_script(args, sbatch, script, "nanbeige-decontam-filter")
    assert sbatch["array"] == "0-1"


def test_a_slurm_job_that_dies_fails_the_stage_and_cancels_the_rest(web, slurm, tmp_path):
    # no EMULATE_SLURM: jobs are recorded, never run, and leave the (empty) queue incomplete
    execution = slurm_exec(tmp_path, workers=2, slurm_sbatch_args={"account": "proj"})
    with pytest.raises(RuntimeError, match=r"slurm job 1000 \(nanbeige-dedup-exact_1\) ended"):
        dedup.dedup_corpus({"web": web}, tmp_path / "out", DedupConfig(), tmp_path / "w", execution)
    submitted = jobs(slurm)
    assert [s["job-name"] for _, _, s, _ in submitted] == [
        "nanbeige-dedup-exact_1", "nanbeige-dedup-exact_2", "nanbeige-dedup-exact_3",
    ]  # fmt: skip
    assert all(s["account"] == "proj" and s["array"] == "0-1" for _, _, s, _ in submitted)
    cancelled = (slurm / "scancel").read_text().split()
    assert cancelled == [str(job_id) for job_id, *_ in submitted[1:]]  # exact_2 and exact_3


# --------------------------------------------------------------------------- the recipe


@pytest.fixture(scope="module")
def tiny_raw() -> dict:
    return yaml.safe_load((RECIPES_DIR / "tiny.yaml").read_text())


def test_execution_settings_are_never_part_of_a_version(tiny_raw) -> None:
    assert ExecutionConfig.execution_fields == set(ExecutionConfig.model_fields)
    raw = copy.deepcopy(tiny_raw)
    raw["refinery"]["execution"] = {
        "executor": "slurm", "workers": 64, "slurm_partition": "big", "work_dir": "/nfs/w",
    }  # fmt: skip
    base, changed = parse_recipe(tiny_raw), parse_recipe(raw)
    for section in ("refinery", "refinery.filters", "refinery.dedup", "refinery.decontamination"):
        assert changed.section_hash(section) == base.section_hash(section), section


def test_an_executor_that_cannot_run_here_fails_when_the_recipe_is_read(tiny_raw) -> None:
    raw = copy.deepcopy(tiny_raw)
    raw["refinery"]["execution"] = {"executor": "slurm", "workers": 8}
    with pytest.raises(RecipeError, match=r"refinery\.execution: .*slurm_partition and work_dir"):
        parse_recipe(raw, origin="bad.yaml")
    raw["refinery"]["execution"] = {"executor": "ray"}
    try:
        import ray  # noqa: F401
    except ImportError:
        with pytest.raises(RecipeError) as err:
            parse_recipe(raw, origin="bad.yaml")
        msg = str(err.value)
        assert "refinery.execution" in msg and "pip install -e '.[ray]'" in msg, msg
    else:
        assert parse_recipe(raw).refinery.execution.executor == "ray"


def test_local_executor_caps_workers_at_tasks(tmp_path) -> None:
    stage = docs.Stage("s", filters.filter_steps("web", FilterConfig()), tasks=3)
    local = docs.build_executor(stage, ExecutionConfig(workers=8), tmp_path, "job")
    assert isinstance(local, LocalPipelineExecutor) and (local.world_size, local.workers) == (3, 3)
    one = docs.build_executor(stage, ExecutionConfig(workers=1), tmp_path, "job")
    assert (one.world_size, one.workers) == (3, 1)


def test_a_local_pool_finishes_when_sigterm_is_ignored(web, tmp_path) -> None:
    """Dagster maps SIGTERM to SIGINT's handler, SIG_IGN in a background job (CI): a pool started
    then must still terminate its idle workers on exit instead of waiting for them forever."""
    import shutil
    import subprocess
    import textwrap

    raw = tmp_path / "raw"  # two shards: two tasks, so a real pool of two workers
    raw.mkdir()
    for i in range(2):
        shutil.copy(next(web.glob("*.parquet")), raw / f"part-{i:05d}.parquet")
    program = textwrap.dedent(
        f"""
        import signal
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        from pathlib import Path
        from nanbeige_data.refinery import filters
        from nanbeige_data.refinery.config import ExecutionConfig, FilterConfig
        out, work = Path({str(tmp_path / "out")!r}), Path({str(tmp_path / "work")!r})
        out.mkdir()
        report = filters.filter_domain(
            "web", Path({str(raw)!r}), out, FilterConfig(), work, ExecutionConfig(workers=2)
        )
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN  # restored afterwards
        import os

        def status(pid):
            return dict(l.split(":", 1) for l in open(f"/proc/{{pid}}/status") if ":" in l)

        servers = [
            int(p) for p in os.listdir("/proc") if p.isdigit()
            and b"multiprocess.forkserver" in open(f"/proc/{{p}}/cmdline", "rb").read()
            and int(status(p)["PPid"]) == os.getpid()
        ]
        assert servers, "no forkserver: the pool did not start"
        for pid in servers:  # pool workers are forked from it and inherit its dispositions
            ignored = int(status(pid)["SigIgn"], 16)
            assert not ignored >> (signal.SIGTERM - 1) & 1, f"SIGTERM ignored: {{ignored:x}}"
        print("kept", report.counts["documents"])
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "kept" in done.stdout

"""A refinery run killed mid-stage (SIGKILL to the whole process group, as an OOM killer or a
pre-empted node would) and re-run: the earlier version is intact and current throughout, no
half-written version is ever visible, and the re-run completes and commits one new version.
(Pretraining's kill-and-resume is in test_pretrain.py.)"""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from nanbeige_data.store.versioned import VersionedStore, _hash_dir

REPO = Path(__file__).resolve().parents[1]
ASSET = "deduped"


@pytest.mark.slow
def test_refinery_run_killed_mid_stage_restarts_cleanly(small_recipe, store_root, cli):
    recipe = small_recipe(max_bytes=20_000)
    select = ["--select", f"+key:{ASSET}"]  # deduped and what it is made from
    cli("run", "--recipe", str(recipe), *select)
    store = VersionedStore(store_root)
    earlier = store.require(ASSET)

    # one dedup field changes: deduped is stale; kill its re-run once it is writing
    raw = yaml.safe_load(recipe.read_text())
    raw["refinery"]["dedup"]["buckets"] += 1
    recipe.write_text(yaml.safe_dump(raw, sort_keys=False))
    proc = subprocess.Popen(
        [*cli.argv, "run", "--recipe", str(recipe), *select, "--stale"],
        env=cli.env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    asset_dir = store_root / ASSET
    deadline = time.monotonic() + 300
    while not list(asset_dir.glob(".staging-*")):
        assert proc.poll() is None, "the re-run ended before it started writing"
        assert time.monotonic() < deadline, "the re-run never started writing"
        time.sleep(0.05)
    time.sleep(0.5)  # well inside the MinHash stages
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)

    # the half-written attempt is invisible; the earlier version is current and byte-identical
    assert [v.version_id for v in store.versions(ASSET)] == [earlier.version_id]
    assert _hash_dir(earlier.local_path)[0] == earlier.data_version
    assert list(asset_dir.glob(".staging-*")), "the killed writer's staging dir is left"

    # the re-run sweeps the dead attempt, commits one new version and keeps the earlier one
    again = cli("run", "--recipe", str(recipe), *select, "--stale")
    assert "round 1: re-materializing 1 stale asset(s): deduped" in again
    versions = store.versions(ASSET)
    assert [v.version_id for v in versions][0] == earlier.version_id and len(versions) == 2
    assert versions[1].manifest["recipe_hash"] != earlier.manifest["recipe_hash"]
    assert not list(asset_dir.glob(".staging-*"))
    assert _hash_dir(earlier.local_path)[0] == earlier.data_version

"""Storage faults on a real file system: a disk that fills up, a read-only mount, a directory
the writer may not write. Each gives a clear message naming the store and the cause, commits
nothing, leaves no staging directory and keeps the earlier version intact.

The full and read-only disk is a real tmpfs mounted in a private user + mount namespace
(``unshare``), so no privileges are needed and nothing is mounted on the host."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nanbeige_data.store.versioned import StoreError, VersionedStore, storage_fault

CHILD = Path(__file__).parent / "helpers" / "store_fault.py"
REPO = Path(__file__).resolve().parents[1]


def _child(mode: str, root: Path, prefix: list[str], timeout: int = 300) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(root.parent)}
    env.pop("NANBEIGE_RECIPE", None)
    proc = subprocess.run(
        [*prefix, sys.executable, str(CHILD), mode, str(root)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


def _namespaces_work() -> bool:
    probe = ["unshare", "--user", "--map-root-user", "--mount", "true"]
    return shutil.which("unshare") is not None and subprocess.run(probe).returncode == 0


@pytest.mark.skipif(not _namespaces_work(), reason="user namespaces are disabled here")
def test_full_and_read_only_disk_give_clear_errors_and_keep_the_earlier_version(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    out = _child("full", root, ["unshare", "--user", "--map-root-user", "--mount"])
    assert out["first"]["success"], out["first"]
    first = out["before"]["versions"]
    assert len(first) == 1 and out["before"]["intact"]

    full = out["full"]
    assert not full["success"]
    assert "raw_papers" in full["description"] and str(root) in full["description"]
    assert "the disk is full" in full["description"]
    assert "earlier versions are intact" in full["description"]
    # nothing committed, no staging directory left behind, the first version byte-identical
    assert out["after_full"]["versions"] == first and out["after_full"]["entries"] == first
    assert out["after_full"]["intact"]

    readonly = out["readonly"]
    assert not readonly["success"]
    assert "Read-only file system" in readonly["description"]
    assert str(root) in readonly["description"]
    assert out["after_readonly"]["versions"] == first and out["after_readonly"]["intact"]


def test_permission_denied_store_names_the_path(tmp_path):
    root = tmp_path / "store"
    asset_dir = root / "raw_papers"
    asset_dir.mkdir(parents=True)
    asset_dir.chmod(0o555)  # the writer may read the store but not write this asset
    prefix: list[str] = []
    if os.geteuid() == 0:
        # root ignores file modes through its DAC capabilities: the child runs without them
        # (still uid 0, so it can read the checkout and the venv wherever they are)
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv to drop capabilities")
        prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--"]
    try:
        out = _child("denied", root, prefix)
    finally:
        asset_dir.chmod(0o755)
    denied = out["denied"]
    assert not denied["success"]
    assert "Permission denied" in denied["description"]
    assert str(asset_dir) in denied["description"]
    assert out["after_denied"]["versions"] == [] and out["after_denied"]["entries"] == []


def test_storage_fault_tells_disk_trouble_from_bad_input(tmp_path):
    import errno

    store = VersionedStore(tmp_path / "store")
    assert storage_fault(OSError(errno.ENOSPC, "No space left on device"), store.root)
    # an Arrow writer's error: no errno, the C library's text
    assert storage_fault(OSError("Error writing bytes: No space left on device"), store.root)
    # a permission problem on the user's input file is bad input, not a store fault
    unreadable_input = PermissionError(errno.EACCES, "denied", "/data/in.jsonl")
    assert storage_fault(unreadable_input, store.root) is None
    missing = FileNotFoundError(errno.ENOENT, "missing", str(tmp_path))
    assert storage_fault(missing, tmp_path) is None

    full = "the disk is full.*earlier versions are intact"
    with pytest.raises(StoreError, match=full), store.stage("raw_web") as staging:
        (staging.path / "part.txt").write_text("x")
        raise OSError(errno.ENOSPC, "No space left on device", str(staging.path / "part.txt"))
    assert store.versions("raw_web") == []
    assert not list((tmp_path / "store" / "raw_web").iterdir())

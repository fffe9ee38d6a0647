"""Child process for tests/test_store_faults.py: materialize `raw_papers` into a store that
fails the way real stores fail, and print what the operator saw as one JSON line.

    python store_fault.py full STORE      in a private mount namespace (``unshare --user
                                          --map-root-user --mount``): a real tmpfs that fills up,
                                          then the same tmpfs remounted read-only
    python store_fault.py denied STORE    as a user without write permission on STORE
"""

import json
import subprocess
import sys

import dagster as dg

from assets.corpus import RAW_ASSETS
from assets.definitions import build_resources
from nanbeige_data.store.versioned import VersionedStore, _hash_dir

ASSET = "raw_papers"


def materialize(root: str) -> dict:
    asset = next(a for a in RAW_ASSETS if a.key.to_user_string() == ASSET)
    resources = build_resources(store_root=root)
    result = dg.materialize([asset], resources=resources, raise_on_error=False)
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    error = failures[0].step_failure_data.error if failures else None
    return {
        "success": result.success,
        "description": failures[0].step_failure_data.user_failure_data.description
        if failures and failures[0].step_failure_data.user_failure_data
        else None,
        "error": error.message if error else None,
    }


def state(root: str) -> dict:
    store = VersionedStore(root)
    base = store.root.rstrip("/") + f"/{ASSET}"
    listed = store.fs.ls(base, detail=False) if store.fs.exists(base) else []
    names = [p.rsplit("/", 1)[-1] for p in listed]
    versions = store.versions(ASSET)
    return {
        "versions": [v.version_id for v in versions],
        "entries": sorted(names),
        "intact": all(_hash_dir(v.local_path)[0] == v.data_version for v in versions),
    }


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def main() -> None:
    mode, root = sys.argv[1], sys.argv[2]
    out: dict = {}
    if mode == "full":
        mount("-t", "tmpfs", "-o", "size=64m", "tmpfs", root)
        out["first"] = materialize(root)
        out["before"] = state(root)
        used = int(subprocess.check_output(["df", "--output=used", "-B1", root]).split()[-1])
        mount("-o", f"remount,size={used + 256 * 1024}", root)  # 256 KiB left: far too little
        out["full"] = materialize(root)
        out["after_full"] = state(root)
        mount("-o", "remount,ro", root)
        out["readonly"] = materialize(root)
        out["after_readonly"] = state(root)
    else:
        out["denied"] = materialize(root)
        out["after_denied"] = state(root)
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()

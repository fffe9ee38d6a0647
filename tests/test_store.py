"""The versioned store: atomic commits, nothing overwritten, crashes leave no half version."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from nanbeige_data.store.versioned import MANIFEST, StoreError, VersionedStore


def _write(store: VersionedStore, key: str, payload: str, **kw):
    with store.stage(key) as staging:
        (staging.path / "part-0.txt").write_text(payload)
        return store.commit(staging, **kw)


def test_commit_writes_manifest_with_lineage(tmp_path):
    store = VersionedStore(tmp_path)
    a = _write(store, "raw_web", "hello", code_version="1+abc", recipe_hash="abc", counts={"d": 1})
    b = _write(store, "summary", "x", inputs={"raw_web": a}, code_version="1", recipe_hash="r")
    manifest = json.loads((b.local_path / MANIFEST).read_text())
    assert manifest["inputs"] == {"raw_web": a.ref()}
    assert manifest["asset_key"] == "summary" and manifest["code_version"] == "1"
    assert manifest["files"] == [{"path": "part-0.txt", "bytes": 1}]
    assert a.manifest["counts"] == {"d": 1} and len(a.data_version) == 64


def test_versions_are_never_overwritten(tmp_path):
    store = VersionedStore(tmp_path)
    v1 = _write(store, "raw_web", "one")
    v2 = _write(store, "raw_web", "two")
    assert [v.version_id for v in store.versions("raw_web")] == [v1.version_id, v2.version_id]
    assert (v1.local_path / "part-0.txt").read_text() == "one"
    assert store.latest("raw_web").version_id == v2.version_id
    # the same bytes from the same inputs is the same version, not a new one
    assert _write(store, "raw_web", "two").version_id == v2.version_id
    assert store.prune("raw_web", keep=1) == [v1.version_id]
    assert not v1.local_path.exists() and v2.local_path.exists()


def test_error_mid_write_leaves_previous_version_current(tmp_path):
    store = VersionedStore(tmp_path)
    good = _write(store, "raw_web", "good")
    with pytest.raises(RuntimeError), store.stage("raw_web") as staging:
        (staging.path / "part-0.txt").write_text("half")
        raise RuntimeError("crash while writing")
    assert store.latest("raw_web").version_id == good.version_id
    assert sorted(p.name for p in (tmp_path / "raw_web").iterdir()) == [good.version_id]


def test_killed_process_leaves_no_visible_version(tmp_path):
    store = VersionedStore(tmp_path)
    good = _write(store, "raw_web", "good")
    script = textwrap.dedent(f"""
        import os
        from nanbeige_data.store.versioned import VersionedStore
        store = VersionedStore({str(tmp_path)!r})
        with store.stage("raw_web") as staging:
            (staging.path / "part-0.txt").write_text("half written")
            os._exit(9)  # the process dies: no cleanup, no commit
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=os.getcwd())
    assert proc.returncode == 9
    leftovers = [p.name for p in (tmp_path / "raw_web").iterdir() if p.name.startswith(".")]
    assert len(leftovers) == 1  # the dead writer's staging dir, invisible to readers
    assert [v.version_id for v in store.versions("raw_web")] == [good.version_id]
    newer = _write(store, "raw_web", "after")  # the next writer sweeps dead staging dirs
    assert [p.name for p in (tmp_path / "raw_web").iterdir() if p.name.startswith(".")] == []
    assert store.latest("raw_web").version_id == newer.version_id


def test_clear_errors(tmp_path):
    store = VersionedStore(tmp_path)
    with pytest.raises(StoreError, match="has no committed version"):
        store.require("raw_web")
    with pytest.raises(StoreError, match="invalid asset key"):
        store.latest("../etc")
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("the store root is a file, not a directory")
    with pytest.raises(StoreError, match="cannot write 'raw_web' to the store at .*a-file"):
        _write(VersionedStore(not_a_dir), "raw_web", "x")


def test_fsspec_memory_store_roundtrip(tmp_path):
    store = VersionedStore("memory://nanbeige-test")
    v = _write(store, "raw_web", "remote bytes")
    assert store.latest("raw_web").version_id == v.version_id
    assert store.fs.cat_file(f"{v.path}/part-0.txt") == b"remote bytes"
    local = store.localize(v, cache_dir=tmp_path)
    assert (local.local_path / "part-0.txt").read_text() == "remote bytes"
    assert local.data_version == v.data_version and local.local_path.is_relative_to(tmp_path)


def test_lineage_walks_back_to_the_exact_input_versions(tmp_path):
    from nanbeige_data.store.lineage import ancestors, lineage, markdown, render

    store = VersionedStore(tmp_path)
    old_raw = _write(store, "raw_web", "a")
    raw = _write(store, "raw_web", "b")  # a newer raw version: lineage must not pick it up
    tiers = _write(store, "quality_tiers", "t", inputs={"raw_web": old_raw})
    ckpt = _write(
        store, "pretrain_warmup", "w", inputs={"quality_tiers": tiers, "raw_web": old_raw}
    )
    tree = lineage(store, "pretrain_warmup")
    assert ancestors(tree) == {"quality_tiers", "raw_web"}
    by_key = {n.key: n for n in tree.inputs}
    assert by_key["raw_web"].version_id == old_raw.version_id != raw.version_id
    assert by_key["quality_tiers"].inputs[0].version_id == old_raw.version_id
    assert sum(n.seen for n in [by_key["raw_web"], by_key["quality_tiers"].inputs[0]]) == 1
    text = render(tree)
    assert text.splitlines()[0].startswith(f"pretrain_warmup  {ckpt.version_id}")
    md = markdown(tree).splitlines()  # the UI metadata: nested list linking each asset page
    assert md[0] == f"- [pretrain_warmup](/assets/pretrain_warmup) `{ckpt.version_id}`"
    assert f"  - [raw_web](/assets/raw_web) `{old_raw.version_id}`" in "\n".join(md)
    assert sum("*(see above)*" in line for line in md) == 1
    store.prune("quality_tiers", keep=0)
    assert lineage(store, "pretrain_warmup").inputs[0].missing

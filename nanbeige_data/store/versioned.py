"""A versioned, append-only store for everything the pipeline makes.

Layout under the root (a local path, or any fsspec URL such as ``s3://bucket/nanbeige``)::

    <root>/<asset>/<version_id>/            one directory per materialization
        ...data files...
        manifest.json                       written last: its presence is the commit marker
    <root>/<asset>/.staging-<pid>-<uuid>/   work in progress, never read

A writer fills a staging directory; ``commit`` hashes the files (the data version), writes the
manifest into it and renames it into place in one step, so a crash at any point leaves the
previous version current and no half version visible. Versions are never overwritten; old ones
stay until ``prune``. ``version_id`` sorts by creation time.

Trade-off: on object stores a directory rename is not atomic, so there files are uploaded to
the final prefix and the manifest is uploaded last; readers only list versions that have one.
Hashing reads every byte once more; that is the price of content-addressed data versions.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec

MANIFEST = "manifest.json"
STORE_HINT = "NANBEIGE_STORE (or --store)"
STAGING_PREFIX = ".staging-"


class StoreError(RuntimeError):
    """The store cannot be read or written; the message names the path and the cause."""


@dataclass(frozen=True)
class Version:
    """One committed materialization of one asset."""

    key: str
    version_id: str
    path: str  # directory of the version (local path, or fsspec path on a remote store)
    manifest: dict[str, Any] = field(repr=False, compare=False)

    @property
    def data_version(self) -> str:
        return self.manifest["data_version"]

    @property
    def local_path(self) -> Path:
        return Path(self.path)

    def ref(self) -> dict[str, str]:
        """How a downstream manifest records this version as one of its inputs."""
        return {"version_id": self.version_id, "data_version": self.data_version}


@dataclass
class Staging:
    """A directory to write one new version into; see VersionedStore.stage."""

    key: str
    path: Path
    remote_target: str | None = None
    scratch: Path | None = None  # a temporary work directory, deleted with the staging dir


# errno -> what to tell the operator when a write into the store fails with it
_STORAGE_FAULTS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EFBIG: "a file exceeds the size limit",
}


def storage_fault(exc: BaseException, *paths: str | os.PathLike) -> str | None:
    """What went wrong, if ``exc`` is a storage fault (disk full, read-only, no permission)
    on a file under one of ``paths``; None for any other error (bad input stays bad input).

    Native writers (Arrow, Parquet) raise OSError without an errno but with the C library's
    text, so the text is matched as well."""
    if not isinstance(exc, OSError):
        return None
    text = str(exc)
    code = exc.errno if exc.errno in _STORAGE_FAULTS else None
    if code is None:
        code = next((c for c in _STORAGE_FAULTS if os.strerror(c) in text), None)
    if code is None:
        return None
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return _STORAGE_FAULTS[code]  # space runs out wherever the writer writes
    where = " ".join(str(x) for x in (exc.filename, exc.filename2, text) if x)
    if not any(str(p) in where for p in paths):
        return None  # e.g. an unreadable input file: not the store's fault
    return _STORAGE_FAULTS[code]


def _hash_dir(path: Path) -> tuple[str, list[dict[str, Any]]]:
    digest = hashlib.sha256()
    files = []
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        if rel == MANIFEST:
            continue
        digest.update(rel.encode() + b"\0")
        with file.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        files.append({"path": rel, "bytes": file.stat().st_size})
    return digest.hexdigest(), files


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class VersionedStore:
    def __init__(self, root: str | os.PathLike):
        self.url = str(root)
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.is_local = self.fs.protocol in ("file", "local") or "file" in self.fs.protocol

    # -- reading ------------------------------------------------------------------------

    def _asset_dir(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise StoreError(f"invalid asset key {key!r}")
        return f"{self.root.rstrip('/')}/{key}"

    def versions(self, key: str) -> list[Version]:
        """Committed versions of ``key``, oldest first."""
        base = self._asset_dir(key)
        if not self.fs.exists(base):
            return []
        out = []
        for entry in sorted(self.fs.ls(base, detail=False)):
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if name.startswith("."):
                continue
            manifest_path = f"{entry.rstrip('/')}/{MANIFEST}"
            if self.fs.exists(manifest_path):
                manifest = json.loads(self.fs.cat_file(manifest_path))
                out.append(Version(key, name, entry.rstrip("/"), manifest))
        return out

    def latest(self, key: str) -> Version | None:
        found = self.versions(key)
        return found[-1] if found else None

    def get(self, key: str, version_id: str) -> Version:
        path = f"{self._asset_dir(key)}/{version_id}"
        manifest_path = f"{path}/{MANIFEST}"
        if not self.fs.exists(manifest_path):
            raise StoreError(f"no committed version {version_id!r} of {key!r} under {self.url}")
        return Version(key, version_id, path, json.loads(self.fs.cat_file(manifest_path)))

    def require(self, key: str) -> Version:
        version = self.latest(key)
        if version is None:
            raise StoreError(f"{key!r} has no committed version under {self.url}; materialize it")
        return version

    # -- writing ------------------------------------------------------------------------

    @contextlib.contextmanager
    def stage(self, key: str) -> Iterator[Staging]:
        """A fresh staging directory; removed on error, so nothing partial is ever visible."""
        name = f"{STAGING_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
        try:
            if self.is_local:
                base = Path(self._asset_dir(key))
                base.mkdir(parents=True, exist_ok=True)
                self._clean_dead_staging(base)
                staging = Staging(key, base / name)
                staging.path.mkdir()
            else:
                staging = Staging(key, Path(tempfile.mkdtemp(prefix=name)), self._asset_dir(key))
        except OSError as exc:
            where = exc.filename or self._asset_dir(key)
            raise StoreError(
                f"cannot write {key!r} to the store at {self.url}: cannot create {where}: "
                f"{exc.strerror or exc}. Nothing was written; fix permissions or point "
                f"{STORE_HINT} at another location"
            ) from exc
        staging.scratch = Path(tempfile.mkdtemp(prefix=f"nanbeige-{key}-"))
        try:
            yield staging
        except OSError as exc:
            reason = storage_fault(exc, staging.path, staging.scratch, self.root)
            if reason is None:
                raise
            raise StoreError(
                f"cannot write {key!r} to the store at {self.url}: {reason} ({exc}). "
                "Nothing was committed and earlier versions are intact; free space or fix "
                f"permissions, or point {STORE_HINT} at another location, then re-run"
            ) from exc
        finally:
            shutil.rmtree(staging.path, ignore_errors=True)
            shutil.rmtree(staging.scratch, ignore_errors=True)

    def commit(
        self,
        staging: Staging,
        *,
        inputs: dict[str, Version] | None = None,
        code_version: str = "",
        recipe_hash: str = "",
        recipe_name: str = "",
        counts: dict[str, int] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Version:
        """Seal a staging directory as a new version; returns it (or the identical latest)."""
        data_version, files = _hash_dir(staging.path)
        inputs_ref = {k: v.ref() for k, v in sorted((inputs or {}).items())}
        previous = self.latest(staging.key)
        if previous is not None and (
            previous.data_version == data_version
            and previous.manifest.get("code_version") == code_version
            and previous.manifest.get("recipe_hash") == recipe_hash
            and previous.manifest.get("inputs") == inputs_ref
        ):
            return previous  # same bytes from the same inputs: nothing new to record
        now = dt.datetime.now(dt.UTC)
        version_id = f"{now:%Y%m%dT%H%M%S%fZ}-{data_version[:10]}"
        manifest = {
            "asset_key": staging.key,
            "version_id": version_id,
            "data_version": data_version,
            "inputs": inputs_ref,
            "code_version": code_version,
            "recipe_name": recipe_name,
            "recipe_hash": recipe_hash,
            "created_at": now.isoformat(),
            "counts": counts or {},
            "files": files,
            "extra": extra or {},
        }
        target = f"{self._asset_dir(staging.key)}/{version_id}"
        try:
            (staging.path / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
            if self.is_local:
                os.rename(staging.path, target)  # atomic: the version appears whole or not at all
            else:
                for item in manifest["files"]:
                    self.fs.put_file(str(staging.path / item["path"]), f"{target}/{item['path']}")
                self.fs.put_file(str(staging.path / MANIFEST), f"{target}/{MANIFEST}")
        except OSError as exc:
            reason = storage_fault(exc, staging.path, target) or exc.strerror or str(exc)
            raise StoreError(
                f"cannot commit {staging.key!r} to {target}: {reason} ({exc}); nothing was "
                "committed and earlier versions are intact"
            ) from exc
        return Version(staging.key, version_id, target, manifest)

    def localize(self, version: Version, cache_dir: str | os.PathLike | None = None) -> Version:
        """The same version with a local path: itself on a local store, else a cached download.

        Versions are immutable, so a cached copy never goes stale; the manifest is fetched
        last, so an interrupted download is retried rather than used."""
        if self.is_local:
            return version
        cache = (
            Path(
                cache_dir or os.environ.get("NANBEIGE_CACHE") or Path.home() / ".cache" / "nanbeige"
            )
            / version.key
            / version.version_id
        )
        if not (cache / MANIFEST).exists():
            cache.mkdir(parents=True, exist_ok=True)
            for item in version.manifest["files"]:
                target = cache / item["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(f"{version.path}/{item['path']}", str(target))
            (cache / MANIFEST).write_text(json.dumps(version.manifest, indent=2, default=str))
        return Version(version.key, version.version_id, str(cache), version.manifest)

    def workdir(self, key: str, fingerprint: str) -> Path:
        """A local working directory that outlives a crashed writer of ``key``.

        Long writers (training) checkpoint here; an attempt with the same ``fingerprint``
        (same code and inputs) finds the checkpoints and resumes. It is not a version and is
        never listed; remove it with :meth:`discard_workdir` once the version is committed."""
        if not fingerprint or "/" in fingerprint or fingerprint.startswith("."):
            raise StoreError(f"invalid work fingerprint {fingerprint!r}")
        if self.is_local:
            base = Path(self._asset_dir(key)) / ".work"
        else:
            base = Path(os.environ.get("NANBEIGE_CACHE") or Path.home() / ".cache" / "nanbeige")
            base = base / "work" / key
        path = base / fingerprint
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create work directory {path}: {exc.strerror or exc}") from exc
        return path

    def discard_workdir(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def prune(self, key: str, keep: int = 3) -> list[str]:
        """Delete all but the newest ``keep`` versions of ``key``; returns deleted ids."""
        doomed = self.versions(key)[:-keep] if keep > 0 else self.versions(key)
        for version in doomed:
            self.fs.rm(version.path, recursive=True)
        return [v.version_id for v in doomed]

    def _clean_dead_staging(self, base: Path) -> None:
        for entry in base.glob(f"{STAGING_PREFIX}*"):
            pid = entry.name[len(STAGING_PREFIX) :].split("-", 1)[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                shutil.rmtree(entry, ignore_errors=True)

"""The code sandbox: run one Python program under resource limits and say how it ended.

Shared by everything that executes model-written code: evaluation (HumanEval tests), synthetic
data (generated tests) and RL (code rewards). ``run_code(program)`` writes the program to a fresh
temporary directory and runs it in ``python -I`` under rlimits (address space, CPU seconds, file
size, no core files) set by a tiny wrapper that then ``exec``s the program (``preexec_fn`` is
unsafe in threaded callers), in a new session with stdin closed and a minimal environment. A
watchdog kills the whole process group at the wall-clock limit, or when the run holds more than
``MAX_PROCESSES`` processes; afterwards every process still carrying the run's environment token
(children that left the session with ``setsid``) is killed too. With ``must_finish=True`` the
program must also reach its end: a random sentinel printed after it (stored reversed in the
source) has to appear, so a program that exits early with status 0, or prints its own source,
does not pass.

The result is a :class:`RunResult`: ``ok``, a short ``reason`` ("ok", "timeout", "memory",
"failed_tests" for an ``AssertionError``, "error: ...") and the tail of stdout and stderr.
``run_code`` never raises: a sandbox that cannot start is an "error: ..." result too.

Trade-offs and limits: the sandbox bounds resources and cleans up processes; it is not a
security boundary. There is no filesystem or network isolation: the program can read and write
anything its user can (as root, everything) and, as root, raise its own rlimits.
``RLIMIT_NPROC`` is not used (it counts all of the user's processes and is ignored for root); the
process watchdog polls every 50 ms, so a fork bomb can briefly exceed ``MAX_PROCESSES``. A child
that both calls ``setsid`` and re-``exec``s with a cleared environment escapes the final sweep.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

MAX_PROCESSES = 32  # processes a code run may hold at once before it is killed
FILE_LIMIT_MB = 8  # largest file (stdout included) a code run may write
OUTPUT_CHARS = 4000  # captured stdout and stderr kept in a result (each, tail)
POLL_S = 0.05  # watchdog period of a code run
TOKEN_VAR = "NANBEIGE_SANDBOX"  # environment variable that marks a code run's processes


@dataclass(frozen=True)
class RunResult:
    ok: bool  # exited 0 (and, with must_finish, reached the end)
    reason: str  # ok, timeout, memory, failed_tests, "error: ..."
    output: str = ""  # the tail of stdout and stderr


_WRAPPER = """\
import os, resource, sys
def cap(kind, soft, hard):
    try:
        resource.setrlimit(kind, (soft, hard))
    except (ValueError, OSError):
        pass
memory, cpu, fsize = (int(v) for v in sys.argv[1:4])
cap(resource.RLIMIT_AS, memory, memory)
cap(resource.RLIMIT_CPU, cpu, cpu + 1)
cap(resource.RLIMIT_FSIZE, fsize, fsize)
cap(resource.RLIMIT_CORE, 0, 0)
os.execv(sys.executable, [sys.executable, "-I", "-B", "main.py"])
"""


@dataclass(frozen=True)
class _Run:
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    too_many: bool


def _sandbox_pids(token: str) -> list[int]:
    """Live processes whose environment carries ``token`` (empty without /proc)."""
    needle = f"{TOKEN_VAR}={token}".encode()
    found = []
    try:
        entries = list(os.scandir("/proc"))
    except OSError:
        return []
    for entry in entries:
        if entry.name.isdigit():
            try:
                environ = Path(entry.path, "environ").read_bytes()
            except OSError:
                continue
            if needle in environ.split(b"\0"):
                found.append(int(entry.name))
    return found


def _kill_all(proc: subprocess.Popen, token: str) -> None:
    """SIGKILL the run's process group, then every process that still carries its token."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    for _ in range(50):
        pids = _sandbox_pids(token)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)
    proc.wait()


def _tail(stream: IO[bytes]) -> str:
    stream.seek(0, os.SEEK_END)
    size = stream.tell()
    stream.seek(max(0, size - OUTPUT_CHARS * 4))
    text = stream.read().decode("utf-8", "replace")
    return text[-OUTPUT_CHARS:]


def _run(program: str, timeout_s: float, memory_mb: int) -> _Run:
    token = secrets.token_hex(8)
    with (
        tempfile.TemporaryDirectory(prefix="nanbeige-sandbox-", ignore_cleanup_errors=True) as tmp,
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
    ):
        Path(tmp, "main.py").write_text(program, encoding="utf-8")
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": tmp,
            "TMPDIR": tmp,
            "LANG": "C.UTF-8",
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            TOKEN_VAR: token,
        }
        limits = (memory_mb * 2**20, math.ceil(timeout_s) + 1, FILE_LIMIT_MB * 2**20)
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _WRAPPER, *map(str, limits)],
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        timed_out = too_many = False
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    timed_out = True
                    break
                try:
                    proc.wait(timeout=min(POLL_S, left))
                    break
                except subprocess.TimeoutExpired:
                    pass
                if len(_sandbox_pids(token)) > MAX_PROCESSES:
                    too_many = True
                    break
        finally:
            _kill_all(proc, token)  # also after a clean exit: background children die here
        return _Run(proc.returncode, _tail(out), _tail(err), timed_out, too_many)


def _last_error_line(stderr: str) -> str:
    return next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "")


def _classify(run: _Run, sentinel: str | None) -> RunResult:
    output = (run.stdout + run.stderr)[-OUTPUT_CHARS:]
    last = _last_error_line(run.stderr)
    exception = re.match(r"([A-Za-z_][\w.]*)(?::|$)", last)
    name = exception.group(1).rsplit(".", 1)[-1] if exception else ""
    if run.timed_out or run.returncode == -signal.SIGXCPU:
        reason = "timeout"
    elif run.too_many:
        reason = f"error: more than {MAX_PROCESSES} processes"
    elif name == "MemoryError" or run.returncode == -signal.SIGKILL:  # SIGKILL: the OOM killer
        reason = "memory"
    elif run.returncode == 0:
        passed = sentinel is None or sentinel in run.stdout
        reason = "ok" if passed else "error: exited before the tests finished"
    elif name == "AssertionError":
        reason = "failed_tests"
    elif exception:
        reason = f"error: {last[:200]}"
    elif run.returncode < 0:
        reason = f"error: killed by {signal.Signals(-run.returncode).name}"
    else:
        reason = f"error: exit code {run.returncode}"
    return RunResult(reason == "ok", reason, output)


def run_code(
    program: str, *, timeout_s: float = 5.0, memory_mb: int = 512, must_finish: bool = False
) -> RunResult:
    """Run ``program`` in the sandbox; "ok" when it exits 0 (and, with ``must_finish``, when it
    ran to its last line)."""
    sentinel = f"finished {secrets.token_hex(16)}" if must_finish else None
    if sentinel is not None:  # printed, never in the source: printing the file does not pass
        program = f"{program}\nprint({sentinel[::-1]!r}[::-1], flush=True)\n"
    try:
        return _classify(_run(program, timeout_s, memory_mb), sentinel)
    except Exception as exc:  # e.g. an unwritable temp dir
        message = str(exc).splitlines()[0][:200] if str(exc) else ""
        return RunResult(False, f"error: {type(exc).__name__}: {message}".rstrip(": "))

"""The sandbox for model-written code: run one Python program isolated and limited, say how it
ended.

Every place that executes generated code goes through :func:`run_code`: evaluation (HumanEval
tests) now; tool calls, synthetic tests and RL code rewards later. Two modes, chosen by the
recipe's ``sandbox`` section (:class:`~nanbeige_data.config.SandboxConfig`):

* ``bubblewrap`` (the default). ``unshare --user --map-root-user --net`` makes a network
  namespace whose only interface is a loopback that is *down* and that has no route (no network
  at all, loopback included; bwrap's own ``--unshare-net`` would bring the loopback up), then
  Debian's ``bwrap`` adds new user, PID, IPC, UTS and cgroup namespaces, drops every capability,
  runs as uid 1000, forbids further user namespaces, and builds a root of its own: ``/usr`` (and
  the ``/bin``, ``/lib*`` links) and the interpreter's install trees (``sys.base_prefix``,
  ``sys.prefix``: the virtual environment, not the checkout around it) read-only, a fresh
  ``/proc`` that sees only the sandbox's processes, a read-only minimal ``/dev``, and a private
  tmpfs of ``tmp_mb`` at ``/tmp`` (the working directory, ``HOME`` and the only writable
  place). The project checkout, the versioned store, the user's home and the rest of ``/etc``
  are not there at all. The environment is cleared to a short allow-list. ``--die-with-parent``
  and the PID namespace end every process the run started, detached ones included, when the
  run ends or is killed.
* ``limits-only``: the same program under the same resource limits, with no isolation (it runs
  as the pipeline's user, sees the filesystem and the network, can signal the caller). Only for
  hosts that forbid namespaces, and only when the recipe says so; the mode is recorded in every
  :class:`RunResult` and in the eval report.

In both modes a small wrapper sets the rlimits (address space, CPU seconds, file size, no core
files; in ``bubblewrap`` also the process count, counted per user namespace) and then runs the
program; a watchdog kills everything at the wall-clock limit, or when a ``limits-only`` run holds
more than ``max_processes`` processes, and sweeps every process still carrying the run's
environment token. The program reaches the wrapper on stdin, which is then replaced by
``/dev/null``; with ``must_finish=True`` the wrapper prints a random sentinel after the program's
last line that was never in its source or on disk, so a program that exits early with status 0,
or prints its own source, does not pass.

If ``bubblewrap`` mode is asked for and ``bwrap`` or ``unshare`` is missing or cannot create its
namespaces, :func:`run_code` raises :class:`SandboxUnavailable` (why, and how to fix it): it never
falls back to running code unisolated.

What this does not protect against: kernel exploits (there is no seccomp filter; add one with
bwrap's ``--seccomp`` if your threat model needs it), side channels, and a program that searches
the interpreter's own memory for the sentinel (the sandbox bounds what code can do to the
machine, not what it may claim about itself). The process watchdog polls every 50 ms, so in
``limits-only`` mode a fork bomb can briefly exceed ``max_processes``; in ``bubblewrap`` mode the
kernel enforces the count.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from nanbeige_data.config import SandboxConfig

FILE_LIMIT_MB = 8  # largest file (stdout included) a code run may write
OUTPUT_CHARS = 4000  # captured stdout and stderr kept in a result (each, tail)
POLL_S = 0.05  # watchdog period of a code run
TOKEN_VAR = "NANBEIGE_SANDBOX"  # environment variable that marks a code run's processes
SANDBOX_UID = 1000  # the unprivileged uid code runs as inside the namespaces
SANDBOX_TMP = "/tmp"  # the private tmpfs inside the namespaces: cwd, HOME, only writable place
SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")  # mounted read-only
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime")  # of /etc, read-only
ENV = {  # the whole environment of a code run (plus the token)
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
FIX_HINT = (
    "Install it (Debian/Ubuntu: `sudo apt-get install bubblewrap`; `make run` and `make test` "
    "do this), or, to run model-written code with resource limits only and no isolation, set "
    "`sandbox: limits-only` in the recipe (the mode is then recorded in every verdict and report)."
)
NAMESPACE_HINT = (
    "User namespaces are probably disabled here. On a host: `sysctl kernel.unprivileged_userns_"
    "clone=1` (Debian), `sysctl kernel.apparmor_restrict_unprivileged_userns=0` (Ubuntu 24.04). "
    "In a container: run it with `--security-opt seccomp=unconfined` (Docker, Podman) or give it "
    "a seccomp profile that allows unshare/clone with CLONE_NEWUSER. Otherwise set "
    "`sandbox: limits-only` in the recipe to run model-written code with resource limits only "
    "and no isolation (recorded in every verdict and report)."
)


class SandboxUnavailable(RuntimeError):
    """The recipe's sandbox mode cannot run here; the message says why and how to fix it."""


@dataclass(frozen=True)
class RunResult:
    ok: bool  # exited 0 (and, with must_finish, reached the end)
    reason: str  # ok, timeout, memory, failed_tests, "error: ..."
    output: str = ""  # the tail of stdout and stderr
    sandbox: str = "bubblewrap"  # the mode the program ran in


_WRAPPER = """\
import os, resource, sys, types
def cap(kind, soft, hard):
    try:
        resource.setrlimit(kind, (soft, hard))
    except (ValueError, OSError):
        pass
def run():
    memory, cpu, fsize, nproc = (int(v) for v in sys.argv[1:5])
    sys.path.extend(p for p in sys.argv[5].split(os.pathsep) if p)
    sentinel, _, source = sys.stdin.buffer.read().partition(b"\\n")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    with open("main.py", "wb") as f:
        f.write(source)
    cap(resource.RLIMIT_AS, memory, memory)
    cap(resource.RLIMIT_CPU, cpu, cpu + 1)
    cap(resource.RLIMIT_FSIZE, fsize, fsize)
    cap(resource.RLIMIT_CORE, 0, 0)
    if nproc:
        cap(resource.RLIMIT_NPROC, nproc, nproc)
    main = types.ModuleType("__main__")
    main.__file__ = "main.py"
    sys.modules["__main__"] = main
    exec(compile(source, "main.py", "exec"), main.__dict__)
    if sentinel:
        sys.stdout.flush()
        print(sentinel.decode(), flush=True)
run()
"""


# --------------------------------------------------------------------------- the namespaces


def _system_mounts() -> list[str]:
    """``/usr`` and the top-level links into it as on the host, read-only; a few /etc files."""
    args = []
    for name in SYSTEM_DIRS:
        path = Path("/", name)
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    for name in ETC_FILES:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    return args


def _interpreter_mounts() -> list[str]:
    """The interpreter's install trees (base install, virtual environment) outside /usr,
    read-only at their own paths, so the sandbox's Python has the pipeline's packages."""
    trees = {Path(p).resolve() for p in (sys.base_prefix, sys.prefix, sys.exec_prefix)}
    trees |= {Path(sys.executable).resolve().parent.parent}
    outside = [t for t in trees if not any(t.is_relative_to(f"/{d}") for d in SYSTEM_DIRS)]
    top = [t for t in outside if not any(t != o and t.is_relative_to(o) for o in outside)]
    args = []
    for tree in sorted(top):
        args += ["--ro-bind", str(tree), str(tree)]
    prefix = Path(sys.prefix)  # the venv as the executable names it (it may be a symlink)
    if prefix.resolve() != prefix and not prefix.is_relative_to("/usr"):
        args += ["--ro-bind", str(prefix.resolve()), str(prefix)]
    return args


def bubblewrap_argv(cfg: SandboxConfig, token: str) -> list[str]:
    """The command line that isolates a code run, up to (not including) the program."""
    values = {**ENV, "HOME": SANDBOX_TMP, "TMPDIR": SANDBOX_TMP, TOKEN_VAR: token}
    env = [arg for key, value in values.items() for arg in ("--setenv", key, value)]
    return [
        _which("unshare") or "unshare", "--user", "--map-root-user", "--net", "--",
        _which("bwrap") or "bwrap",
        "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
        "--unshare-cgroup-try", "--disable-userns", "--hostname", "sandbox",
        "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--cap-drop", "ALL",
        "--die-with-parent", "--new-session",
        # the private /tmp first: an interpreter tree under /tmp (a venv in a checkout there)
        # is then mounted over it, read-only, instead of being hidden by it
        "--size", str(cfg.tmp_mb * 2**20), "--tmpfs", SANDBOX_TMP,
        *_system_mounts(), *_interpreter_mounts(),
        "--proc", "/proc", "--dev", "/dev",
        "--remount-ro", "/", "--remount-ro", "/dev",
        "--chdir", SANDBOX_TMP, "--clearenv", *env,
        "--",
    ]  # fmt: skip


BWRAP_MIN = (0, 8, 0)  # --disable-userns and --size


def _bwrap_too_old(bwrap: str) -> str | None:
    """Why ``bwrap`` is too old for the sandbox's options, or None."""
    try:
        said = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`{bwrap} --version` failed: {exc}. {FIX_HINT}"
    found = re.search(r"(\d+)\.(\d+)\.(\d+)", said.stdout)
    version = tuple(int(x) for x in found.groups()) if found else (0, 0, 0)
    if version < BWRAP_MIN:
        need = ".".join(map(str, BWRAP_MIN))
        return (
            f"bubblewrap {said.stdout.strip() or '(unknown version)'} at {bwrap} is older than "
            f"{need}, which the sandbox needs (--disable-userns, --size). Install {need} or "
            "newer (Debian 12 ships 0.8.0), or set `sandbox: limits-only` in the recipe."
        )
    return None


@functools.cache
def _probe(bwrap: str | None, unshare: str | None) -> str | None:
    """None when a trivial program runs in the namespaces here, else why not (cached)."""
    if bwrap is None:
        return f"the sandbox needs bubblewrap (`bwrap`), which is not on PATH. {FIX_HINT}"
    if unshare is None:
        return f"the sandbox needs util-linux's `unshare`, which is not on PATH. {FIX_HINT}"
    if (too_old := _bwrap_too_old(bwrap)) is not None:
        return too_old
    argv = [*bubblewrap_argv(SandboxConfig(), "probe"), sys.executable, "-I", "-S", "-c", "pass"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=ENV)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap could not be started: {exc}. {NAMESPACE_HINT}"
    if done.returncode != 0:
        said = " ".join(done.stderr.split())[:300] or f"exit code {done.returncode}"
        return f"bubblewrap cannot create its namespaces here ({said}). {NAMESPACE_HINT}"
    return None


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH") or ENV["PATH"])


def ensure_available(cfg: SandboxConfig) -> None:
    """Raise :class:`SandboxUnavailable` unless ``cfg``'s mode can run code on this host."""
    if cfg.mode == "bubblewrap" and (problem := _probe(_which("bwrap"), _which("unshare"))):
        raise SandboxUnavailable(problem)


CGROUP_DIR = "nanbeige-sandbox"  # the pids cgroup (beside this process's) that holds runs


def _own_pids_cgroup() -> Path | None:
    """This process's pids cgroup directory (v1 ``pids`` hierarchy, else the v2 one)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "pids" in controllers.split(","):
            return Path("/sys/fs/cgroup/pids", path.lstrip("/"))
    v2 = next((path for _, c, path in (x.split(":", 2) for x in lines) if c == ""), None)
    return Path("/sys/fs/cgroup", v2.lstrip("/")) if v2 is not None else None


@functools.cache
def _cgroup_parent() -> Path | None:
    """Where each run gets a pids cgroup of its own, or None where cgroups are not writable
    here (then the process count rests on RLIMIT_NPROC, which the kernel ignores for root)."""
    own = _own_pids_cgroup()
    if own is None:
        return None
    parent = own / CGROUP_DIR
    try:
        parent.mkdir(exist_ok=True)
        control = parent / "cgroup.subtree_control"
        if control.exists() and "pids" not in control.read_text().split():
            control.write_text("+pids")
        trial = parent / f"probe-{os.getpid()}"
        trial.mkdir(exist_ok=True)
        try:
            (trial / "pids.max").write_text("8")
        finally:
            trial.rmdir()
    except OSError:
        return None
    return parent


def process_limit(cfg: SandboxConfig) -> str:
    """What bounds a run's process count: "pids cgroup" or "rlimit" (both kernel-enforced), or
    "watchdog" (50 ms polling: root without a writable pids cgroup, or limits-only mode)."""
    if cfg.mode == "limits-only":
        return "watchdog"
    if _cgroup_parent() is not None:
        return "pids cgroup"
    return "watchdog" if os.geteuid() == 0 else "rlimit"


@contextlib.contextmanager
def _pids_cgroup(cfg: SandboxConfig, token: str) -> Iterator[Path | None]:
    """A pids cgroup for one bubblewrap run, removed afterwards; None where there is none."""
    parent = _cgroup_parent() if cfg.mode == "bubblewrap" else None
    if parent is None:
        yield None
        return
    path = parent / f"run-{token}"
    path.mkdir()
    try:
        # the program, bwrap and bwrap's init (the shell that joins becomes bwrap)
        (path / "pids.max").write_text(str(cfg.max_processes + 2))
        yield path
    finally:
        for attempt in range(300):  # empty once every process is reaped
            try:
                path.rmdir()
                break
            except OSError:
                time.sleep(0.001 if attempt < 100 else 0.01)


def describe(cfg: SandboxConfig) -> str:
    """One line for reports: which sandbox ran the code, and what it guarantees."""
    if cfg.mode == "limits-only":
        return (
            "limits-only: resource limits and a wall-clock kill, NO isolation (the code saw the "
            "filesystem, the network and the environment of the pipeline's user)"
        )
    return (
        f"bubblewrap: no network (loopback down), read-only system, private {cfg.tmp_mb} MB "
        f"/tmp, no checkout/store/home, PID/IPC/UTS/user namespaces, at most "
        f"{cfg.max_processes} processes ({process_limit(cfg)})"
    )


# --------------------------------------------------------------------------- one run


@dataclass(frozen=True)
class _Run:
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    too_many: bool


def _sandbox_pids(token: str) -> list[int]:
    """Live processes whose environment carries ``token`` (empty without /proc)."""
    return _sandbox_pids_matching(f"{TOKEN_VAR}={token}".encode(), exact=True)


def _sandbox_pids_matching(needle: bytes, exact: bool = False) -> list[int]:
    """Live processes with an environment entry equal to (or, not ``exact``, starting with)
    ``needle``."""
    found = []
    try:
        entries = list(os.scandir("/proc"))
    except OSError:
        return []
    for entry in entries:
        if entry.name.isdigit():
            try:
                variables = Path(entry.path, "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if needle in variables or (not exact and any(v.startswith(needle) for v in variables)):
                found.append(int(entry.name))
    return found


def _cgroup_pids(cgroup: Path | None) -> list[int]:
    try:
        return [int(p) for p in (cgroup / "cgroup.procs").read_text().split()] if cgroup else []
    except OSError:
        return []


def _kill_all(proc: subprocess.Popen, token: str, cgroup: Path | None = None) -> None:
    """SIGKILL the run's process group (bwrap's death ends its namespaces), then every process
    still in its cgroup (nothing can leave it) or, without one, still carrying its token."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    for attempt in range(1000):
        pids = _cgroup_pids(cgroup) if cgroup is not None else _sandbox_pids(token)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.001 if attempt < 100 else 0.01)
    proc.wait()


def _tail(stream: IO[bytes]) -> str:
    stream.seek(0, os.SEEK_END)
    size = stream.tell()
    stream.seek(max(0, size - OUTPUT_CHARS * 4))
    text = stream.read().decode("utf-8", "replace")
    return text[-OUTPUT_CHARS:]


@functools.cache
def _site_dirs() -> str:
    """The interpreter's site-packages, put on the program's path by the wrapper: its packages
    (sympy, numpy) without running ``.pth`` start-up hooks (about 25 ms a run here, and they
    would import the pipeline's own editable install)."""
    paths = sysconfig.get_paths()
    return os.pathsep.join(dict.fromkeys((paths["purelib"], paths["platlib"])))


def _command(
    cfg: SandboxConfig, token: str, limits: tuple[int, ...], cgroup: Path | None
) -> list[str]:
    python = [sys.executable, "-I", "-S", "-B", "-c", _WRAPPER, *map(str, limits), _site_dirs()]
    if cfg.mode == "limits-only":
        return python
    join = ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(cgroup / "cgroup.procs")]
    return [*(join if cgroup else []), *bubblewrap_argv(cfg, token), *python]


def _limit_hit(cgroup: Path) -> bool:
    """The kernel refused a fork in this run's pids cgroup (``pids.events``: ``max N``)."""
    try:
        events = dict(line.split() for line in (cgroup / "pids.events").read_text().splitlines())
    except (OSError, ValueError):
        return False
    return int(events.get("max", 0)) > 0


def _watch(proc: subprocess.Popen, token: str, timeout_s: float, cfg: SandboxConfig, cgroup):
    """Wait for the run (woken by its exit at once, through a pidfd); (timed out, held or
    asked for more than ``max_processes`` processes)."""
    deadline = time.monotonic() + timeout_s
    with _exit_waiter(proc) as exited:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return True, False
            if exited(min(POLL_S, left)):
                return False, False
            if cgroup is not None:  # the kernel refused a fork: stop it now, not at the timeout
                if _limit_hit(cgroup):
                    return False, True
                continue
            held = len(_sandbox_pids(token))
            # limits-only: the watchdog is the limit; bubblewrap (rlimit): the kernel's count
            # is, and the program holding max_processes means it reached it
            if held > cfg.max_processes or (cfg.mode == "bubblewrap" and held >= cfg.max_processes):
                return False, True


@contextlib.contextmanager
def _exit_waiter(proc: subprocess.Popen) -> Iterator[Callable[[float], bool]]:
    """``exited(seconds)``: wait up to ``seconds`` for ``proc`` to end; True once it has."""
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # no pidfd (old kernel): Popen's own polling
        fd = None
    poller = select.poll()
    if fd is not None:
        poller.register(fd, select.POLLIN)

    def exited(seconds: float) -> bool:
        if fd is not None and not poller.poll(seconds * 1000):
            return False
        try:
            proc.wait(timeout=0 if fd is not None else seconds)
            return True
        except subprocess.TimeoutExpired:
            return False

    try:
        yield exited
    finally:
        if fd is not None:
            os.close(fd)


def _run(payload: bytes, timeout_s: float, memory_mb: int, cfg: SandboxConfig) -> _Run:
    token = secrets.token_hex(8)
    nproc = cfg.max_processes + 1 if cfg.mode == "bubblewrap" else 0  # + bwrap's init
    limits = (memory_mb * 2**20, math.ceil(timeout_s) + 1, FILE_LIMIT_MB * 2**20, nproc)
    with (
        tempfile.TemporaryDirectory(prefix="nanbeige-sandbox-", ignore_cleanup_errors=True) as tmp,
        _pids_cgroup(cfg, token) as cgroup,
        tempfile.TemporaryFile() as program,
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
    ):
        program.write(payload)
        program.seek(0)
        # bubblewrap sets the program's own environment (and token); bwrap itself gets neither
        env = {**ENV, "HOME": tmp, "TMPDIR": tmp, TOKEN_VAR: token}
        env = env if cfg.mode == "limits-only" else ENV
        proc = subprocess.Popen(
            _command(cfg, token, limits, cgroup),
            cwd=tmp,  # limits-only: the run's directory; bubblewrap: unused (its /tmp is)
            env=env,
            stdin=program,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        try:
            timed_out, too_many = _watch(proc, token, timeout_s, cfg, cgroup)
        finally:
            _kill_all(proc, token, cgroup)  # also after a clean exit: background children die
        return _Run(proc.returncode, _tail(out), _tail(err), timed_out, too_many)


def _last_error_line(stderr: str) -> str:
    return next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "")


def _classify(run: _Run, sentinel: str | None, cfg: SandboxConfig) -> RunResult:
    output = (run.stdout + run.stderr)[-OUTPUT_CHARS:]
    last = _last_error_line(run.stderr)
    exception = re.match(r"([A-Za-z_][\w.]*)(?::|$)", last)
    name = exception.group(1).rsplit(".", 1)[-1] if exception else ""
    if run.timed_out or run.returncode == -signal.SIGXCPU:
        reason = "timeout"
    elif run.too_many:
        reason = f"error: too many processes (limit {cfg.max_processes})"
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
    return RunResult(reason == "ok", reason, output, cfg.mode)


def run_code(
    program: str,
    *,
    sandbox: SandboxConfig | None = None,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    must_finish: bool = False,
) -> RunResult:
    """Run ``program`` in the sandbox; "ok" when it exits 0 (and, with ``must_finish``, when it
    ran to its last line). Raises :class:`SandboxUnavailable` when the mode cannot run here;
    anything else that goes wrong is an "error: ..." result."""
    cfg = sandbox or SandboxConfig()
    ensure_available(cfg)
    sentinel = f"finished {secrets.token_hex(16)}" if must_finish else None
    payload = f"{sentinel or ''}\n{program}".encode()
    try:
        return _classify(_run(payload, timeout_s, memory_mb, cfg), sentinel, cfg)
    except Exception as exc:  # e.g. an unwritable temp dir
        message = str(exc).splitlines()[0][:200] if str(exc) else ""
        reason = f"error: {type(exc).__name__}: {message}".rstrip(": ")
        return RunResult(False, reason, "", cfg.mode)

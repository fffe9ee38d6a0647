"""The code sandbox, in both modes: hangs, memory hogs, fork bombs, escaping children and early
exits are stopped and named; the run leaves no process and no directory behind. Then the escape
tests against ``bubblewrap``: sockets, interfaces and routes, writes outside /tmp, reads of the
checkout and the store, environment secrets, detached children, killing the checker. For the
listener, file and secret cases a companion test shows that ``limits-only`` lets them through,
so each escape test is seen to be able to fail. The fork bomb and ``kill(-1)`` run only inside
the namespaces that contain them."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nanbeige_data import sandbox
from nanbeige_data.config import SandboxConfig
from nanbeige_data.sandbox import OUTPUT_CHARS, SandboxUnavailable, run_code

REPO = Path(__file__).resolve().parents[1]
BWRAP = SandboxConfig(mode="bubblewrap")
LIMITS = SandboxConfig(mode="limits-only")
MODES = pytest.mark.parametrize("cfg", [BWRAP, LIMITS], ids=["bubblewrap", "limits-only"])


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for init to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _host_processes_with(marker: str) -> list[int]:
    """Host pids of live processes whose command line holds ``marker`` (seen from outside)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = Path(entry.path, "cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline and _alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def _marker_sleep() -> tuple[str, str]:
    """A `sleep` whose argument is unique to this test: (marker, Python that execs it)."""
    marker = f"61.{secrets.randbelow(10**6):06d}"
    return marker, f"os.execv('/bin/sleep', ['sleep', '{marker}'])"


# --------------------------------------------------------------------------- both modes


@MODES
def test_code_hang_times_out(cfg):
    for program in ("while True: pass", "import time\ntime.sleep(100)"):
        started = time.monotonic()
        result = run_code(program, sandbox=cfg, timeout_s=1.0)
        assert result.reason == "timeout" and not result.ok
        assert result.sandbox == cfg.mode
        assert time.monotonic() - started < 1.0 + 3


@MODES
def test_code_memory_hog_is_stopped(cfg):
    assert run_code("x = bytearray(2**34)", sandbox=cfg).reason == "memory"
    grow_forever = "x = []\nwhile True:\n    x.append(bytearray(10**6))"
    grow = run_code(grow_forever, sandbox=cfg, memory_mb=256)
    assert grow.reason == "memory"


@MODES
def test_detached_children_do_not_outlive_the_run(cfg):
    marker, sleep = _marker_sleep()
    hang = f"import os, time\nif os.fork() == 0:\n    {sleep}\ntime.sleep(100)\n"
    assert run_code(hang, sandbox=cfg, timeout_s=1.0).reason == "timeout"
    assert not _host_processes_with(marker)
    marker, sleep = _marker_sleep()
    escape = (  # setsid + double fork, while the program itself exits cleanly at once
        "import os\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        {sleep}\n"
        "    os._exit(0)\n"
        "os.wait()\n"
        "import time\ntime.sleep(0.3)\n"  # the grandchild is running by now
    )
    result = run_code(escape, sandbox=cfg, timeout_s=3.0)
    assert result.ok, result
    assert not _host_processes_with(marker)


def test_limits_only_kills_a_run_over_the_process_count():
    forks = (  # bounded, each child reports itself: the watchdog may stop the loop half-way
        "import os, time\n"
        f"for _ in range({LIMITS.max_processes + 8}):\n"
        "    if os.fork() == 0:\n"
        "        print(os.getpid(), flush=True)\n"
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
        "time.sleep(60)\n"
    )
    result = run_code(forks, sandbox=LIMITS, timeout_s=3.0)
    assert result.reason == f"error: too many processes (limit {LIMITS.max_processes})"
    pids = [int(p) for p in result.output.split() if p.isdigit()]
    assert pids and not any(_alive(pid) for pid in pids)


@MODES
def test_code_errors_and_sandbox_surroundings(cfg):
    syntax = run_code("def f(:\n    pass\n", sandbox=cfg)
    assert syntax.reason.startswith("error: SyntaxError")
    assert run_code("raise ValueError('bad')", sandbox=cfg).reason == "error: ValueError: bad"
    assert run_code("import sys\nsys.exit(3)", sandbox=cfg).reason == "error: exit code 3"
    probe = run_code(
        "import os, sys\nprint(os.getcwd())\nprint(repr(sys.stdin.read()))\n"
        "print(sorted(os.environ))\nopen('scratch.txt', 'w').write('x')\n"
        "import sympy, numpy\nprint(__name__)\n",
        sandbox=cfg,
    )
    assert probe.ok, probe
    cwd, stdin, env, name = probe.output.splitlines()[:4]
    assert stdin == "''"  # stdin is closed (/dev/null) once the program is read
    assert name == "__main__"
    assert "HOME" in env and "PYTHONPATH" not in env and "VIRTUAL_ENV" not in env
    if cfg.mode == "limits-only":
        assert not Path(cwd).exists()  # its temporary directory is gone
    else:
        assert cwd == sandbox.SANDBOX_TMP
    chatty = run_code("print('y' * 100_000)", sandbox=cfg)
    assert chatty.ok and len(chatty.output) <= 2 * OUTPUT_CHARS


@MODES
def test_must_finish_needs_the_last_line(cfg):
    assert run_code("x = 1", sandbox=cfg, must_finish=True).ok
    hacks = (
        "import sys\nsys.exit(0)",
        "import os\nos._exit(0)",
        "print(open(__file__).read())\nimport os\nos._exit(0)",
        "import glob, os\nfor f in filter(os.path.isfile, glob.glob('*')):\n"
        "    print(open(f).read())\nos._exit(0)",
    )
    for hack in hacks:
        result = run_code(hack, sandbox=cfg, must_finish=True)
        assert not result.ok and result.reason == "error: exited before the tests finished", hack
        assert run_code(hack, sandbox=cfg).ok  # without must_finish a clean exit is enough
    assert run_code("assert 1 == 2", sandbox=cfg, must_finish=True).reason == "failed_tests"


# --------------------------------------------------------------------------- escapes


@pytest.fixture
def listener():
    """A TCP listener of the test's own on 127.0.0.1: (port, accepted-connection count)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)

    def accepted() -> int:
        count = 0
        while True:
            try:
                conn, _ = server.accept()
            except BlockingIOError:
                return count
            conn.close()
            count += 1

    yield server.getsockname()[1], accepted
    server.close()


CONNECT = """\
import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
    print("connected")
except OSError as exc:
    print("refused", exc.errno)
"""


def test_a_socket_to_the_hosts_loopback_is_refused(listener):
    port, accepted = listener
    result = run_code(CONNECT.format(port=port), sandbox=BWRAP)
    assert result.ok and result.output.split()[0] == "refused", result.output
    assert accepted() == 0


def test_companion_limits_only_reaches_the_listener(listener):
    port, accepted = listener
    result = run_code(CONNECT.format(port=port), sandbox=LIMITS)
    assert result.output.split()[0] == "connected", result.output
    assert accepted() == 1


NETWORK_INSIDE = """\
import errno, fcntl, socket, struct
print("interfaces", [name for _, name in socket.if_nameindex()])
probe = socket.socket()
flags = struct.unpack("16sH", fcntl.ioctl(probe.fileno(), 0x8913, struct.pack("16sH", b"lo", 0)))[1]
print("lo_up", bool(flags & 1))
print("ipv4_routes", len(open("/proc/net/route").read().splitlines()[1:]))
reject = 0x0200  # RTF_REJECT: the kernel's "unreachable" entries are not routes
v6 = open("/proc/net/ipv6_route").read().splitlines()
print("ipv6_routes", len([r for r in v6 if not int(r.split()[8], 16) & reject]))
for family, address in ((socket.AF_INET, "10.1.2.3"), (socket.AF_INET6, "2001:db8::1"),
                        (socket.AF_INET, "127.0.0.1")):
    udp = socket.socket(family, socket.SOCK_DGRAM)  # connect() on UDP sends nothing
    try:
        udp.connect((address, 9))
        print("route_to", address, "yes")
    except OSError as exc:
        print("route_to", address, errno.errorcode[exc.errno])
"""


def test_no_interface_but_a_down_loopback_and_no_route():
    result = run_code(NETWORK_INSIDE, sandbox=BWRAP)
    assert result.ok, result.output
    lines = dict(line.split(" ", 1) for line in result.output.splitlines())
    assert lines["interfaces"] == "['lo']"
    assert lines["lo_up"] == "False"
    assert lines["ipv4_routes"] == "0" and lines["ipv6_routes"] == "0"
    routes = [line.split() for line in result.output.splitlines() if line.startswith("route_to")]
    assert len(routes) == 3, result.output  # no route, or no address to send from
    assert all(r[2] in ("ENETUNREACH", "EADDRNOTAVAIL") for r in routes), result.output


WRITE_OUTSIDE = """\
import os
for target in {targets!r}:
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w") as f:
            f.write("escaped")
        print("wrote", target)
    except OSError as exc:
        print("denied", target, exc.strerror)
"""


def test_writes_outside_the_private_tmp_do_not_reach_the_host(tmp_path):
    host_dir = tmp_path / "host"
    host_dir.mkdir()
    targets = [str(host_dir / "x.txt"), str(REPO / "escaped.txt"), "/usr/escaped", "/escaped"]
    result = run_code(WRITE_OUTSIDE.format(targets=targets), sandbox=BWRAP)
    assert result.ok, result.output
    assert not any(Path(t).exists() for t in targets)
    # the only place it can write is its own /tmp: the pytest dir under /tmp "works" there
    assert f"wrote {host_dir / 'x.txt'}" in result.output
    assert "denied /usr/escaped Read-only file system" in result.output


READ = """\
for path in {paths!r}:
    try:
        print("read", path, open(path).read()[:40].replace("\\n", " "))
    except OSError as exc:
        print("unreadable", path, exc.strerror)
"""


@pytest.fixture
def host_files(tmp_path):
    """A file of the checkout and one of a versioned store, with their first bytes."""
    store_file = tmp_path / "store" / "raw_web" / "v1" / "manifest.json"
    store_file.parent.mkdir(parents=True)
    store_file.write_text('{"secret_store_manifest": true}')
    checkout_file = REPO / "pyproject.toml"
    return [str(checkout_file), str(store_file)]


def test_the_checkout_and_the_store_are_not_visible(host_files):
    result = run_code(READ.format(paths=host_files), sandbox=BWRAP)
    assert result.ok
    assert "read " not in result.output and result.output.count("unreadable") == 2
    assert "secret_store_manifest" not in result.output and "[project]" not in result.output


def test_companion_limits_only_reads_the_checkout_and_the_store(host_files):
    result = run_code(READ.format(paths=host_files), sandbox=LIMITS)
    assert result.output.count("read ") == 2, result.output
    assert "secret_store_manifest" in result.output


SECRET_HUNT = """\
import os
found = [k for k, v in os.environ.items() if "{secret}" in v]
for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
    try:
        if b"{secret}" in open(f"/proc/{{pid}}/environ", "rb").read():
            found.append(pid)
    except OSError:
        pass
print("found", found)
"""


def _hunt_from_a_caller_with_a_secret(mode: str) -> tuple[str, str]:
    """(secret, sandboxed output): run_code called by a process whose environment holds a
    secret from its start, as a pipeline started with credentials in its environment would."""
    secret = secrets.token_hex(12)
    caller = (
        "from nanbeige_data.config import SandboxConfig\n"
        "from nanbeige_data.sandbox import run_code\n"
        f"print(run_code({SECRET_HUNT.format(secret=secret)!r}, "
        f"sandbox=SandboxConfig(mode={mode!r})).output)\n"
    )
    env = {**os.environ, "NANBEIGE_TEST_SECRET": secret}
    done = subprocess.run(
        [sys.executable, "-c", caller], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return secret, done.stdout


def test_an_environment_secret_is_out_of_reach():
    _, output = _hunt_from_a_caller_with_a_secret("bubblewrap")
    assert output.strip() == "found []", output


def test_companion_limits_only_finds_the_secret_in_the_callers_environ():
    _, output = _hunt_from_a_caller_with_a_secret("limits-only")
    found = output.split(" ", 1)[1]
    assert found != "[]" and found.strip().strip("[]").strip("'").isdigit(), output


FORK_BOMB = """\
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
"""


def _sandboxed_count() -> int:
    """Processes on the host that belong to any code run (they carry the sandbox token)."""
    return len(sandbox._sandbox_pids_matching(f"{sandbox.TOKEN_VAR}=".encode()))


@pytest.mark.skipif(
    sandbox.process_limit(BWRAP) == "watchdog",
    reason="no kernel-enforced process count here (root without a writable pids cgroup): "
    "a fork bomb would exhaust the host",
)
def test_a_fork_bomb_is_stopped_by_the_process_count():
    peak, stop = [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _sandboxed_count())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.monotonic()
    try:
        result = run_code(FORK_BOMB, sandbox=BWRAP, timeout_s=4.0)
    finally:
        stop.set()
        sampler.join()
    assert not result.ok
    assert result.reason in ("timeout", f"error: too many processes (limit {BWRAP.max_processes})")
    assert time.monotonic() - started < 4.0 + 3
    assert 1 < peak[0] <= BWRAP.max_processes  # it forked, and never past the limit
    assert _sandboxed_count() == 0


KILL_THE_CHECKER = """\
import os, signal
for pid in ({caller}, os.getppid(), 1):
    try:
        os.kill(pid, signal.SIGKILL)
        print("signalled", pid, flush=True)
    except OSError as exc:
        print("cannot signal", pid, exc.strerror, flush=True)
visible = [p for p in os.listdir("/proc") if p.isdigit()]
if len(visible) <= 4:  # only ever inside the PID namespace: never kill(-1) on a host
    try:
        os.kill(-1, signal.SIGKILL)  # every process it can see but init and itself
    except OSError:
        pass
os._exit(0)
"""


def test_a_program_cannot_kill_its_checker_or_fake_a_pass():
    caller = os.getpid()
    result = run_code(KILL_THE_CHECKER.format(caller=caller), sandbox=BWRAP, must_finish=True)
    assert not result.ok and result.reason == "error: exited before the tests finished"
    assert f"cannot signal {caller} No such process" in result.output  # not in its namespace
    assert _alive(caller)


# --------------------------------------------------------------------------- policy


def _path_without_bwrap(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("unshare", "sleep"):
        os.symlink(f"/usr/bin/{tool}", bin_dir / tool)
    return bin_dir


def test_bubblewrap_missing_refuses_and_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(_path_without_bwrap(tmp_path)))
    with pytest.raises(SandboxUnavailable, match="bubblewrap") as err:
        run_code("print('never runs')", sandbox=BWRAP)
    assert "apt-get install bubblewrap" in str(err.value)
    assert "sandbox: limits-only" in str(err.value)
    weaker = run_code("print('ran')", sandbox=LIMITS)  # the explicit weaker mode still runs
    assert weaker.ok and weaker.sandbox == "limits-only"


def test_namespaces_forbidden_refuses_with_bwraps_own_words(tmp_path, monkeypatch):
    bin_dir = _path_without_bwrap(tmp_path)
    fake = bin_dir / "bwrap"  # what bwrap says in a container whose seccomp forbids userns
    fake.write_text(
        "#!/bin/sh\n[ \"$1\" = --version ] && echo 'bubblewrap 0.8.0' && exit 0\n"
        "echo 'bwrap: No permissions to creating new namespace, likely because the "
        "kernel does not allow non-privileged user namespaces.' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(SandboxUnavailable, match="cannot create its namespaces") as err:
        sandbox.ensure_available(BWRAP)
    assert "No permissions to creating new namespace" in str(err.value)
    assert "seccomp" in str(err.value) and "sandbox: limits-only" in str(err.value)


def test_a_bubblewrap_too_old_for_its_options_is_refused(tmp_path, monkeypatch):
    bin_dir = _path_without_bwrap(tmp_path)
    old = bin_dir / "bwrap"  # Ubuntu 22.04's version, which lacks --disable-userns
    old.write_text("#!/bin/sh\necho 'bubblewrap 0.6.1'\n")
    old.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(SandboxUnavailable, match=r"bubblewrap 0.6.1 .* older than 0.8.0"):
        sandbox.ensure_available(BWRAP)


def test_results_and_descriptions_name_the_mode():
    assert run_code("pass", sandbox=BWRAP).sandbox == "bubblewrap"
    assert "no network" in sandbox.describe(BWRAP)
    assert "NO isolation" in sandbox.describe(LIMITS)
    assert sys.executable  # the sandbox runs the pipeline's own interpreter


def test_an_interpreter_under_tmp_is_mounted_over_the_private_tmp(monkeypatch):
    """A checkout (and its venv) under /tmp, as a CI clone may be: the venv is bound after the
    tmpfs, so the tmpfs does not hide it (found by a fresh clone in /tmp failing every run)."""
    monkeypatch.setattr(sys, "prefix", "/tmp/some-clone/.venv")
    argv = sandbox.bubblewrap_argv(BWRAP, "token")
    binds = [i for i, a in enumerate(argv) if a == "--ro-bind" and argv[i + 1].startswith("/tmp")]
    assert binds and argv.index("--tmpfs") < min(binds)

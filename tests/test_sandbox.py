"""The code sandbox: hangs, memory hogs, fork bombs, escaping children and early exits are
stopped and named; the run leaves no process and no directory behind."""

from __future__ import annotations

import time
from pathlib import Path

from nanbeige_data.sandbox import MAX_PROCESSES, OUTPUT_CHARS, run_code


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for init to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_code_hang_times_out():
    for program in ("while True: pass", "import time\ntime.sleep(100)"):
        started = time.monotonic()
        result = run_code(program, timeout_s=1.0)
        assert result.reason == "timeout" and not result.ok
        assert time.monotonic() - started < 1.0 + 3


def test_code_memory_hog_is_stopped():
    assert run_code("x = bytearray(2**34)").reason == "memory"
    grow = run_code("x = []\nwhile True:\n    x.append(bytearray(10**6))", memory_mb=256)
    assert grow.reason == "memory"


def test_code_children_do_not_outlive_the_run():
    hang = (
        "import subprocess, time\np = subprocess.Popen(['sleep', '60'])\nprint(p.pid, flush=True)\n"
    )
    result = run_code(hang + "time.sleep(100)", timeout_s=1.0)
    assert result.reason == "timeout"
    assert not _alive(int(result.output.split()[0]))
    escape = (  # a child that leaves the session, while the program itself exits cleanly
        "import os, time\npid = os.fork()\nif pid == 0:\n    os.setsid()\n    time.sleep(60)\n"
        "print(pid, flush=True)\n"
    )
    result = run_code(escape, timeout_s=2.0)
    assert result.reason == "ok"
    assert not _alive(int(result.output.split()[0]))


def test_code_too_many_processes_are_killed():
    forks = (  # each child reports itself at once: the watchdog may stop the loop half-way
        "import os, time\n"
        f"for _ in range({MAX_PROCESSES + 8}):\n"
        "    if os.fork() == 0:\n"
        "        print(os.getpid(), flush=True)\n"
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
        "time.sleep(60)\n"
    )
    result = run_code(forks, timeout_s=3.0)
    assert result.reason == f"error: more than {MAX_PROCESSES} processes"
    pids = [int(p) for p in result.output.split()]
    assert pids and not any(_alive(pid) for pid in pids)


def test_code_errors_and_sandbox_surroundings():
    syntax = run_code("def f(:\n    pass\n")
    assert syntax.reason.startswith("error: SyntaxError")
    assert run_code("raise ValueError('bad')").reason == "error: ValueError: bad"
    assert run_code("import sys\nsys.exit(3)").reason == "error: exit code 3"
    probe = run_code(
        "import os, sys\nprint(os.getcwd())\nprint(repr(sys.stdin.read()))\n"
        "print(sorted(os.environ))\nopen('scratch.txt', 'w').write('x')\n"
    )
    assert probe.ok
    cwd, stdin, env = probe.output.splitlines()[:3]
    assert not Path(cwd).exists()  # the temporary directory is gone
    assert stdin == "''"  # stdin is closed (/dev/null)
    assert "HOME" in env and "PYTHONPATH" not in env and "VIRTUAL_ENV" not in env
    chatty = run_code("print('y' * 100_000)")
    assert chatty.ok and len(chatty.output) <= 2 * OUTPUT_CHARS


def test_must_finish_needs_the_last_line():
    assert run_code("x = 1", must_finish=True).ok
    for hack in ("import sys\nsys.exit(0)", "print(open(__file__).read())\nimport os\nos._exit(0)"):
        result = run_code(hack, must_finish=True)
        assert not result.ok and result.reason == "error: exited before the tests finished", hack
        assert run_code(hack).ok  # without must_finish a clean exit is enough
    assert run_code("assert 1 == 2", must_finish=True).reason == "failed_tests"

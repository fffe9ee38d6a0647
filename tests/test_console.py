"""What a person sees from `nanbeige run` (a subprocess, as a user runs it): a start and a finish
line per asset with its wall time, one line per check, a failure's description once and no
framework traceback, and one clear line with exit status 2 for a command that cannot run."""

from __future__ import annotations

import re
import shutil

import pytest
from conftest import REPO, Cli

from nanbeige_data.corpus.build import DOMAINS


@pytest.fixture
def console(tmp_path, store_root) -> Cli:
    """The CLI with a DAGSTER_HOME configured like the repository's (telemetry off)."""
    cli = Cli(tmp_path / "dagster_home", store_root)
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", tmp_path / "dagster_home")
    return cli


def _output(out) -> str:
    return out.stdout + out.stderr


def test_a_run_prints_start_and_finish_per_asset_and_each_check(console, small_recipe):
    recipe = small_recipe(max_bytes=20_000)
    out = console.run("run", "--recipe", str(recipe), "--select", "group:corpus")
    text = _output(out)
    assets = [f"raw_{d}" for d in DOMAINS] + ["corpus_summary"]
    started = re.findall(r"^\[ ?(\d)/5\] (\w+) \.\.\.$", out.stdout, re.M)
    assert sorted(name for _, name in started) == sorted(assets), out.stdout
    assert [int(n) for n, _ in started] == [1, 2, 3, 4, 5]
    for name in assets:
        assert re.search(rf"^{name} done in \d+\.\ds$", out.stdout, re.M), name
        assert out.stdout.index(f"] {name} ...") < out.stdout.index(f"{name} done in")
    for domain in DOMAINS:
        assert out.stdout.count(f"check raw_{domain}:corpus_schema_gate passed\n") == 1
    assert "  raw_web: committed raw_web " in out.stdout  # an asset's context.log line
    assert "BetaWarning" not in text and "PreviewWarning" not in text
    assert "Traceback" not in text and " - dagster - " not in text  # no framework log format
    assert "succeeded in" in out.stdout and "checks: 4 passed" in out.stdout


def test_a_failing_asset_and_a_failing_gate_say_what_and_where_once(
    console, files_recipe, tmp_path
):
    docs = {
        d: [{"id": f"{d}-0", "text": f"a small {d} document for the console test"}] for d in DOMAINS
    }
    doc = {"id": "twice", "text": "the same id on two lines of the books file"}
    docs["books"] = [doc, doc]
    recipe = files_recipe(docs)
    bad = tmp_path / "corpus" / "web" / "part-0.jsonl"
    bad.write_text('{"id": "w", "text": "fine"}\n{"id": "x", "text": "cut of\n')
    books = tmp_path / "corpus" / "books" / "part-0.jsonl"
    select = "key:raw_web or key:raw_books"
    out = console.run("run", "--recipe", str(recipe), "--select", select, check=False)
    text = _output(out)
    assert out.returncode == 1, text
    assert text.count(f"{bad}:2: invalid JSON") == 1, text  # the description, once
    assert re.search(rf"^raw_web FAILED: {re.escape(str(bad))}:2: invalid JSON", out.stdout, re.M)
    gate = re.search(r"^check raw_books:corpus_schema_gate FAILED: (.*)$", out.stdout, re.M)
    assert gate, out.stdout
    assert f"id 'twice' ({books}:1)" in gate.group(1) and f"({books}:2)" in gate.group(1)
    assert "Traceback" not in text and "BetaWarning" not in text and "Stack Trace" not in text
    assert "failed: raw_web" in out.stdout


def test_debug_shows_the_framework_detail(console, files_recipe, tmp_path):
    recipe = files_recipe({"web": [{"id": "w", "text": "fine"}]})
    (tmp_path / "corpus" / "web" / "part-0.jsonl").write_text("not json\n")
    args = ("run", "--recipe", str(recipe), "--select", "raw_web", "--log-level", "DEBUG")
    out = console.run(*args, check=False)
    assert out.returncode == 1
    assert "STEP_FAILURE" in out.stdout and "Stack Trace" in out.stdout  # everything, at DEBUG


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--select", "group:("), "error: invalid --select 'group:(': Invalid selection string"),
        (("--select", "group:nothing"), "error: --select 'group:nothing' matches no asset"),
        (("--recipe", "/nonexistent/r.yaml"), "error: "),
        (("--store", "FILE"), "error: cannot open the store at "),
    ],
)
def test_a_command_that_cannot_run_is_one_line_and_exit_2(console, tmp_path, args, message):
    if "FILE" in args:  # a store root that is a plain file cannot be opened
        (tmp_path / "file").write_text("x")
        args = ("--store", str(tmp_path / "file"))
    out = console.run("run", *args, check=False)
    assert out.returncode == 2, _output(out)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), out.stderr
    assert "Traceback" not in _output(out)
    if "--recipe" in args:
        assert "/nonexistent/r.yaml" in lines[0]

"""Shared fixtures: a temporary store and recipe per test, an ephemeral Dagster instance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nanbeige_data.recipe import RECIPES_DIR

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def store_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "store"
    monkeypatch.setenv("NANBEIGE_STORE", str(root))
    return root


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def files_recipe(tmp_path, monkeypatch):
    """Make a recipe whose four domains read small JSONL files; returns a writer function."""

    def make(docs_by_domain: dict[str, list[dict]], name: str = "files") -> Path:
        raw = yaml.safe_load((RECIPES_DIR / "tiny.yaml").read_text())
        for domain, rows in docs_by_domain.items():
            target = write_jsonl(tmp_path / "corpus" / domain / "part-0.jsonl", rows)
            raw["corpus"][domain] = {"source": "files", "paths": [str(target)]}
        raw["name"] = name
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        monkeypatch.setenv("NANBEIGE_RECIPE", str(path))
        return path

    return make


def prose(i: int, domain: str) -> str:
    return (
        f"Document {i} of the {domain} test corpus talks about rivers, mountains and the "
        f"history of mapping them with care; paragraph {i} continues for a while. "
    ) * 3


@pytest.fixture
def small_recipe(tmp_path, monkeypatch):
    """The tiny recipe with a smaller embedded corpus and judge sample, for whole-group runs."""

    def make(max_bytes: int = 40_000, sample: int = 8, **sections) -> Path:
        raw = yaml.safe_load((RECIPES_DIR / "tiny.yaml").read_text())
        for domain in ("web", "books", "code", "papers"):
            raw["corpus"][domain]["max_bytes"] = max_bytes
        raw["refinery"]["tagging"]["sample"] = sample
        raw["refinery"]["retrieval"]["exemplars_per_set"] = 4
        for dotted, value in sections.items():
            node = raw
            *parents, leaf = dotted.split("__")
            for part in parents:
                node = node[part]
            node[leaf] = value
        raw["name"] = "small"
        path = tmp_path / "small.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        monkeypatch.setenv("NANBEIGE_RECIPE", str(path))
        return path

    return make


class Cli:
    """`nanbeige ...` as a user runs it: a subprocess with its own DAGSTER_HOME and store."""

    def __init__(self, home: Path, store: Path):
        home.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "DAGSTER_HOME": str(home), "NANBEIGE_STORE": str(store)}
        self.argv = [sys.executable, "-m", "assets.cli"]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run(
            [*self.argv, *args], capture_output=True, text=True, env=self.env, timeout=600, cwd=REPO
        )
        if check:
            assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        return out

    def __call__(self, *args: str) -> str:
        return self.run(*args).stdout


@pytest.fixture
def cli(tmp_path, store_root) -> Cli:
    return Cli(tmp_path / "dagster_home", store_root)

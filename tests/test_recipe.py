"""Recipes: both shipped recipes validate; wrong values fail naming the field and the reason."""

from __future__ import annotations

import copy

import pytest
import yaml

from nanbeige_data.recipe import RECIPES_DIR, RecipeError, load_recipe, parse_recipe


@pytest.fixture(scope="module")
def tiny_raw() -> dict:
    return yaml.safe_load((RECIPES_DIR / "tiny.yaml").read_text())


def test_paper_recipe_has_the_papers_numbers():
    r = load_recipe("nanbeige4-3b")
    tokens = {s.name: s.tokens for s in r.curriculum.stages}
    assert r.curriculum.total_tokens == 23 * 10**12
    assert list(tokens.values()) == [0.1e12, 12.4e12, 6.5e12, 4e12]
    assert (r.curriculum.lr_peak, r.curriculum.lr_min) == (4.5e-4, 1.5e-6)
    assert [s.lr for s in r.curriculum.stages] == ["warmup", "constant", "constant", "decay"]
    assert [s.seq_len for s in r.curriculum.stages] == [32768, 32768, 32768, 65536]
    assert r.curriculum.stages[-1].rope_theta > r.curriculum.stages[0].rope_theta
    assert r.sft.cold_start_mixture == {"math": 0.5, "science": 0.3, "code": 0.2}
    assert (r.rl.pass_rate_k, r.rl.pass_rate_low, r.rl.pass_rate_high) == (16, 0.1, 0.9)
    assert (r.eval.temperature, r.eval.top_p, r.eval.k["aime"], r.eval.k["default"]) == (
        0.6,
        0.95,
        8,
        3,
    )
    kinds = [d.kind for d in r.refinery.tagging.dimensions]
    assert len(kinds) == 20 and {"content", "format"} == set(kinds)


def test_tiny_recipe_is_the_default_and_keeps_paper_proportions():
    r = load_recipe()
    assert r.name == "tiny"
    assert r.curriculum.stages[0].lr == "warmup" and r.curriculum.stages[-1].lr == "decay"


@pytest.mark.parametrize(
    ("path", "value", "field", "reason"),
    [
        (("curriculum", "lr_peak"), -1.0, "curriculum.lr_peak", "greater than 0"),
        (
            ("curriculum", "stages", 1, "mixture", "web/diverse"),
            0.9,
            "curriculum.stages.1.mixture",
            "sum to",
        ),
        (("model", "n_heads"), 3, "model", "not divisible"),
        (("rl", "pass_rate_low"), 0.95, "rl", "must be below"),
        (("corpus", "web", "source"), "s3", "corpus.web.source", "'embedded' or 'files'"),
        (("refinery", "tiers", "cutoffs"), [7, 2], "refinery.tiers.cutoffs", "cut-offs"),
        (
            ("refinery", "tiers", "high_quality_epochs"),
            1.0,
            "refinery.tiers.high_quality_epochs",
            "greater than or equal to 2",
        ),
        (("pretrain", "batch_size"), "eight", "pretrain.batch_size", "valid integer"),
        (("model", "n_layerz"), 2, "model.n_layerz", "Extra inputs"),
        (("sandbox",), "none", "sandbox.mode", "'bubblewrap' or 'limits-only'"),
        (("sandbox", "max_processes"), 0, "sandbox.max_processes", "greater than 0"),
    ],
)
def test_wrong_values_name_the_field(tiny_raw, path, value, field, reason):
    raw = copy.deepcopy(tiny_raw)
    node = raw
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    with pytest.raises(RecipeError) as err:
        parse_recipe(raw, origin="bad.yaml")
    msg = str(err.value)
    assert "bad.yaml" in msg and field in msg and reason in msg, msg


def test_missing_section_and_unknown_recipe(tiny_raw, tmp_path):
    raw = copy.deepcopy(tiny_raw)
    del raw["curriculum"]
    with pytest.raises(RecipeError, match="curriculum: Field required"):
        parse_recipe(raw)
    with pytest.raises(RecipeError, match="known recipes"):
        load_recipe("no-such-recipe")
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)


def test_section_hash_changes_only_with_its_section(tiny_raw):
    base = parse_recipe(tiny_raw)
    raw = copy.deepcopy(tiny_raw)
    raw["curriculum"]["stages"][3]["mixture"] = {"code/high": 0.5, "papers/high": 0.5}
    changed = parse_recipe(raw)
    assert changed.section_hash("curriculum") != base.section_hash("curriculum")
    for section in ("corpus", "refinery", "tokenizer", "model", "eval"):
        assert changed.section_hash(section) == base.section_hash(section)
    raw = copy.deepcopy(tiny_raw)
    raw["refinery"]["tiers"]["quantiles"] = [0.1, 0.5]
    raw["refinery"]["execution"]["workers"] = 7  # execution settings are not part of any identity
    changed = parse_recipe(raw)
    assert changed.section_hash("refinery.tiers") != base.section_hash("refinery.tiers")
    assert changed.section_hash("refinery.filters") == base.section_hash("refinery.filters")


def test_sandbox_mode_alone_and_in_the_version(tiny_raw):
    base = parse_recipe(tiny_raw)
    assert base.sandbox.mode == "bubblewrap"
    raw = copy.deepcopy(tiny_raw)
    raw["sandbox"] = "limits-only"  # the short form the README shows
    weaker = parse_recipe(raw)
    assert weaker.sandbox.mode == "limits-only" and weaker.sandbox.max_processes == 32
    # a weaker sandbox can pass a program the namespaces fail: it is part of the eval version
    assert weaker.section_hash("eval", "sandbox") != base.section_hash("eval", "sandbox")
    assert weaker.section_hash("eval") == base.section_hash("eval")

"""Curriculum: FG-WSD stages as steps, LR and bucket draws; the vanilla WSD baseline; checks."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from nanbeige_data.pretraining.curriculum import (
    Plan,
    PlanError,
    apportion,
    check_plan,
    human,
    lr_at,
    lr_factor,
    plan_curriculum,
    plan_table_markdown,
    plot_plan,
    stage_slice,
    vanilla_plan,
)
from nanbeige_data.recipe import RECIPES_DIR, CurriculumConfig, load_recipe

DOMAINS = ("web", "books", "code", "papers")


@pytest.fixture(scope="module")
def tiny():
    return load_recipe(RECIPES_DIR / "tiny.yaml")


@pytest.fixture(scope="module")
def paper():
    return load_recipe(RECIPES_DIR / "nanbeige4-3b.yaml")


@pytest.fixture(scope="module")
def tiny_plan(tiny):
    return plan_curriculum(tiny.curriculum, tiny.pretrain)


def _curriculum(recipe, **changes) -> CurriculumConfig:
    raw = recipe.curriculum.model_dump()
    raw.update(changes)
    return CurriculumConfig.model_validate(raw)


def _available(tokens: int) -> dict[str, int]:
    return {f"{d}/{t}": tokens for d in DOMAINS for t in ("diverse", "high")}


# --- tiny: steps, budgets, draws ----------------------------------------------------------


def test_tiny_steps_and_budgets(tiny, tiny_plan):
    stages = tiny_plan.stages
    assert [s.name for s in stages] == [c.name for c in tiny.curriculum.stages]
    assert [s.sequences_per_step for s in stages] == [8] * 4
    assert [s.tokens_per_step for s in stages] == [2048, 2048, 2048, 4096]  # decay at seq 512
    assert [s.steps for s in stages] == [4, 80, 42, 13]
    assert [s.start_step for s in stages] == [0, 4, 84, 126]
    assert [s.start_token for s in stages] == [0, 8192, 172032, 258048]
    assert [s.tokens for s in stages] == [c.tokens for c in tiny.curriculum.stages]
    assert tiny_plan.total_steps == 139
    assert tiny_plan.total_tokens == tiny.curriculum.total_tokens == 311296
    assert [s.rope_theta for s in stages] == [10000.0, 10000.0, 10000.0, 40000.0]
    assert check_plan(tiny_plan, tiny.curriculum) == []


def test_bucket_sequences_sum_exactly_and_follow_the_mixture(tiny_plan):
    for s in tiny_plan.stages:
        total = s.steps * s.sequences_per_step
        assert sum(s.bucket_sequences.values()) == total
        assert s.bucket_sequences.keys() == s.mixture.keys()
        for bucket, n in s.bucket_sequences.items():
            assert abs(n - s.mixture[bucket] * total) < 1
        assert s.bucket_tokens == {b: n * s.seq_len for b, n in s.bucket_sequences.items()}
    drawn = tiny_plan.bucket_drawn()
    assert sum(drawn.values()) == tiny_plan.total_tokens


def test_apportion_largest_remainder():
    assert apportion({"b": 1 / 3, "a": 1 / 3, "c": 1 / 3}, 10) == {"a": 4, "b": 3, "c": 3}
    assert apportion({"x": 0.5, "y": 0.3, "z": 0.2}, 7) == {"x": 4, "y": 2, "z": 1}
    assert apportion({"x": 1.0, "y": 0.0}, 5) == {"x": 5, "y": 0}
    with pytest.raises(PlanError):
        apportion({"x": 0.0}, 5)


def test_steps_round_half_up_and_never_zero(tiny):
    stages = tiny.curriculum.model_dump()["stages"]
    stages[0]["tokens"] = 3 * 1024  # 1.5 steps of 2048 -> 2
    stages[1]["tokens"] = 100  # under half a step -> still one step, flagged
    cur = _curriculum(tiny, stages=stages)
    plan = plan_curriculum(cur, tiny.pretrain)
    assert [s.steps for s in plan.stages[:2]] == [2, 1]
    problems = check_plan(plan, cur)
    assert any("stage stable_diverse" in p and "half a step" in p for p in problems), problems
    assert not any("stage warmup" in p for p in problems), problems


# --- learning rate -----------------------------------------------------------------------


def test_lr_at_stage_boundaries(tiny_plan):
    peak, low = tiny_plan.lr_peak, tiny_plan.lr_min
    warmup = [lr_at(tiny_plan, k) for k in range(1, 5)]
    assert warmup == pytest.approx([peak / 4, peak / 2, 3 * peak / 4, peak], rel=1e-12)
    assert warmup[0] > 0 and warmup[-1] == peak
    assert all(lr_at(tiny_plan, k) == peak for k in range(5, 127))  # both stable stages
    decay = [lr_at(tiny_plan, k) for k in range(127, 140)]
    assert decay[0] < peak and all(a > b for a, b in zip(decay, decay[1:], strict=False))
    assert decay[-1] == pytest.approx(low, rel=1e-12)
    assert lr_at(tiny_plan, tiny_plan.total_steps) == pytest.approx(low, rel=1e-12)
    for s in tiny_plan.stages:  # lr_end is the LR of the stage's last step
        assert s.lr_end == pytest.approx(peak * lr_factor(s, s.steps, tiny_plan), rel=1e-12)
    ends = [lr for s in tiny_plan.stages for lr in (s.lr_start, s.lr_end)]
    assert ends == pytest.approx([0, peak, peak, peak, peak, peak, peak, low], rel=1e-12)
    with pytest.raises(PlanError):
        lr_at(tiny_plan, 0)
    with pytest.raises(PlanError):
        lr_factor(tiny_plan.stages[0], 5, tiny_plan)


def test_decay_shapes_differ_in_the_middle_agree_at_the_ends(tiny):
    plans = {
        shape: plan_curriculum(_curriculum(tiny, decay_shape=shape), tiny.pretrain)
        for shape in ("linear", "cosine", "sqrt")
    }
    decay = plans["linear"].stages[-1]
    middle = decay.start_step + 3  # progress 3/13: sqrt < linear < cosine
    lr = {shape: lr_at(p, middle) for shape, p in plans.items()}
    assert lr["sqrt"] < lr["linear"] < lr["cosine"]
    lo, hi = tiny.curriculum.lr_min, tiny.curriculum.lr_peak
    assert lr["linear"] == pytest.approx(lo + (hi - lo) * (1 - 3 / 13), rel=1e-12)
    for p in plans.values():
        assert p.stages[-1].lr_start == lr_at(p, decay.start_step) == hi
        assert lr_at(p, p.total_steps) == pytest.approx(lo, rel=1e-12)
        assert check_plan(p) == []


def test_consecutive_decay_stages_form_one_segment(tiny):
    stages = tiny.curriculum.model_dump()["stages"]
    short = {**stages[-1], "name": "decay_short", "seq_len": 256, "rope_theta": 10000}
    plan = plan_curriculum(
        _curriculum(tiny, stages=[*stages[:-1], short, stages[-1]]), tiny.pretrain
    )
    first, last = plan.stages[-2:]
    assert first.lr_end == pytest.approx(last.lr_start, rel=1e-12)
    assert tiny.curriculum.lr_min < first.lr_end < tiny.curriculum.lr_peak  # not at lr_min
    assert lr_at(plan, plan.total_steps) == pytest.approx(tiny.curriculum.lr_min, rel=1e-12)
    assert check_plan(plan) == []


def _slices(recipe, stages=None) -> dict[str, dict]:
    cur = _curriculum(recipe, stages=stages) if stages else recipe.curriculum
    plan = plan_curriculum(cur, recipe.pretrain, bucket_tokens=_available(10**7))
    return {s.name: stage_slice(plan, s.name).to_dict() for s in plan.stages}


def test_stage_slices_change_only_for_stages_that_read_the_change(tiny):
    base = _slices(tiny)
    assert [s["name"] for s in base["warmup"]["stages"]] == ["warmup"]
    # the two constant stages form one LR segment: each slice holds both
    assert [s["name"] for s in base["stable_diverse"]["stages"]] == [
        "warmup",
        "stable_diverse",
        "stable_high_quality",
    ]
    assert (
        Plan.from_dict(base["decay_long_context"]).total_steps
        == plan_curriculum(tiny.curriculum, tiny.pretrain).total_steps
    )

    stages = tiny.curriculum.model_dump()["stages"]
    stages[-1]["mixture"] = {
        "web/high": 0.1,
        "books/high": 0.2,
        "code/high": 0.35,
        "papers/high": 0.35,
    }
    new_decay = _slices(tiny, stages)
    assert {name for name in base if base[name] != new_decay[name]} == {"decay_long_context"}
    # the second constant stage's steps set the first one's LR: both change, and what follows
    stages = tiny.curriculum.model_dump()["stages"]
    stages[2]["tokens"] = int(stages[2]["tokens"] * 2)
    longer = _slices(tiny, stages)
    assert {name for name in base if base[name] != longer[name]} == {
        "stable_diverse",
        "stable_high_quality",
        "decay_long_context",
    }
    with pytest.raises(PlanError, match="not in the plan"):
        stage_slice(plan_curriculum(tiny.curriculum, tiny.pretrain), "cooldown")


def test_stage_order_must_be_warmup_constant_decay(tiny):
    stages = tiny.curriculum.model_dump()["stages"]
    stages[1]["lr"] = "decay"  # warmup, decay, constant, decay
    with pytest.raises(PlanError, match="warmup"):
        plan_curriculum(_curriculum(tiny, stages=stages), tiny.pretrain)


# --- paper scale -------------------------------------------------------------------------


def test_paper_plan_without_data(paper):
    plan = plan_curriculum(paper.curriculum, paper.pretrain)
    stages = plan.stages
    assert [s.sequences_per_step for s in stages] == [512] * 4
    assert [s.tokens_per_step for s in stages] == [512 * 32768] * 3 + [512 * 65536]
    assert [s.steps for s in stages] == [5960, 739098, 387430, 119209]
    assert plan.total_steps == 1_251_697
    assert abs(plan.total_tokens - 23e12) <= sum(s.tokens_per_step for s in stages) / 2
    shares = [s.tokens / plan.total_tokens for s in stages]
    # each stage is within half a step (<= 16.8M tokens) of its share of 23T: < 1e-6 of the run
    assert shares == pytest.approx([0.1 / 23, 12.4 / 23, 6.5 / 23, 4 / 23], abs=1e-6)
    assert stages[-1].rope_theta == 1e7 > stages[0].rope_theta == 1e6  # ABF in decay
    assert plan.bucket_available is None and plan.bucket_epochs() is None
    assert check_plan(plan, paper.curriculum) == []
    drawn, need = plan.bucket_drawn(), plan.required_unique_tokens()
    assert need["web/high"] == math.ceil(drawn["web/high"] / 2)  # high tier: 2 epochs
    assert need["web/diverse"] == drawn["web/diverse"]
    assert need["synthetic/qa"] == drawn["synthetic/qa"] > 0
    assert "required unique" in plan_table_markdown(plan)


def test_paper_plan_names_the_synthetic_buckets_missing(paper):
    plan = plan_curriculum(paper.curriculum, paper.pretrain, bucket_tokens=_available(10**13))
    problems = check_plan(plan, paper.curriculum)
    assert sorted(problems) == [
        "stage decay_long_context: bucket synthetic/long_cot is not in the data",
        "stage decay_long_context: bucket synthetic/qa is not in the data",
    ]
    assert "**missing**" in plan_table_markdown(plan)


# --- data checks -------------------------------------------------------------------------


def test_check_plan_flags_over_drawn_and_missing_buckets(tiny):
    available = _available(400_000)
    available["web/diverse"] = 50_000  # drawn 68,864 tokens: 1.38 epochs, limit 1
    available["code/high"] = 20_000  # drawn 48,128 tokens: 2.41 epochs, limit 2
    del available["books/high"]
    plan = plan_curriculum(tiny.curriculum, tiny.pretrain, bucket_tokens=available)
    problems = check_plan(plan, tiny.curriculum)
    assert sorted(problems) == [
        "bucket code/high is drawn for 2.41 epochs, more than its limit 2",
        "bucket web/diverse is drawn for 1.38 epochs, more than its limit 1",
        "stage decay_long_context: bucket books/high is not in the data",
        "stage stable_high_quality: bucket books/high is not in the data",
    ]
    epochs = plan.bucket_epochs()
    assert epochs["books/high"] == math.inf and epochs["web/high"] < 1
    table = plan_table_markdown(plan)
    assert "| web/diverse | 50k | 68.86k | 1.38 **over** | 1 |" in table
    relaxed = plan_curriculum(
        tiny.curriculum, tiny.pretrain, bucket_tokens=available, high_quality_epochs=3.0
    )
    assert not any("code/high" in p for p in check_plan(relaxed))


def test_check_plan_flags_broken_stages(tiny_plan):
    stages = list(tiny_plan.stages)
    stages[2] = dataclasses.replace(stages[2], lr_start=1e-4)
    s = stages[3]
    stages[3] = dataclasses.replace(s, bucket_sequences={**s.bucket_sequences, "web/high": 0})
    broken = dataclasses.replace(tiny_plan, stages=tuple(stages))
    problems = check_plan(broken)
    assert any(p.startswith("LR jumps") and "stable_high_quality" in p for p in problems)
    assert any("decay_long_context: bucket_sequences sum to" in p for p in problems)


# --- vanilla WSD -------------------------------------------------------------------------


@pytest.mark.parametrize("recipe_name", ["tiny", "paper"])
def test_vanilla_plan_same_totals_one_mixture_same_lr(recipe_name, request):
    recipe = request.getfixturevalue(recipe_name)
    plan = plan_curriculum(recipe.curriculum, recipe.pretrain)
    vanilla = vanilla_plan(plan)
    assert vanilla.name == "vanilla_wsd" and plan.name == "fgwsd"
    keep = ("name", "lr_kind", "seq_len", "rope_theta", "steps", "start_step", "tokens")
    for a, b in zip(plan.stages, vanilla.stages, strict=True):
        assert [getattr(a, k) for k in keep] == [getattr(b, k) for k in keep]
        assert (a.lr_start, a.lr_end) == (b.lr_start, b.lr_end)
        assert b.mixture == vanilla.stages[0].mixture
    for step in (1, plan.stages[1].start_step + 1, plan.total_steps // 2, plan.total_steps):
        assert lr_at(vanilla, step) == lr_at(plan, step)
    mixture = vanilla.stages[0].mixture
    assert sum(mixture.values()) == pytest.approx(1, abs=1e-12)
    for bucket, w in mixture.items():  # the token-weighted average of the stage mixtures
        share = sum(s.tokens * s.mixture.get(bucket, 0) for s in plan.stages) / plan.total_tokens
        assert w == pytest.approx(share, rel=1e-12)
    # Both plans' exact (fractional) per-bucket draws add up to the same tokens; each stage
    # rounds a bucket's sequences by less than one in either plan, so the drawn totals differ by
    # less than two sequences per stage: 2 * sum(seq_len).
    tolerance = 2 * sum(s.seq_len for s in plan.stages)
    fg, flat = plan.bucket_drawn(), vanilla.bucket_drawn()
    assert fg.keys() == flat.keys()
    for bucket in fg:
        assert abs(fg[bucket] - flat[bucket]) < tolerance, bucket
    assert check_plan(vanilla, recipe.curriculum) == []


# --- JSON, table, plot -------------------------------------------------------------------


@pytest.mark.parametrize("with_data", [False, True])
def test_plan_round_trips_through_json(tiny, with_data):
    available = _available(300_000) if with_data else None
    plan = plan_curriculum(tiny.curriculum, tiny.pretrain, bucket_tokens=available)
    for p in (plan, vanilla_plan(plan)):
        text = json.dumps(p.to_dict())
        back = Plan.from_dict(json.loads(text))
        assert back == p
        assert json.dumps(back.to_dict()) == text
    tampered = {**json.loads(json.dumps(plan.to_dict())), "total_steps": 1}
    with pytest.raises(PlanError, match="total_steps"):
        Plan.from_dict(tampered)
    with pytest.raises(PlanError):
        Plan.from_dict({"name": "fgwsd"})


def test_table_and_plot(tmp_path, tiny, tiny_plan):
    plan = plan_curriculum(tiny.curriculum, tiny.pretrain, bucket_tokens=_available(300_000))
    table = plan_table_markdown(plan)
    for s in plan.stages:
        assert f"| {s.name} |" in table
    assert "| decay_long_context | 53.25k | 13 | 512 | 40000 | 3e-3 -> 1e-5 |" in table
    assert "| web/high | 300k | 57.34k |" in table
    out = tmp_path / "plan.png"
    image = plot_plan(plan, out, compare=vanilla_plan(plan))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert image.startswith("![curriculum](data:image/png;base64,")


def test_human_numbers():
    assert [human(x) for x in (12.4e12, 163840, 6.5e9, 2.5e6, 512, 0)] == [
        "12.4T",
        "163.8k",
        "6.5B",
        "2.5M",
        "512",
        "0",
    ]


def test_cli_prints_the_paper_scale_plan_without_data(tmp_path, capsys):
    from assets.cli import main

    assert main(["plan", "nanbeige4-3b", "--json", str(tmp_path / "plan.json")]) == 0
    out = capsys.readouterr().out
    assert "stable_high_quality" in out and "23T tokens" in out
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert [s["steps"] for s in plan["stages"]] == [5960, 739098, 387430, 119209]


def test_plan_versions_write_their_files_and_pass_their_gates(tiny, tmp_path):
    from nanbeige_data.pretraining.curriculum import (
        PLAN_FILE,
        STAGE_PLAN_FILE,
        VANILLA_FILE,
        build_plans,
        check_plans,
        check_stage_plan,
        write_stage_plan,
    )

    report = build_plans(
        tiny.curriculum,
        tiny.pretrain,
        _available(300_000),
        tmp_path,
        high_quality_epochs=tiny.refinery.tiers.high_quality_epochs,
    )
    plan = Plan.load(tmp_path / PLAN_FILE)
    assert report.counts == {"steps": plan.total_steps, "tokens": plan.total_tokens}
    assert Plan.load(tmp_path / VANILLA_FILE).name == "vanilla_wsd"
    assert set(report.markdown) == {"plan", "schedule", "vanilla_wsd"}
    assert check_plans(tmp_path, tiny.curriculum) == (
        True,
        {"problems": {PLAN_FILE: [], VANILLA_FILE: []}},
    )
    stages = [s.model_dump() for s in tiny.curriculum.stages]
    stages[0]["tokens"] *= 10  # a recipe the stored plans were not made from
    ok, detail = check_plans(tmp_path, _curriculum(tiny, stages=stages))
    assert not ok and all("the recipe asks" in p[0] for p in detail["problems"].values())

    out = tmp_path / "slice"
    out.mkdir()
    first = plan.stages[0]
    report = write_stage_plan(tmp_path, first.name, out)
    assert report.counts == {"steps": first.steps, "tokens": first.tokens, "stages": 1}
    assert check_stage_plan(out, first.name) == (True, {"problems": []})
    ok, detail = check_stage_plan(out, "decay_long_context")
    assert not ok and detail["problems"] == ["stage 'decay_long_context' is not in its slice"]
    assert (out / STAGE_PLAN_FILE).exists()

"""Generation engines on a real model: the packaged SmolLM2-135M-Instruct, in fp32 on CPU."""

from __future__ import annotations

import pytest

from nanbeige_train.generation import SamplingParams, TorchEngine, load_engine

PROMPTS = ["What is 7 + 5? Answer with a number.", "Name one colour of the rainbow."]


@pytest.fixture(scope="module")
def engine():
    return TorchEngine.load("smollm2-135m-instruct", dtype="float32", chat=True, batch_size=4)


def _ids(out):
    return [s.token_ids for row in out for s in row]


def test_same_seed_same_samples_other_seed_other_samples(engine):
    params = SamplingParams(n=3, temperature=1.0, top_p=0.95, max_tokens=16, seed=7)
    first = engine.generate(PROMPTS, params)
    assert [len(row) for row in first] == [3, 3]
    assert _ids(first) == _ids(engine.generate(PROMPTS, params))
    other = engine.generate(PROMPTS, SamplingParams(**{**params.as_dict(), "seed": 8}))
    assert _ids(other) != _ids(first)
    assert len({tuple(s.token_ids) for s in first[1]}) > 1  # samples of one prompt differ


def test_samples_do_not_depend_on_the_rest_of_the_batch(engine):
    params = SamplingParams(n=2, temperature=0.8, max_tokens=12, seed=3)
    together = engine.generate(PROMPTS, params)
    one_by_one = TorchEngine(engine.model, engine.tokenizer, chat=True, batch_size=1)
    assert _ids(one_by_one.generate(PROMPTS, params)) == _ids(together)  # padding, other rows


def test_kv_cache_gives_the_tokens_of_full_recomputation(engine):
    params = SamplingParams(n=1, temperature=0, max_tokens=20)
    cached = engine.generate(PROMPTS, params)
    recomputed = TorchEngine(engine.model, engine.tokenizer, chat=True, use_cache=False)
    assert _ids(cached) == _ids(recomputed.generate(PROMPTS, params))
    assert "12" in cached[0][0].text


def test_logprobs_agree_with_scoring_the_same_tokens(engine):
    out = engine.generate(PROMPTS[:1], SamplingParams(n=1, temperature=0.7, max_tokens=10))
    sample = out[0][0]
    scored = engine.score_ids(engine._encode(PROMPTS[0]), sample.token_ids)
    assert len(sample.logprobs) == len(scored) == len(sample.token_ids)
    assert sample.logprobs == pytest.approx(scored, abs=2e-3)
    assert all(lp <= 0 for lp in sample.logprobs)


def test_stop_strings_end_the_sample(engine):
    params = SamplingParams(n=1, temperature=0, max_tokens=40, stop=(" =",))
    sample = engine.generate(PROMPTS[:1], params)[0][0]
    assert sample.finish_reason == "stop" and sample.text == "7 + 5 ="
    longer = engine.generate(PROMPTS[:1], SamplingParams(n=1, temperature=0, max_tokens=3))
    assert longer[0][0].finish_reason == "length" and len(longer[0][0].token_ids) == 3


def test_score_prefers_the_right_continuation(engine):
    right, wrong = engine.score(["The capital of France is"] * 2, [" Paris", " Banana"])
    assert sum(right) > sum(wrong)


def test_bad_parameters_and_backends_are_named():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="unknown generation backend"):
        load_engine("x", backend="tgi")


def test_vllm_engine_has_the_same_interface():
    pytest.importorskip("vllm")
    from nanbeige_train.generation import VLLMEngine

    engine = VLLMEngine("HuggingFaceTB/SmolLM2-135M-Instruct")
    out = engine.generate(PROMPTS, SamplingParams(n=2, max_tokens=8, seed=1))
    assert [len(r) for r in out] == [2, 2] and out[0][0].logprobs


def test_progress_hook_sees_every_step_and_the_end(engine):
    calls: list[tuple[int, int]] = []
    hooked = TorchEngine(engine.model, engine.tokenizer, chat=True, batch_size=2)
    hooked.progress = lambda rows, tokens: calls.append((rows, tokens))
    out = hooked.generate(PROMPTS, SamplingParams(n=2, temperature=0, max_tokens=6))
    total = sum(len(s.token_ids) for row in out for s in row)
    assert calls[-1] == (4, total)  # 2 prompts x 2 samples, all tokens
    assert len(calls) > 2 and calls == sorted(calls)  # per step, never going back
    assert (2, sum(len(s.token_ids) for s in out[0])) in calls  # the first batch's end

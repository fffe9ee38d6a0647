"""Generation engines on a real model: the packaged SmolLM2-135M-Instruct, in fp32 on CPU.

The continuous batch is held to what a row-at-a-time run gives: the same samples (same seeds)
whatever the batch size, token budget or refills, greedy tokens equal to full recomputation,
log-probabilities equal to re-scoring, stop strings found where a full decode finds them."""

from __future__ import annotations

from collections import deque
from dataclasses import replace

import pytest

from nanbeige_train.generation import SamplingParams, TorchEngine, load_engine
from nanbeige_train.generation.torch_engine import StopWatch

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


# --------------------------------------------------------------------------- continuous batch

MIXED = [*PROMPTS, "Write one word that rhymes with cat.", "Count from one to five in words."]


def _engine(engine, **kw) -> TorchEngine:
    return TorchEngine(engine.model, engine.tokenizer, chat=True, **kw)


def _continuous_steps(durations: list[int], slots: int) -> int:
    """Sampling steps of a batch that refills a finished row's slot at the next step."""
    queue, live, steps = deque(durations), [], 0
    while queue or live:
        while queue and len(live) < slots:
            live.append(queue.popleft())
        steps += 1
        live = [d - 1 for d in live if d > 1]
    return steps


def _static_steps(durations: list[int], slots: int) -> int:
    return sum(max(durations[i : i + slots]) for i in range(0, len(durations), slots))


def test_finished_rows_are_refilled_at_once_and_samples_keep_their_order(engine):
    params = SamplingParams(n=2, temperature=0.9, top_p=0.9, max_tokens=10, stop=(".",), seed=5)
    one = _engine(engine, batch_size=1).generate(MIXED, params)
    three = _engine(engine, batch_size=3)
    out = three.generate(MIXED, params)
    assert _ids(out) == _ids(one)  # order, count and tokens of a row-at-a-time run
    assert [len(row) for row in out] == [2] * len(MIXED)
    # a row is live for its tokens plus the EOS it sampled, if any
    durations = [len(s.token_ids) + (s.finish_reason == "eos") for row in out for s in row]
    assert len(set(durations)) > 1  # rows end at different steps: refilling matters
    assert three.stats["steps"] == _continuous_steps(durations, 3)
    assert three.stats["steps"] < _static_steps(durations, 3)
    assert three.stats["row_steps"] == sum(durations) and three.stats["peak_rows"] == 3


def test_token_budget_bounds_the_live_rows_and_not_the_samples(engine):
    params = SamplingParams(n=2, temperature=1.0, max_tokens=6, seed=11)
    longest = max(len(engine._encode(p)) for p in MIXED[:3]) + params.max_tokens
    tight = _engine(engine, batch_size=64, max_batch_tokens=2 * longest)
    wide = _engine(engine, batch_size=64)
    together = wide.generate(MIXED[:3], params)
    assert _ids(tight.generate(MIXED[:3], params)) == _ids(together)
    assert tight.stats["peak_rows"] == 2 and wide.stats["peak_rows"] == 2 * 3
    alone = _engine(engine, max_batch_tokens=1)  # a row larger than the budget runs alone
    assert _ids(alone.generate(MIXED[:1], params)) == _ids(together[:1])
    assert alone.stats["peak_rows"] == 1


def test_greedy_cache_with_refills_matches_recomputation(engine):
    params = SamplingParams(n=2, temperature=0, max_tokens=8, stop=(",",))
    cached = _engine(engine, batch_size=3).generate(MIXED[1:], params)
    recomputed = _engine(engine, batch_size=3, use_cache=False).generate(MIXED[1:], params)
    assert _ids(cached) == _ids(recomputed)
    assert [s.finish_reason for r in cached for s in r] == [
        s.finish_reason for r in recomputed for s in r
    ]


def test_logprobs_of_refilled_rows_agree_with_scoring(engine):
    params = SamplingParams(n=2, temperature=0.8, top_p=0.9, max_tokens=6, seed=2)
    out = _engine(engine, batch_size=3).generate(MIXED[1:], params)
    for prompt, row in zip(MIXED[1:], out, strict=True):
        for sample in row:
            scored = engine.score_ids(engine._encode(prompt), sample.token_ids)
            assert sample.logprobs == pytest.approx(scored, abs=2e-3)


def test_stop_watch_finds_stops_where_a_full_decode_does(engine):
    tok = engine.tokenizer
    text = "Les élèves ont dit: « naïve » 🙂 puis 12 + 30 = 42, voilà.\nFin 🙂🙂 done"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pieces = [tok.decode([i]) for i in ids]
    assert any("\ufffd" in p for p in pieces)  # some character is split over tokens
    for stop in ("🙂", "= 42", "\nFin", "lèves ont", "à.", "never there"):
        watch = StopWatch(tok, (stop,))
        found = next((k for k, i in enumerate(ids) if watch.push(i)), None)
        full = next((k for k in range(len(ids)) if stop in tok.decode(ids[: k + 1])), None)
        assert found == full, stop
    assert watch.text == tok.decode(ids, skip_special_tokens=True)


def test_a_stop_string_across_tokens_ends_the_sample_at_its_last_token(engine):
    greedy = SamplingParams(n=1, temperature=0, max_tokens=12)
    free = engine.generate(PROMPTS[:1], greedy)[0][0]
    tok = engine.tokenizer
    # a stop string made of the end of one token and the start of the next
    k = next(k for k in range(1, len(free.token_ids)) if len(tok.decode(free.token_ids[k])) > 1)
    head, nxt = tok.decode(free.token_ids[:k]), tok.decode(free.token_ids[k])
    stop = head[-1] + nxt[:-1] if len(nxt) > 1 else head[-1] + nxt
    stopped = engine.generate(PROMPTS[:1], replace(greedy, stop=(stop,)))[0][0]
    assert stopped.finish_reason == "stop" and stopped.text.endswith(stop)
    assert stopped.token_ids == free.token_ids[: k + 1]

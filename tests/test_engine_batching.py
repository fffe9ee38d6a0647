"""The torch engine's batching parts on hand-made tensors: the slot cache (writes at each row's
own length, compaction by moving rows from the top), prefill chunking, and sampling that depends
only on a row's own logits and generator."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from nanbeige_data.models import SamplingParams  # noqa: E402
from nanbeige_train.generation import torch_engine as te  # noqa: E402

LAYERS, HEADS, DIM = 2, 3, 4


def _prompt_kv(value: float, length: int):
    """[layers, 2, heads, length, dim] filled with ``value`` (keys) and ``-value`` (values)."""
    kv = torch.full((LAYERS, 2, HEADS, length, DIM), float(value))
    kv[:, 1] *= -1
    return kv


def _cache(lengths: list[int]) -> te.SlotCache:
    cache = te.SlotCache()
    cache.reserve(len(lengths), max(lengths) + 2, _prompt_kv(0, 1)[:, :, None])
    for slot, n in enumerate(lengths):
        cache.append(_prompt_kv(slot + 1, n))
    return cache


def test_a_decode_step_writes_each_row_at_its_own_length():
    cache = _cache([3, 1, 2])
    positions, width = cache.begin_step("cpu")
    assert positions.tolist() == [3, 1, 2] and width == 4
    new = torch.arange(3, dtype=torch.float32)[:, None, None, None].expand(3, HEADS, 1, DIM)
    for layer in range(LAYERS):
        keys, values = cache.update(100 + new, -100 - new, layer)
        assert keys.shape == (3, HEADS, 4, DIM)
        assert [float(keys[r, 0, p, 0]) for r, p in enumerate([3, 1, 2])] == [100, 101, 102]
        assert float(keys[0, 0, 0, 0]) == 1 and float(values[2, 0, 1, 0]) == -3  # prompts kept
    cache.end_step()
    assert cache.lengths == [4, 2, 3]


def test_compaction_moves_rows_from_the_top_into_freed_slots():
    cache = _cache([2, 3, 1, 4, 2])
    order = cache.compact([0, 3, 4])  # slots 1 and 2 finished
    assert order == [0, 3, 4]  # slot 1 now holds old slot 3's row, slot 2 old slot 4's
    assert cache.lengths == [2, 4, 2]
    assert float(cache.buf[0, 0, 1, 0, 3, 0]) == 4 and float(cache.buf[1, 1, 2, 0, 1, 0]) == -5
    assert cache.compact([0, 1, 2]) == [0, 1, 2]  # nothing finished: nothing moves


def test_the_cache_grows_and_keeps_what_it_holds():
    cache = _cache([2])
    cache.reserve(3, 200, _prompt_kv(0, 1)[:, :, None])
    assert cache.buf.shape[2] == 3 and cache.capacity == 256  # lengths in steps of 64
    assert float(cache.buf[1, 1, 0, 2, 1, 3]) == -1 and cache.lengths == [2]


def test_prefill_chunks_stay_within_the_padded_token_cap():
    lengths = [5000, 3000, 10, 9000, 100, 100]
    chunks = te._chunks(list(range(6)), lengths)
    assert sum(chunks, []) == list(range(6))
    for chunk in chunks:
        widest = max(lengths[i] for i in chunk)
        assert len(chunk) == 1 or len(chunk) * widest <= te.PREFILL_TOKENS


def test_a_rows_token_depends_on_its_own_logits_and_generator_only():
    logits = torch.randn(5, 300, generator=torch.Generator().manual_seed(0)) * 3
    params = SamplingParams(temperature=0.7, top_p=0.9)

    def gens(seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    together = te.sample_tokens(logits, params, gens(range(5))).tolist()
    alone = [te.sample_tokens(logits[r : r + 1], params, gens([r])).item() for r in range(5)]
    assert together == alone
    assert te.sample_tokens(logits, SamplingParams(temperature=0), []).tolist() == (
        logits.argmax(-1).tolist()
    )


def test_sampling_keeps_to_the_nucleus_and_follows_its_probabilities():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    params = SamplingParams(temperature=1.0, top_p=0.75)
    g = torch.Generator().manual_seed(1)
    draws = [te.sample_tokens(logits, params, [g]).item() for _ in range(2000)]
    assert set(draws) == {0, 1}  # 0.5 + 0.3 pass 0.75: tokens 2 and 3 are cut
    assert draws.count(0) / len(draws) == pytest.approx(0.5 / 0.8, abs=0.04)
    full = SamplingParams(temperature=1.0, top_p=1.0)
    draws = [te.sample_tokens(logits, full, [g]).item() for _ in range(4000)]
    assert draws.count(3) / len(draws) == pytest.approx(0.05, abs=0.015)

"""The torch engine: sampling and scoring with a KV cache on any HF Llama-architecture causal LM.

It runs our ``base_model`` export, a model directory, or the packaged SmolLM2-135M-Instruct GGUF
(loaded by :func:`nanbeige_data.models.load_causal_lm`) on CPU or GPU. Decoding is continuous
batching: every (prompt, sample) row waits in one queue, and as soon as a row finishes (EOS, a
stop string, ``max_tokens``) its slot goes to the next row of the queue, so a step always runs
as many rows as the limits allow. The limits are ``batch_size`` rows and ``max_batch_tokens``
KV positions (rows x the longest row's prompt + ``max_tokens``; by default a share of the free
memory, see :func:`default_token_budget`).

The KV cache is our own (:class:`SlotCache`): one tensor per call holding every layer's keys
and values per slot, each row with its own length, handed to the HF model as its cache together
with a 4D mask, so any model whose attention goes through the HF cache interface runs unchanged.
A prompt is prefilled once for its n samples (its KV copied into n slots); a finished row's slot
is filled by the last live row (one copy), so live rows stay in slots 0..rows-1. Stop strings are
watched incrementally (:class:`StopWatch`): each new token decodes a window of a few tokens and
only the text that can end a stop string is searched. ``use_cache=False`` recomputes every
sequence at every step (the numerical reference the tests hold the cache to).

Each (prompt, sample) row draws from its own ``torch.Generator`` seeded by (seed, prompt,
sample), one uniform per token (inverse-CDF sampling), so the same seed gives the same samples
whatever else is in the batch, up to float rounding across batch shapes. Log-probabilities are
the model's own (temperature 1, before top-p), as vLLM reports them.

Trade-off: the cache is padded along the sequence to the longest row admitted in the call
(simple contiguous tensors, no paging), so one long prompt among short ones costs its length in
every slot, and the token budget counts that padding.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nanbeige_data.models import Sample, SamplingParams

NUCLEUS_CANDIDATES = 256  # top-p looks among this many tokens before sorting the vocabulary
KV_MEMORY_SHARE = 0.25  # default token budget: this share of free RAM (CPU) or GPU memory
PREFILL_TOKENS = 8192  # at most this many padded prompt tokens in one prefill forward
LENGTH_STEP = 64  # the KV cache's length is rounded up to a multiple of this
# progress(rows finished, tokens generated) within the current generate() call, once per step
Progress = Callable[[int, int], None]


def row_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{prompt_index}:{sample_index}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big") & ((1 << 63) - 1)


def _nucleus(probs: Any, top_p: float) -> tuple[Any, Any]:
    """(kept probabilities, their token ids), most likely first, of the top-p nucleus of
    ``probs`` (the top token always stays; the rest of each row is zero).

    The nucleus is looked for among the ``NUCLEUS_CANDIDATES`` most likely tokens first (a
    ``topk``); only when they hold less than ``top_p`` of the mass is the whole vocabulary sorted.
    Either way the kept set is the one a full sort gives: a token past the candidates has at
    least their mass before it, so it is cut."""
    top, order = probs.topk(min(NUCLEUS_CANDIDATES, probs.shape[-1]), dim=-1)
    cumulative = top.cumsum(-1)
    if not bool((cumulative[:, -1] >= top_p).all()):  # the nucleus may reach past them
        top, order = probs.sort(dim=-1, descending=True)
        cumulative = top.cumsum(-1)
    return top * (cumulative - top < top_p), order


def sample_tokens(logits: Any, params: SamplingParams, generators: Sequence[Any]) -> Any:
    """One token id per row of ``logits``: argmax at temperature 0, else one uniform from each
    row's own generator through the inverse CDF of its (tempered, top-p) distribution."""
    import torch

    if params.temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / params.temperature, dim=-1)
    kept, order = _nucleus(probs, params.top_p) if params.top_p < 1.0 else (probs, None)
    cdf = kept.cumsum(-1)
    uniform = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generators])
    target = (uniform.to(cdf.device) * cdf[:, -1].double()).to(cdf.dtype)
    pick = torch.searchsorted(cdf, target[:, None])[:, 0].clamp(max=cdf.shape[-1] - 1)
    return pick if order is None else order.gather(1, pick[:, None])[:, 0]


def default_token_budget(model: Any) -> int:
    """KV positions that fit in ``KV_MEMORY_SHARE`` of the free memory of the model's device
    (``MemAvailable`` on CPU, free GPU memory on CUDA), at this model's bytes per position."""
    import torch

    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else None
    cfg = cfg or model.config
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    param = next(model.parameters())
    per_token = 2 * cfg.num_hidden_layers * kv_heads * head_dim * param.element_size()
    if param.device.type == "cuda":
        free = torch.cuda.mem_get_info(param.device)[0]
    else:
        free = _available_ram()
    return max(1, int(KV_MEMORY_SHARE * free) // per_token)


def _available_ram() -> int:
    try:
        for line in open("/proc/meminfo"):  # noqa: SIM115 -- a few lines, closed at exit
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 8 << 30


# --------------------------------------------------------------------------- state


class StopWatch:
    """One row's text, decoded incrementally, watched for stop strings.

    Each token decodes only the tokens since the last complete character (``prefix``..end against
    ``prefix``..``read``, as vLLM's detokenizer does), so a byte-level character split over
    tokens is waited for, not searched half-made; only the last ``len(new) + longest - 1``
    characters can hold a stop string that the new text completes, and only they are searched."""

    def __init__(self, tokenizer: Any, stops: Sequence[str]):
        self.tokenizer, self.stops = tokenizer, tuple(stops)
        self.longest = max(map(len, self.stops))
        self.ids: list[int] = []
        self.prefix = self.read = 0
        self.text = ""

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token: int) -> bool:
        """Add ``token``; True once a stop string has appeared."""
        self.ids.append(token)
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return False  # nothing new yet, or a character still incomplete
        new = after[len(before) :]
        self.prefix, self.read = self.read, len(self.ids)
        self.text += new
        window = self.text[-(len(new) + self.longest - 1) :]
        return any(stop in window for stop in self.stops)


@dataclass
class _Row:
    """One (prompt, sample) row of a generate() call."""

    prompt: int
    sample: int
    prompt_ids: list[int]
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish: str = ""
    generator: Any = None
    stops: StopWatch | None = None


class _Recorder:
    """A cache for one prefill forward: keeps each layer's keys and values as computed."""

    def __init__(self) -> None:
        self.layers: dict[int, tuple[Any, Any]] = {}

    def update(self, key: Any, value: Any, layer_idx: int, *_: Any, **__: Any):
        self.layers[layer_idx] = (key, value)
        return key, value

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.layers[layer_idx][0].shape[-2] if self.layers else 0

    def stacked(self) -> Any:
        """[layers, 2, batch, kv heads, length, head dim]."""
        import torch

        return torch.stack([torch.stack(self.layers[i]) for i in range(len(self.layers))])


class SlotCache:
    """Keys and values of every layer in one tensor [layers, 2, slots, kv heads, length, head
    dim]; slot ``s`` holds one row, ``lengths[s]`` positions of it. The HF model calls
    :meth:`update` once per layer in a decode step (the duck type of ``transformers.Cache``):
    it writes each row's new key and value at that row's own length and returns every live
    row's keys and values up to the longest (the 4D mask hides the rest)."""

    def __init__(self) -> None:
        self.buf: Any = None
        self.lengths: list[int] = []
        self._step: tuple[Any, Any, int] | None = None

    @property
    def capacity(self) -> int:
        return 0 if self.buf is None else self.buf.shape[4]

    def reserve(self, slots: int, length: int, like: Any) -> None:
        """Room for ``slots`` slots of ``length`` positions (``like``: a [layers, 2, rows, kv
        heads, n, head dim] tensor of the model's keys and values)."""
        import torch

        length = -(-length // LENGTH_STEP) * LENGTH_STEP
        old = self.buf
        have = (0, 0) if old is None else (old.shape[2], old.shape[4])
        if slots <= have[0] and length <= have[1]:
            return
        layers, two, _, heads, _, dim = like.shape
        shape = (layers, two, max(slots, have[0]), heads, max(length, have[1]), dim)
        self.buf = torch.zeros(shape, dtype=like.dtype, device=like.device)
        if old is not None:
            self.buf[:, :, : have[0], :, : have[1]] = old

    def append(self, kv: Any) -> None:
        """The next free slot holds a prompt's ``kv`` [layers, 2, heads, n, dim]."""
        self.buf[:, :, len(self.lengths), :, : kv.shape[-2]] = kv
        self.lengths.append(kv.shape[-2])

    def compact(self, keep: Sequence[int]) -> list[int]:
        """Keep the slots ``keep`` (ascending) in slots 0..len(keep)-1, filling each freed slot
        below that with a kept row from above it (one copy each); returns, per new slot, the old
        slot whose row it now holds."""
        n, kept = len(keep), set(keep)
        order = list(range(n))
        holes = [s for s in range(n) if s not in kept]
        for hole, src in zip(holes, [s for s in keep if s >= n], strict=True):
            length = self.lengths[src]
            self.buf[:, :, hole, :, :length] = self.buf[:, :, src, :, :length]
            self.lengths[hole], order[hole] = length, src
        del self.lengths[n:]
        return order

    def begin_step(self, device: Any) -> tuple[Any, int]:
        """Positions [rows] of the next token of each live row and the width to attend over."""
        import torch

        positions = torch.tensor(self.lengths, device=device)
        width = max(self.lengths) + 1
        self._step = (torch.arange(len(self.lengths), device=device), positions, width)
        return positions, width

    def end_step(self) -> None:
        self.lengths = [n + 1 for n in self.lengths]
        self._step = None

    def update(self, key: Any, value: Any, layer_idx: int, *_: Any, **__: Any):
        rows, positions, width = self._step
        keys, values = self.buf[layer_idx, 0], self.buf[layer_idx, 1]
        keys[rows, :, positions] = key[:, :, -1]
        values[rows, :, positions] = value[:, :, -1]
        n = len(self.lengths)
        return keys[:n, :, :width], values[:n, :, :width]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return max(self.lengths, default=0)


def _additive(allowed: Any, dtype: Any) -> Any:
    """A boolean [rows, 1, q, k] mask as the additive float mask HF attention takes."""
    import torch

    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)


# --------------------------------------------------------------------------- engine


@dataclass
class TorchEngine:
    """Sampling with a KV cache and continuous batching on any HF Llama-architecture causal LM."""

    model: Any
    tokenizer: Any
    batch_size: int = 64  # at most this many rows decoded together
    use_cache: bool = True
    chat: bool = False  # wrap prompts in the tokenizer's chat template
    dtype: str = "float32"  # the dtype the model runs in (resolved, for reports)
    progress: Progress | None = None  # called after every decode step (see Progress)
    # running totals: tokens, seconds, sampling steps, row-steps (live rows summed over steps)
    # and the most rows live at once
    stats: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(
            ("tokens", "seconds", "steps", "row_steps", "peak_rows"), 0
        )
    )
    # KV positions held at once (slots x longest row); None: default_token_budget(model)
    max_batch_tokens: int | None = None

    @classmethod
    def load(
        cls, spec: str, *, dtype: str = "auto", device: str = "auto", **kw: Any
    ) -> TorchEngine:
        """A model directory (e.g. ``base_model``), a ``.gguf`` file, or the packaged SmolLM2;
        ``dtype`` "auto" is resolved by :func:`nanbeige_data.models.resolve_dtype`, ``device``
        "auto" is CUDA where there is one, else the CPU."""
        import torch

        from nanbeige_data.models import load_causal_lm, resolve_dtype

        resolved = resolve_dtype(dtype)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        # a model shared within the process stays where it is: a GPU engine gets its own copy
        model, tokenizer = load_causal_lm(str(spec), resolved, fresh=device != "cpu")
        model.to(device).eval()
        return cls(model=model, tokenizer=tokenizer, dtype=resolved, **kw)

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    # -- encoding ------------------------------------------------------------------------

    def _encode(self, prompt: str) -> list[int]:
        if self.chat and getattr(self.tokenizer, "chat_template", None):
            prompt = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
            )
        return list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else (self.tokenizer.eos_token_id or 0)

    def _eos_ids(self) -> set[int]:
        eos = self.tokenizer.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        config_eos = getattr(self.model.generation_config, "eos_token_id", None)
        if config_eos is not None:
            ids |= set(config_eos if isinstance(config_eos, list) else [config_eos])
        return ids

    # -- generation ----------------------------------------------------------------------

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Sample]]:
        """``params.n`` samples per prompt, in prompt order then sample order."""
        import torch

        started = time.perf_counter()
        encoded = [self._encode(prompt) for prompt in prompts]
        for p, ids in enumerate(encoded):
            if not ids:
                raise ValueError(f"prompt {p} encodes to no tokens: nothing to condition on")
        rows = [_Row(p, s, ids) for p, ids in enumerate(encoded) for s in range(params.n)]
        batch = _Batch(self, rows, params)
        with torch.inference_mode():
            batch.run(self.progress)
        self.stats["steps"] += batch.steps
        self.stats["row_steps"] += batch.row_steps
        self.stats["peak_rows"] = max(self.stats["peak_rows"], batch.peak_rows)
        out: list[list[Sample]] = [[] for _ in prompts]
        for row in rows:
            out[row.prompt].append(self._finish(row, params))
        self.stats["tokens"] += sum(len(row.tokens) for row in rows)
        self.stats["seconds"] += time.perf_counter() - started
        return out

    def _finish(self, row: _Row, params: SamplingParams) -> Sample:
        text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
        if row.finish == "stop":
            cuts = [text.index(s) + len(s) for s in params.stop if s in text]
            text = text[: min(cuts)] if cuts else text
        return Sample(text, row.tokens, row.logprobs, row.finish or "length")

    def _left_padded(self, rows: Sequence[Sequence[int]]) -> tuple[Any, Any]:
        """(input ids, attention mask) of ``rows`` left-padded to the longest."""
        import torch

        width = max(len(ids) for ids in rows)
        input_ids = torch.full((len(rows), width), self._pad_id(), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, ids in enumerate(rows):
            input_ids[r, width - len(ids) :] = torch.tensor(ids)
            mask[r, width - len(ids) :] = 1
        return input_ids.to(self.device), mask.to(self.device)

    def _prefill(self, prompts: Sequence[Sequence[int]]) -> tuple[Any, Any]:
        """(KV [layers, 2, prompts, kv heads, width, head dim], last logits [prompts, vocab]) of
        the left-padded ``prompts`` in one forward. A padding query attends to itself only, so
        no row of the mask is empty (an empty one would put NaN into the padding's values)."""
        import torch

        input_ids, mask = self._left_padded(prompts)
        width = input_ids.shape[1]
        eye = torch.eye(width, dtype=torch.bool, device=self.device)
        causal = torch.ones_like(eye).tril()
        allowed = ((causal[None] & mask.bool()[:, None, :]) | eye)[:, None]
        recorder = _Recorder()
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=_additive(allowed, self.model.dtype),
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            past_key_values=recorder,
            use_cache=True,
            logits_to_keep=1,
        )
        return recorder.stacked(), outputs.logits[:, -1].float()

    def _decode(self, cache: SlotCache, next_ids: Any) -> Any:
        """Last logits [rows, vocab] after feeding each live slot its next token."""
        import torch

        positions, width = cache.begin_step(self.device)
        allowed = torch.arange(width, device=self.device)[None, :] <= positions[:, None]
        try:
            outputs = self.model(
                input_ids=next_ids[:, None],
                attention_mask=_additive(allowed[:, None, None, :], self.model.dtype),
                position_ids=positions[:, None],
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        finally:
            cache.end_step()
        return outputs.logits[:, -1].float()

    def _recomputed(self, sequences: Sequence[Sequence[int]]) -> Any:
        """Last logits [rows, vocab] of whole ``sequences``, no cache (the reference path)."""
        input_ids, mask = self._left_padded(sequences)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            use_cache=False,
            logits_to_keep=1,
        )
        return outputs.logits[:, -1].float()

    # -- scoring -------------------------------------------------------------------------

    def score(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[list[float]]:
        """Per-token log-probabilities of each continuation given its prompt."""

        if len(prompts) != len(continuations):
            raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
        return [
            self.score_ids(
                self._encode(prompt), self.tokenizer(cont, add_special_tokens=False)["input_ids"]
            )
            for prompt, cont in zip(prompts, continuations, strict=True)
        ]

    def score_ids(self, head: Sequence[int], tail: Sequence[int]) -> list[float]:
        """Log-probabilities of the token ids ``tail`` after ``head``."""
        import torch

        if not head or not tail:
            raise ValueError("score_ids needs a non-empty prompt and continuation")
        with torch.inference_mode():
            ids = torch.tensor([list(head) + list(tail)], device=self.device)
            logits = self.model(input_ids=ids).logits[0, len(head) - 1 : -1].float()
            targets = torch.tensor(list(tail), device=self.device)[:, None]
            logp = torch.log_softmax(logits, dim=-1).gather(1, targets)
        return [float(x) for x in logp[:, 0]]


# --------------------------------------------------------------------------- scheduling


class _Batch:
    """The continuous batch of one generate() call: admit rows from the queue into free slots
    (prefilling their prompts), sample one token for every live row, drop the finished rows,
    feed the rest their token; until the queue and the batch are empty."""

    def __init__(self, engine: TorchEngine, rows: list[_Row], params: SamplingParams):
        self.engine, self.rows, self.params = engine, rows, params
        self.queue = deque(range(len(rows)))
        self.live: list[int] = []  # row index per slot
        self.logits: Any = None  # [live, vocab]: each live row's next-token logits
        self.next_ids: Any = None  # [live]: each live row's last sampled token
        self.cache = SlotCache() if engine.use_cache else None
        self.pending: dict[int, tuple[Any, Any]] = {}  # prompt -> (KV, logits) of waiting samples
        self.budget = engine.max_batch_tokens or default_token_budget(engine.model)
        self.length = 0  # KV length every slot is padded to (longest admitted row)
        self.eos = engine._eos_ids()
        self.done = self.generated = 0
        self.steps = self.row_steps = self.peak_rows = 0

    def run(self, progress: Progress | None) -> None:
        while self.queue or self.live:
            self.admit()
            finished = self.sample()
            if progress is not None:
                progress(self.done, self.generated)
            self.drop(finished)
            if self.live:
                self.logits = self.decode()

    # -- admission -----------------------------------------------------------------------

    def _reserve(self, i: int) -> int:
        return len(self.rows[i].prompt_ids) + self.params.max_tokens

    def admit(self) -> None:
        """Rows from the head of the queue while a slot is free and the padded KV (slots x
        longest row) stays within the budget; a first row is admitted whatever its size."""
        new: list[int] = []
        while self.queue and len(self.live) + len(new) < self.engine.batch_size:
            length = max(self.length, self._reserve(self.queue[0]))
            if (len(self.live) + len(new) + 1) * length > self.budget and (self.live or new):
                break
            self.length = length
            new.append(self.queue.popleft())
        if not new:
            return
        logits = self.prefill(new)
        self.logits = logits if not self.live else _cat(self.logits, logits)
        self.live += new
        for i in new:
            row = self.rows[i]
            seed = row_seed(self.params.seed, row.prompt, row.sample)
            row.generator = _generator(seed)
            if self.params.stop:
                row.stops = StopWatch(self.engine.tokenizer, self.params.stop)

    def prefill(self, new: list[int]) -> Any:
        """First-token logits [new, vocab] of the rows ``new``; with the cache, their prompts'
        KV in the slots after the live ones (one prefill per prompt, shared by its samples)."""
        import torch

        if self.cache is None:
            return self.engine._recomputed([self.rows[i].prompt_ids for i in new])
        ids = {self.rows[i].prompt: self.rows[i].prompt_ids for i in new}
        todo = [p for p in ids if p not in self.pending]
        for chunk in _chunks(todo, [len(ids[p]) for p in todo]):
            kv, logits = self.engine._prefill([ids[p] for p in chunk])
            for b, p in enumerate(chunk):
                self.pending[p] = (kv[:, :, b, :, kv.shape[-2] - len(ids[p]) :], logits[b])
        first = self.pending[self.rows[new[0]].prompt][0]
        self.cache.reserve(len(self.live) + len(new), self.length, first[:, :, None])
        out = []
        for i in new:
            row = self.rows[i]
            kv, logits = self.pending[row.prompt]
            self.cache.append(kv)
            out.append(logits)
            if row.sample == self.params.n - 1:
                del self.pending[row.prompt]
        self.pending = {p: (kv.clone(), lg.clone()) for p, (kv, lg) in self.pending.items()}
        return torch.stack(out)

    # -- one step ------------------------------------------------------------------------

    def sample(self) -> list[int]:
        """One token for every live row; returns the slots whose rows finished."""
        import torch

        rows = [self.rows[i] for i in self.live]
        ids = sample_tokens(self.logits, self.params, [row.generator for row in rows])
        chosen = self.logits.gather(1, ids[:, None])[:, 0]
        logps = (chosen - torch.logsumexp(self.logits, dim=-1)).tolist()
        self.steps += 1
        self.row_steps += len(rows)
        self.peak_rows = max(self.peak_rows, len(rows))
        finished = []
        for slot, (row, token, logp) in enumerate(zip(rows, ids.tolist(), logps, strict=True)):
            if token in self.eos:
                row.finish = "eos"
            else:
                row.tokens.append(token)
                row.logprobs.append(logp)
                self.generated += 1
                if row.stops is not None and row.stops.push(token):
                    row.finish = "stop"
                elif len(row.tokens) >= self.params.max_tokens:
                    row.finish = "length"
            if row.finish:
                finished.append(slot)
        self.done += len(finished)
        self.next_ids = ids
        return finished

    def drop(self, finished: list[int]) -> None:
        if not finished:
            return
        gone = set(finished)
        keep = [s for s in range(len(self.live)) if s not in gone]
        order = keep if self.cache is None else self.cache.compact(keep)
        self.live = [self.live[s] for s in order]
        if self.live:
            self.next_ids = self.next_ids[self.next_ids.new_tensor(order)]

    def decode(self) -> Any:
        if self.cache is None:
            rows = [self.rows[i] for i in self.live]
            return self.engine._recomputed([row.prompt_ids + row.tokens for row in rows])
        return self.engine._decode(self.cache, self.next_ids)


def _cat(a: Any, b: Any) -> Any:
    import torch

    return torch.cat([a, b])


def _generator(seed: int) -> Any:
    import torch

    return torch.Generator().manual_seed(seed)


def _chunks(items: list[int], lengths: list[int]) -> list[list[int]]:
    """``items`` in runs of at most ``PREFILL_TOKENS`` padded tokens (at least one each)."""
    chunks: list[list[int]] = []
    width = 0
    for item, length in zip(items, lengths, strict=True):
        width = max(width, length)
        if chunks and (len(chunks[-1]) + 1) * width <= PREFILL_TOKENS:
            chunks[-1].append(item)
        else:
            chunks.append([item])
            width = length
    return chunks

"""The torch engine: sampling and scoring with a KV cache on any HF Llama-architecture causal LM.

It runs our ``base_model`` export, a model directory, or the packaged SmolLM2-135M-Instruct GGUF
(loaded by :func:`nanbeige_data.models.load_causal_lm`) on CPU or GPU. Prompts are left-padded
into batches; the prompt is encoded once and the KV cache extends one token per step
(``use_cache=False`` recomputes everything: the benchmark baseline). Only the last position's
logits are computed, and a row that finishes (EOS or a stop string) leaves the batch and its
cache at once, so a batch costs what its longest live rows cost.

Each (prompt, sample) row draws from its own ``torch.Generator`` seeded by (seed, prompt,
sample), so the same seed gives the same samples whatever else is in the batch. Log-probabilities
are the model's own (temperature 1, before top-p), as vLLM reports them.

Trade-off: batches are static (no refilling of a finished row's slot), which keeps the per-row
cache bookkeeping trivial; a step costs the live rows only, so the loss is the tail of a batch
whose last rows run long.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nanbeige_data.models import Sample, SamplingParams

NUCLEUS_CANDIDATES = 256  # top-p looks among this many tokens before sorting the vocabulary
# progress(rows finished, tokens generated) within the current generate() call, once per step
Progress = Callable[[int, int], None]


def row_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{prompt_index}:{sample_index}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big") & ((1 << 63) - 1)


def _nucleus(probs: Any, top_p: float) -> Any:
    """``probs`` with everything outside the top-p nucleus zeroed (the top token always stays).

    The nucleus is looked for among the ``NUCLEUS_CANDIDATES`` most likely tokens first (a
    ``topk``); only when they hold less than ``top_p`` of the mass is the whole vocabulary sorted.
    Either way the kept set is the one a full sort gives: a token past the candidates has at
    least their mass before it, so it is cut."""
    import torch

    top, order = probs.topk(min(NUCLEUS_CANDIDATES, probs.shape[-1]), dim=-1)
    cumulative = top.cumsum(-1)
    if not bool((cumulative[:, -1] >= top_p).all()):  # the nucleus may reach past them
        top, order = probs.sort(dim=-1, descending=True)
        cumulative = top.cumsum(-1)
    keep = cumulative - top < top_p  # always keeps the top token
    return torch.zeros_like(probs).scatter(-1, order, top * keep)


@dataclass
class TorchEngine:
    """Sampling with a KV cache on any HF Llama-architecture causal LM."""

    model: Any
    tokenizer: Any
    batch_size: int = 8
    use_cache: bool = True
    chat: bool = False  # wrap prompts in the tokenizer's chat template
    dtype: str = "float32"  # the dtype the model runs in (resolved, for reports)
    progress: Progress | None = None  # called after every decode step (see Progress)
    stats: dict[str, float] = field(default_factory=lambda: {"tokens": 0, "seconds": 0.0})

    @classmethod
    def load(cls, spec: str, *, dtype: str = "auto", **kw: Any) -> TorchEngine:
        """A model directory (e.g. ``base_model``), a ``.gguf`` file, or the packaged SmolLM2;
        ``dtype`` "auto" is resolved by :func:`nanbeige_data.models.resolve_dtype`."""
        from nanbeige_data.models import load_causal_lm, resolve_dtype

        resolved = resolve_dtype(dtype)
        model, tokenizer = load_causal_lm(str(spec), resolved)
        model.eval()
        return cls(model=model, tokenizer=tokenizer, dtype=resolved, **kw)

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
        rows = [
            (p, s, self._encode(prompt))
            for p, prompt in enumerate(prompts)
            for s in range(params.n)
        ]
        out: list[list[Sample | None]] = [[None] * params.n for _ in prompts]
        started, done, tokens = time.perf_counter(), 0, 0
        for i in range(0, len(rows), self.batch_size):
            chunk = rows[i : i + self.batch_size]
            samples = self._generate_batch(chunk, params, self._ticker(done, tokens))
            for (p, s, _), sample in zip(chunk, samples, strict=True):
                out[p][s] = sample
                tokens += len(sample.token_ids)
            done += len(chunk)
            if self.progress is not None:
                self.progress(done, tokens)
        self.stats["tokens"] += tokens
        self.stats["seconds"] += time.perf_counter() - started
        return [[s for s in row if s is not None] for row in out]

    def _ticker(self, done: int, tokens: int) -> Callable[[int], None] | None:
        """Progress within a batch: rows done before it, tokens before it plus its own."""
        report = self.progress
        return None if report is None else (lambda n: report(done, tokens + n))

    def _generate_batch(
        self, chunk, params: SamplingParams, tick: Callable[[int], None] | None = None
    ) -> list[Sample]:
        """One static batch; ``tick(tokens so far in this batch)`` after every step."""
        import torch

        eos = self._eos_ids()
        input_ids, mask = self._left_padded([ids for _, _, ids in chunk])
        generators = [
            torch.Generator().manual_seed(row_seed(params.seed, p, s)) for p, s, _ in chunk
        ]
        tokens: list[list[int]] = [[] for _ in chunk]
        logprobs: list[list[float]] = [[] for _ in chunk]
        finish = [""] * len(chunk)
        texts = [""] * len(chunk)
        past, step_ids, sequence = None, input_ids, input_ids
        active = list(range(len(chunk)))  # rows still generating (finished rows are dropped)
        generated = 0
        with torch.no_grad():
            for step in range(params.max_tokens):
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                if self.use_cache and step == 0:
                    outputs = self._prefill([p for p, _, _ in chunk], [ids for _, _, ids in chunk])
                    past = outputs.past_key_values
                elif self.use_cache:
                    outputs = self.model(
                        input_ids=step_ids,
                        attention_mask=mask,
                        position_ids=positions[:, -step_ids.shape[1] :],
                        past_key_values=past,
                        use_cache=True,
                        logits_to_keep=1,
                    )
                    past = outputs.past_key_values
                else:
                    outputs = self.model(
                        input_ids=sequence,
                        attention_mask=mask,
                        position_ids=positions,
                        use_cache=False,
                        logits_to_keep=1,
                    )
                logits = outputs.logits[:, -1, :].float()
                next_ids = self._sample(logits, params, [generators[r] for r in active])
                logp = torch.log_softmax(logits, dim=-1).gather(1, next_ids[:, None])[:, 0]
                for j, r in enumerate(active):
                    tok = int(next_ids[j])
                    if tok in eos:
                        finish[r] = "eos"
                        continue
                    tokens[r].append(tok)
                    logprobs[r].append(float(logp[j]))
                    generated += 1
                    if params.stop:
                        texts[r] = self.tokenizer.decode(tokens[r], skip_special_tokens=True)
                        if any(stop in texts[r] for stop in params.stop):
                            finish[r] = "stop"
                if tick is not None:
                    tick(generated)
                keep = [j for j, r in enumerate(active) if not finish[r]]
                if not keep:
                    break
                if len(keep) < len(active):
                    index = torch.tensor(keep)
                    if past is not None:
                        past.batch_select_indices(index)
                    mask, sequence, next_ids = mask[index], sequence[index], next_ids[index]
                    active = [active[j] for j in keep]
                step_ids = next_ids[:, None]
                mask = torch.cat([mask, torch.ones((len(active), 1), dtype=torch.long)], dim=1)
                sequence = torch.cat([sequence, step_ids], dim=1)
        return [self._finish(tokens[r], logprobs[r], finish[r], params) for r in range(len(chunk))]

    def _finish(self, tokens: list[int], logprobs: list[float], finish: str, params) -> Sample:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        if finish == "stop":
            cut = min(text.index(s) + len(s) for s in params.stop if s in text)
            text = text[:cut]
        return Sample(text, tokens, logprobs, finish or "length")

    def _left_padded(self, rows: Sequence[Sequence[int]]) -> tuple[Any, Any]:
        """(input ids, attention mask) of ``rows`` left-padded to the longest."""
        import torch

        width = max(len(ids) for ids in rows)
        input_ids = torch.full((len(rows), width), self._pad_id(), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, ids in enumerate(rows):
            input_ids[r, width - len(ids) :] = torch.tensor(ids)
            mask[r, width - len(ids) :] = 1
        return input_ids, mask

    def _prefill(self, prompt_of_row: Sequence[int], rows: Sequence[Sequence[int]]) -> Any:
        """The prompt pass, once per distinct prompt: the n samples of a prompt share it, and
        its cache and last logits are copied to each of them (the same numbers, n times less
        work). Returns the model output with one row per batch row."""
        import torch

        unique = list(dict.fromkeys(prompt_of_row))
        input_ids, mask = self._left_padded([rows[prompt_of_row.index(p)] for p in unique])
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            use_cache=True,
            logits_to_keep=1,
        )
        index = torch.tensor([unique.index(p) for p in prompt_of_row])
        if len(unique) < len(rows):
            outputs.past_key_values.batch_select_indices(index)
            outputs.logits = outputs.logits[index]
        return outputs

    @staticmethod
    def _sample(logits, params: SamplingParams, generators) -> Any:
        import torch

        if params.temperature == 0:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits / params.temperature, dim=-1)
        if params.top_p < 1.0:
            probs = _nucleus(probs, params.top_p)
        probs = probs / probs.sum(dim=-1, keepdim=True)
        return torch.stack(
            [torch.multinomial(probs[r], 1, generator=g)[0] for r, g in enumerate(generators)]
        )

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
        with torch.no_grad():
            ids = torch.tensor([list(head) + list(tail)])
            logits = self.model(input_ids=ids).logits[0, len(head) - 1 : -1].float()
            logp = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(list(tail))[:, None])
        return [float(x) for x in logp[:, 0]]

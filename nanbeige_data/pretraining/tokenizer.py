"""Tokenizer and token shards: byte-level BPE trained (or installed), then packed id files.

``train_tokenizer`` trains a GPT-2 style byte-level BPE with ``tokenizers`` (no normalizer, so
decoding gives back the exact input bytes). The recipe's special tokens come first and get ids
0..n-1: ``<|endoftext|>`` separates documents (EOS) and the chat / thinking / tool tokens are
reserved for post-training. ``install_tokenizer`` takes a user's ``tokenizer.json`` instead and
adds whichever of those tokens it lacks (at the end of its vocabulary). Either way the output
directory holds ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``,
which ``transformers.AutoTokenizer`` and torchtitan's ``HuggingFaceTokenizer`` both load:

* eos = pad = ``<|endoftext|>``; there is no BOS token (``bos_token: null``). torchtitan's text
  datasets call ``encode(text, add_bos=True, add_eos=True)`` and skip BOS when the tokenizer
  has none, so documents are delimited by EOS alone, exactly as in the shards written here. A
  BOS equal to EOS would put two EOS between every pair of documents.
* a ChatML ``chat_template`` (``<|im_start|>role\\n...<|im_end|>\\n``) for post-training.

``build_tokenizer`` and ``build_token_shards`` are what the curriculum assets call: each fills a
version directory (file names below) and returns its :class:`~nanbeige_data.report.Report`;
``check_roundtrip`` and ``check_shards`` are the assets' gates.

``write_token_shards`` joins the corpus with its quality tiers (DuckDB), drops rejected
documents, splits every ``{domain}/{tier}`` bucket into train and held-out documents by a
hash of (seed, id), and streams each split into one flat file of ids (``np.uint16`` below
65,536 ids): every document's ids then EOS, documents in a seeded shuffled order (a
training loader can read a bucket front to back and see documents shuffled). ``index.parquet`` /
``index.json`` count documents and tokens per file.

Trade-offs:

* Special-token strings that occur literally in a document (a web page quoting
  ``<|endoftext|>``) are encoded as plain text, never as the special id
  (``Tokenizer.encode_special_tokens = True`` while tokenizing documents). Pretraining data
  cannot inject a document boundary or a fake chat turn, and the EOS count of a shard equals
  its document count. The saved ``tokenizer.json`` keeps the default (special strings are
  matched), which chat templates rely on; torchtitan's and HF's own ``encode`` therefore
  split them out, so use ``encode_documents`` / the shards for pretraining text.
* The held-out split is per document: a document is held out when its hash falls below
  ``heldout_fraction`` (stable when the corpus grows), topped up with the next-lowest hashes
  to ``min_heldout_docs`` and capped so the train split is never empty. Near-duplicates
  across the split are the dedup stage's business, not this one's.
* The whole bucket is sorted by its shuffle key in DuckDB before streaming; DuckDB spills to a
  scratch directory under ``out_dir`` when the texts outgrow memory. Token ids are written batch by
  batch, so only ``batch_docs`` documents' ids are in memory at a time.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import json
import os
import random
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

import duckdb
import numpy as np
import polars as pl
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from nanbeige_data.pretraining.config import TokenizerConfig
from nanbeige_data.refinery.tiers import TIERS, TIERS_FILE
from nanbeige_data.report import Report, md_table

CODE_VERSION = "1"  # bump when the bytes written for the same input change
SPECIAL_TOKENS: tuple[str, ...] = tuple(TokenizerConfig().special_tokens)  # the recipe's
# the files of a tokenizer version and of a token-shards version
TOKENIZER_FILE, TOKENIZER_CONFIG_FILE = "tokenizer.json", "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
ROUNDTRIP_FILE = "roundtrip_sample.json"  # the documents the round-trip gate re-encodes
INDEX_FILE, INDEX_TABLE = "index.json", "index.parquet"
ROUNDTRIP_DOCS_PER_DOMAIN = 50
SPLITS = ("train", "val")
TIER_COLUMNS = ("id", "domain", "tier")
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_SAMPLE_DOCS = 2000  # training documents kept (reservoir) to measure chars per token
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class TokenizationError(ValueError):
    """Bad tokenizer or shard input; the message starts with the file it is about."""


@dataclass
class TokenizerStats:
    vocab_size: int  # the real size, added tokens included
    special_token_ids: dict[str, int]
    chars_per_token: float  # on (a sample of) the training text; 0 when none was given
    seconds: float
    documents: int = 0  # texts trained on (or sampled, for an installed tokenizer)
    chars: int = 0
    source: str = "trained"  # "trained" or "installed"

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class RoundTrip:
    documents: int
    exact: int
    failures: list[tuple[str, int]] = field(default_factory=list)  # (id, first bad char offset)

    @property
    def ok(self) -> bool:
        return self.documents == self.exact

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


@dataclass
class ShardRow:
    bucket: str  # "{domain}/{tier}", or "heldout/{name}" for an extra held-out set
    domain: str
    tier: str
    split: str  # "train" or "val"
    path: str  # file name relative to the index
    dtype: str
    documents: int
    tokens: int  # EOS included: the file holds exactly this many ids


@dataclass
class ShardIndex:
    rows: list[ShardRow]
    vocab_size: int
    eos_id: int
    dtype: str
    total_tokens: int
    seconds: float
    tokens_per_second: float
    skipped: dict[str, int] = field(default_factory=dict)  # rejected / untiered documents

    def as_dict(self) -> dict:
        return asdict(self)

    def bucket_tokens(self, split: str = "train") -> dict[str, int]:
        return {r.bucket: r.tokens for r in self.rows if r.split == split}


# --------------------------------------------------------------------------- tokenizer


def build_tokenizer(
    corpus_dir: Path,
    spec: TokenizerConfig,
    out_dir: Path,
    *,
    seed: int,
    log: Callable[[str], None] | None = None,
) -> Report:
    """The ``tokenizer`` version: trained on the refined corpus in ``corpus_dir`` (or the
    recipe's ``path`` installed), plus the seeded sample its round-trip gate re-encodes."""
    out_dir = Path(out_dir)
    sample = roundtrip_sample(corpus_dir, ROUNDTRIP_DOCS_PER_DOMAIN, seed)
    if spec.path:
        stats = install_tokenizer(spec.path, spec, out_dir, sample=[t for _, t in sample])
    else:
        stats = train_tokenizer(corpus_texts(corpus_dir), spec, out_dir)
    _write_text(out_dir / ROUNDTRIP_FILE, json.dumps(sample))
    if log is not None:
        log(f"tokenizer: {stats.vocab_size} ids, {stats.chars_per_token:.2f} chars/token")
    return Report(
        counts={"vocab_size": stats.vocab_size, "documents": stats.documents},
        json={"special_tokens": stats.special_token_ids},
        values={"chars_per_token": round(stats.chars_per_token, 3), "seconds": stats.seconds},
        extra={"stats": stats.as_dict()},
    )


def check_roundtrip(tokenizer_dir: Path) -> tuple[bool, dict]:
    """The gate: the stored sample decodes back exactly (documents, exact, first failures)."""
    sample = json.loads((Path(tokenizer_dir) / ROUNDTRIP_FILE).read_text())
    result = roundtrip(tokenizer_dir, [tuple(x) for x in sample])
    return result.ok, {
        "documents": result.documents,
        "exact": result.exact,
        "failures": [list(f) for f in result.failures[:10]],
    }


def vocab_size(tokenizer_dir: Path) -> int:
    """Ids in a tokenizer directory's vocabulary, added tokens included (the model's rows)."""
    tok, _ = load_tokenizer(tokenizer_dir)
    return tok.get_vocab_size()


def train_tokenizer(texts: Iterable[str], spec: TokenizerConfig, out_dir: Path) -> TokenizerStats:
    """Train byte-level BPE on ``texts`` and write the tokenizer directory."""
    started = time.monotonic()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        min_frequency=spec.min_frequency,
        special_tokens=list(spec.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    seen = _Seen()
    tok.train_from_iterator(seen.wrap(texts), trainer=trainer)
    if seen.documents == 0:
        raise TokenizationError(f"{out_dir}: no training text for the tokenizer")
    _save(tok, spec, Path(out_dir))
    return _stats(tok, spec, seen, "trained", started)


def install_tokenizer(
    path: Path | str, spec: TokenizerConfig, out_dir: Path, *, sample: Iterable[str] = ()
) -> TokenizerStats:
    """Use a given ``tokenizer.json``: add the spec's missing special tokens, write the dir."""
    started = time.monotonic()
    path = Path(path)
    if not path.is_file():
        raise TokenizationError(f"{path}: tokenizer file does not exist")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:
        raise TokenizationError(f"{path}: not a tokenizers tokenizer.json ({exc})") from exc
    known = {t.content for t in tok.get_added_tokens_decoder().values()}
    missing = [t for t in spec.special_tokens if t not in known]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
    seen = _Seen()
    for _ in seen.wrap(sample):
        pass
    _save(tok, spec, Path(out_dir))
    return _stats(tok, spec, seen, "installed", started)


def load_tokenizer(tokenizer_dir: Path) -> tuple[Tokenizer, int]:
    """The tokenizer set up for document text (special strings stay text) and its EOS id."""
    tokenizer_dir = Path(tokenizer_dir)
    tok_path, cfg_path = tokenizer_dir / TOKENIZER_FILE, tokenizer_dir / TOKENIZER_CONFIG_FILE
    for needed in (tok_path, cfg_path):
        if not needed.is_file():
            raise TokenizationError(f"{needed}: missing from the tokenizer directory")
    tok = Tokenizer.from_file(str(tok_path))
    tok.encode_special_tokens = True
    eos = json.loads(cfg_path.read_text())["eos_token"]
    eos_id = tok.token_to_id(eos)
    if eos_id is None:
        raise TokenizationError(f"{cfg_path}: eos_token {eos!r} is not in the vocabulary")
    return tok, eos_id


def encode_documents(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    """Ids of each text, no special tokens added (Rust threads over the batch)."""
    return [e.ids for e in tok.encode_batch_fast(texts, add_special_tokens=False)]


def roundtrip(tokenizer_dir: Path, texts: Iterable[tuple[str, str]]) -> RoundTrip:
    """Encode and decode each (id, text); byte-level BPE must give every text back exactly."""
    tok, _ = load_tokenizer(tokenizer_dir)
    result = RoundTrip(0, 0)
    for batch in _batches(iter(texts), 256):
        ids = encode_documents(tok, [text for _, text in batch])
        decoded = tok.decode_batch(ids, skip_special_tokens=False)
        for (doc_id, text), back in zip(batch, decoded, strict=True):
            result.documents += 1
            if back == text:
                result.exact += 1
            elif len(result.failures) < 100:
                result.failures.append((doc_id, len(os.path.commonprefix([text, back]))))
    return result


class _Seen:
    """Counts the texts passing through and keeps a reservoir sample of them."""

    def __init__(self) -> None:
        self.documents, self.chars, self.sample = 0, 0, list[str]()
        self._rng = random.Random(0)

    def wrap(self, texts: Iterable[str]) -> Iterator[str]:
        for text in texts:
            self.documents += 1
            self.chars += len(text)
            if len(self.sample) < _SAMPLE_DOCS:
                self.sample.append(text)
            elif (j := self._rng.randrange(self.documents)) < _SAMPLE_DOCS:
                self.sample[j] = text
            yield text


def _stats(
    tok: Tokenizer, spec: TokenizerConfig, seen: _Seen, source: str, started: float
) -> TokenizerStats:
    ids = {t: tok.token_to_id(t) for t in spec.special_tokens}
    tok.encode_special_tokens = True
    tokens = sum(len(e) for e in encode_documents(tok, seen.sample))
    sample_chars = sum(len(t) for t in seen.sample)
    return TokenizerStats(
        vocab_size=tok.get_vocab_size(),
        special_token_ids=ids,
        chars_per_token=round(sample_chars / tokens, 4) if tokens else 0.0,
        seconds=round(time.monotonic() - started, 3),
        documents=seen.documents,
        chars=seen.chars,
        source=source,
    )


def _save(tok: Tokenizer, spec: TokenizerConfig, out_dir: Path) -> None:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json, each written whole."""
    out_dir.mkdir(parents=True, exist_ok=True)
    decoder = tok.get_added_tokens_decoder()
    added = {
        str(i): {
            "content": t.content,
            "lstrip": t.lstrip,
            "normalized": t.normalized,
            "rstrip": t.rstrip,
            "single_word": t.single_word,
            "special": t.special,
        }
        for i, t in sorted(decoder.items())
    }
    extra = [t for t in spec.special_tokens if t != spec.eos_token]
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "bos_token": None,  # documents are delimited by EOS alone (module docstring)
        "eos_token": spec.eos_token,
        "pad_token": spec.eos_token,
        "unk_token": None,
        "additional_special_tokens": extra,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,  # decoding must give back the exact text
        "model_max_length": 1_000_000_000,
        "chat_template": CHAT_TEMPLATE,
    }
    special_map = {
        "eos_token": spec.eos_token,
        "pad_token": spec.eos_token,
        "additional_special_tokens": extra,
    }
    _write_text(out_dir / TOKENIZER_FILE, tok.to_str(pretty=True))
    _write_text(out_dir / TOKENIZER_CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    _write_text(out_dir / SPECIAL_TOKENS_MAP_FILE, json.dumps(special_map, indent=2) + "\n")


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


# --------------------------------------------------------------------------- shards


def build_token_shards(
    corpus_dir: Path,
    tiers_dir: Path,
    tokenizer_dir: Path,
    out_dir: Path,
    *,
    seed: int,
    log: Callable[[str], None] | None = None,
) -> Report:
    """The ``token_shards`` version: the refined corpus's kept documents per bucket and split,
    plus the reasoning held-out set the ablation scores."""
    index = write_token_shards(
        str(Path(corpus_dir) / "*.parquet"),
        Path(tiers_dir) / TIERS_FILE,
        tokenizer_dir,
        out_dir,
        seed=seed,
        extra_heldout={"reasoning": reasoning_heldout()},
    )
    if log is not None:
        log(f"token_shards: {index.total_tokens} tokens at {index.tokens_per_second:,.0f} tok/s")
    rows = [(r.bucket, r.split, r.documents, r.tokens) for r in index.rows]
    return Report(
        counts={"tokens": index.total_tokens, "files": len(index.rows)},
        markdown={"buckets": md_table(("bucket", "split", "documents", "tokens"), rows, "llrr")},
        json={"skipped": index.skipped},
        values={"tokens_per_second": round(index.tokens_per_second)},
        extra={"index": index.as_dict()},
    )


def check_shards(shards_dir: Path) -> tuple[bool, dict]:
    """The gate: every file holds exactly the tokens the index says; no train bucket is empty."""
    index = load_index(shards_dir)
    wrong = [
        r.path
        for r in index.rows
        if (Path(shards_dir) / r.path).stat().st_size != r.tokens * np.dtype(r.dtype).itemsize
    ]
    empty = [r.bucket for r in index.rows if r.split == "train" and r.tokens == 0]
    return not wrong and not empty, {
        "files": len(index.rows),
        "size_mismatch": wrong,
        "empty_train_buckets": empty,
    }


def write_token_shards(
    corpus_glob: str,
    tiers_path: Path,
    tokenizer_dir: Path,
    out_dir: Path,
    *,
    heldout_fraction: float = 0.05,
    min_heldout_docs: int = 2,
    seed: int = 0,
    extra_heldout: Mapping[str, Sequence[str]] | None = None,
    batch_docs: int = 256,
) -> ShardIndex:
    """Tokenize the non-rejected documents into one train and one val file per bucket."""
    started = time.monotonic()
    if not 0 <= heldout_fraction < 1 or min_heldout_docs < 0 or batch_docs < 1:
        raise ValueError("need 0 <= heldout_fraction < 1, min_heldout_docs >= 0, batch_docs >= 1")
    tok, eos_id = load_tokenizer(tokenizer_dir)
    vocab = tok.get_vocab_size()
    dtype = np.dtype(np.uint16 if vocab < 2**16 else np.uint32)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = out_dir / ".duckdb_tmp"
    rows: list[ShardRow] = []
    try:
        with duckdb.connect() as con:
            con.sql(f"SET temp_directory = '{_quote(scratch)}'")
            skipped = _register(con, corpus_glob, Path(tiers_path))
            plan = _plan(con, Path(tiers_path), heldout_fraction, min_heldout_docs, seed)
            con.register("plan", plan.to_arrow())
            query = con.sql(
                "SELECT p.bucket, p.split, c.text FROM plan p JOIN corpus c USING (id) "
                "ORDER BY p.bucket, p.split, p.order, c.id"
            )
            writer = _Writer(out_dir, dtype, eos_id)
            for batch in query.to_arrow_reader(batch_docs):
                cols = batch.to_pydict()
                for key, texts in _runs(cols["bucket"], cols["split"], cols["text"]):
                    writer.append(key, encode_documents(tok, texts))
            planned = plan.select("bucket", "domain", "tier").unique().sort("bucket")
            for bucket, domain, tier in planned.iter_rows():
                rows += [writer.finish((bucket, split), domain, tier) for split in SPLITS]
        for name, texts in sorted((extra_heldout or {}).items()):
            if not _NAME.match(name):
                raise TokenizationError(f"{out_dir}: extra held-out name {name!r} is not a name")
            key = (f"heldout/{name}", "val")
            for batch in _batches(iter(texts), batch_docs):
                writer.append(key, encode_documents(tok, list(batch)))
            rows.append(writer.finish(key, "heldout", name))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        for tmp in out_dir.glob("*.bin.tmp"):  # left behind only by a failed run
            tmp.unlink()
    total = sum(r.tokens for r in rows)
    seconds = time.monotonic() - started
    index = ShardIndex(
        rows=rows,
        vocab_size=vocab,
        eos_id=eos_id,
        dtype=dtype.name,
        total_tokens=total,
        seconds=round(seconds, 3),
        tokens_per_second=round(total / seconds, 1),
        skipped=skipped,
    )
    _write_index(index, out_dir)
    return index


def open_shard(path: Path, dtype: str) -> np.memmap:
    """A read-only view of one token file."""
    return np.memmap(path, dtype=np.dtype(dtype), mode="r")


def load_index(out_dir: Path) -> ShardIndex:
    path = Path(out_dir) / INDEX_FILE
    if not path.is_file():
        raise TokenizationError(f"{path}: no shard index")
    raw = json.loads(path.read_text())
    raw["rows"] = [ShardRow(**r) for r in raw["rows"]]
    return ShardIndex(**raw)


def _quote(path: Path | str) -> str:
    return str(path).replace("'", "''")


def _register(con: duckdb.DuckDBPyConnection, corpus_glob: str, tiers_path: Path) -> dict:
    """Views ``corpus`` and ``tiers`` after checking both; returns the skipped counts."""
    files = sorted(globlib.glob(corpus_glob))
    if not files:
        raise TokenizationError(f"{corpus_glob}: no corpus shard matches")
    listed = ", ".join(f"'{_quote(f)}'" for f in files)
    con.sql(f"CREATE VIEW corpus AS SELECT id, text FROM read_parquet([{listed}])")
    if con.sql("SELECT count(*) FROM corpus").fetchall()[0][0] == 0:
        raise TokenizationError(f"{corpus_glob}: the corpus has no documents")
    if not tiers_path.is_file():
        raise TokenizationError(f"{tiers_path}: tiers table does not exist")
    con.sql(f"CREATE VIEW tiers AS SELECT * FROM read_parquet('{_quote(tiers_path)}')")
    lacking = [c for c in TIER_COLUMNS if c not in con.sql("SELECT * FROM tiers").columns]
    if lacking:
        raise TokenizationError(f"{tiers_path}: tiers table lacks columns {lacking}")
    bad = con.sql(
        f"SELECT DISTINCT tier FROM tiers WHERE tier NOT IN {TIERS} OR tier IS NULL"
    ).fetchall()
    if bad:
        raise TokenizationError(f"{tiers_path}: unknown tiers {sorted(map(str, bad))}")
    odd = con.sql(
        "SELECT DISTINCT domain FROM tiers WHERE domain IS NULL "
        "OR NOT regexp_full_match(domain, '[A-Za-z0-9_.-]+')"
    ).fetchall()
    if odd:
        raise TokenizationError(f"{tiers_path}: domain names unfit for file names: {odd[:5]}")
    dupes = con.sql("SELECT count(*) - count(DISTINCT id) FROM tiers").fetchall()[0][0]
    if dupes:
        raise TokenizationError(f"{tiers_path}: {dupes} ids appear more than once")
    stray = con.sql("SELECT id FROM tiers ANTI JOIN corpus USING (id) ORDER BY id").fetchall()
    if stray:
        examples = [r[0] for r in stray[:5]]
        raise TokenizationError(
            f"{tiers_path}: {len(stray)} tiered ids are not in {corpus_glob}, e.g. {examples}"
        )
    rejected, untiered = con.sql(
        "SELECT (SELECT count(*) FROM tiers WHERE tier = 'rejected'),"
        " (SELECT count(*) FROM corpus ANTI JOIN tiers USING (id))"
    ).fetchall()[0]
    return {"rejected": rejected, "untiered": untiered}


def _plan(
    con: duckdb.DuckDBPyConnection, tiers_path: Path, fraction: float, min_docs: int, seed: int
) -> pl.DataFrame:
    """One row per kept document: id, bucket, domain, tier, split."""
    kept = con.sql(
        "SELECT id, domain, tier, domain || '/' || tier AS bucket FROM tiers "
        "WHERE tier <> 'rejected' ORDER BY id"
    ).pl()
    if kept.height == 0:
        raise TokenizationError(f"{tiers_path}: every document is rejected; nothing to tokenize")
    draw = pl.Series("draw", [_draw(seed, i) for i in kept["id"].to_list()], dtype=pl.Float64)
    kept = kept.with_columns(draw).with_columns(
        rank=pl.col("draw").rank("ordinal").over("bucket"),
        n=pl.len().over("bucket"),
        below=(pl.col("draw") < fraction).sum().over("bucket"),
    )
    floor = pl.when(pl.col("n") > 2 * min_docs).then(min_docs).otherwise(0)
    k = pl.min_horizontal(pl.max_horizontal(pl.col("below"), floor), pl.col("n") - 1)
    split = pl.when(pl.col("rank") <= k).then(pl.lit("val")).otherwise(pl.lit("train"))
    order = pl.Series("order", [_draw(f"order-{seed}", i) for i in kept["id"].to_list()])
    return kept.with_columns(split=split, order=order).select(
        "id", "bucket", "domain", "tier", "split", "order"
    )


def _draw(seed: int | str, doc_id: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, id)."""
    digest = hashlib.blake2b(f"{seed}\x00{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _runs(buckets: list, splits: list, texts: list) -> Iterator[tuple[tuple[str, str], list]]:
    """Consecutive texts of one (bucket, split), in order."""
    start = 0
    for i in range(1, len(texts) + 1):
        if i == len(texts) or (buckets[i], splits[i]) != (buckets[start], splits[start]):
            yield (buckets[start], splits[start]), texts[start:i]
            start = i


def _batches(items: Iterator, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class _Writer:
    """Appends documents (ids + EOS) to one temp file per (bucket, split); renames on finish."""

    def __init__(self, out_dir: Path, dtype: np.dtype, eos_id: int) -> None:
        self.out_dir, self.dtype, self.eos_id = out_dir, dtype, eos_id
        self.open: dict[tuple[str, str], tuple[IO[bytes], list[int]]] = {}

    def _name(self, key: tuple[str, str]) -> str:
        return f"{key[0].replace('/', '__')}.{key[1]}.bin"

    def append(self, key: tuple[str, str], docs: list[list[int]]) -> None:
        if key not in self.open:
            handle = (self.out_dir / (self._name(key) + ".tmp")).open("wb")
            self.open[key] = (handle, [0, 0])
        handle, counts = self.open[key]
        flat: list[int] = []
        for ids in docs:
            flat += ids
            flat.append(self.eos_id)
        np.asarray(flat, dtype=self.dtype).tofile(handle)
        counts[0] += len(docs)
        counts[1] += len(flat)

    def finish(self, key: tuple[str, str], domain: str, tier: str) -> ShardRow:
        """Close (or create empty) the file of ``key`` under its final name."""
        if key not in self.open:
            self.append(key, [])
        handle, (documents, tokens) = self.open.pop(key)
        handle.close()
        name = self._name(key)
        (self.out_dir / (name + ".tmp")).replace(self.out_dir / name)
        return ShardRow(key[0], domain, tier, key[1], name, self.dtype.name, documents, tokens)


def _write_index(index: ShardIndex, out_dir: Path) -> None:
    frame = pl.DataFrame([asdict(r) for r in index.rows])
    frame.write_parquet(out_dir / (INDEX_TABLE + ".tmp"))
    (out_dir / (INDEX_TABLE + ".tmp")).replace(out_dir / INDEX_TABLE)
    _write_text(out_dir / INDEX_FILE, json.dumps(index.as_dict(), indent=2) + "\n")


# --- inputs the curriculum assets hand to this module -------------------------------------


def corpus_texts(corpus_dir: Path) -> Iterator[str]:
    """Texts of a refined corpus version (Parquet shards), in file order, a batch at a time."""
    import pyarrow.dataset as ds

    from nanbeige_data.refinery.docs import corpus_shards

    files = corpus_shards(corpus_dir, columns=("text",))
    if not files:
        raise TokenizationError(f"{corpus_dir}: no Parquet shards to train a tokenizer on")
    for batch in ds.dataset([str(f) for f in files]).to_batches(columns=["text"]):
        yield from batch.column(0).to_pylist()


def roundtrip_sample(corpus_dir: Path, n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` documents per domain (seeded), for the tokenizer's round-trip check."""
    glob = _quote(Path(corpus_dir) / "*.parquet")
    with duckdb.connect() as con:
        rows = con.sql(
            f"SELECT id, text FROM (SELECT id, text, row_number() OVER (PARTITION BY domain "
            f"ORDER BY hash(id || '{int(seed)}')) AS k FROM read_parquet('{glob}')) "
            f"WHERE k <= {int(n)} ORDER BY id"
        ).fetchall()
    return [(i, t) for i, t in rows]


def reasoning_heldout() -> list[str]:
    """Reasoning-style held-out texts: CHAMP problems with solutions, reasoning-gym tasks.

    The refined corpus was decontaminated against exactly these sets, so they are held out by
    construction; the ablation scores each model's loss on them."""
    from nanbeige_data.refinery.decontam import eval_items

    return [
        item.text
        for item in eval_items()
        if item.benchmark == "champ" or item.benchmark.startswith("reasoning_gym")
    ]

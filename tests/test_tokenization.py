"""Tokenizer training / install, exact round trips, HF + torchtitan loading, token shards."""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from nanbeige_data.corpus.build import SCHEMA, build_domain
from nanbeige_data.corpus.config import DomainSource
from nanbeige_data.pretraining.config import TokenizerConfig
from nanbeige_data.pretraining.tokenizer import (
    SPECIAL_TOKENS,
    TokenizationError,
    encode_documents,
    install_tokenizer,
    load_index,
    load_tokenizer,
    open_shard,
    roundtrip,
    train_tokenizer,
    write_token_shards,
)

SPEC = TokenizerConfig(vocab_size=1500, special_tokens=list(SPECIAL_TOKENS))
# hand-made documents the embedded corpus lacks: tabs, CRLF, unicode, literal special tokens
ODD_DOCS = {
    "code/odd/tabs": "def f(x):\n\tif x:\n\t\treturn 'héllo wörld ✓'\r\n\treturn None  \n",
    "code/odd/unicode": "// 日本語のコメント 🚀 e\u0301 ﬁ\nconst s = `Ω≈ç√∫`;\t// tab\n" * 3,
    "web/odd/special": (
        "A page quoting tokens: <|endoftext|> then <|im_start|>user and <think>x</think> "
        "and <tool_call>{}</tool_call>. The end.\n"
    )
    * 4,
}


def _odd_rows() -> list[dict]:
    return [
        {"id": i, "text": t, "domain": i.split("/")[0], "source": "odd", "meta": "{}"}
        for i, t in ODD_DOCS.items()
    ]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Real embedded documents of three domains plus the odd ones, as corpus shards."""
    root = tmp_path_factory.mktemp("tok_corpus")
    for domain in ("web", "code", "papers"):
        build_domain(
            domain,
            DomainSource(max_bytes=60_000),
            out_dir=root,
            shard_docs=10_000,
        )
        for i, shard in enumerate(sorted(root.glob("part-*.parquet"))):
            shard.rename(root / f"{domain}-{i}.parquet")
    pq.write_table(pa.Table.from_pylist(_odd_rows(), schema=SCHEMA), root / "odd-0.parquet")
    return root


@pytest.fixture(scope="module")
def docs(corpus) -> pl.DataFrame:
    return pl.read_parquet(corpus / "*.parquet").sort("id")


@pytest.fixture(scope="module")
def tokenizer_dir(docs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(iter(docs["text"].to_list()), SPEC, out)
    return out


@pytest.fixture(scope="module")
def tiers_path(docs, tmp_path_factory) -> Path:
    """Tiers by rule: every 4th document (by id order) rejected, every 3rd high, else diverse;
    the odd documents are kept (high)."""

    def rule(i: int, doc_id: str) -> str:
        if "/odd/" in doc_id:
            return "high"
        return "rejected" if i % 4 == 3 else "high" if i % 3 == 0 else "diverse"

    tier = [rule(i, doc_id) for i, doc_id in enumerate(docs["id"])]
    tiers = docs.select("id", "domain").with_columns(tier=pl.Series(tier))
    path = tmp_path_factory.mktemp("tiers") / "tiers.parquet"
    tiers.write_parquet(path)
    return path


@pytest.fixture(scope="module")
def shards(corpus, tiers_path, tokenizer_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    extra = {"reasoning": ["Q: 2 + 2?\nA: 4.", "If all A are B and x is A, x is B."]}
    index = write_token_shards(
        str(corpus / "*.parquet"), tiers_path, tokenizer_dir, out, extra_heldout=extra, seed=3
    )
    return out, index


# --------------------------------------------------------------------------- tokenizer


def test_special_tokens_first_and_literal_strings_stay_text(tokenizer_dir):
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|endoftext|>" and config["bos_token"] is None
    tok, eos_id = load_tokenizer(tokenizer_dir)
    assert eos_id == 0
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    text = ODD_DOCS["web/odd/special"]
    ids = encode_documents(tok, [text])[0]
    assert min(ids) >= len(SPECIAL_TOKENS)  # no special id from plain document text
    assert tok.decode(ids, skip_special_tokens=False) == text
    # the saved tokenizer.json itself still matches special strings (chat templates need it)
    assert 0 in Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).encode(text).ids


def test_training_stats(docs, tmp_path):
    stats = train_tokenizer(docs["text"].to_list(), SPEC, tmp_path)
    assert stats.vocab_size <= SPEC.vocab_size and stats.documents == docs.height
    assert stats.special_token_ids["<|endoftext|>"] == 0 and 2.0 < stats.chars_per_token < 6.0
    assert json.loads(json.dumps(stats.as_dict()))["source"] == "trained"
    with pytest.raises(TokenizationError, match="no training text"):
        train_tokenizer([], SPEC, tmp_path / "none")


def test_roundtrip_exact_on_real_documents(docs, tokenizer_dir):
    result = roundtrip(tokenizer_dir, docs.select("id", "text").iter_rows())
    assert result.ok and result.documents == docs.height == result.exact
    assert result.failures == []


def test_roundtrip_reports_first_differing_offset(tmp_path):
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Lowercase()  # lossy on purpose
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(["some text here"] * 5, trainer)
    tok.save(str(tmp_path / "user.json"))
    install_tokenizer(tmp_path / "user.json", SPEC, tmp_path / "dir")
    result = roundtrip(tmp_path / "dir", [("a", "same text"), ("b", "abc Def")])
    assert not result.ok and result.exact == 1 and result.failures == [("b", 4)]


def test_transformers_and_torchtitan_load_and_agree(docs, tokenizer_dir):
    from torchtitan.components.tokenizer import HuggingFaceTokenizer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    hf = AutoTokenizer.from_pretrained(tokenizer_dir)
    fast = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    titan = HuggingFaceTokenizer(tokenizer_path=str(tokenizer_dir))
    assert hf.eos_token_id == fast.eos_token_id == titan.eos_id == 0
    assert hf.pad_token_id == 0 and titan.bos_id is None  # no BOS: documents end in EOS only
    tok, _ = load_tokenizer(tokenizer_dir)
    texts = [t for t in docs["text"].to_list()[:40] if "<|" not in t and "<t" not in t]
    for text, ids in zip(texts, encode_documents(tok, texts), strict=True):
        assert hf.encode(text, add_special_tokens=False) == fast.encode(text) == ids
        assert titan.encode(text, add_bos=True, add_eos=True) == ids + [0]
        assert hf.decode(ids) == titan.decode(ids) == text
    odd = ODD_DOCS["web/odd/special"]  # HF splits special strings unless told not to
    assert (
        hf.encode(odd, add_special_tokens=False, split_special_tokens=True)
        == (encode_documents(tok, [odd])[0])
    )
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    rendered = hf.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert rendered == titan.apply_chat_template(chat, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert hf.encode(rendered, add_special_tokens=False).count(1) == 3  # <|im_start|>


def test_install_tokenizer_adds_missing_specials(docs, tmp_path):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|endoftext|>", "<|im_start|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs["text"].to_list()[:30], trainer)
    user = tmp_path / "user" / "tokenizer.json"
    user.parent.mkdir()
    tok.save(str(user))
    sample = docs["text"].to_list()[:10]
    stats = install_tokenizer(user, SPEC, tmp_path / "out", sample=sample)
    ids = stats.special_token_ids
    assert ids["<|endoftext|>"] == 0 and ids["<|im_start|>"] == 1  # kept where they were
    assert sorted(ids.values())[2:] == list(range(600, 607))  # the rest appended
    assert stats.vocab_size == 607 and stats.source == "installed" and stats.chars_per_token > 1
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert hf.convert_tokens_to_ids("</tool_response>") == ids["</tool_response>"]
    assert roundtrip(tmp_path / "out", [(str(i), t) for i, t in enumerate(sample)]).ok


def test_install_tokenizer_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(TokenizationError, match=re.escape(f"{missing}: tokenizer")):
        install_tokenizer(missing, SPEC, tmp_path / "out")
    garbage = tmp_path / "garbage.json"
    garbage.write_text('{"hello": "world"}')
    with pytest.raises(TokenizationError, match=re.escape(f"{garbage}: not a")):
        install_tokenizer(garbage, SPEC, tmp_path / "out")


# --------------------------------------------------------------------------- shards


def test_shards_match_index_and_documents(shards, docs, tiers_path, tokenizer_dir):
    out, index = shards
    tiers = pl.read_parquet(tiers_path)
    kept = tiers.filter(pl.col("tier") != "rejected")
    assert index.dtype == "uint16" and index.eos_id == 0
    assert index.skipped == {"rejected": tiers.height - kept.height, "untiered": 0}
    corpus_rows = [r for r in index.rows if r.domain != "heldout"]
    assert sum(r.documents for r in corpus_rows) == kept.height
    expected = {f"{d}/{t}" for d, t in kept.select("domain", "tier").unique().iter_rows()}
    assert {r.bucket for r in corpus_rows} == expected
    for row in index.rows:
        ids = open_shard(out / row.path, row.dtype)
        assert ids.size == row.tokens == (out / row.path).stat().st_size // 2
        assert int((ids == 0).sum()) == row.documents  # one EOS per document, none inside
        if row.documents:
            assert ids[-1] == 0
    assert index.total_tokens == sum(r.tokens for r in index.rows)
    assert sum(index.bucket_tokens("train").values()) + sum(
        index.bucket_tokens("val").values()
    ) == (index.total_tokens)
    on_disk = pl.read_parquet(out / "index.parquet")
    assert on_disk.height == len(index.rows) and on_disk["tokens"].sum() == index.total_tokens
    assert load_index(out) == index


def _documents_of(path: Path, dtype: str) -> list[tuple[int, ...]]:
    ids = open_shard(path, dtype).tolist()
    out, cur = [], []
    for i in ids:
        if i == 0:
            out.append(tuple(cur))
            cur = []
        else:
            cur.append(i)
    return out


def test_shards_hold_exactly_the_kept_documents_by_id(shards, docs, tiers_path, tokenizer_dir):
    out, index = shards
    tok, _ = load_tokenizer(tokenizer_dir)
    joined = docs.join(pl.read_parquet(tiers_path).select("id", "tier"), on="id")
    by_ids = dict(
        zip(map(tuple, encode_documents(tok, joined["text"].to_list())), joined["id"], strict=True)
    )
    seen: dict[str, str] = {}
    for row in index.rows:
        if row.domain == "heldout":
            continue
        doc_ids = [by_ids[d] for d in _documents_of(out / row.path, row.dtype)]
        if len(doc_ids) > 3:
            assert doc_ids != sorted(doc_ids)  # a seeded shuffle, not id order
        for doc_id in doc_ids:
            assert doc_id not in seen  # train and val disjoint, nothing twice
            seen[doc_id] = row.split
    tiers = dict(joined.select("id", "tier").iter_rows())
    assert all(tiers[d] != "rejected" for d in seen)
    assert len(seen) == sum(t != "rejected" for t in tiers.values())
    assert {"web/odd/special", "code/odd/tabs", "code/odd/unicode"} <= set(seen)


def test_heldout_split_sizes(shards):
    _, index = shards
    by_bucket: dict[str, dict[str, int]] = {}
    for row in index.rows:
        by_bucket.setdefault(row.bucket, {})[row.split] = row.documents
    for bucket, counts in by_bucket.items():
        if bucket.startswith("heldout/"):
            assert counts == {"val": 2}
            continue
        n = counts["train"] + counts["val"]
        assert counts["train"] >= 1
        if n > 4:
            assert counts["val"] >= 2


def test_extra_heldout_written(shards, tokenizer_dir):
    out, index = shards
    row = next(r for r in index.rows if r.bucket == "heldout/reasoning")
    assert (row.domain, row.tier, row.split, row.path) == (
        "heldout",
        "reasoning",
        "val",
        "heldout__reasoning.val.bin",
    )
    tok, _ = load_tokenizer(tokenizer_dir)
    first = _documents_of(out / row.path, row.dtype)[0]
    assert tok.decode(list(first)) == "Q: 2 + 2?\nA: 4."


def test_shards_are_deterministic(shards, corpus, tiers_path, tokenizer_dir, tmp_path):
    out, index = shards
    extra = {"reasoning": ["Q: 2 + 2?\nA: 4.", "If all A are B and x is A, x is B."]}
    again = write_token_shards(
        str(corpus / "*.parquet"),
        tiers_path,
        tokenizer_dir,
        tmp_path,
        extra_heldout=extra,
        seed=3,
        batch_docs=7,  # batching must not change the bytes
    )
    assert [r.path for r in again.rows] == [r.path for r in index.rows]
    for row in index.rows:
        assert (tmp_path / row.path).read_bytes() == (out / row.path).read_bytes()
    assert not list(tmp_path.glob("*.tmp")) and not (tmp_path / ".duckdb_tmp").exists()
    other = write_token_shards(str(corpus / "*.parquet"), tiers_path, tokenizer_dir, tmp_path / "s")
    val = {r.bucket: r.documents for r in other.rows if r.split == "val"}
    assert sum(val.values()) >= 2 * len(val) - 2  # another seed, still a held-out per bucket


def test_shard_errors(corpus, tiers_path, tokenizer_dir, tmp_path):
    glob = str(corpus / "*.parquet")
    with pytest.raises(TokenizationError, match="no corpus shard matches"):
        write_token_shards(str(tmp_path / "none-*.parquet"), tiers_path, tokenizer_dir, tmp_path)
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.Table.from_pylist([], schema=SCHEMA), empty)
    with pytest.raises(TokenizationError, match=re.escape(f"{empty}: the corpus has")):
        write_token_shards(str(empty), tiers_path, tokenizer_dir, tmp_path)
    no_tier = tmp_path / "no_tier.parquet"
    pl.read_parquet(tiers_path).drop("tier").write_parquet(no_tier)
    lacks = re.escape(f"{no_tier}: tiers table lacks columns ['tier']")
    with pytest.raises(TokenizationError, match=lacks):
        write_token_shards(glob, no_tier, tokenizer_dir, tmp_path)
    stray = tmp_path / "stray.parquet"
    extra = pl.DataFrame({"id": ["web/ghost/1"], "domain": ["web"], "tier": ["high"]})
    pl.concat([pl.read_parquet(tiers_path).select("id", "domain", "tier"), extra]).write_parquet(
        stray
    )
    with pytest.raises(TokenizationError, match="1 tiered ids are not in"):
        write_token_shards(glob, stray, tokenizer_dir, tmp_path)
    rejected = tmp_path / "rejected.parquet"
    pl.read_parquet(tiers_path).with_columns(tier=pl.lit("rejected")).write_parquet(rejected)
    with pytest.raises(TokenizationError, match="every document is rejected"):
        write_token_shards(glob, rejected, tokenizer_dir, tmp_path)
    assert not list(tmp_path.glob("*.bin*"))


# --------------------------------------------------------------------------- the versions


def test_tokenizer_config_is_the_spec_and_is_validated():
    from pydantic import ValidationError

    assert TokenizerConfig().min_frequency == 2 and TokenizerConfig().eos_token in SPECIAL_TOKENS
    with pytest.raises(ValidationError, match="eos_token '</s>' must be one of"):
        TokenizerConfig(eos_token="</s>")
    with pytest.raises(ValidationError, match="vocab_size 200 leaves no room"):
        TokenizerConfig(vocab_size=200)


def test_tokenizer_and_shard_versions_report_and_pass_their_gates(corpus, tiers_path, tmp_path):
    from nanbeige_data.pretraining.tokenizer import (
        ROUNDTRIP_FILE,
        build_token_shards,
        build_tokenizer,
        check_roundtrip,
        check_shards,
    )

    lines: list[str] = []
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    report = build_tokenizer(corpus, SPEC, tok_dir, seed=0, log=lines.append)
    assert report.counts["vocab_size"] <= SPEC.vocab_size and report.counts["documents"] > 3
    assert report.json["special_tokens"]["<|endoftext|>"] == 0
    assert report.values["chars_per_token"] > 1 and "ids" in lines[0]
    assert (tok_dir / ROUNDTRIP_FILE).exists()
    ok, detail = check_roundtrip(tok_dir)
    assert ok and detail["documents"] == detail["exact"] > 3 and detail["failures"] == []

    shards_dir = tmp_path / "shards"
    report = build_token_shards(corpus, tiers_path.parent, tok_dir, shards_dir, seed=1)
    assert report.counts["tokens"] == report.extra["index"]["total_tokens"]
    assert "| heldout/reasoning | val |" in report.markdown["buckets"]
    assert set(report.json["skipped"]) == {"rejected", "untiered"}
    assert check_shards(shards_dir) == (
        True,
        {"files": report.counts["files"], "size_mismatch": [], "empty_train_buckets": []},
    )
    victim = next(shards_dir.glob("*.train.bin"))
    victim.write_bytes(victim.read_bytes()[:-2])  # one id short of what the index says
    ok, detail = check_shards(shards_dir)
    assert not ok and detail["size_mismatch"] == [victim.name]

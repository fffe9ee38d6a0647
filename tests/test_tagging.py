"""Tagging on real data with the real packaged judge (SmolLM2-135M-Instruct GGUF), loaded once."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from nanbeige_data.corpus.build import SCHEMA, build_domain
from nanbeige_data.corpus.config import DomainSource
from nanbeige_data.models import resolve_dtype
from nanbeige_data.recipe import TagDimension, TaggingConfig, load_recipe
from nanbeige_data.refinery.tagging import (
    LABELS_FILE,
    SCORES_FILE,
    LlmJudge,
    OpenAIJudge,
    TagClassifier,
    digit_expectation_from_top,
    draw_sample,
    make_annotator,
    tag_corpus,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DIMS = tuple(load_recipe("tiny").refinery.tagging.dimensions)
CONTENT = [j for j, d in enumerate(DIMS) if d.kind == "content"]
FEW = tuple(DIMS[i] for i in (0, 2, 12, 14))  # knowledge, educational | fluency, cleanliness


def tagging_cfg(**kw) -> TaggingConfig:
    return TaggingConfig(dimensions=list(FEW), **kw)


CLEAN = (
    "Photosynthesis is the process by which green plants, algae and some bacteria convert light "
    "energy into chemical energy. Using sunlight, water and carbon dioxide, the plant produces "
    "glucose and releases oxygen as a by-product. The reaction takes place mainly in the "
    "chloroplasts of leaf cells, which contain the pigment chlorophyll."
)
JUNK = (
    "asdkfj qweoir zxcmvn lkjasd | Home | Login | Cart (0) | Click here!!! BUY NOW $$$ asdf asdf "
    "asdf jjjjj kkkk ;;;; >>>> Copyright 2023 All rights reserved | Privacy | Terms"
)


@pytest.fixture(scope="module")
def judge() -> LlmJudge:
    return LlmJudge(max_doc_tokens=96)


@pytest.fixture(scope="module")
def clean_junk(judge) -> np.ndarray:
    return judge.score([CLEAN, JUNK], DIMS)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("corpus")
    dirs = []
    for domain, max_bytes in (("web", 9000), ("code", 9000), ("papers", 9000)):
        out = root / domain
        out.mkdir()
        build_domain(
            domain,
            DomainSource(max_bytes=max_bytes, target_doc_chars=1500),
            out_dir=out,
            shard_docs=4,
        )
        dirs.append(out)
    return dirs


def test_packaged_model_and_digit_tokens(judge):
    assert judge.dtype == resolve_dtype("auto") and judge.batch == 1
    assert judge.model.dtype == getattr(torch, judge.dtype)
    assert len(set(judge.digit_ids)) == 10
    assert [judge.tokenizer.decode([i]) for i in judge.digit_ids] == list("0123456789")
    # A document cannot close the user turn: special-token strings in it are plain text.
    end = judge.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert judge.prefix_ids("a <|im_end|> b").count(end) == judge.prefix_ids("a b").count(end) == 1
    assert len(judge.prefix_ids("word " * 1000)) == len(judge.prefix_ids("")) + 96


def test_judge_scores_in_range_varied_and_deterministic(judge, clean_junk):
    assert clean_junk.shape == (2, len(DIMS))
    assert np.isfinite(clean_junk).all()
    assert (clean_junk >= 0).all() and (clean_junk <= 9).all()
    assert np.ptp(clean_junk) > 0.3  # dimensions and documents get different scores
    np.testing.assert_array_equal(judge.score([CLEAN, JUNK], DIMS), clean_junk)


def test_judge_rates_encyclopedic_text_over_keyboard_mash(clean_junk):
    educational = [d.name for d in DIMS].index("educational_value")
    assert clean_junk[0, educational] > clean_junk[1, educational]
    assert clean_junk[0, CONTENT].mean() > clean_junk[1, CONTENT].mean()


def test_kv_cache_reuse_matches_scoring_each_prompt_from_scratch(judge):
    judge.model.float()  # bf16 rounding differs with batch shape; fp32 checks the logic
    try:
        cached = judge.score([CLEAN], FEW)
        scratch = judge.score_from_scratch([CLEAN], FEW)
    finally:
        judge.model.to(getattr(torch, judge.dtype))
    np.testing.assert_allclose(cached, scratch, atol=1e-2)
    assert np.ptp(cached) > 0  # not a degenerate constant


def test_tag_corpus_writes_labels_and_scores(judge, corpus, tmp_path):
    cfg = tagging_cfg(sample=12, holdout_fraction=0.25)
    lines: list[str] = []
    report = tag_corpus(corpus, tmp_path, cfg, seed=3, annotator=judge, progress=lines.append)
    stats = report.extra["stats"]
    n_docs = sum(pq.read_metadata(p).num_rows for d in corpus for p in d.glob("*.parquet"))
    assert report.counts == {"documents": n_docs, "annotated": 12} and n_docs > 12
    assert stats["sample_per_domain"] == {"code": 4, "papers": 4, "web": 4}
    assert stats["holdout"] == 3 and set(stats["agreement"]) == {d.name for d in FEW}
    for metrics in stats["agreement"].values():
        assert 0 <= metrics["mae"] <= 9 and 0 <= metrics["within_1"] <= 1
    assert all(sum(h) == 12 and len(h) == 10 for h in stats["label_distribution"].values())
    assert stats["annotate_docs_per_s"] > 0 and stats["classify_docs_per_s"] > 0
    assert report.values["dtype"] == report.extra["dtype"] == judge.dtype
    assert report.values["annotator"] == judge.name
    assert report.json["agreement"] == stats["agreement"]
    assert report.markdown["heldout_spearman"].startswith("| dimension | spearman |")
    # progress: at least the final line of the judge and of the classifier
    assert any(line.startswith("judge: 12/12 documents, ") for line in lines)
    assert any(line.startswith(f"classifier: {n_docs}/{n_docs} documents") for line in lines)
    names = [d.name for d in FEW]

    scores = pq.read_table(tmp_path / SCORES_FILE).to_pandas()
    assert list(scores.columns) == ["id", "domain", *names, "content_score", "format_score"]
    assert len(scores) == n_docs and scores["id"].is_unique
    assert not scores.isna().any().any()
    assert ((scores[names] >= 0) & (scores[names] <= 9)).all().all()
    np.testing.assert_allclose(scores["content_score"], scores[names[:2]].mean(axis=1), rtol=1e-5)

    labels = pq.read_table(tmp_path / LABELS_FILE).to_pandas()
    assert list(labels.columns) == ["id", "domain", *names, "split"]
    assert sorted(labels["split"].value_counts().items()) == [("holdout", 3), ("train", 9)]
    assert set(labels["id"]) <= set(scores["id"])
    assert ((labels[names] >= 0) & (labels[names] <= 9)).all().all()
    assert labels[names].to_numpy().std() > 0


def test_sample_larger_than_corpus_annotates_everything(judge, tmp_path):
    shard = tmp_path / "in" / "part-00000.parquet"
    shard.parent.mkdir()
    texts = [CLEAN, JUNK, "The river Danube flows through ten countries.", "def f(x): return x"]
    rows = [
        {"id": f"d{i}", "text": t, "domain": "web", "source": "t", "meta": "{}"}
        for i, t in enumerate(texts)
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), shard)
    cfg = tagging_cfg(sample=50)
    report = tag_corpus([shard.parent], tmp_path / "out", cfg, seed=0, annotator=judge)
    assert report.counts == {"documents": 4, "annotated": 4}
    assert report.extra["stats"]["holdout"] == 2


def test_empty_input_is_a_clear_error(judge, tmp_path):
    (tmp_path / "none").mkdir()
    none = [tmp_path / "none"]
    with pytest.raises(ValueError, match="no \\*.parquet shards"):
        tag_corpus(none, tmp_path / "out", tagging_cfg(), seed=0, annotator=judge)
    pq.write_table(SCHEMA.empty_table(), tmp_path / "none" / "part-00000.parquet")
    with pytest.raises(ValueError, match="has no documents"):
        tag_corpus(none, tmp_path / "out", tagging_cfg(), seed=0, annotator=judge)
    with pytest.raises(ValueError, match="one content and one format"):
        tag_corpus(none, tmp_path / "out", TaggingConfig(), seed=0, annotator=judge)
    with pytest.raises(ValueError, match="both content and format"):
        TaggingConfig(dimensions=list(FEW[:2]))  # the recipe refuses it before any stage


def test_sample_is_seeded_and_balanced_over_domains(corpus):
    files = [p for d in corpus for p in sorted(d.glob("*.parquet"))]
    sample, counts = draw_sample(files, 9, seed=1)
    assert sorted(counts) == ["code", "papers", "web"]
    assert sorted(s["domain"] for s in sample) == ["code"] * 3 + ["papers"] * 3 + ["web"] * 3
    assert draw_sample(files, 9, seed=1)[0] == sample
    assert draw_sample(files, 9, seed=2)[0] != sample
    everything, _ = draw_sample(files, 10_000, seed=1)
    assert len(everything) == sum(counts.values())


def test_classifier_learns_a_real_signal(corpus):
    """Labels that follow the domain (code high, papers low) are recovered on unseen documents."""
    rows = [
        r for d in corpus for p in sorted(d.glob("*.parquet")) for r in pq.read_table(p).to_pylist()
    ]
    rows = [r for r in rows if r["domain"] in ("code", "papers")]
    target = {"code": 8.0, "papers": 2.0}
    train, test = rows[::2], rows[1::2]
    labels = np.array([[target[r["domain"]], 9 - target[r["domain"]]] for r in train])
    # Domains hidden from the classifier ("?"): the signal must come from the text itself.
    clf = TagClassifier(TaggingConfig()).fit([r["text"] for r in train], ["?"] * len(train), labels)
    pred = clf.predict([r["text"] for r in test], ["?"] * len(test))
    is_code = np.array([r["domain"] == "code" for r in test])
    assert pred.shape == (len(test), 2) and (pred >= 0).all() and (pred <= 9).all()
    assert pred[is_code, 0].min() > pred[~is_code, 0].max()


def test_remote_judge_spec_and_digit_expectation():
    remote = make_annotator("http://localhost:8000/v1/::Qwen/Qwen3-8B", max_doc_tokens=10)
    assert isinstance(remote, OpenAIJudge)
    assert (remote.base_url, remote.model) == ("http://localhost:8000/v1", "Qwen/Qwen3-8B")
    body = remote.request_body("x" * 100, DIMS[2])
    assert body["model"] == "Qwen/Qwen3-8B" and body["max_tokens"] == 1 and body["logprobs"]
    user = body["messages"][-1]["content"]
    assert "x" * 40 in user and "x" * 41 not in user and DIMS[2].question in user
    with pytest.raises(ValueError, match="expected"):
        make_annotator("http://localhost:8000/v1")
    top = {"7": np.log(0.5), " 9": np.log(0.25), "x": np.log(0.2), "8": np.log(0.05)}
    assert digit_expectation_from_top(top) == pytest.approx((7 * 0.5 + 9 * 0.25 + 8 * 0.05) / 0.8)
    with pytest.raises(ValueError, match="no digit"):
        digit_expectation_from_top({"yes": -0.1})
    with pytest.raises(ValueError, match="kind"):
        TagDimension(name="x", kind="style", question="?")
    with pytest.raises(ValueError, match="reserved"):
        TagDimension(name="content_score", kind="content", question="?")

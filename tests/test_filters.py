"""Tests for nanbeige_data.refinery.filters: real embedded domains, real technical text and
crafted junk through datatrove; the recipe's per-domain filter chains."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from pydoc_data.topics import topics

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from datatrove.data import Document

from nanbeige_data.corpus.build import DOMAINS, SCHEMA, CorpusError, build_domain
from nanbeige_data.corpus.config import DomainSource
from nanbeige_data.recipe import RECIPES_DIR, RecipeError, parse_recipe
from nanbeige_data.refinery.config import CodeQualityRules, FilterConfig
from nanbeige_data.refinery.filters import (
    WORDS,
    CodeQualityFilter,
    FilterStats,
    LanguageIdFilter,
    SanityFilter,
    filter_domain,
    filter_names,
    filter_steps,
    iter_excluded,
)

KNOBS = {"target_doc_chars": 4000, "min_doc_chars": 200}
CFG = FilterConfig(examples_per_filter=3)


def run(domain: str, raw: Path, out: Path, cfg: FilterConfig, work: Path) -> FilterStats:
    """filter_domain, its Report checked against its stats (what the asset's metadata shows)."""
    report = filter_domain(domain, raw, out, cfg, work)
    stats = FilterStats(**report.extra["stats"])
    assert report.counts == {"documents_in": stats.documents_in, "documents": stats.documents_out}
    assert report.json == {"drop_reasons": stats.reasons, "dropped_examples": stats.examples}
    table = report.markdown["dropped_by_filter"]
    assert all(f"| {name} | {n} |" in table for name, n in stats.dropped.items())
    return stats


def raw_domain(root: Path, domain: str, max_bytes: int) -> Path:
    out = root / "raw" / domain
    out.mkdir(parents=True)
    build_domain(domain, DomainSource(max_bytes=max_bytes, **KNOBS), out_dir=out)
    return out


def add_shard(input_dir: Path, rows: list[tuple[str, str]], domain: str) -> None:
    """Append crafted documents (id, text) as one more shard of a corpus version."""
    cols = {"id": [], "text": [], "domain": [], "source": [], "meta": []}
    for doc_id, text in rows:
        for name, value in zip(cols, (doc_id, text, domain, "crafted", "{}"), strict=True):
            cols[name].append(value)
    pq.write_table(pa.table(cols, schema=SCHEMA), input_dir / "part-99999.parquet")


def table(folder: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(folder.glob("*.parquet"))])


def excluded(out_dir: Path) -> dict[str, tuple[str, str]]:
    """id -> (filter, reason) of every document kept for audit under out_dir/excluded."""
    folders = (out_dir / "excluded").glob("*")
    return {
        rec["id"]: (p.name, rec["reason"])
        for p in folders
        for rec in iter_excluded(out_dir, p.name)
    }


def assert_consistent(
    stats: FilterStats, input_dir: Path, out_dir: Path, cfg: FilterConfig = CFG
) -> None:
    assert stats.documents_in == table(input_dir).num_rows
    assert stats.documents_in - stats.documents_out == sum(stats.dropped.values())
    assert sum(stats.reasons.values()) == sum(stats.dropped.values())
    assert list(stats.dropped) == filter_names(stats.domain, cfg)  # pipeline order
    assert {p.name for p in out_dir.iterdir()} <= {"excluded"} | {
        p.name for p in out_dir.glob("part-*.parquet")
    }
    json.dumps(stats.as_dict())


# --------------------------------------------------------------------------- real domains


@pytest.fixture(scope="module")
def filtered(tmp_path_factory) -> dict[str, tuple[Path, Path, FilterStats]]:
    root = tmp_path_factory.mktemp("domains")
    runs = {}
    for domain in DOMAINS:
        raw = raw_domain(root, domain, 300_000)
        out = root / "filtered" / domain
        runs[domain] = (raw, out, run(domain, raw, out, CFG, root / "work"))
    return runs


@pytest.mark.parametrize("domain", DOMAINS)
def test_real_domain_mostly_survives_in_corpus_schema(filtered, domain: str) -> None:
    raw, out, stats = filtered[domain]
    assert_consistent(stats, raw, out)
    assert stats.documents_in >= 50
    assert stats.documents_out >= 0.8 * stats.documents_in, stats.reasons
    for shard in out.glob("*.parquet"):
        assert pq.read_schema(shard).equals(SCHEMA, check_metadata=True)
    kept, source = table(out).to_pylist(), {r["id"]: r for r in table(raw).to_pylist()}
    assert len(kept) == stats.documents_out
    assert all(row == source[row["id"]] for row in kept)  # rows verbatim (C4 rewrites nothing)
    dropped = excluded(out)
    assert len(dropped) == sum(stats.dropped.values())
    assert not set(dropped) & {row["id"] for row in kept}
    for name, examples in stats.examples.items():
        assert 1 <= len(examples) <= CFG.examples_per_filter and stats.dropped[name] > 0
        assert all(dropped[e["id"]] == (name, e["reason"]) for e in examples)


def test_code_gets_code_rules_and_prose_gets_prose_rules(filtered) -> None:
    assert list(filtered["code"][2].dropped) == ["sanity", "code_quality"]
    prose = ["sanity", "language_id", "gopher_repetition", "gopher_quality", "c4_quality"]
    assert list(filtered["books"][2].dropped) == [*prose, "fineweb_quality"]


# --------------------------------------------------------------------------- crafted junk

GERMAN = (
    "Die Stadt liegt am Ufer eines breiten Flusses und ist seit dem Mittelalter ein wichtiger "
    "Handelsplatz. Im Sommer kommen viele Besucher, um die alten Kirchen und die engen Gassen "
    "der Altstadt zu sehen. Die Bewohner sind stolz auf ihre Geschichte und feiern jedes Jahr "
    "ein großes Fest mit Musik, Tanz und vielen Ständen auf dem Marktplatz. "
) * 2
ENGLISH = (
    "The river town grew up around a ford that merchants used for centuries. Its market was "
    "held every week, and traders came from the hills with wool and cheese. The old bridge was "
    "built of stone in the fourteenth century and still carries traffic today. Visitors walk "
    "along the quay to see the warehouses, which have been turned into shops and flats. Local "
    "historians have written several books about the families who ran the mills. "
)
ENGLISH_2 = (
    "Our new website is almost ready. The shop will open in the spring with a small range of "
    "handmade furniture. Each table is cut from oak that grew in the valley, and every chair is "
    "finished by hand. We also repair old pieces and can advise you on caring for wood. Please "
    "come back soon to read about our workshop and the people who work in it. "
)
SALAD_WORDS = ["cheap", "watches", "online", "discount", "free", "shipping", "best", "price"]
SALAD_WORDS += ["sale", "deals", "buy", "now", "offer", "brand", "luxury", "replica", "today"]


def prose_junk() -> list[tuple[str, str]]:
    rng = random.Random(0)
    salad = " ".join(rng.choice(SALAD_WORDS) for _ in range(400))
    bad = "".join(c if i % 15 else "\ufffd" for i, c in enumerate(ENGLISH * 2))
    return [
        ("junk/repeated", "Buy cheap watches online today at the best price.\n" * 200),
        ("junk/german", GERMAN),
        ("junk/salad", salad),
        ("junk/lorem", f"{ENGLISH}\nLorem ipsum dolor sit amet, consectetur elit.\n{ENGLISH_2}"),
        ("junk/empty", ""),
        ("junk/blank", "  \n\t \n"),
        ("junk/huge", ENGLISH * 200),
        ("junk/mojibake", bad),
    ]


PROSE_EXPECTED = {
    "junk/repeated": ("gopher_repetition", "dup_line_frac"),
    "junk/german": ("language_id", "language:de"),
    "junk/salad": ("gopher_quality", "gopher_enough_stop_words"),
    "junk/lorem": ("c4_quality", "lorem_ipsum"),
    "junk/empty": ("sanity", "empty"),
    "junk/blank": ("sanity", "empty"),
    "junk/huge": ("sanity", "too_long"),
    "junk/mojibake": ("sanity", "bad_encoding"),
}


def test_prose_junk_is_dropped_with_filter_and_reason(tmp_path: Path) -> None:
    raw = raw_domain(tmp_path, "web", 60_000)
    add_shard(raw, prose_junk(), "web")
    cfg = FilterConfig(max_doc_chars=50_000, examples_per_filter=10)
    out = tmp_path / "out"
    stats = run("web", raw, out, cfg, tmp_path / "work")
    assert_consistent(stats, raw, out, cfg)
    dropped = excluded(out)
    assert {k: dropped.get(k) for k in PROSE_EXPECTED} == PROSE_EXPECTED
    kept_ids = set(table(out).column("id").to_pylist())
    assert not kept_ids & set(PROSE_EXPECTED)
    assert len(ENGLISH * 200) > cfg.max_doc_chars > len(ENGLISH * 2)
    for name, reason in PROSE_EXPECTED.values():
        assert stats.reasons[f"{name}:{reason}"] >= 1
    sanity = {e["id"]: e for e in stats.examples["sanity"]}
    assert sanity["junk/huge"]["reason"] == "too_long"
    assert len(sanity["junk/huge"]["text"]) == 300


def code_junk() -> list[tuple[str, str]]:
    blob = "var a=function(b){return b*2};" * 700  # one 21 kB line
    wide = "\n".join(f"x_{i} = '{'abcdefghij' * 15}'" for i in range(20))
    return [
        ("junk/minified.js", blob),
        ("junk/wide.py", wide),
        ("junk/symbols.py", "\n".join("{[(<>)]} ;;; ||| &&& ^^^ ~~~ ##" for _ in range(20))),
        ("junk/generated.py", "# Auto-generated by protoc. DO NOT EDIT.\n" + "x = 1\n" * 30),
        ("junk/oneliner.py", "import os\nprint(os.getcwd())  # the current working directory"),
        ("junk/repeated.py", "print('spam and eggs')\n" * 200 + "def f():\n    return 1\n"),
        ("junk/empty.py", ""),
    ]


CODE_EXPECTED = {
    "junk/minified.js": ("code_quality", "max_line_length"),
    "junk/wide.py": ("code_quality", "mean_line_length"),
    "junk/symbols.py": ("code_quality", "alphanumeric_fraction"),
    "junk/generated.py": ("code_quality", "autogenerated"),
    "junk/oneliner.py": ("code_quality", "too_few_lines"),
    "junk/repeated.py": ("code_quality", "repeated_lines"),
    "junk/empty.py": ("sanity", "empty"),
}


def test_code_junk_is_dropped_and_real_code_kept(tmp_path: Path) -> None:
    raw = raw_domain(tmp_path, "code", 60_000)
    real = table(raw).num_rows
    add_shard(raw, code_junk(), "code")
    out = tmp_path / "out"
    stats = run("code", raw, out, CFG, tmp_path / "work")
    assert_consistent(stats, raw, out)
    assert {k: v for k, v in excluded(out).items() if k in CODE_EXPECTED} == CODE_EXPECTED
    assert stats.documents_out >= real - 1  # the stdlib sample survives
    assert len(stats.examples["code_quality"]) == CFG.examples_per_filter


# --------------------------------------------------------------------------- edge cases


def test_empty_inputs_give_zero_stats_and_no_shards(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    stats = run("papers", empty, tmp_path / "o1", CFG, tmp_path / "w")
    assert (stats.documents_in, stats.documents_out, sum(stats.dropped.values())) == (0, 0, 0)
    assert list(stats.dropped) == filter_names("papers")
    add_shard(empty, [], "papers")  # a shard with zero rows
    out = tmp_path / "o2"
    stats = run("papers", empty, out, CFG, tmp_path / "w")
    assert (stats.documents_in, stats.documents_out) == (0, 0)
    assert not list(out.glob("*.parquet")) and not stats.reasons


def test_bad_inputs_fail_with_what_and_where(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(CorpusError, match="nope: corpus directory not found"):
        filter_domain("web", missing, tmp_path / "o", CFG, tmp_path / "w")
    bad = tmp_path / "bad"
    bad.mkdir()
    pq.write_table(pa.table({"id": ["a"], "text": [1]}), bad / "x.parquet")
    with pytest.raises(CorpusError, match=r"x\.parquet.*'text'"):
        filter_domain("web", bad, tmp_path / "o", CFG, tmp_path / "w")
    nulls = tmp_path / "nulls"
    nulls.mkdir()
    rows = {"id": ["a", "b"], "text": ["fine text", None], "domain": ["web"] * 2}
    pq.write_table(pa.table(rows | {"source": ["s"] * 2, "meta": ["{}"] * 2}), nulls / "n.parquet")
    with pytest.raises(ValueError, match=r"n\.parquet: row 2: null or missing \['text'\]"):
        filter_domain("web", nulls, tmp_path / "o", CFG, tmp_path / "w")
    with pytest.raises(ValueError, match="not empty"):  # out_dir must be a fresh staging dir
        filter_domain("web", missing.parent, bad, CFG, tmp_path / "w")
    with pytest.raises(ValueError, match="unknown domain 'math'"):
        filter_steps("math", CFG)


# --------------------------------------------------------------------------- recipe chains


@pytest.fixture(scope="module")
def tiny_raw() -> dict:
    return yaml.safe_load((RECIPES_DIR / "tiny.yaml").read_text())


def python_docs(root: Path) -> Path:
    """The Python documentation's reference topics, shipped with the stdlib (pydoc_data): real
    technical text that quotes code in braces and underlines its headings."""
    out = root / "raw"
    out.mkdir(parents=True)
    add_shard(out, [(f"pydoc/{name}", text) for name, text in sorted(topics.items())], "web")
    return out


def test_todays_chains_are_the_defaults(tiny_raw) -> None:
    tiny = parse_recipe(tiny_raw).refinery.filters
    assert tiny.model_dump(exclude={"max_doc_chars"}) == FilterConfig().model_dump(
        exclude={"max_doc_chars"}
    )
    prose = ["sanity", "language_id", "gopher_repetition", "gopher_quality", "c4_quality"]
    assert filter_names("web") == [*prose, "fineweb_quality"] == filter_names("books")
    assert filter_names("code") == ["sanity", "code_quality"]
    steps = {d: {type(s).__name__: s for s in filter_steps(d, tiny)} for d in DOMAINS}
    assert steps["web"]["C4DocumentFilter"].min_num_sentences == 3
    assert steps["web"]["C4DocumentFilter"].filter_curly_bracket is True
    assert steps["books"]["GopherRepetitionFilter"].dup_line_frac == 0.4
    books = steps["books"]["FineWebQualityFilter"]
    assert (books.char_duplicates_ratio, books.short_line_threshold) == (0.2, 0.9)
    assert (books.new_line_ratio, books.line_punct_exclude_zero) == (0.4, True)
    assert steps["papers"]["C4DocumentFilter"].filter_curly_bracket is False
    assert steps["web"]["FineWebQualityFilter"].char_duplicates_ratio == 0.01
    assert steps["web"]["FineWebQualityFilter"].stop_chars[-1] == ")"  # closing brackets end lines


def test_a_domain_changes_only_what_it_names(tiny_raw) -> None:
    raw = copy.deepcopy(tiny_raw)
    raw["refinery"]["filters"]["books"] = {
        "fineweb_quality": {"char_duplicates_ratio": None},
        "gopher_quality": None,
        "code_quality": {"max_line_length": 5000},
    }
    base, changed = parse_recipe(tiny_raw), parse_recipe(raw)
    books = changed.refinery.filters.books
    assert books.fineweb_quality.short_line_thr == 0.9  # books' other overrides stay
    assert books.gopher_repetition.dup_line_frac == 0.4
    names = filter_names("books", changed.refinery.filters)
    assert "gopher_quality" not in names and names[-1] == "code_quality"
    fineweb = next(
        s for s in filter_steps("books", changed.refinery.filters) if "FineWeb" in s.name
    )
    assert fineweb.char_duplicates_ratio == float("inf")  # the rule never trips
    for domain in ("web", "code", "papers"):
        assert getattr(changed.refinery.filters, domain) == getattr(base.refinery.filters, domain)
    assert changed.section_hash("refinery.filters") != base.section_hash("refinery.filters")
    again = FilterConfig.model_validate(changed.refinery.filters.model_dump())
    assert again == changed.refinery.filters  # a manifest's dump reads back as the same chain


@pytest.mark.parametrize(
    ("web", "field", "reason"),
    [
        ({"c4": {}}, "refinery.filters.web.c4", "Extra inputs"),
        (
            {"c4_quality": {"filter_curly_brackets": False}},
            "refinery.filters.web.c4_quality.filter_curly_brackets",
            "Extra inputs",
        ),
        (
            {"fineweb_quality": {"char_duplicates_ratio": 1.5}},
            "refinery.filters.web.fineweb_quality.char_duplicates_ratio",
            "less than or equal to 1",
        ),
        (
            {"gopher_repetition": {"dup_line_frac": 0}},
            "refinery.filters.web.gopher_repetition.dup_line_frac",
            "greater than 0",
        ),
        (
            {"gopher_quality": {"min_doc_words": "many"}},
            "refinery.filters.web.gopher_quality.min_doc_words",
            "valid integer",
        ),
        ({"language_id": "maybe"}, "refinery.filters.web.language_id", "valid boolean"),
    ],
)
def test_a_bad_chain_is_a_recipe_error_naming_the_field(tiny_raw, web, field, reason) -> None:
    raw = copy.deepcopy(tiny_raw)
    raw["refinery"]["filters"]["web"] = web
    with pytest.raises(RecipeError) as err:
        parse_recipe(raw, origin="bad.yaml")
    msg = str(err.value)
    assert "bad.yaml" in msg and field in msg and reason in msg, msg


def test_switching_off_a_rule_keeps_the_documents_it_dropped(tiny_raw, tmp_path) -> None:
    raw = copy.deepcopy(tiny_raw)
    raw["refinery"]["filters"]["web"] = {
        "c4_quality": {"filter_curly_bracket": False},
        "fineweb_quality": {"char_duplicates_ratio": None},
    }
    base, changed = parse_recipe(tiny_raw).refinery.filters, parse_recipe(raw).refinery.filters
    docs = python_docs(tmp_path)
    outs = {"before": tmp_path / "before", "after": tmp_path / "after"}
    before = run("web", docs, outs["before"], base, tmp_path / "work")
    after = run("web", docs, outs["after"], changed, tmp_path / "work")
    assert_consistent(before, docs, outs["before"], base)
    assert_consistent(after, docs, outs["after"], changed)
    rules = {"curly_bracket", "char_dup_ratio"}
    dropped = excluded(outs["before"])
    by_rules = {doc_id for doc_id, (_, why) in dropped.items() if why in rules}
    assert before.reasons["c4_quality:curly_bracket"] >= 10, before.reasons
    assert before.reasons["fineweb_quality:char_dup_ratio"] >= 5, before.reasons
    assert by_rules <= set(table(outs["after"]).column("id").to_pylist())  # all kept now
    assert not {r.split(":")[1] for r in after.reasons} & rules
    others = {doc_id: why for doc_id, why in dropped.items() if doc_id not in by_rules}
    assert excluded(outs["after"]) == others  # every other rule drops what it dropped before
    assert after.documents_out == before.documents_out + len(by_rules)


# --------------------------------------------------------------------------- single steps


def reason(step, text: str) -> bool | tuple[bool, str]:
    return step.filter(Document(text=text, id="t", metadata={}))


def test_single_filters_on_one_document() -> None:
    sanity = SanityFilter(max_chars=100, max_replacement_fraction=0.01)
    assert reason(sanity, "fine text") is True
    assert reason(sanity, "x" * 101) == (False, "too_long")
    lang = LanguageIdFilter("en", 0.65)
    assert reason(lang, ENGLISH) is True
    assert reason(lang, GERMAN) == (False, "language:de")
    assert reason(lang, "The Lovely Bones 2009 film") == (False, "language_score")
    code = "def f(x):\n    y = x + 1\n    return y\n"
    assert reason(CodeQualityFilter(), code) is True
    assert reason(CodeQualityFilter(), code * 5) == (False, "repeated_lines")
    no_repeat_rule = CodeQualityRules(max_duplicate_line_fraction=None)
    assert reason(CodeQualityFilter(no_repeat_rule), code * 5) is True


def test_words_are_gophers_whitespace_words() -> None:
    assert WORDS.word_tokenize("Hello, world! 'Tis 3.5 m -- ok.") == [
        "Hello", "world", "Tis", "3.5", "m", "--", "ok",
    ]  # fmt: skip
    assert WORDS.sent_tokenize('Mr. Smith came. "Go!" she said. Then') == [
        "Mr. Smith came.", '"Go!"', "she said.", "Then",
    ]  # fmt: skip

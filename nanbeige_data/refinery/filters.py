"""Heuristic quality filtering of one corpus domain as a datatrove pipeline.

``filter_domain`` reads a corpus version directory (Parquet shards in ``corpus.SCHEMA``), runs
the domain's filter chain on the recipe's datatrove executor (``refinery.execution``: local
processes, Slurm or Ray), writes the kept documents to ``out_dir/part-NNNNN.parquet`` in the
same schema, keeps every dropped document under ``out_dir/excluded/<filter>/`` (JSONL with the
drop reason) and returns a Report with per-filter and per-reason drop counts parsed from
datatrove's own stats.

The chain of each domain is the recipe's ``refinery.filters.<domain>`` (see
``refinery/config.py``): which filters run and their thresholds. Sanity always runs first;
then, where enabled and in this order (cheap and decisive first):

* ``SanityFilter`` -- "empty", "too_long" (> ``max_doc_chars``), "bad_encoding" (U+FFFD
  replacement characters above ``max_replacement_fraction``);
* ``language_id``: ``LanguageIdFilter`` (py3langid, offline);
* ``gopher_repetition``, ``gopher_quality``, ``c4_quality``, ``fineweb_quality``: datatrove's;
* ``code_quality``: ``CodeQualityFilter`` (StarCoder / The Stack rules).

Today's chains (the defaults): prose (web, books, papers) runs language id, Gopher, C4 and
FineWeb; code runs only the code rules -- no prose or language filters, and no Gopher
repetition: it dropped 9% of real standard-library files (doctests, dispatch tables).

Trade-offs and choices (drop rates measured on the embedded 1.5 MB domains, see tests):

* Words. datatrove's filters take their word tokenizer from ``language``; the default ("en")
  builds ``spacy.blank("en")``, which here imports every spaCy entry point, including a
  TensorFlow plug-in that fails on import. ``WhitespaceWords`` is passed instead: Gopher's own
  definition of a word (whitespace-separated, surrounding punctuation trimmed), pure Python and
  offline. spaCy-style tokens (every comma a "word") made Gopher's "80% of words contain a
  letter" rule drop 56% of Shakespeare and 42% of abstracts; with Gopher's words it drops <2%.
* C4 runs as a document filter (``C4DocumentFilter``): its line rules decide whether enough
  sentences remain, but the text is written verbatim, because C4's line rewriting deletes speaker
  names, blank lines, indentation and paragraph breaks. As in FineWeb, lines are not required
  to end in punctuation (that rule dropped 63% of web passages).
* FineWeb's "lines ending in punctuation" also accepts closing quotes and brackets (news items
  ending in ``."`` were dropped).
* Per-domain thresholds (``config.PROSE_CHAINS``): web and papers need 3 C4 sentences instead
  of 5 (the embedded web is passages and news items, papers are abstracts: 5 dropped 15% / 2%);
  papers and books allow curly brackets (LaTeX and statistics notation; OCR of "£" and typos
  such as "{Aside.]" in books). Books (plays) get FineWeb's duplicate-line character ratio at
  0.2 instead of 0.01 (speaker names repeat: 0.01 dropped 93% of plays), short lines up to 90%
  (verse), newlines per word up to 0.4 (rapid dialogue), single-line chunks without final
  punctuation, and Gopher's duplicate-line fraction at 0.4 (speaker names again: 0.3 dropped
  4% of plays). Web keeps C4's and FineWeb's defaults otherwise; its largest loss (9%) is
  FineWeb's line-punctuation rule on OpenWebText excerpts cut off mid-sentence. Technical text
  of your own may need a rule off: C4's curly-bracket rule drops text that quotes code, and
  FineWeb's duplicate-line rule drops reST (repeated heading underlines).
* A rule switched off (``null``) is passed to datatrove as the value it never trips on.
* Language ID reads the whole text (py3langid's byte DFA is pure Python, about 1 MB/s); a score
  is the normalised probability of the top language.
* ``documents_in - documents_out == sum(dropped)`` and the input/output row counts are checked
  after every run; a mismatch raises.
"""

from __future__ import annotations

import functools
import gzip
import itertools
import json
import logging
import math
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from datatrove.data import Document
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.text import PUNCTUATION, TERMINAL_PUNCTUATION
from datatrove.utils.word_tokenizers import WordTokenizer

from nanbeige_data.refinery.config import CodeQualityRules, ExecutionConfig, FilterConfig
from nanbeige_data.refinery.docs import (
    CorpusReader,
    Stage,
    corpus_shards,
    corpus_writer,
    row_count,
    run_stages,
    work_dir,
    write_row,
)
from nanbeige_data.report import Report, md_table

log = logging.getLogger(__name__)

CODE_VERSION = "1"  # bump when the documents kept for the same input change
EXCLUDED_DIR = "excluded"
LOCAL = ExecutionConfig()  # the default execution: local processes
DEFAULTS = FilterConfig()  # today's chains


@dataclass
class FilterStats:
    """What ``filter_domain`` kept and dropped."""

    domain: str
    documents_in: int = 0
    documents_out: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # filter -> drops, pipeline order
    reasons: dict[str, int] = field(default_factory=dict)  # "filter:reason" -> drops
    examples: dict[str, list[dict]] = field(default_factory=dict)  # filter -> dropped docs
    executor: str = "local"
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)

    def report(self) -> Report:
        return Report(
            counts={"documents_in": self.documents_in, "documents": self.documents_out},
            markdown={"dropped_by_filter": md_table(("filter", "dropped"), self.dropped.items())},
            json={"drop_reasons": self.reasons, "dropped_examples": self.examples},
            extra={"stats": self.as_dict()},
        )


# --------------------------------------------------------------------------- words


_TRIM = PUNCTUATION + "\u2010\u2011\u2012\u2013\u2014\u2015\u2018\u2019\u201c\u201d"
_SENTENCE_END = re.compile(
    r"(?<![A-Z])(?<!\bMr)(?<!\bMs)(?<!\bDr)(?<!\bSt)(?<!\bvs)(?<!\bMrs)"
    r"[.!?\u2026]+[\"'\u201d\u2019)\]]*(?=\s|$)"
)


class WhitespaceWords(WordTokenizer):
    """Gopher's words (whitespace split, punctuation trimmed) and regex sentences; no model.

    Instances compare equal, so datatrove's per-text cache is shared by all filters.
    """

    def __init__(self) -> None:
        super().__init__("en")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(type(self).__name__)

    def word_tokenize(self, text: str) -> list[str]:
        return [word.strip(_TRIM) or word for word in text.split()]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        spans, start = [], 0
        for match in _SENTENCE_END.finditer(text):
            spans.append((start, match.end()))
            start = match.end()
        return spans + [(start, len(text))] if text[start:].strip() else spans

    def sent_tokenize(self, text: str) -> list[str]:
        return [text[a:b].strip() for a, b in self.span_tokenize(text) if text[a:b].strip()]


WORDS = WhitespaceWords()


# --------------------------------------------------------------------------- filters


class SanityFilter(BaseFilter):
    """Drops empty text, documents over ``max_chars`` and mis-decoded text (U+FFFD)."""

    name = "Sanity"

    def __init__(self, max_chars: int, max_replacement_fraction: float, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.max_chars = max_chars
        self.max_replacement_fraction = max_replacement_fraction

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        text = doc.text
        if not text.strip():
            return False, "empty"
        if len(text) > self.max_chars:
            return False, "too_long"
        if text.count("\ufffd") > self.max_replacement_fraction * len(text):
            return False, "bad_encoding"
        return True


class LanguageIdFilter(BaseFilter):
    """Keeps documents whose top py3langid language is ``language`` with enough probability.

    Reasons: "language_score" (the top language is below ``min_score``: too short, mixed or
    no language) or "language:<code>" (confidently another language). Sets
    ``metadata["language"]`` and ``metadata["language_score"]`` on every document.
    """

    name = "Language ID (py3langid)"
    _requires_dependencies = ["py3langid"]

    def __init__(self, language: str = "en", min_score: float = 0.65, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.language = language
        self.min_score = min_score

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        lang, score = _language_identifier().classify(doc.text)
        doc.metadata["language"], doc.metadata["language_score"] = lang, round(score, 4)
        if score < self.min_score:
            return False, "language_score"
        if lang != self.language:
            return False, f"language:{lang}"
        return True


@functools.cache
def _language_identifier() -> Any:
    """py3langid's model with normalised probabilities, loaded once per process (~1.5 s)."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


_AUTOGENERATED = (
    "auto-generated",
    "autogenerated",
    "automatically generated",
    "generated automatically",
    "code generated by",
    "do not edit",
)


class CodeQualityFilter(BaseFilter):
    """StarCoder / The Stack heuristics for source files, plus a repeated-lines guard; a rule
    set to None in ``rules`` is off."""

    name = "Code Quality"

    def __init__(self, rules: CodeQualityRules | None = None, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.rules = rules or CodeQualityRules()

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        r, text = self.rules, doc.text
        lines = text.splitlines() or [""]
        if _over(max(len(line) for line in lines), r.max_line_length):
            return False, "max_line_length"
        if _over(sum(len(line) for line in lines) / len(lines), r.max_mean_line_length):
            return False, "mean_line_length"
        alnum = sum(ch.isalnum() for ch in text) / max(len(text), 1)
        if r.min_alphanumeric_fraction is not None and alnum < r.min_alphanumeric_fraction:
            return False, "alphanumeric_fraction"
        head = "\n".join(lines[: r.autogenerated_head_lines or 0]).lower()
        if any(marker in head for marker in _AUTOGENERATED):
            return False, "autogenerated"
        code_lines = [line.strip() for line in lines if line.strip()]
        if r.min_lines is not None and len(code_lines) < r.min_lines:
            return False, "too_few_lines"
        repeated = 1 - len(set(code_lines)) / len(code_lines) if code_lines else 0.0
        if _over(repeated, r.max_duplicate_line_fraction):
            return False, "repeated_lines"
        return True


def _over(value: float, limit: float | None) -> bool:
    return limit is not None and value > limit


class C4DocumentFilter(C4QualityFilter):
    """C4's rules as a document filter: decide on the cleaned lines, keep the text verbatim."""

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        text = doc.text
        try:
            return super().filter(doc)
        finally:
            doc.text = text


# --------------------------------------------------------------------------- pipeline

_STOP_CHARS = tuple(TERMINAL_PUNCTUATION) + ('"', "'", "\u201d", "\u2019", ")")
_DATATROVE: dict[str, type[BaseFilter]] = {
    "gopher_repetition": GopherRepetitionFilter,
    "gopher_quality": GopherQualityFilter,
    "c4_quality": C4DocumentFilter,
    "fineweb_quality": FineWebQualityFilter,
}
_FIXED: dict[str, dict[str, Any]] = {"fineweb_quality": {"stop_chars": _STOP_CHARS}}
# filter -> threshold -> the value datatrove never trips on, for a rule switched off (None);
# the Gopher filters take None themselves
_OFF: dict[str, dict[str, Any]] = {
    "c4_quality": {"min_num_sentences": -1, "min_words_per_line": -1, "max_word_length": -1},
    "fineweb_quality": {
        "line_punct_thr": 0.0,
        "short_line_thr": math.inf,
        "char_duplicates_ratio": math.inf,
        "new_line_ratio": math.inf,
    },
}


def _datatrove_kwargs(name: str, rules: Any) -> dict[str, Any]:
    """A rules section as datatrove keyword arguments (None -> the filter's "off" value)."""
    off = _OFF.get(name, {})
    kwargs = {k: off.get(k) if v is None else v for k, v in rules.model_dump().items()}
    return {"language": WORDS, **kwargs, **_FIXED.get(name, {})}


def _filter_specs(domain: str, cfg: FilterConfig) -> list[tuple[str, type[BaseFilter], dict]]:
    """(name, class, kwargs) of each filter of ``domain``'s chain, in pipeline order."""
    chain = cfg.chain(domain)
    sanity = {
        "max_chars": cfg.max_doc_chars,
        "max_replacement_fraction": cfg.max_replacement_fraction,
    }
    specs: list[tuple[str, type[BaseFilter], dict]] = [("sanity", SanityFilter, sanity)]
    for name in chain.enabled():
        rules = getattr(chain, name)
        if name == "language_id":
            lang = {"language": cfg.language, "min_score": cfg.min_language_score}
            specs.append((name, LanguageIdFilter, lang))
        elif name == "code_quality":
            specs.append((name, CodeQualityFilter, {"rules": rules}))
        else:
            specs.append((name, _DATATROVE[name], _datatrove_kwargs(name, rules)))
    return specs


def filter_names(domain: str, cfg: FilterConfig = DEFAULTS) -> list[str]:
    """Names of ``domain``'s filters in pipeline order (keys of ``FilterStats.dropped``)."""
    return [name for name, _, _ in _filter_specs(domain, cfg)]


def filter_steps(domain: str, cfg: FilterConfig, excluded_dir: Path | None = None) -> list:
    """The filter steps of ``domain`` (no reader/writer); drops go to ``excluded_dir/<name>/``."""
    steps = []
    for name, cls, kwargs in _filter_specs(domain, cfg):
        writer = _exclusion_writer(Path(excluded_dir) / name) if excluded_dir else None
        steps.append(cls(exclusion_writer=writer, **kwargs))
    return steps


def _write_excluded(self, doc: Document) -> dict:
    """JsonlWriter adapter for dropped documents: the corpus row plus the drop reason."""
    return write_row(self, doc) | {"reason": doc.metadata.get("filter_reason", "")}


def _exclusion_writer(folder: Path) -> JsonlWriter:
    return JsonlWriter(str(folder), output_filename="${rank}.jsonl", adapter=_write_excluded)


def _pipeline(domain: str, input_dir: Path, out_dir: Path, cfg: FilterConfig) -> list:
    steps = filter_steps(domain, cfg, out_dir / EXCLUDED_DIR)
    return [CorpusReader(input_dir, keep_empty=True), *steps, corpus_writer(out_dir)]


# --------------------------------------------------------------------------- stats


def _total(value: Any) -> int:
    return int(value if isinstance(value, int | float) else value.get("total", 0))


def _merged_step_stats(logging_dir: Path) -> list[dict[str, int]]:
    """Per-task stats files summed per pipeline step: [{stat name: total}, ...]."""
    merged: list[dict[str, int]] = []
    for path in sorted((logging_dir / "stats").glob("*.json")):
        steps = json.loads(path.read_text())
        merged += [{} for _ in range(len(steps) - len(merged))]
        for acc, step in zip(merged, steps, strict=False):
            for key, value in step["stats"].items():
                acc[key] = acc.get(key, 0) + _total(value)
    return merged


def _drops(names: list[str], steps: list[dict[str, int]]) -> tuple[dict, dict]:
    """``dropped`` and ``reasons`` from merged stats of [reader, *filters, writer]."""
    dropped: dict[str, int] = {}
    reasons: dict[str, int] = {}
    for name, stats in zip(names, steps[1:-1], strict=False):
        dropped[name] = stats.get("dropped", 0)
        named = {k[len("dropped_") :]: v for k, v in stats.items() if k.startswith("dropped_")}
        unnamed = dropped[name] - sum(named.values())
        named |= {"unspecified": unnamed} if unnamed else {}
        reasons |= {f"{name}:{reason}": n for reason, n in sorted(named.items())}
    return dropped, reasons


def _examples(excluded_dir: Path, names: list[str], limit: int) -> dict[str, list[dict]]:
    examples: dict[str, list[dict]] = {}
    for name in names:
        rows: list[dict] = []
        for path in sorted((excluded_dir / name).glob("*.jsonl.gz")):
            rows += _first_records(path, limit - len(rows))
        if rows:
            examples[name] = rows
    return examples


def _first_records(path: Path, limit: int) -> list[dict]:
    rows = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in itertools.islice(f, max(limit, 0)):
            rec = json.loads(line)
            rows.append({"id": rec["id"], "reason": rec["reason"], "text": rec["text"][:300]})
    return rows


# --------------------------------------------------------------------------- entry point


def _prepare_out_dir(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.glob("*.parquet")) or (out_dir / EXCLUDED_DIR).exists():
        raise ValueError(f"filter output directory {out_dir} is not empty")


def filter_domain(
    domain: str,
    input_dir: Path,
    out_dir: Path,
    cfg: FilterConfig,
    work: Path,
    execution: ExecutionConfig = LOCAL,
) -> Report:
    """Filter one domain's corpus version ``input_dir`` into ``out_dir`` with the chain
    ``cfg.<domain>``; datatrove's logs go to a fresh folder under ``work`` (or
    ``execution.work_dir``)."""
    start = time.perf_counter()
    input_dir, out_dir = Path(input_dir), Path(out_dir)
    names = filter_names(domain, cfg)  # an unknown domain fails before anything is written
    shards = corpus_shards(input_dir)
    _prepare_out_dir(out_dir)
    stats = FilterStats(domain, dropped=dict.fromkeys(names, 0), executor=execution.executor)
    if not shards:
        log.warning("filter %s: no *.parquet shards in %s", domain, input_dir)
        return stats.report()
    tasks = min(execution.workers, len(shards))
    log.info(
        "filter %s: %d docs in %d shards, %s executor, %d tasks",
        domain, row_count(shards), len(shards), execution.executor, tasks,
    )  # fmt: skip
    stage = Stage(domain, _pipeline(domain, input_dir, out_dir, cfg), tasks)
    logs = work_dir(execution, work, f"filter-{domain}-")
    run_stages([stage], execution, logs, job="filter")
    stats = _collect(stats, shards, out_dir, logs / domain, cfg)
    stats.seconds = round(time.perf_counter() - start, 3)
    kept = 100.0 * stats.documents_out / max(stats.documents_in, 1)
    log.info(
        "filter %s: %d docs in, %d out (%.1f%% kept) in %.1fs",
        domain, stats.documents_in, stats.documents_out, kept, stats.seconds,
    )  # fmt: skip
    return stats.report()


def _collect(
    stats: FilterStats, shards: list[Path], out_dir: Path, logging_dir: Path, cfg: FilterConfig
) -> FilterStats:
    """Stats from the executor's files, checked against the row counts on disk."""
    steps = _merged_step_stats(logging_dir)
    names = list(stats.dropped)
    dropped, stats.reasons = _drops(names, steps)
    stats.dropped = {n: dropped.get(n, 0) for n in names}
    stats.documents_in = steps[0].get("documents", 0) if steps else 0
    stats.documents_out = steps[-1].get("total", 0) if steps else 0
    stats.examples = _examples(out_dir / EXCLUDED_DIR, names, cfg.examples_per_filter)
    _verify(stats, row_count(shards), row_count(sorted(out_dir.glob("*.parquet"))), out_dir)
    return stats


def _verify(stats: FilterStats, rows_in: int, rows_out: int, out_dir: Path) -> None:
    problems = []
    if stats.documents_in != rows_in:
        problems.append(f"read {stats.documents_in} documents but the input has {rows_in} rows")
    if stats.documents_out != rows_out:
        problems.append(f"wrote {stats.documents_out} documents but {out_dir} has {rows_out}")
    if stats.documents_in - stats.documents_out != sum(stats.dropped.values()):
        problems.append(
            f"in - out != dropped ({stats.documents_in} - {stats.documents_out} != "
            f"{sum(stats.dropped.values())})"
        )
    if problems:
        raise RuntimeError(f"filter {stats.domain}: inconsistent counts: " + "; ".join(problems))


def iter_excluded(out_dir: Path, name: str) -> Iterator[dict]:
    """Every document filter ``name`` dropped into ``out_dir`` (corpus row + "reason")."""
    for path in sorted((Path(out_dir) / EXCLUDED_DIR / name).glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            yield from (json.loads(line) for line in f)

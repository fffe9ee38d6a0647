"""The shape of the code, read from its source (nothing is imported, so these run in a second).

* Import directions: ``assets`` may import both libraries; ``nanbeige_train`` may import
  ``nanbeige_data``; ``nanbeige_data`` imports neither Dagster nor ``nanbeige_train``; neither
  library imports Dagster or ``assets``. Every import counts, function-level ones included.
* One config per stage: no class in the libraries is a hand-made copy of a recipe section.
* Thin assets: no function in ``assets/`` but the CLI is over ``MAX_ASSET_LINES`` lines.

Trade-off: the copy detector is a heuristic on names and value kinds (see ``copied_fields``), so
it can be fooled by renaming every field; it exists to catch the drift that happens by accident
(a second config growing beside the section), not a determined copy.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LIBRARIES = ("nanbeige_data", "nanbeige_train")
FORBIDDEN = {
    "nanbeige_data": {"dagster", "assets", "nanbeige_train"},
    "nanbeige_train": {"dagster", "assets"},
    "assets": set(),
}
MAX_ASSET_LINES = 25

# Records that share field names with a recipe section but are not configs of a stage.
NOT_CONFIGS = {
    # the FG-WSD plan *computed* from the curriculum (steps, offsets, LR ranges per stage):
    # data the trainer reads from plan.json, derived by curriculum.plan(), never filled by hand
    "nanbeige_data/pretraining/curriculum.py:Plan",
    "nanbeige_data/pretraining/curriculum.py:StagePlan",
    # the engine Protocol's per-call argument, shared by evaluation, synthetic data and RL; a
    # caller builds it from whichever section it reads (the Protocol cannot take all of them)
    "nanbeige_data/models.py:SamplingParams",
}
# Shared by records of every kind, so sharing them says nothing about being a copy: a name
# identifies a record; a seed and a resolved dtype are the plain run arguments a library
# function takes beside its section.
PLAIN_ARGUMENTS = {"name", "seed", "dtype"}


def modules(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (REPO / pkg).rglob("*.py"))


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


# --------------------------------------------------------------------------- import directions


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in ``path``, at any depth, relative ones
    resolved, plus ``importlib.import_module("x")`` / ``__import__("x")`` with a literal."""
    return imports_of(parse(path), rel(path).removesuffix(".py").split("/")[:-1])


def imports_of(tree: ast.Module, package: list[str]) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.append((node.lineno, module))
        elif isinstance(node, ast.Call) and _dynamic_import(node):
            found.append((node.lineno, node.args[0].value))
    return found


def _dynamic_import(node: ast.Call) -> bool:
    name = ast.unparse(node.func)
    return (
        name in ("importlib.import_module", "import_module", "__import__")
        and bool(node.args)
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    )


def test_imports_go_one_way():
    wrong = []
    for package, forbidden in FORBIDDEN.items():
        for path in modules(package):
            for line, module in imported_modules(path):
                if module.split(".")[0] in forbidden:
                    wrong.append(f"{rel(path)}:{line} imports {module}")
    assert not wrong, "imports against the direction assets -> train -> data:\n" + "\n".join(wrong)


def test_the_import_check_sees_function_level_and_relative_imports():
    source = (
        "def late():\n    import dagster\n    from ..store import versioned\n"
        "    importlib.import_module('nanbeige_train.model')\n"
    )
    found = [m for _, m in imports_of(ast.parse(source), ["nanbeige_data", "refinery"])]
    assert found == ["dagster", "nanbeige_data.store", "nanbeige_train.model"]


# --------------------------------------------------------------------------- one config per stage


@dataclass(frozen=True)
class ClassInfo:
    where: str  # path:ClassName
    bases: tuple[str, ...]  # last dotted part of each base
    fields: dict[str, str]  # name -> kind of value (see value_kind)
    dataclass: bool
    frozen: bool


def classes() -> dict[str, ClassInfo]:
    """Every class of the libraries, by ``path:Name``."""
    out = {}
    for path in modules(*LIBRARIES):
        for node in ast.walk(parse(path)):
            if isinstance(node, ast.ClassDef):
                info = _class_info(rel(path), node)
                out[info.where] = info
    return out


def _class_info(path: str, node: ast.ClassDef) -> ClassInfo:
    decorators = [ast.unparse(d) for d in node.decorator_list]
    fields = {
        s.target.id: value_kind(s.annotation)
        for s in node.body
        if isinstance(s, ast.AnnAssign)
        and isinstance(s.target, ast.Name)
        and "ClassVar" not in ast.unparse(s.annotation)
    }
    return ClassInfo(
        where=f"{path}:{node.name}",
        bases=tuple(ast.unparse(b).split(".")[-1] for b in node.bases),
        fields=fields,
        dataclass=any(d.split("(")[0].split(".")[-1] == "dataclass" for d in decorators),
        frozen=any("frozen=True" in d for d in decorators),
    )


ALIASES = {"PositiveInt": "int", "Fraction": "float", "Dtype": "str"}
KINDS = {
    "bool": "bool",
    "int": "number",
    "float": "number",
    "str": "text",
    "Path": "text",
    "tuple": "sequence",
    "list": "sequence",
    "Sequence": "sequence",
    "frozenset": "sequence",
    "set": "sequence",
    "dict": "mapping",
    "Mapping": "mapping",
}


def value_kind(annotation: ast.expr) -> str:
    """The kind of value a field holds -- number, text, bool, sequence, mapping or a class
    name -- so ``ngram: int`` (an n-gram size) and ``ngram: str`` (an n-gram) differ."""
    text = ast.unparse(annotation).strip("'\"")
    text = re.sub(r"\s*\|\s*None\b|\bNone\s*\|\s*", "", text)
    text = re.sub(r"^(?:Optional|Annotated)\[(.*?)(?:,.*)?\]$", r"\1", text)
    if text.startswith("Literal["):
        return "text" if text[len("Literal[") :].lstrip().startswith(("'", '"')) else "number"
    head = re.split(r"[\[\s|]", text, maxsplit=1)[0].split(".")[-1]
    head = ALIASES.get(head, head)
    return KINDS.get(head, head)


def section_classes(found: dict[str, ClassInfo]) -> dict[str, ClassInfo]:
    """Classes deriving (at any depth) from nanbeige_data.config.Section."""
    names, sections = {"Section"}, {}
    while True:
        new = {w: c for w, c in found.items() if w not in sections and set(c.bases) & names}
        if not new:
            return sections
        sections.update(new)
        names |= {w.split(":")[1] for w in new}


def same_meaning(field: str, kind: str, section_field: str, section_kind: str) -> bool:
    """Same kind of value and the same name, up to one extra word (``sample`` and
    ``sample_size``, ``high_epochs`` and ``high_quality_epochs``; not ``k`` and ``top_k``)."""
    if kind != section_kind:
        return False
    a, b = sorted((field.split("_"), section_field.split("_")), key=len)
    if a == b:
        return True
    if len(b) != len(a) + 1 or len("_".join(a)) < 3:
        return False
    return any(b[:i] + b[i + 1 :] == a for i in range(len(b)))


def copied_fields(candidate: ClassInfo, section: ClassInfo) -> list[str]:
    """The candidate's fields that mean one of the section's (exact names matched first;
    each section field is matched once)."""
    fields = {f: k for f, k in candidate.fields.items() if f not in PLAIN_ARGUMENTS}
    free = {f: k for f, k in section.fields.items() if f not in PLAIN_ARGUMENTS}
    pairs = []
    for fuzzy in (False, True):
        for field, kind in list(fields.items()):
            match = next(
                (
                    s
                    for s, k in free.items()
                    if (same_meaning(field, kind, s, k) if fuzzy else (s, k) == (field, kind))
                ),
                None,
            )
            if match is not None:
                pairs.append(field if field == match else f"{field}~{match}")
                del fields[field], free[match]
    return sorted(pairs)


def config_copies() -> list[str]:
    """Every non-section config-like class (a dataclass or pydantic model named *Config or
    *Spec, or a frozen one) that re-declares two or more fields of one recipe section."""
    found = classes()
    sections = section_classes(found)
    offenders = []
    for where, cls in sorted(found.items()):
        name = where.split(":")[1]
        model = cls.dataclass or "BaseModel" in cls.bases
        config_like = name.endswith(("Config", "Spec")) or cls.frozen
        if where in sections or where in NOT_CONFIGS or not (model and config_like):
            continue
        for swhere, section in sorted(sections.items()):
            copied = copied_fields(cls, section)
            if len(copied) >= 2:
                offenders.append(f"{where} copies {swhere}: {', '.join(copied)}")
    return offenders


def test_no_library_class_copies_a_recipe_section():
    offenders = config_copies()
    assert not offenders, (
        "one config per stage: these classes re-declare a recipe section's fields; let the "
        "library take the section itself (add a missing field to the section):\n  "
        + "\n  ".join(offenders)
    )


def test_the_copy_detector_catches_renamed_fields_and_spares_other_records():
    assert same_meaning("sample_size", "number", "sample", "number")
    assert same_meaning("high_epochs", "number", "high_quality_epochs", "number")
    assert not same_meaning("ngram", "text", "ngram", "number")  # an n-gram, not its size
    assert not same_meaning("k", "number", "top_k", "number")
    assert section_classes(classes()), "no recipe sections found: has config.Section moved?"
    stale = sorted(w for w in NOT_CONFIGS if w not in classes())
    assert not stale, f"NOT_CONFIGS names classes that no longer exist: {stale}"


# --------------------------------------------------------------------------- thin assets


def body_lines(func: ast.FunctionDef | ast.AsyncFunctionDef, source: list[str]) -> int:
    """Non-blank, non-comment lines of a function's body, without its docstring and without
    the functions defined inside it (those are measured on their own)."""
    skip: set[int] = set()
    body = func.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        skip |= set(range(body[0].lineno, body[0].end_lineno + 1))
    for node in ast.walk(func):
        if node is not func and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            skip |= set(range(start, node.end_lineno + 1))
    lines = range(body[0].lineno, func.end_lineno + 1)
    return sum(
        1
        for n in lines
        if n not in skip and source[n - 1].strip() and not source[n - 1].strip().startswith("#")
    )


def test_asset_functions_are_short():
    long = []
    for path in modules("assets"):
        if path.name == "cli.py":
            continue
        source = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(parse(path)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = body_lines(node, source)
                if n > MAX_ASSET_LINES:
                    long.append(f"{rel(path)}:{node.lineno} {node.name}: {n} lines")
    assert not long, (
        f"functions in assets/ over {MAX_ASSET_LINES} lines (move the work into a library):\n  "
        + "\n  ".join(long)
    )

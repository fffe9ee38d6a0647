"""Resources: the recipe, the versioned store, and the IO manager that hands versions around.

Which recipe and which store root are picked here, once: from run config when given, else from
$NANBEIGE_RECIPE / $NANBEIGE_STORE, else the tiny recipe and ./data/store.

One recipe per code location: the graph (stage and eval set assets) and every code version are
built from the recipe of ``$NANBEIGE_RECIPE`` (the CLI's ``--recipe`` sets it). A run whose
``resources.recipe.config.path`` names another recipe is accepted only when it has the same
graph and the same hash in every section (e.g. the same file by another path, or a copy that
changes only execution settings such as ``refinery.workers``); otherwise it fails before any
asset runs, naming what differs. Trade-off: a second recipe means a second code location
(``NANBEIGE_RECIPE=... dagster dev``), not a run-config switch -- the UI would otherwise show
one recipe's graph and staleness while the run computes another's.
"""

import functools
import os

import dagster as dg

from nanbeige_data.config import Section
from nanbeige_data.recipe import Recipe, RecipeError, load_recipe, resolve_recipe_path
from nanbeige_data.store.versioned import Version, VersionedStore

STORE_ENV = "NANBEIGE_STORE"
DEFAULT_STORE = "data/store"


def default_store_root() -> str:
    return os.environ.get(STORE_ENV) or DEFAULT_STORE


def recipe_at(ref: str | None = None) -> Recipe:
    """The recipe at a name or path ("" / None = $NANBEIGE_RECIPE, else tiny), parsed once per
    file content (the Definitions ask for it once per asset)."""
    path = resolve_recipe_path(ref or None)
    stat = path.stat()
    return _parsed(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _parsed(path: str, mtime_ns: int, size: int) -> Recipe:
    return load_recipe(path)


def definition_recipe() -> Recipe:
    """The recipe this code location's Definitions are built from."""
    return recipe_at(None)


def recipe_differences(built: Recipe, run: Recipe) -> list[str]:
    """What ``run`` changes against ``built``: the graph's shape (stage and eval set names),
    the seed, and every section whose version hash differs, with the fields that differ."""
    out = []
    for what, a, b in (
        ("curriculum stages", built.curriculum.stages, run.curriculum.stages),
        ("eval sets", built.eval.sets, run.eval.sets),
    ):
        if [s.name for s in a] != [s.name for s in b]:
            out.append(f"graph shape: {what} {[s.name for s in a]} -> {[s.name for s in b]}")
    if built.seed != run.seed:
        out.append(f"seed: {built.seed} -> {run.seed} (part of every section's hash)")
    for name, value in built:
        if isinstance(value, Section):
            out += _changed_sections(value, getattr(run, name), name)
    return out


def _changed_sections(a: Section, b: Section, path: str) -> list[str]:
    """``section <path> (fields)`` for the section and each nested one whose hash differs."""
    if a.version_hash() == b.version_hash():
        return []
    nested = [name for name, value in a if isinstance(value, Section)]
    own = [
        name
        for name in type(a).model_fields
        if name not in nested and name not in a.execution_fields
        if getattr(a, name) != getattr(b, name)
    ]
    out = [f"section {path} ({', '.join(own)})"] if own else []
    for name in nested:
        out += _changed_sections(getattr(a, name), getattr(b, name), f"{path}.{name}")
    return out


def check_one_recipe(ref: str) -> Recipe:
    """The run's recipe, if this code location can run it (see the module docstring)."""
    run, built = recipe_at(ref), definition_recipe()
    differences = recipe_differences(built, run)
    if not differences:
        return run
    where, home = resolve_recipe_path(ref), resolve_recipe_path(None)
    raise RecipeError(
        f"run config recipe {ref!r} ({run.name}, {where}) is not the recipe this code "
        f"location was built from ({built.name}, {home}); the graph, eval sets and code "
        "versions come from that one. It differs in:\n  "
        + "\n  ".join(differences)
        + f"\nTo run it, load it as the code location's recipe: NANBEIGE_RECIPE={where} "
        f"dagster dev, or nanbeige run --recipe {where}"
    )


class RecipeResource(dg.ConfigurableResource):
    """The validated recipe; `path` is a recipe name (tiny) or a YAML path ("" = env/default).

    A `path` in run config must agree with the code location's recipe (see the module
    docstring); the check runs when the run starts, before any asset."""

    path: str = ""

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        recipe = check_one_recipe(self.path) if self.path else self.load()
        if context.log is not None:
            context.log.info(f"recipe {recipe.name} from {self.location()}")

    def load(self) -> Recipe:
        return load_recipe(self.path or None)

    def location(self) -> str:
        return str(resolve_recipe_path(self.path or None))


class StoreResource(dg.ConfigurableResource):
    """The versioned store: a local path or an fsspec URL (s3://, gs://, ...)."""

    root: str = ""

    def open(self) -> VersionedStore:
        return VersionedStore(self.root or default_store_root())


class VersionedStoreIOManager(dg.ConfigurableIOManager):
    """Assets return a committed `Version`; downstream inputs receive the exact version that
    the upstream materialization recorded (not merely the newest on disk)."""

    root: str = ""

    def _store(self) -> VersionedStore:
        return VersionedStore(self.root or default_store_root())

    def handle_output(self, context: dg.OutputContext, obj: Version) -> None:
        if not isinstance(obj, Version):
            raise TypeError(
                f"{context.asset_key.to_user_string()} must return a store Version, "
                f"got {type(obj).__name__}"
            )

    def load_input(self, context: dg.InputContext) -> Version:
        key = context.asset_key
        store = self._store()
        event = context.instance.get_latest_materialization_event(key)
        if event is not None and event.asset_materialization is not None:
            recorded = event.asset_materialization.metadata.get("version_id")
            if recorded is not None:
                return store.localize(store.get(key.to_python_identifier(), str(recorded.value)))
        return store.localize(store.require(key.to_python_identifier()))


class TeacherResource(dg.ConfigurableResource):
    """The recipe's ``teacher`` as a generation engine, loaded once per run process (every
    asset of a run that asks for it shares one model in memory): a local model, or an
    OpenAI-compatible server when ``teacher.model`` is an http(s) URL."""

    def engine(self, recipe: Recipe):
        """A :class:`~nanbeige_data.models.GenerationEngine` for ``recipe.teacher``."""
        return _teacher_engine(recipe.teacher)


@functools.lru_cache(maxsize=2)
def _teacher_engine(cfg):
    from nanbeige_train.generation import load_teacher

    return load_teacher(cfg)  # a local model, or an OpenAI-compatible server for a URL

"""Resources: the recipe, the versioned store, and the IO manager that hands versions around.

Which recipe and which store root are picked here, once: from run config when given, else from
$NANBEIGE_RECIPE / $NANBEIGE_STORE, else the tiny recipe and ./data/store.
"""

import os

import dagster as dg

from nanbeige_data.recipe import Recipe, load_recipe, resolve_recipe_path
from nanbeige_data.store.versioned import Version, VersionedStore

STORE_ENV = "NANBEIGE_STORE"
DEFAULT_STORE = "data/store"


def default_store_root() -> str:
    return os.environ.get(STORE_ENV) or DEFAULT_STORE


class RecipeResource(dg.ConfigurableResource):
    """The validated recipe; `path` is a recipe name (tiny) or a YAML path ("" = env/default)."""

    path: str = ""

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # Validate once when the run starts, so a wrong recipe fails before any asset runs.
        recipe = self.load()
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

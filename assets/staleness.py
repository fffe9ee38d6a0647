"""What is stale and why, with the cascade Dagster's own staleness leaves out.

Dagster marks an asset stale when its code version or a *direct* parent's data version changed;
a grandchild of a changed asset looks fresh until its parent is re-materialized. Here an asset
is stale when

* it was never materialized (``missing``),
* its code version (module version + the hash of the recipe sections it reads) differs from
  the one its newest version recorded (``code``: e.g. a recipe field it reads changed),
* an input's newest version holds other data than the one its newest version was made from
  (``data``; a parent that re-ran to the same bytes changes nothing downstream).

An asset whose only reason is that a parent is stale or missing is ``pending`` (the cascade):
whether it must re-run is known once its parents have -- a parent can re-run to the same bytes
(a pretraining stage's ``plan_<stage>`` does when another stage's mixture changed).
``nanbeige run --stale`` therefore works in rounds: it materializes the ``frontier`` (stale and
missing assets with no pending or non-ready parent), re-reads the store, and repeats until
nothing is stale; exactly the affected assets are re-materialized. ``nanbeige stale`` prints
the report. All of it is read from the versioned store's manifests and the Definitions.
"""

from dataclasses import dataclass, field

import dagster as dg

from nanbeige_data.store.versioned import VersionedStore


@dataclass
class Status:
    key: str
    state: str  # fresh | stale | missing | pending
    reasons: list[str] = field(default_factory=list)
    parents: list[str] = field(default_factory=list)  # of this graph


def _identifier(key: dg.AssetKey) -> str:
    return key.to_python_identifier()


def staleness(defs: dg.Definitions, store: VersionedStore) -> dict[str, Status]:
    """Status of every asset in ``defs``, in topological order."""
    graph = defs.resolve_asset_graph()
    out: dict[str, Status] = {}
    for key in graph.toposorted_asset_keys:
        out[_identifier(key)] = _status(graph.get(key), store, out)
    return out


def _status(node, store: VersionedStore, known: dict[str, Status]) -> Status:
    """One asset's status; ``known`` holds its parents' (those of this graph)."""
    name = _identifier(node.key)
    parents = sorted(p for p in map(_identifier, node.parent_keys) if p in known)
    latest = store.latest(name)
    if latest is None:
        return Status(name, "missing", ["never materialized"], parents)
    reasons = []
    recorded = latest.manifest.get("code_version", "")
    if node.code_version and recorded != node.code_version:
        reasons.append(f"code: {recorded or '-'} -> {node.code_version}")
    inputs = latest.manifest.get("inputs", {})
    for parent in parents:
        parent_latest, used = store.latest(parent), inputs.get(parent, {})
        if parent_latest is not None and used.get("data_version") != parent_latest.data_version:
            was = used.get("version_id") or "-"
            reasons.append(f"data: {parent} {was} -> {parent_latest.version_id}")
    upstream = [f"upstream: {p} is {known[p].state}" for p in parents if known[p].state != "fresh"]
    state = "stale" if reasons else "pending" if upstream else "fresh"
    return Status(name, state, reasons + upstream, parents)


def frontier(report: dict[str, Status]) -> list[str]:
    """What to materialize now: stale or missing assets whose non-fresh parents are all in
    this frontier too (pending ones wait for their parents' round)."""
    ready: list[str] = []
    for name, status in report.items():  # topological order: parents first
        if status.state in ("stale", "missing") and all(
            report[p].state == "fresh" or p in ready for p in status.parents
        ):
            ready.append(name)
    return ready


def render(report: dict[str, Status], show_fresh: bool = False) -> str:
    lines = []
    for name, status in report.items():
        if status.state == "fresh" and not show_fresh:
            continue
        lines.append(f"{status.state:<8} {name}")
        lines += [f"         - {reason}" for reason in status.reasons[:6]]
    states = ("stale", "missing", "pending")
    counts = {s: sum(1 for x in report.values() if x.state == s) for s in states}
    fresh = len(report) - sum(counts.values())
    lines.append(
        f"{counts['stale']} stale, {counts['missing']} missing, {counts['pending']} pending, "
        f"{fresh} fresh"
    )
    if counts["pending"]:
        lines.append(
            "pending: a parent re-runs first; re-checked then (it stays fresh if the parent "
            "re-runs to the same data)"
        )
    return "\n".join(lines)

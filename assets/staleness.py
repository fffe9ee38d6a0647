"""What is stale and why, with the cascade Dagster's own staleness leaves out.

Dagster marks an asset stale when its code version or a *direct* parent's data version changed;
a grandchild of a changed asset looks fresh until its parent is re-materialized. Here an asset
is stale when

* it was never materialized (``missing``),
* its code version (module version + the hash of the recipe sections it reads) differs from
  the one its newest version recorded (``code``: e.g. a recipe field it reads changed),
* an input's newest version is not the one its newest version was made from (``data``) --
  unless the asset recorded which *parts* of that input it reads (``extra.reads``) and the
  input's new version carries the same digests for them (``extra.parts``): a pretraining stage
  reads only its own slice of the FG-WSD plan, so a decay-mixture change leaves warmup fresh.

An asset whose only reason is that a parent is stale or missing is ``pending`` (the cascade):
whether it must re-run is known once its parents have -- a parent can re-run to the same bytes
(same version, nothing downstream to do) or change only parts it does not read.
``nanbeige run --stale`` therefore works in rounds: it materializes the ``frontier`` (stale and
missing assets with no pending or non-ready parent), re-reads the store, and repeats until
nothing is stale; exactly the affected assets are re-materialized. ``nanbeige stale`` prints
the report. All of it is read from the versioned store's manifests and the Definitions.
"""

from dataclasses import dataclass, field

import dagster as dg

from nanbeige_data.store import StoreError, Version, VersionedStore


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
    order = graph.toposorted_asset_keys
    out: dict[str, Status] = {}
    for key in order:
        name = _identifier(key)
        node = graph.get(key)
        parents = [_identifier(p) for p in node.parent_keys if _identifier(p) in out]
        latest = store.latest(name)
        if latest is None:
            out[name] = Status(name, "missing", ["never materialized"], parents)
            continue
        reasons = []
        recorded = latest.manifest.get("code_version", "")
        if node.code_version and recorded != node.code_version:
            reasons.append(f"code: {recorded or '-'} -> {node.code_version}")
        inputs = latest.manifest.get("inputs", {})
        reads = latest.manifest.get("extra", {}).get("reads", {})
        upstream = []
        for parent in sorted(node.parent_keys, key=_identifier):
            pname = _identifier(parent)
            if pname not in out:
                continue  # not an asset of this graph
            parent_latest = store.latest(pname)
            used = inputs.get(pname, {}).get("version_id")
            changed = parent_latest is not None and used != parent_latest.version_id
            if changed and not _same_parts(store, pname, used, parent_latest, reads.get(pname)):
                reasons.append(f"data: {pname} {used or '-'} -> {parent_latest.version_id}")
            if out[pname].state != "fresh":
                upstream.append(f"upstream: {pname} is {out[pname].state}")
        state = "stale" if reasons else "pending" if upstream else "fresh"
        out[name] = Status(name, state, reasons + upstream, parents)
    return out


def _same_parts(
    store: VersionedStore, key: str, used: str | None, new: Version, parts: list[str] | None
) -> bool:
    """True when the asset reads only ``parts`` of ``key`` and they are unchanged in ``new``."""
    if not parts or not used:
        return False
    try:
        old = store.get(key, used).manifest.get("extra", {}).get("parts", {})
    except StoreError:
        return False  # the version it used was pruned: assume the worst
    now = new.manifest.get("extra", {}).get("parts", {})
    return all(p in old and old.get(p) == now.get(p) for p in parts)


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
            "pending: a parent re-runs first; re-checked then (it stays fresh if the parent's "
            "new version leaves what it reads unchanged)"
        )
    return "\n".join(lines)

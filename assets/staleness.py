"""What is stale and why, with the cascade Dagster's own staleness leaves out.

Dagster marks an asset stale when its code version or a *direct* parent's data version changed;
a grandchild of a changed asset looks fresh until its parent is re-materialized. Here an asset
is stale when

* it was never materialized (``missing``),
* its code version (module version + the hash of the recipe sections it reads) differs from
  the one its newest version recorded (``code``: e.g. a recipe field it reads changed),
* an input's newest version is not the one its newest version was made from (``data``), or
* any asset upstream of it is stale or missing (``upstream``) -- the cascade,

all read from the versioned store's manifests and the Definitions. ``stale_assets`` returns the
keys to re-materialize in order; ``nanbeige stale`` prints the report, ``nanbeige run --stale``
materializes exactly those.
"""

from dataclasses import dataclass, field

import dagster as dg

from nanbeige_data.store import VersionedStore


@dataclass
class Status:
    key: str
    state: str  # fresh | stale | missing
    reasons: list[str] = field(default_factory=list)


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
        latest = store.latest(name)
        if latest is None:
            out[name] = Status(name, "missing", ["never materialized"])
            continue
        reasons = []
        recorded = latest.manifest.get("code_version", "")
        if node.code_version and recorded != node.code_version:
            reasons.append(f"code: {recorded or '-'} -> {node.code_version}")
        inputs = latest.manifest.get("inputs", {})
        for parent in sorted(node.parent_keys, key=_identifier):
            pname = _identifier(parent)
            if pname not in out:
                continue  # not an asset of this graph
            parent_latest = store.latest(pname)
            used = inputs.get(pname, {}).get("version_id")
            if parent_latest is not None and used != parent_latest.version_id:
                reasons.append(f"data: {pname} {used or '-'} -> {parent_latest.version_id}")
            if out[pname].state != "fresh":
                reasons.append(f"upstream: {pname} is {out[pname].state}")
        out[name] = Status(name, "stale" if reasons else "fresh", reasons)
    return out


def stale_assets(defs: dg.Definitions, store: VersionedStore) -> list[dg.AssetKey]:
    """Keys of the stale and missing assets, upstream first."""
    report = staleness(defs, store)
    return [dg.AssetKey(k) for k, s in report.items() if s.state != "fresh"]


def render(report: dict[str, Status], show_fresh: bool = False) -> str:
    lines = []
    for name, status in report.items():
        if status.state == "fresh" and not show_fresh:
            continue
        lines.append(f"{status.state:<8} {name}")
        lines += [f"         - {reason}" for reason in status.reasons[:6]]
    counts = {s: sum(1 for x in report.values() if x.state == s) for s in ("stale", "missing")}
    fresh = len(report) - sum(counts.values())
    lines.append(f"{counts['stale']} stale, {counts['missing']} missing, {fresh} fresh")
    return "\n".join(lines)

"""Lineage: from any version back to the exact versions, code and recipe sections that made it.

Every manifest records its inputs' version ids, so lineage is a walk over manifests -- no
orchestrator needed, and it works on a store copied to another machine. ``lineage`` returns the
tree (each version once; a version reached twice is marked as seen), ``render`` prints it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nanbeige_data.store.versioned import StoreError, VersionedStore


@dataclass
class Node:
    key: str
    version_id: str
    code_version: str
    recipe: str
    created_at: str
    counts: dict[str, Any]
    inputs: list[Node] = field(default_factory=list)
    seen: bool = False  # already shown elsewhere in the tree
    missing: bool = False  # recorded as an input but pruned from the store

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "version_id": self.version_id,
            "code_version": self.code_version,
            "recipe": self.recipe,
            "created_at": self.created_at,
            "counts": self.counts,
            "seen": self.seen,
            "missing": self.missing,
            "inputs": [n.as_dict() for n in self.inputs],
        }


def lineage(store: VersionedStore, key: str, version_id: str | None = None) -> Node:
    """The tree of versions behind ``key`` (its newest version unless ``version_id``)."""
    version = store.get(key, version_id) if version_id else store.require(key)
    return _walk(store, key, version.version_id, set())


def _walk(store: VersionedStore, key: str, version_id: str, visited: set[tuple[str, str]]) -> Node:
    try:
        m = store.get(key, version_id).manifest
    except StoreError:
        return Node(key, version_id, "", "", "", {}, missing=True)
    node = Node(
        key,
        version_id,
        m.get("code_version", ""),
        f"{m.get('recipe_name', '')}@{m.get('recipe_hash', '')}",
        m.get("created_at", ""),
        m.get("counts", {}),
    )
    if (key, version_id) in visited:
        node.seen = True
        return node
    visited.add((key, version_id))
    for input_key, ref in sorted(m.get("inputs", {}).items()):
        node.inputs.append(_walk(store, input_key, ref["version_id"], visited))
    return node


def render(node: Node, indent: str = "") -> str:
    """An indented tree, one version per line."""
    mark = " (see above)" if node.seen else " (pruned)" if node.missing else ""
    line = f"{indent}{node.key}  {node.version_id}{mark}"
    if not node.seen and not node.missing:
        line += f"  code {node.code_version}  recipe {node.recipe}"
    lines = [line]
    for child in node.inputs:
        lines.append(render(child, indent + "  "))
    return "\n".join(lines)


def markdown(node: Node, ui_base: str = "/assets", depth: int = 0) -> str:
    """The tree as a nested Markdown list whose asset names link to their pages in the
    Dagster UI (``ui_base``/<key>); what the `lineage` metadata of every asset shows."""
    mark = " *(see above)*" if node.seen else " *(pruned)*" if node.missing else ""
    line = f"{'  ' * depth}- [{node.key}]({ui_base}/{node.key}) `{node.version_id}`{mark}"
    if depth and not node.seen and not node.missing:
        line += f" code `{node.code_version}` recipe `{node.recipe}`"
    lines = [line]
    for child in node.inputs:
        lines.append(markdown(child, ui_base, depth + 1))
    return "\n".join(lines)


def ancestors(node: Node) -> set[str]:
    """Every asset key the version depends on (transitively)."""
    out: set[str] = set()
    for child in node.inputs:
        out.add(child.key)
        out |= ancestors(child)
    return out

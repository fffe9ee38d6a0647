"""What a stage says about the version it wrote: counts, tables, plots and JSON, Dagster-free.

Every library stage returns a :class:`Report`; the asset layer turns it into Dagster metadata
(markdown for ``markdown``, JSON for ``json``, plain values for ``counts`` and ``values``) and
writes ``extra`` into the version's manifest. The helpers below are the one place that renders a
markdown table or embeds a matplotlib figure as a markdown image (Dagster has no image type).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Report:
    counts: dict[str, int]  # numbers shown in the UI and kept in the manifest's counts
    markdown: dict[str, str] = field(default_factory=dict)  # tables and plots (markdown)
    json: dict[str, Any] = field(default_factory=dict)  # structured detail
    values: dict[str, float | str] = field(default_factory=dict)  # scalars (rates, names)
    extra: dict[str, Any] = field(default_factory=dict)  # manifest only (stats, reports)


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str = "") -> str:
    """A markdown table; ``align`` is one character per column (``l`` or ``r``), default left."""
    header = list(header)
    marks = [("---:" if a == "r" else "---") for a in (align or "l" * len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(marks) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def kv_table(values: Mapping[str, Any], header: tuple[str, str]) -> str:
    return md_table(header, values.items())


def figure_markdown(fig: Any, out_png: str | Path | None, alt: str) -> str:
    """Save a matplotlib figure (to ``out_png`` too, when given) and return it as a markdown
    image with a data URI; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    data = buf.getvalue()
    if out_png is not None:
        Path(out_png).write_bytes(data)
    return f"![{alt}](data:image/png;base64,{base64.b64encode(data).decode()})"

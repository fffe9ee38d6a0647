"""What a stage says about the version it wrote (counts, tables, plots, JSON) and about its
progress while it runs (:class:`Progress`), Dagster-free.

Every library stage returns a :class:`Report`; the asset layer turns it into Dagster metadata
(markdown for ``markdown``, JSON for ``json``, plain values for ``counts`` and ``values``) and
writes ``extra`` into the version's manifest. The helpers below are the one place that renders a
markdown table or embeds a matplotlib figure as a markdown image (Dagster has no image type).
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
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


class Progress:
    """Progress of a long run over ``total`` items, as lines through ``report`` (e.g. a logger's
    ``info``): one when ``every_s`` seconds have passed since the last line, and a final one.

    ``Progress(log.info, "judge", 48, "documents").update(done)`` -> ``judge: 12/48 documents,
    1.9 documents/s``. With ``report=None`` nothing is printed and the calls cost nothing.
    """

    def __init__(
        self,
        report: Callable[[str], None] | None,
        what: str,
        total: int,
        unit: str,
        every_s: float = 10.0,
    ) -> None:
        self.report, self.what, self.total, self.unit = report, what, total, unit
        self.every_s, self.done, self.reported = every_s, 0, -1
        self.started = self.last = time.monotonic()

    def line(self) -> str:
        rate = self.done / max(time.monotonic() - self.started, 1e-9)
        return f"{self.what}: {self.done}/{self.total} {self.unit}, {rate:.1f} {self.unit}/s"

    def update(self, done: int) -> None:
        """``done`` items so far; reports when ``every_s`` passed since the last line."""
        self.done = done
        if self.report is not None and time.monotonic() - self.last >= self.every_s:
            self._emit()

    def advance(self, n: int) -> None:
        self.update(self.done + n)

    def finish(self) -> None:
        """The final line (unless the last line already said the same count)."""
        if self.report is not None and self.reported != self.done:
            self._emit()

    def _emit(self) -> None:
        self.last, self.reported = time.monotonic(), self.done
        self.report(self.line())  # type: ignore[misc]

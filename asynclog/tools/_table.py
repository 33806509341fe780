"""Plain text tables for the console: aligned columns, numbers right-aligned, None as ``-``."""

from __future__ import annotations

import math

__all__ = ["cell", "render", "human_size"]


def cell(value) -> str:
    """How one value reads in a table: floats to 4 significant digits, None as ``-``."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def render(headers: list[str], rows: list[list]) -> str:
    """``rows`` under ``headers``, two spaces between columns; a column of numbers is right-aligned."""
    texts = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(t[i]) for t in texts)]) for i, h in enumerate(headers)]
    numeric = [all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) and bool(rows)
               for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        parts = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(list(headers)), *(line(t) for t in texts)])


def human_size(size: int | None) -> str | None:
    """Bytes as a person reads them: ``812 B``, ``2.8 KB``, ``1.4 GB`` (powers of 1000)."""
    if size is None:
        return None
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return None

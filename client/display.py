"""virsh's text layouts: tables and ``Label:  value`` blocks."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["format_fields", "format_table"]


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table as virsh draws it: one leading space, columns three spaces apart,
    a dashed rule two characters longer than the widest line, no trailing spaces."""
    widths = [len(h) for h in header]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        return (" " + "   ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))).rstrip()

    rule = "-" * (1 + sum(widths) + 3 * (len(widths) - 1) + 2)
    return "\n".join([line(header), rule, *(line(r) for r in rows)]) + "\n"


def format_fields(fields: Sequence[tuple[str, str]]) -> str:
    """``Name:           value`` lines (label and colon padded to 16 columns)."""
    return "".join(f"{(label + ':').ljust(15)} {value}\n" for label, value in fields)

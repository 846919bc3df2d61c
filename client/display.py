"""virsh's text layouts: tables and ``Label:  value`` blocks."""

from __future__ import annotations

from virtvol.protocol.hints import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["format_fields", "format_table"]


def format_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], *, headers: bool = True
) -> str:
    """A table as virsh draws it: one leading space, columns three spaces apart,
    a dashed rule two characters longer than the widest line, no trailing spaces.

    Without ``headers`` (virsh's ``--quiet``) only the rows are drawn, and the
    columns are as wide as the rows need."""
    widths = [len(h) if headers else 0 for h in header]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        return (" " + "   ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))).rstrip()

    if not headers:
        return "".join(line(r) + "\n" for r in rows)
    rule = "-" * (1 + sum(widths) + 3 * (len(widths) - 1) + 2)
    return "\n".join([line(header), rule, *(line(r) for r in rows)]) + "\n"


def format_fields(fields: Sequence[tuple[str, str]]) -> str:
    """``Name:           value`` lines (label and colon padded to 16 columns)."""
    return "".join(f"{(label + ':').ljust(15)} {value}\n" for label, value in fields)

"""virsh's text layouts: tables and ``Label:  value`` blocks."""

from __future__ import annotations

from virtvol.protocol.hints import TYPE_CHECKING
from virtvol.sparse import libc

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
    cells = [[_safe_cell(cell) for cell in row] for row in rows]
    widths = [len(h) if headers else 0 for h in header]
    for row in cells:
        for i, (_, width) in enumerate(row):
            widths[i] = max(widths[i], width)

    def line(row: Sequence[tuple[str, int]]) -> str:
        padded = (text + " " * (w - width) for (text, width), w in zip(row, widths, strict=True))
        return (" " + "   ".join(padded)).rstrip()

    if not headers:
        return "".join(line(r) + "\n" for r in cells)
    rule = "-" * (1 + sum(widths) + 3 * (len(widths) - 1) + 2)
    titles = [(h, len(h)) for h in header]
    return "\n".join([line(titles), rule, *(line(r) for r in cells)]) + "\n"


def _safe_cell(text: str) -> tuple[str, int]:
    """A cell as virsh's tables write it (vshTableSafeEncode), and the columns it takes:
    what the locale cannot print (a tab, a control character; outside a UTF-8 locale
    any byte past ASCII) as ``\\xNN`` for each byte, four columns each, the rest as it
    is, as wide as the C library's wcwidth says (a CJK letter 2, a combining accent 0).
    virsh writes a byte past 0x7f as ``\\xff`` whatever it is (a signed char printed
    with %02x, cut to four characters); virtvol writes the byte."""
    if text.isascii() and text.isprintable():
        return text, len(text)
    wcwidth = libc.function("wcwidth", "c_int", "c_int32")
    parts: list[str] = []
    width = 0
    for char in text:
        if 0xDC80 <= ord(char) <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
            columns, encoded = -1, bytes([ord(char) - 0xDC00])
        else:
            columns = wcwidth(ord(char)) if wcwidth is not None else int(char.isprintable())
            encoded = char.encode("utf-8", "surrogatepass")
        if columns < 0:
            parts.extend(f"\\x{byte:02x}" for byte in encoded)
            width += 4 * len(encoded)
        else:
            parts.append(char)
            width += columns
    return "".join(parts), width


def format_fields(fields: Sequence[tuple[str, str]]) -> str:
    """``Name:           value`` lines (label and colon padded to 16 columns)."""
    return "".join(f"{(label + ':').ljust(15)} {value}\n" for label, value in fields)

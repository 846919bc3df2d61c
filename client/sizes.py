"""Sizes as virsh reads and prints them.

Reading (libvirt's scaled integers, as ``virsh vol-create-as`` and ``vol-resize``
take them): strtoull's decimal number (blanks before it and a ``+`` sign allowed,
never a ``-``), then, straight after it, an optional suffix: ``b``/``byte``/``bytes``
is 1, a bare ``k m g t p e`` (any case) or one with ``iB`` is a power of 1024, one
with ``B`` (``KB``, ``MB``...) a power of 1000; anything else after the number,
a blank included, is an unknown suffix. The result must fit 64 bits.
Printing: two decimals in the largest binary unit that keeps the value at
least 1 (``0.00 B``, ``9.77 KiB``, ``251.97 GiB``).
"""

from __future__ import annotations

__all__ = ["C_BLANKS", "SizeError", "format_size", "parse_size"]

_UNITS = "kmgtpe"
_PRETTY = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
# What C's isspace() takes in the C locale: strtoull skips these before the number.
C_BLANKS = " \t\n\v\f\r"
_MAX = (1 << 64) - 1


class SizeError(ValueError):
    """A size that cannot be parsed.

    Attributes:
        reason: libvirt's error line for what is wrong (``invalid argument: unknown
            suffix 'X'``), or None when libvirt gives none (not a number at all).
    """

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


def parse_size(text: str) -> int:
    """Parse ``text`` such as ``"10G"``, ``"512KiB"``, ``"1MB"`` or ``"4096"`` into bytes,
    by the rules of the module docstring.

    Raises:
        SizeError: not a number, an unknown suffix, or more than 64 bits.
    """
    number = text.lstrip(C_BLANKS)
    number = number[1:] if number.startswith("+") else number
    digits = len(number) - len(number.lstrip("0123456789"))
    try:
        value = int(number[:digits]) if digits else -1
    except ValueError:  # thousands of digits, more than int() reads: far past 64 bits
        value = _MAX + 1
    if not 0 <= value <= _MAX:  # no number, or strtoull's ERANGE
        raise SizeError(f"invalid size '{text}'")
    suffix = number[digits:]
    scale = _scale(suffix, text)
    if value > _MAX // scale:
        raise SizeError(
            f"size '{text}' does not fit 64 bits",
            f"numerical overflow: value too large: {value}{suffix}",
        )
    return value * scale


def _scale(suffix: str, text: str) -> int:
    if not suffix:
        return 1
    lower = suffix.lower() if suffix.isascii() else ""  # libvirt lowers ASCII letters only
    if lower in ("b", "byte", "bytes"):
        return 1
    if len(lower) == 1 or lower[1:] == "ib":
        base = 1024
    elif lower[1:] == "b":
        base = 1000
    else:
        base = 0
    power = _UNITS.find(lower[:1]) + 1 if lower else 0
    if not base or not power:
        raise SizeError(
            f"unknown suffix '{suffix}' in size '{text}'",
            f"invalid argument: unknown suffix '{suffix}'",
        )
    return int(base**power)


def format_size(value: int) -> str:
    """``value`` bytes as virsh prints capacities: ``"1.00 MiB"``."""
    scaled = float(value)
    unit = 0
    while scaled >= 1024 and unit < len(_PRETTY) - 1:
        scaled /= 1024
        unit += 1
    return f"{scaled:.2f} {_PRETTY[unit]}"

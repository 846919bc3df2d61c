"""Sizes as virsh reads and prints them.

Reading (libvirt's scaled integers): a number with an optional suffix, where
``b``/``byte``/``bytes`` is 1, a bare ``k m g t p e`` (any case) or with ``iB``
is a power of 1024, and with ``B`` (``KB``, ``MB``...) a power of 1000.
Printing: two decimals in the largest binary unit that keeps the value at
least 1 (``0.00 B``, ``9.77 KiB``, ``251.97 GiB``).
"""

from __future__ import annotations

__all__ = ["SizeError", "format_size", "parse_size"]

_UNITS = "kmgtpe"
_PRETTY = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


class SizeError(ValueError):
    """A size that cannot be parsed.

    Attributes:
        reason: libvirt's words for what is wrong (``unknown suffix 'X'``), or
            None when libvirt gives none (not a number at all).
    """

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


def parse_size(text: str, *, default_scale: int = 1) -> int:
    """Parse ``text`` such as ``"10G"``, ``"512KiB"``, ``"1MB"`` or ``"4096"`` into bytes.

    Args:
        text: the size.
        default_scale: the multiplier when there is no suffix.

    Raises:
        SizeError: not a non-negative integer with a known suffix.
    """
    # Digits, then letters, each optional space around them (without re: ~2 ms).
    stripped = text.strip()
    digits = len(stripped) - len(stripped.lstrip("0123456789"))
    suffix = stripped[digits:].lstrip()
    if not digits or not (suffix == "" or (suffix.isascii() and suffix.isalpha())):
        raise SizeError(f"invalid size '{text}'")
    try:
        value = int(stripped[:digits])
    except ValueError:  # thousands of digits, more than int() reads: far past any size
        raise SizeError(f"invalid size '{text}'") from None
    if not suffix:
        return value * default_scale
    lower = suffix.lower()
    if lower in ("b", "byte", "bytes"):
        return value
    unit = lower[0]
    if unit not in _UNITS:
        raise SizeError(f"unknown suffix '{suffix}' in size '{text}'", f"unknown suffix '{suffix}'")
    power = _UNITS.index(unit) + 1
    rest = suffix[1:]
    if rest in ("", "ib", "iB", "IB") or rest.lower() == "ib":
        base = 1024
    elif rest in ("b", "B"):
        base = 1000
    else:
        raise SizeError(f"unknown suffix '{suffix}' in size '{text}'", f"unknown suffix '{suffix}'")
    return int(value * base**power)


def format_size(value: int) -> str:
    """``value`` bytes as virsh prints capacities: ``"1.00 MiB"``."""
    scaled = float(value)
    unit = 0
    while scaled >= 1024 and unit < len(_PRETTY) - 1:
        scaled /= 1024
        unit += 1
    return f"{scaled:.2f} {_PRETTY[unit]}"

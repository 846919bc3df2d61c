"""Sizes with a ``unit`` attribute, scaled the way libvirt's XML parser scales them."""

from __future__ import annotations

from virtvol.protocol.errors import ErrorCode, ErrorDomain, ErrorReport

from .reports import invalid_arg

U64_MAX = (1 << 64) - 1
_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}


def unit_scale(unit: str | None) -> int:
    """Bytes per unit: "b"/"bytes" 1, "K"/"KiB" 1024, "KB" 1000, and so on up to exabytes.

    No unit means bytes. Raises libvirt's "unknown suffix" error otherwise.
    """
    if not unit:
        return 1
    if unit.lower() in ("b", "byte", "bytes"):
        return 1
    rest = unit[1:]
    if rest == "" or rest.lower() == "ib":
        base = 1024
    elif rest.lower() == "b":
        base = 1000
    else:
        raise invalid_arg(f"unknown suffix '{unit}'", ErrorDomain.NONE)
    power = _POWERS.get(unit[0].lower())
    if power is None:
        raise invalid_arg(f"unknown suffix '{unit}'", ErrorDomain.NONE)
    return int(base**power)


def scaled_size(value: int, unit: str | None, limit: int = U64_MAX) -> int:
    """``value`` times the unit's scale, refusing results above ``limit``."""
    result = value * unit_scale(unit)
    if result > limit:
        message = f"numerical overflow: value too large: {value}{unit or ''}"
        raise ErrorReport(
            ErrorCode.OVERFLOW,
            ErrorDomain.NONE,
            message,
            str1="numerical overflow: %s",
            str2=f"value too large: {value}{unit or ''}",
        )
    return result

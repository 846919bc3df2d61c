"""libvirt's errors: the error a server reports on the wire, and the numbers it carries.

``ErrorReport`` is what a request handler raises to make the server answer
REPLY/ERROR (or STREAM/ERROR) with a ``remote_error``; its ``message`` follows
libvirt's habit of a fixed prefix per code followed by a detail.

``ErrorCode``, ``ErrorDomain``, ``ErrorLevel`` and ``MESSAGE_PREFIX`` are declared in
``virtvol.protocol.error_codes`` and read here, imported on first use (PEP 562).
"""

from __future__ import annotations

from virtvol.protocol.hints import TYPE_CHECKING

if TYPE_CHECKING:
    from virtvol.protocol.error_codes import MESSAGE_PREFIX, ErrorCode, ErrorDomain, ErrorLevel
else:

    def __getattr__(name: str) -> object:
        """libvirt's error numbers, imported when one is first read."""
        if name in ("MESSAGE_PREFIX", "ErrorCode", "ErrorDomain", "ErrorLevel"):
            from virtvol.protocol import error_codes

            value = getattr(error_codes, name)
            globals()[name] = value  # read as a plain attribute from now on
            return value
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MESSAGE_PREFIX",
    "ErrorCode",
    "ErrorDomain",
    "ErrorLevel",
    "ErrorReport",
    "check_flags",
    "unsupported_flags",
]


class ErrorReport(Exception):
    """An error to be reported to the peer as a libvirt ``remote_error``.

    Args:
        code: the libvirt error number.
        domain: the subsystem that raised it.
        message: the complete text, as a libvirt client prints it.
    """

    def __init__(
        self,
        code: ErrorCode | int,
        domain: ErrorDomain | int,
        message: str,
        *,
        str1: str | None = None,
        str2: str | None = None,
        str3: str | None = None,
        int1: int = -1,
        int2: int = -1,
    ) -> None:
        super().__init__(message)
        self.code = int(code)
        self.domain = int(domain)
        self.message = message
        self.str1 = str1
        self.str2 = str2
        self.str3 = str3
        self.int1 = int1
        self.int2 = int2

    @classmethod
    def raised(cls, code: ErrorCode, domain: ErrorDomain, detail: str) -> ErrorReport:
        """Build the error as libvirt's ``virReportError(code, detail)`` renders it."""
        from virtvol.protocol.error_codes import MESSAGE_PREFIX

        prefix = MESSAGE_PREFIX.get(code, "")
        return cls(
            code, domain, prefix + detail, str1=prefix + "%s" if prefix else "%s", str2=detail
        )

    def __repr__(self) -> str:
        return f"ErrorReport(code={self.code}, domain={self.domain}, message={self.message!r})"


def unsupported_flags(flags: int, function: str, domain: ErrorDomain) -> ErrorReport:
    """libvirt's virCheckFlags refusal: ``unsupported flags (0x1) in function X``."""
    from virtvol.protocol.error_codes import ErrorCode

    return ErrorReport(
        ErrorCode.INVALID_ARG,
        domain,
        f"unsupported flags (0x{flags:x}) in function {function}",
        str1=function,
        str2="flags",
        int1=0,
        int2=0,
    )


def check_flags(flags: int, supported: int, function: str, domain: ErrorDomain) -> None:
    """Raise libvirt's virCheckFlags error when ``flags`` has bits outside ``supported``."""
    extra = flags & ~supported
    if extra:
        raise unsupported_flags(extra, function, domain)

"""Hardened XML parsing and escaping shared by the pool and volume formats.

Definitions arrive from the network, so the parser is defusedxml's with DTDs,
entities and external references refused.
"""

from __future__ import annotations

import importlib
from xml.etree.ElementTree import Element, ParseError
from xml.parsers import expat

from virtvol.protocol.errors import ErrorCode, ErrorDomain, ErrorReport

from .reports import xml_error

# defusedxml ships no type hints; going through importlib keeps mypy strict
# whether or not a stub package is installed.
_defused_et = importlib.import_module("defusedxml.ElementTree")
_defused_common = importlib.import_module("defusedxml.common")

_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "'": "&apos;", '"': "&quot;"}


def escape(text: str) -> str:
    """Escape text for an element body or a quoted attribute, as libvirt does."""
    return "".join(_ESCAPES.get(ch, ch) for ch in text)


def escape_text(text: str) -> str:
    """``escape`` for text that came from a file rather than a checked name: control
    characters other than tab and line ends, which XML 1.0 cannot hold, are left out,
    as libvirt leaves them out."""
    return escape("".join(ch for ch in text if ch >= " " or ch in "\t\n\r"))


def parse_document(
    text: str, root: str, source: str, domain: ErrorDomain = ErrorDomain.STORAGE
) -> Element:
    """Parse ``text`` and check that its root element is ``root``.

    Args:
        text: the XML document.
        root: the expected root tag ("pool", "volume").
        source: the document name libvirt puts in parse errors, e.g.
            "storage_pool_definition".
        domain: the error domain of the driver that reads it (the secret driver's for
            a secret).

    Raises:
        ErrorReport: VIR_ERR_XML_DETAIL for malformed XML (libvirt's code and
            wording), VIR_ERR_XML_ERROR for forbidden constructs or a wrong root.
    """
    try:
        element: Element = _defused_et.fromstring(_parser_input(text), forbid_dtd=True)
    except ParseError as exc:
        line = exc.position[0]
        message = f"({source}):{line}: {_premature_end(text) or exc.msg}"
        raise ErrorReport(ErrorCode.XML_DETAIL, domain, message) from None
    except _defused_common.DefusedXmlException:
        raise xml_error(
            f"({source}): DTDs, entity declarations and external references are not accepted",
            domain,
        ) from None
    except (LookupError, ValueError) as exc:
        # Bytes are read by their encoding declaration, which may name no codec known
        # here (LookupError) or one the parser cannot use (ValueError): malformed too.
        message = f"({source}):1: {exc}"
        raise ErrorReport(ErrorCode.XML_DETAIL, ErrorDomain.STORAGE, message) from None
    if element.tag != root:
        raise xml_error(f"expecting root element of '{root}', not '{element.tag}'", ErrorDomain.XML)
    return element


def _premature_end(text: str) -> str | None:
    """libxml's words, with libvirt's excerpt of the last line and its pointer, for a
    document that ends inside an element (a definition cut short, as one is at a NUL
    byte); None for any other fault.

    libxml names the innermost element left open and the line it opened on; libvirt
    adds the line the parser stopped on (the text's last), whole, and under it a dash
    for each of its bytes (it walks the UTF-8, not characters), a tab kept as a tab so
    that the caret lines up, then the caret.
    """
    parser = expat.ParserCreate()
    open_elements: list[tuple[str, int]] = []

    def opened(name: str, _attributes: object) -> None:
        open_elements.append((name, parser.CurrentLineNumber))

    def closed(_name: str) -> None:
        open_elements.pop()

    parser.StartElementHandler = opened
    parser.EndElementHandler = closed
    # The hardened parse refused any DTD before this fault; this one never reads one.
    parser.StartDoctypeDeclHandler = _refuse_doctype
    try:
        parser.Parse(_parser_input(text), True)
    except expat.ExpatError as exc:
        no_elements = expat.errors.codes[expat.errors.XML_ERROR_NO_ELEMENTS]
        if getattr(exc, "code", None) != no_elements or not open_elements:
            return None
    else:
        return None
    name, line = open_elements[-1]
    last_line = text[max(text.rfind("\n"), text.rfind("\r")) + 1 :]
    line_bytes = last_line.encode("utf-8", "surrogateescape")
    pointer = "".join("\t" if byte == 0x09 else "-" for byte in line_bytes) + "^"
    # An empty line is no excerpt at all: libvirt formats its missing text as "(null)".
    return f"Premature end of data in tag {name} line {line}\n{last_line or '(null)'}\n{pointer}"


def _refuse_doctype(*_declaration: object) -> None:
    raise expat.ExpatError("a DTD")


def _parser_input(text: str) -> str | bytes:
    """``text`` as the parser is to read it. Bytes that were not UTF-8 on the wire are
    kept in a string as surrogates (``surrogateescape``), which the parser cannot take as
    text: they go to it as the bytes they were, to be refused as malformed XML (or read
    as the document's encoding declaration says), as libvirt's parser does, instead of
    failing the call with an internal error."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")
    return text


def child_string(parent: Element, path: str) -> str | None:
    """All the text inside the first element at ``path``, untrimmed, as libvirt's XPath
    ``string(path)`` reads names; None when absent or empty."""
    found = parent.find(path)
    text = "".join(found.itertext()) if found is not None else ""
    return text or None


def child_text(parent: Element, path: str) -> str | None:
    """Stripped text of the first element at ``path``, or None when absent or empty."""
    found = parent.find(path)
    if found is None or found.text is None:
        return None
    text = found.text.strip()
    return text or None


# What C's isspace() skips in the C locale, as strtol and strtoull do before the number.
C_BLANKS = " \t\n\v\f\r"


def c_integer(text: str, digits: str = "0123456789") -> int | None:
    """``text`` as libvirt's virStrToLong_* read it whole: blanks and one sign in front,
    then only ``digits`` (their count is the base) to the end; None when it is not such
    a number. The callers check the range (and whether a sign may be there)."""
    body = text.lstrip(C_BLANKS)
    negative = body.startswith("-")
    body = body[1:] if body[:1] in "+-" else body
    if not body or any(c not in digits for c in body):
        return None
    value = int(body, len(digits))
    return -value if negative else value


def c_int_id(value: int) -> str:
    """A uid or gid as libvirt prints it, cast to int: 2**31 and above come out negative."""
    return str(value - (1 << 32) if value >= 1 << 31 else value)

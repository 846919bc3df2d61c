"""Hardened XML parsing and escaping shared by the pool and volume formats.

Definitions arrive from the network, so the parser is defusedxml's with DTDs,
entities and external references refused.
"""

from __future__ import annotations

import importlib
import re
from xml.etree.ElementTree import Element, ParseError, TreeBuilder
from xml.parsers import expat

from virtvol.protocol.errors import ErrorCode, ErrorDomain, ErrorReport
from virtvol.sparse import libc

from .reports import xml_error

# defusedxml ships no type hints; going through importlib keeps mypy strict
# whether or not a stub package is installed.
_defused_et = importlib.import_module("defusedxml.ElementTree")
_defused_common = importlib.import_module("defusedxml.common")

# An XML declaration's encoding (XML 1.0's EncodingDecl, its EncName in group "name"),
# which must open the document, after a byte order mark if there is one (libxml skips it
# and still checks the encoding the declaration names).
_ENCODING_DECLARATION = re.compile(
    r"\ufeff?<\?xml[ \t\r\n]+version[ \t\r\n]*=[ \t\r\n]*(?:'[^']*'|\"[^\"]*\")"
    r"[ \t\r\n]+encoding[ \t\r\n]*=[ \t\r\n]*(?P<quote>['\"])"
    r"(?P<name>[A-Za-z][A-Za-z0-9._-]*)(?P=quote)"
)

# The names libxml knows without iconv (its own converters, and its own spellings of
# encodings iconv knows by other names), in capitals: it compares them so.
_LIBXML_ENCODINGS = frozenset(
    {"HTML", "ISO-LATIN-1", "ISO-LATIN-2", "ISO-10646-UCS-2", "ISO-10646-UCS-4"}
)

# The longest encoding name asked of iconv (glibc's longest has 22 characters): iconv
# keeps every pair of names it was asked to open, for good, when it reads its modules'
# list rather than its cache (GCONV_PATH set, or no cache), so a client sending long
# names, each new, would grow the daemon without bound. A longer one is unknown.
_LONGEST_ENCODING_NAME = 255

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
            wording) and for an encoding declaration naming an encoding the system does
            not know, VIR_ERR_XML_ERROR for forbidden constructs or a wrong root.
    """
    unsupported = _unsupported_encoding(text)
    if unsupported is not None:
        raise ErrorReport(ErrorCode.XML_DETAIL, domain, f"({source}):{unsupported}")
    # The text is read as UTF-8 whatever its declaration says, as libvirt hands libxml
    # the document: bytes that are not UTF-8 are malformed, never read as Latin-1 or as
    # another encoding the declaration names.
    parser = _defused_et.DefusedXMLParser(target=TreeBuilder(), encoding="utf-8", forbid_dtd=True)
    try:
        parser.feed(_parser_input(text))
        element: Element = parser.close()
    except ParseError as exc:
        line = exc.position[0]
        message = f"({source}):{line}: {_premature_end(text) or exc.msg}"
        raise ErrorReport(ErrorCode.XML_DETAIL, domain, message) from None
    except _defused_common.DefusedXmlException:
        raise xml_error(
            f"({source}): DTDs, entity declarations and external references are not accepted",
            domain,
        ) from None
    if element.tag != root:
        raise xml_error(f"expecting root element of '{root}', not '{element.tag}'", ErrorDomain.XML)
    return element


def _unsupported_encoding(text: str) -> str | None:
    """libxml's words, after libvirt's document name, for a document whose declaration
    names an encoding the system does not know, whatever the text holds: the line of the
    declaration's end, "Unsupported encoding NAME", libvirt's excerpt of that line and its
    pointer just past the name's closing quote. None for a document without such a
    declaration."""
    declared = _ENCODING_DECLARATION.match(text)
    if declared is None or _known_encoding(declared["name"]):
        return None
    end = declared.end()
    line = text.count("\n", 0, end) + 1
    return f"{line}: Unsupported encoding {declared['name']}\n{_excerpt(text, end)}"


def _known_encoding(name: str) -> bool:
    """Whether libxml could read ``name``: one of its own, or one iconv has a converter
    for each way (libxml asks so). Without iconv in the C library every name passes: the
    text is read as UTF-8 all the same. (libxml built with ICU also takes the names only
    ICU knows, such as CESU-8 or x-mac-roman: those are refused here.)"""
    import ctypes

    if name.upper() in _LIBXML_ENCODINGS:
        return True
    if len(name) > _LONGEST_ENCODING_NAME:
        return False

    iconv_open = libc.function("iconv_open", "c_void_p", "c_char_p", "c_char_p")
    iconv_close = libc.function("iconv_close", "c_int", "c_void_p")
    if iconv_open is None or iconv_close is None:
        return True
    failed = ctypes.c_void_p(-1).value
    known = True
    for to, from_ in ((b"UTF-8", name.encode()), (name.encode(), b"UTF-8")):
        handle = iconv_open(to, from_)
        if handle == failed:
            known = False
        else:
            iconv_close(handle)
    return known


def _excerpt(text: str, offset: int) -> str:
    """libvirt's excerpt of the line of ``text`` that holds ``offset``: the line, whole,
    and under it a dash for each byte before ``offset`` (it walks the UTF-8, not
    characters), a tab kept as a tab so that the caret lines up, then the caret."""
    start = max(text.rfind("\n", 0, offset), text.rfind("\r", 0, offset)) + 1
    ends = [at for at in (text.find("\n", offset), text.find("\r", offset)) if at >= 0]
    line = text[start : min(ends, default=len(text))]
    before = text[start:offset].encode("utf-8", "surrogateescape")
    pointer = "".join("\t" if byte == 0x09 else "-" for byte in before) + "^"
    return f"{line}\n{pointer}"


def _premature_end(text: str) -> str | None:
    """libxml's words, with libvirt's excerpt of the last line and its pointer, for a
    document that ends inside an element (a definition cut short, as one is at a NUL
    byte); None for any other fault.

    libxml names the innermost element left open and the line it opened on; libvirt
    adds the line the parser stopped on (the text's last), whole, and under it a dash
    for each of its bytes (it walks the UTF-8, not characters), a tab kept as a tab so
    that the caret lines up, then the caret.
    """
    parser = expat.ParserCreate("utf-8")  # as parse_document reads it, whatever it declares
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
    excerpt = _excerpt(text, len(text))
    if excerpt.startswith("\n"):
        # An empty line is no excerpt at all: libvirt formats its missing text as "(null)".
        excerpt = f"(null){excerpt}"
    return f"Premature end of data in tag {name} line {line}\n{excerpt}"


def _refuse_doctype(*_declaration: object) -> None:
    raise expat.ExpatError("a DTD")


def _parser_input(text: str) -> bytes:
    """``text`` as the parser is to read it: its UTF-8. Bytes that were not UTF-8 on the
    wire, kept in the string as surrogates (``surrogateescape``), go to it as the bytes
    they were, to be refused as malformed XML as libvirt's parser refuses them, instead
    of failing the call with an internal error."""
    return text.encode("utf-8", "surrogateescape")


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

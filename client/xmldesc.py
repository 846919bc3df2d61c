"""Building the small XML documents libvirt's storage calls take.

``volume_xml`` writes what ``virsh vol-create-as`` sends, so that
``pool.create_volume(volume_xml("disk.img", 10 * 2**30))`` makes the same
volume as ``virsh vol-create-as POOL disk.img 10G``.
"""

from __future__ import annotations

# ``virsh_volume_xml`` is the command line's alone: it takes its texts as markup.
__all__ = ["escape", "name_content", "renamed_volume_xml", "volume_xml"]


def escape(text: str) -> str:
    """``& < > ' "`` as XML entities (as libvirt escapes them), for text and attributes.

    (What xml.sax.saxutils does, without the 12 ms importing it costs every run
    of the command: it pulls in urllib and email.)
    """
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("'", "&apos;")
        .replace('"', "&quot;")
    )


def volume_xml(
    name: str,
    capacity: int,
    *,
    allocation: int | None = None,
    format: str | None = None,
    backing_path: str | None = None,
    backing_format: str | None = None,
) -> str:
    """The XML of a new volume.

    Args:
        name: the volume's name in its pool.
        capacity: its size in bytes.
        allocation: bytes to allocate up front (None: the pool's default, a
            full allocation for dir pools; 0: none, a sparse file).
        format: the image format (``"raw"``, ``"qcow2"``...); None: the pool's default.
        backing_path: the path of a backing volume (a copy-on-write overlay of it).
        backing_format: the backing volume's format (with ``backing_path``).

    Returns:
        ``<volume>`` as virsh's vol-create-as writes it.
    """
    return virsh_volume_xml(
        escape(name),
        capacity,
        allocation=allocation,
        format=None if format is None else escape(format),
        backing_path=None if backing_path is None else escape(backing_path),
        backing_format=None if backing_format is None else escape(backing_format),
    )


def virsh_volume_xml(
    name: str,
    capacity: int,
    *,
    allocation: int | None = None,
    format: str | None = None,
    backing_path: str | None = None,
    backing_format: str | None = None,
) -> str:
    """``volume_xml``'s document with the texts put in as they are, unescaped, as virsh's
    vol-create-as writes them (for the command line: a name holding "&" is then the
    daemon's XML error, as with virsh). The texts are markup: never hand it text from
    elsewhere that is to stay text (``volume_xml`` escapes it)."""
    if capacity < 0 or (allocation is not None and allocation < 0):
        raise ValueError("capacity and allocation must not be negative")
    lines = ["<volume>", f"  <name>{name}</name>", f"  <capacity>{capacity}</capacity>"]
    if allocation is not None:
        lines.append(f"  <allocation>{allocation}</allocation>")
    if format:
        lines += ["  <target>", f"    <format type='{format}'/>", "  </target>"]
    if backing_path is not None:
        lines += ["  <backingStore>", f"    <path>{backing_path}</path>"]
        if backing_format:
            lines.append(f"    <format type='{backing_format}'/>")
        lines.append("  </backingStore>")
    lines.append("</volume>")
    return "\n".join(lines) + "\n"


def renamed_volume_xml(xml: str, name: str) -> str:
    """A volume's XML (``vol.xml_desc()``) with another name: what ``virsh vol-clone``
    sends to create the copy, so that it keeps the original's format and settings.

    The document is written back as libxml2 writes it (double-quoted attributes,
    ``<tag/>``), which is what ``virsh vol-clone --print-xml`` shows. ``name`` is put in
    as libxml2's xmlNodeSetContent reads it (``name_content``): its references stand for
    what they name, so ``a&amp;b`` names ``a&b``.

    Raises:
        ValueError: ``xml`` is not a volume's XML.
    """
    # Imported here: the command line needs it for vol-clone only.
    import xml.etree.ElementTree as ElementTree

    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as exc:
        raise ValueError(f"not a volume's XML: {exc}") from None
    element = root.find("name")
    if root.tag != "volume" or element is None:
        raise ValueError("not a volume's XML: no <volume><name>")
    placeholder = "virtvol-new-name-" + "0" * 8
    element.text = placeholder
    text = ElementTree.tostring(root, encoding="unicode").replace(" />", "/>")
    content = name_content(name)[0]
    written = f"<name>{content}</name>" if content else "<name/>"
    return text.replace(f"<name>{placeholder}</name>", written, 1)


_PREDEFINED_ENTITIES = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}


def name_content(text: str) -> tuple[str, str | None]:
    """``text`` as libxml2's xmlNodeSetContent takes it, written back as libxml2 writes
    an element's content, and libxml2's complaint, if any.

    The text may hold references: ``&amp;`` and the other predefined entities and
    ``&#65;``/``&#x41;`` stand for their characters (written escaped again where XML
    needs it), another ``&name;`` stays a reference to an entity the daemon will not
    know. A ``&`` with no ``;`` after it empties the content, with libxml2's
    "unterminated entity reference" line naming what follows it.
    """
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "&":
            out.append(escape(char) if char in "<>" else char)
            i += 1
            continue
        end = text.find(";", i + 1)
        if end < 0:
            return "", f"unterminated entity reference {text[i + 1 :]:>15}"
        body = text[i + 1 : end]
        character = _character_reference(body)
        if character is not None:
            out.append(escape(character) if character in "&<>" else character)
        elif body in _PREDEFINED_ENTITIES:
            out.append(escape(_PREDEFINED_ENTITIES[body]))
        else:
            out.append(f"&{body};")
        i = end + 1
    return "".join(out).replace("&apos;", "'").replace("&quot;", '"'), None


def _character_reference(body: str) -> str | None:
    """The character ``&#NN;`` or ``&#xHH;`` stands for (``body`` without ``&`` and ``;``)."""
    if not body.startswith("#"):
        return None
    digits, base = (body[2:], 16) if body[1:2] in ("x", "X") else (body[1:], 10)
    try:
        value = int(digits, base) if digits.isascii() and digits.isalnum() else 0
    except ValueError:
        return None
    return chr(value) if 0 < value <= 0x10FFFF else None

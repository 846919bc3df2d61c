"""Building the small XML documents libvirt's storage calls take.

``volume_xml`` writes what ``virsh vol-create-as`` sends, so that
``pool.create_volume(volume_xml("disk.img", 10 * 2**30))`` makes the same
volume as ``virsh vol-create-as POOL disk.img 10G``.
"""

from __future__ import annotations

__all__ = ["escape", "renamed_volume_xml", "virsh_volume_xml", "volume_xml"]


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
    daemon's XML error, as with virsh)."""
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
    ``<tag/>``), which is what ``virsh vol-clone --print-xml`` shows.

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
    element.text = name
    return ElementTree.tostring(root, encoding="unicode").replace(" />", "/>")

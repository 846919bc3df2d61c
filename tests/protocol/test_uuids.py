"""``parse_uuid`` against libvirt's own reading: python3-libvirt's client library parses a
UUID before it asks anything, refusing what it cannot read with "must be a valid UUID"."""

from __future__ import annotations

import json

from tests.conftest import run_system_python
from virtvol.protocol.uuids import parse_uuid

DIGITS = "0b0b0b0b00004000800000000000000a"
SPELLINGS = [
    "0b0b0b0b-0000-4000-8000-00000000000a",
    "0B0B0B0B-0000-4000-8000-00000000000A",
    DIGITS,
    "0b0b0b0b 0000 4000 8000 00000000000a",
    "-0b-0b0b0b--0000-4000-8000-00000000000a-",
    " \t\n\f\r0b0b0b0b-0000-4000-8000-00000000000a \t\n\f\r",
    "\v0b0b0b0b-0000-4000-8000-00000000000a",
    "0b0b0b0b-0000-4000-8000-00000000000a\v",
    "0-b0b0b0b-0000-4000-8000-00000000000a",
    "{0b0b0b0b-0000-4000-8000-00000000000a}",
    "urn:uuid:0b0b0b0b-0000-4000-8000-00000000000a",
    "0b0b0b0b-0000-4000-8000-00000000000g",
    "0b0b0b0b-0000-4000-8000-00000000000",
    "0b0b0b0b-0000-4000-8000-00000000000a0",
    "",
    "  ",
]

# Each spelling looked up in libvirt's test driver: a UUID it parses is looked for (and
# not found), one it cannot parse is refused before that.
LIBVIRT_READS = """
import json, sys, libvirt
libvirt.registerErrorHandler(lambda *args: None, None)
conn = libvirt.open("test:///default")
parsed = []
for text in json.loads(sys.argv[1]):
    try:
        conn.storagePoolLookupByUUIDString(text)
        parsed.append(True)
    except libvirt.libvirtError as exc:
        parsed.append("must be a valid UUID" not in str(exc))
print(json.dumps(parsed))
"""


def test_uuids_are_read_as_libvirt_reads_them() -> None:
    answer = run_system_python(LIBVIRT_READS, json.dumps(SPELLINGS)).stdout
    expected = dict(zip(SPELLINGS, json.loads(answer), strict=True))
    assert {text: parse_uuid(text) is not None for text in SPELLINGS} == expected
    assert expected[DIGITS]  # the test reads libvirt's answers as it should
    assert not expected["\v" + SPELLINGS[0]]
    for text, parsed in expected.items():
        if parsed:
            assert parse_uuid(text) == bytes.fromhex(DIGITS), repr(text)

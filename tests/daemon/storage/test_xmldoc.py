"""How definitions' XML is read (``daemon/storage/xmldoc.py``) where no peer shows it."""

from __future__ import annotations

from typing import Any

import pytest

from virtvol.daemon.storage.volxml import parse_volume_xml
from virtvol.protocol.errors import ErrorCode, ErrorReport
from virtvol.sparse import libc


def test_an_encoding_name_longer_than_any_converters_is_refused_without_asking_iconv(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """glibc's iconv keeps, for good, every pair of names it was asked to open when it
    reads its modules' list rather than its cache (with GCONV_PATH set, or no cache): a
    client sending long encoding names, each new, grew the daemon without bound. A name
    longer than any converter's is refused without asking iconv; a short one is still
    asked about."""
    asked: list[tuple[bytes, bytes]] = []
    function = libc.function

    def recording(name: str, *types: str) -> Any:
        found = function(name, *types)
        if name != "iconv_open" or found is None:
            return found

        def iconv_open(to: bytes, from_: bytes) -> Any:
            asked.append((to, from_))
            return found(to, from_)

        return iconv_open

    monkeypatch.setattr(libc, "function", recording)
    for encoding in ("a" * 300, "bogus"):
        with pytest.raises(ErrorReport) as refused:
            parse_volume_xml(
                f"<?xml version='1.0' encoding='{encoding}'?>"
                "<volume><name>v</name><capacity>1</capacity></volume>"
            )
        assert refused.value.code == ErrorCode.XML_DETAIL
        assert f"Unsupported encoding {encoding}\n" in refused.value.message
    assert asked == [(b"UTF-8", b"bogus"), (b"bogus", b"UTF-8")]

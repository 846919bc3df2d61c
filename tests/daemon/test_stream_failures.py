"""virtvold, in-process: a stream whose disk side fails in a way nobody foresaw still
ends with a stream error, never leaves the client waiting, and the connection goes on.

The writer's ``apply`` and the reader's ``next_chunk`` are made to raise a
``RuntimeError`` (a bug, not an ``ErrorReport``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.daemon.conftest import RawClient, in_process_client, in_process_daemon
from virtvol.daemon.storage import VolumeReader, VolumeWriter
from virtvol.protocol import remote as r
from virtvol.protocol.connection import ReplyReceived, StreamFailed
from virtvol.protocol.errors import ErrorCode, ErrorDomain
from virtvol.protocol.procedures import Proc

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from virtvol.daemon.context import DaemonContext


def _broken(*args: object) -> None:
    raise RuntimeError("disk gremlin")


@pytest.fixture
def context(tmp_path: Path) -> Iterator[DaemonContext]:
    with in_process_daemon(tmp_path) as ctx:
        yield ctx


@pytest.fixture
async def client(context: DaemonContext) -> AsyncIterator[RawClient]:
    async with in_process_client(context) as raw:
        yield raw


async def _stream_error(client: RawClient) -> r.RemoteError:
    while True:
        event = await client.next_event()
        assert event is not None, "the daemon closed the connection"
        if isinstance(event, StreamFailed):
            return event.error


async def _still_serving(client: RawClient) -> None:
    counted = await client.call(Proc.CONNECT_GET_TYPE)
    assert isinstance(counted, ReplyReceived)


async def test_an_upload_that_fails_unexpectedly_ends_with_an_error(
    client: RawClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(VolumeWriter, "apply", _broken)
    serial = await client.open_upload("disk.img")
    head, data = client.rpc.send_data(serial, b"new content")
    client.send(head, data)
    error = await _stream_error(client)
    assert (error.code, error.domain) == (ErrorCode.INTERNAL_ERROR, ErrorDomain.STREAMS)
    assert error.message == "internal error: upload to default/disk.img failed: disk gremlin"
    assert (tmp_path / "pool" / "disk.img").read_bytes() == b"old content"
    await _still_serving(client)


async def test_a_download_that_fails_unexpectedly_ends_with_an_error(
    client: RawClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(VolumeReader, "next_chunk", _broken)
    vol = await client.volume("disk.img")
    opened = await client.call(Proc.STORAGE_VOL_DOWNLOAD, r.VolTransferArgs(vol, 0, 0, 1))
    assert isinstance(opened, ReplyReceived)
    error = await _stream_error(client)
    assert (error.code, error.domain) == (ErrorCode.INTERNAL_ERROR, ErrorDomain.STREAMS)
    assert error.message == "internal error: download from default/disk.img failed: disk gremlin"
    await _still_serving(client)

"""virtvold's connection handling, driven frame by frame with the protocol core."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import TYPE_CHECKING

import pytest

from tests.conftest import Virtvold, run_virsh, start_virtvold, stop_virtvold
from tests.daemon.conftest import RawClient, error_of, raw_client
from virtvol.protocol import remote as r
from virtvol.protocol.connection import (
    PingReceived,
    PongReceived,
    ReplyReceived,
    StreamFinished,
)
from virtvol.protocol.constants import AuthType
from virtvol.protocol.procedures import Proc

if TYPE_CHECKING:
    from pathlib import Path

NOT_OPEN = (1, 7, "internal error: hypervisor connection not open")


def _result(event: object) -> object:
    assert isinstance(event, ReplyReceived), event
    return event.result


async def test_handshake_as_libvirtd(virtvold: Virtvold) -> None:
    async with raw_client(virtvold.port, open_name=None) as client:
        assert _result(await client.call(Proc.AUTH_LIST)) == r.AuthListRet(types=(AuthType.NONE,))
        feature = Proc.CONNECT_SUPPORTS_FEATURE
        keepalive = await client.call(feature, r.ConnectSupportsFeatureArgs(10))
        assert _result(keepalive) == r.ConnectSupportsFeatureRet(1)
        assert error_of(await client.call(feature, r.ConnectSupportsFeatureArgs(15))) == NOT_OPEN
        assert error_of(await client.call(Proc.CONNECT_GET_TYPE)) == NOT_OPEN
        await client.call(Proc.CONNECT_OPEN, r.ConnectOpenArgs(name="", flags=0))
        answers = {}
        for number in range(1, 18):
            reply = await client.call(feature, r.ConnectSupportsFeatureArgs(number))
            result = _result(reply)
            assert isinstance(result, r.ConnectSupportsFeatureRet)
            answers[number] = result.supported
        assert {n for n, yes in answers.items() if yes} == {8, 10, 14, 15}
        again = await client.call(Proc.CONNECT_OPEN, r.ConnectOpenArgs(name="", flags=0))
        assert error_of(again) == (1, 7, "internal error: connection already open")
        assert _result(await client.call(Proc.CONNECT_GET_TYPE)) == r.ConnectGetTypeRet("storage")
        lib = _result(await client.call(Proc.CONNECT_GET_LIB_VERSION))
        assert lib == r.ConnectGetLibVersionRet(9_000_000)
        uri = _result(await client.call(Proc.CONNECT_GET_URI))
        assert uri == r.ConnectGetUriRet("storage:///system")
        host = _result(await client.call(Proc.CONNECT_GET_HOSTNAME))
        assert host == r.ConnectGetHostnameRet(socket.gethostname())
        await client.call(Proc.CONNECT_REGISTER_CLOSE_CALLBACK)
        # The connection goes on after calls it cannot serve.
        assert error_of(await client.call(12345)) == (39, 7, "unknown procedure: 12345")
        domain_call = await client.call(10)  # REMOTE_PROC_DOMAIN_LOOKUP_BY_ID
        assert error_of(domain_call)[0] == 3
        pools = _result(await client.call(Proc.CONNECT_NUM_OF_STORAGE_POOLS))
        assert pools == r.NumRet(1)
        await client.call(Proc.CONNECT_CLOSE)
        assert await client.next_event() is None


async def test_hypervisor_uri_gives_storage(virtvold: Virtvold) -> None:
    async with raw_client(virtvold.port, open_name="qemu:///system") as client:
        pools = _result(await client.call(Proc.CONNECT_NUM_OF_STORAGE_POOLS))
        assert pools == r.NumRet(1)
    listing = run_virsh(f"qemu+tcp://127.0.0.1:{virtvold.port}/system", "pool-list").stdout
    assert " default   active   yes" in listing


@pytest.mark.parametrize("path", ["", "/", "/system/", "/SYSTEM"])
async def test_a_storage_uri_with_another_path_is_refused_in_libvirts_words(
    virtvold: Virtvold, path: str
) -> None:
    # libvirt's check of a driver URI's path reports without a domain (VIR_FROM_NONE, as
    # the reference libvirtd 9.0 answers) and names the path its daemon serves: /system
    # for root (the tests' daemon), /session for others.
    async with raw_client(virtvold.port, open_name=None) as client:
        name = f"storage://{path}"
        refused = await client.call(Proc.CONNECT_OPEN, r.ConnectOpenArgs(name=name, flags=0))
        expected = "/system" if os.geteuid() == 0 else "/session"
        assert error_of(refused) == (
            1,
            0,
            f"internal error: unexpected storage URI path '{path}', try storage://{expected}",
        )


async def test_bad_frame_closes_only_that_connection(virtvold: Virtvold) -> None:
    async with raw_client(virtvold.port) as good, raw_client(virtvold.port) as bad:
        bad.send(b"\x00\x00\x00\x05garbage")
        assert await bad.next_event() is None
        assert _result(await good.call(Proc.CONNECT_GET_TYPE)) == r.ConnectGetTypeRet("storage")


async def test_slow_download_does_not_delay_other_calls(virtvold: Virtvold) -> None:
    big = virtvold.pool_dir / "big"
    run_virsh(virtvold.tcp_uri, "vol-create-as", "default", "big", "1M")
    big.write_bytes(os.urandom(1 << 20) * 64)
    async with raw_client(virtvold.port) as slow, raw_client(virtvold.port) as quick:
        vol = await slow.volume("big")
        args = r.VolTransferArgs(vol=vol, offset=0, length=0, flags=0)
        assert isinstance(await slow.call(Proc.STORAGE_VOL_DOWNLOAD, args), ReplyReceived)
        # The slow client reads nothing more; calls on its connection and others go on.
        async with asyncio.timeout(5):
            for _ in range(20):
                assert isinstance(await quick.call(Proc.CONNECT_GET_TYPE), ReplyReceived)
        log = virtvold.log_text()
        assert "download default/big" not in log  # still running, held back by the reader


async def test_dropped_upload_keeps_old_content(virtvold: Virtvold) -> None:
    run_virsh(virtvold.tcp_uri, "vol-create-as", "default", "keep", "1M")
    volume = virtvold.pool_dir / "keep"
    old = os.urandom(1 << 20)
    volume.write_bytes(old)
    for ending in ("drop", "abort"):
        client = await RawClient.connect(virtvold.port)
        await client.open()
        serial = await client.open_upload("keep")
        for _ in range(8):
            client.send(*client.rpc.send_data(serial, b"\x01" * 262_120))
        client.send(client.rpc.send_hole(serial, 1 << 30))
        if ending == "abort":
            client.send(client.rpc.send_abort(serial))
            assert isinstance(await client.next_event(), StreamFinished)
        await client.close()
        for _ in range(100):
            if f"upload default/keep: {'aborted' if ending == 'abort' else 'dropped'}" in (
                virtvold.log_text()
            ):
                break
            await asyncio.sleep(0.05)
        assert volume.read_bytes() == old
        assert os.listdir(virtvold.pool_dir) == ["keep"]


async def test_keepalive_interval_minus_one_sends_no_pings_but_answers_them(
    tmp_path: Path,
) -> None:
    # libvirtd.conf's "off": the daemon never pings nor drops a silent client, and still
    # answers the client's PINGs.
    config = tmp_path / "virtvold.toml"
    config.write_text("keepalive_interval = -1\nkeepalive_count = 1\n")
    daemon = start_virtvold(tmp_path / "d", "--config", str(config))
    try:
        client = await RawClient.connect(daemon.port)
        await client.call(Proc.CONNECT_SUPPORTS_FEATURE, r.ConnectSupportsFeatureArgs(10))
        client.send(client.rpc.send_ping())
        assert isinstance(await client.next_event(), PongReceived)
        with pytest.raises(TimeoutError):  # nothing else comes: no PING, no close
            await client.next_event(wait=1.5)
        await client.call(Proc.CONNECT_SUPPORTS_FEATURE, r.ConnectSupportsFeatureArgs(10))
        await client.close()
    finally:
        stop_virtvold(daemon)
    assert "no keepalive answer" not in daemon.log_text()


async def test_keepalive_pings_then_drops_a_silent_client(tmp_path: Path) -> None:
    config = tmp_path / "virtvold.toml"
    config.write_text("keepalive_interval = 0.2\nkeepalive_count = 2\n")
    daemon = start_virtvold(tmp_path / "d", "--config", str(config))
    try:
        client = await RawClient.connect(daemon.port)
        await client.call(Proc.CONNECT_SUPPORTS_FEATURE, r.ConnectSupportsFeatureArgs(10))
        # A PING from the client gets a PONG (an event the client core reports).
        client.send(client.rpc.send_ping())
        started = asyncio.get_running_loop().time()
        pings = 0
        while (event := await client.next_event(wait=5)) is not None:
            pings += isinstance(event, PingReceived)
        elapsed = asyncio.get_running_loop().time() - started
        assert pings == 2
        assert 0.5 < elapsed < 3
        await client.close()
    finally:
        stop_virtvold(daemon)
    assert "no keepalive answer" in daemon.log_text()

"""FrameReader commits memory as bytes arrive, never on the word of a header."""

from __future__ import annotations

import tracemalloc

import pytest

from virtvol.protocol.constants import FRAME_OVERHEAD, MESSAGE_MAX, MessageStatus, MessageType
from virtvol.protocol.exceptions import RemoteProtocolError
from virtvol.protocol.frames import (
    PAYLOAD_FIRST_STEP,
    FrameReader,
    Header,
    PayloadBuffers,
    encode_frame,
    encode_head,
)

_HEADER = Header(0x20008086, 1, 209, MessageType.STREAM, 7, MessageStatus.CONTINUE)


def _allocated_while(action: FrameReader) -> int:
    """Bytes still allocated after feeding a 32 MiB header to ``action`` (a fresh reader)."""
    head = encode_head(_HEADER, MESSAGE_MAX - 24)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        action.feed(head)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return after - before


def test_a_header_announcing_32_mib_allocates_little() -> None:
    reader = FrameReader()
    grown = _allocated_while(reader)
    assert grown <= PAYLOAD_FIRST_STEP + 4096, f"{grown} bytes allocated for a bare header"
    assert reader.next_frame() is None
    assert not reader.at_frame_boundary()


def test_memory_follows_the_bytes_that_arrive() -> None:
    reader = FrameReader()
    size = 8 << 20
    reader.feed(encode_head(_HEADER, size))
    sent = 0
    step = 300_000
    while sent < size // 8:
        reader.feed(b"\x01" * step)
        sent += step
    held = len(reader.get_buffer()) + sent
    # The buffer is at most twice what arrived (doubling), never the whole 8 MiB yet.
    assert held <= 2 * sent + PAYLOAD_FIRST_STEP
    assert held < size


def test_a_payload_grown_in_steps_arrives_whole_and_in_order() -> None:
    reader = FrameReader()
    payload = bytes(range(256)) * ((3 << 20) // 256 + 7)
    frame = encode_frame(_HEADER, payload)
    for start in range(0, len(frame), 70_001):
        reader.feed(frame[start : start + 70_001])
    received = reader.next_frame()
    assert received is not None
    assert received.header == _HEADER
    assert bytes(received.payload) == payload
    assert reader.at_frame_boundary()


def test_a_grown_buffer_is_reused_for_the_next_frame() -> None:
    reader = FrameReader()
    payload = b"\xab" * (1 << 20)
    reader.feed(encode_frame(_HEADER, payload))
    first = reader.next_frame()
    assert first is not None
    assert bytes(first.payload) == payload
    assert isinstance(first.payload, memoryview)
    first_buffer = id(first.payload.obj)
    del first
    reader.feed(encode_frame(_HEADER, b"\xcd" * (1 << 20)))
    second = reader.next_frame()
    assert second is not None
    assert bytes(second.payload) == b"\xcd" * (1 << 20)
    assert isinstance(second.payload, memoryview)
    # The second frame landed straight in the first one's (now free) buffer: no growth steps.
    assert id(second.payload.obj) == first_buffer


def test_a_lowered_message_limit_refuses_the_next_bigger_frame() -> None:
    reader = FrameReader()
    assert reader.max_message == MESSAGE_MAX
    reader.max_message = 1024
    assert reader.max_message == 1024
    reader.feed(encode_head(_HEADER, 1024 - 24))  # exactly the limit: accepted
    reader.feed(b"x" * 1000)
    frame = reader.next_frame()
    assert frame is not None
    assert len(frame.payload) == 1000
    with pytest.raises(RemoteProtocolError, match="exceeds the maximum of 1028"):
        reader.feed(encode_head(_HEADER, 1024 - 23))


def test_readers_sharing_a_pool_reuse_each_others_free_buffers() -> None:
    shared = PayloadBuffers()
    payload = b"\xab" * (1 << 20)
    first_reader = FrameReader(payload_buffers=shared)
    first_reader.feed(encode_frame(_HEADER, payload))
    first = first_reader.next_frame()
    assert first is not None
    assert isinstance(first.payload, memoryview)
    first_buffer = id(first.payload.obj)
    # Still held by its consumer: a second reader must not get it.
    busy_reader = FrameReader(payload_buffers=shared)
    busy_reader.feed(encode_frame(_HEADER, b"\x01" * (1 << 20)))
    busy = busy_reader.next_frame()
    assert busy is not None
    assert isinstance(busy.payload, memoryview)
    assert id(busy.payload.obj) != first_buffer
    assert bytes(first.payload) == payload
    del first
    # Free again: a new reader's first big frame lands in it, whole, with no growth steps.
    new_reader = FrameReader(payload_buffers=shared)
    new_reader.feed(encode_head(_HEADER, 1 << 20))
    assert len(new_reader.get_buffer()) == 1 << 20
    new_reader.feed(b"\xcd" * (1 << 20))
    second = new_reader.next_frame()
    assert second is not None
    assert isinstance(second.payload, memoryview)
    assert id(second.payload.obj) == first_buffer
    assert bytes(second.payload) == b"\xcd" * (1 << 20)


def test_a_small_payload_never_takes_a_much_larger_buffer() -> None:
    pool = PayloadBuffers()
    pool.adopt(bytearray(8 << 20))
    assert pool.take_free(200 << 10) is None  # an 8 MiB buffer is not for 200 KiB
    taken = pool.take_free(5 << 20)
    assert taken is not None
    assert len(taken) == 5 << 20


def test_buffers_below_the_pooled_minimum_are_not_kept() -> None:
    pool = PayloadBuffers()
    pool.adopt(bytearray(PayloadBuffers.MIN_POOLED - 1))
    assert pool.take_free(PayloadBuffers.MIN_POOLED - 1) is None
    pool.adopt(bytearray(PayloadBuffers.MIN_POOLED))
    assert pool.take_free(PayloadBuffers.MIN_POOLED) is not None


def test_a_full_pool_lets_go_of_smaller_free_buffers_for_a_larger_one() -> None:
    small = PayloadBuffers.MIN_POOLED
    pool = PayloadBuffers(max_bytes=8 * small)
    for _ in range(8):
        pool.adopt(bytearray(small))
    held = pool.take_free(small)  # in use: must stay
    assert held is not None
    pool.adopt(bytearray(4 * small))
    big = pool.take_free(4 * small)
    assert big is not None
    assert len(big) == 4 * small
    # The held one is still the pool's, and four other small ones were dropped for room.
    freed = [pool.take_free(small) for _ in range(8)]
    assert sum(view is not None for view in freed) == 3
    assert all(view is None or view.obj is not held.obj for view in freed)


def test_a_full_pool_keeps_its_buffers_when_the_newcomer_is_not_larger() -> None:
    size = PayloadBuffers.MIN_POOLED
    pool = PayloadBuffers(max_bytes=2 * size)
    first, second = bytearray(size), bytearray(size)
    pooled = {id(first), id(second)}  # alive in the pool, so these ids stay theirs
    pool.adopt(first)
    pool.adopt(second)
    del first, second  # a buffer referenced from outside the pool is not free
    pool.adopt(bytearray(size))
    kept = [pool.take_free(size) for _ in range(3)]
    assert {id(view.obj) for view in kept if view is not None} == pooled


def test_take_hands_out_a_freed_buffer_again() -> None:
    pool = PayloadBuffers()
    first = pool.take(PayloadBuffers.MIN_POOLED)
    owner = id(first.obj)
    del first
    again = pool.take(PayloadBuffers.MIN_POOLED)
    assert id(again.obj) == owner
    other = pool.take(PayloadBuffers.MIN_POOLED)  # the first is in use: a new one
    assert id(other.obj) != owner


def test_a_resized_scratch_buffer_keeps_what_it_holds() -> None:
    frames = [encode_frame(_HEADER, bytes([n]) * 3000) for n in range(8)]
    wire = b"".join(frames)
    reader = FrameReader(scratch_size=4096)
    reader.feed(wire[:5000])  # one frame and part of the next
    reader.resize_scratch(64 << 10)
    assert reader.scratch_size == 64 << 10
    reader.feed(wire[5000:20000])
    held = reader.buffered
    reader.resize_scratch(1024)  # less than the part of a frame it holds
    assert reader.scratch_size == 1024
    assert reader.buffered == held > 1024
    reader.feed(wire[20000:])
    assert [bytes(frame.payload) for frame in reader] == [bytes([n]) * 3000 for n in range(8)]
    assert reader.buffered == 0
    reader.resize_scratch(1024)
    assert reader.scratch_size == 1024
    with pytest.raises(ValueError, match="smaller than a frame head"):
        reader.resize_scratch(27)


def _read_like_a_transport(reader: FrameReader, data: bytes) -> None:
    """Feed ``data`` as asyncio's BufferedProtocol does: never a read into no room."""
    view = memoryview(data)
    while view:
        target = reader.get_buffer()
        assert len(target) > 0, "get_buffer left no room"
        count = min(len(target), len(view))
        target[:count] = view[:count]
        view = view[count:]
        reader.buffer_updated(count)


@pytest.mark.parametrize("held", [1024, 1025, 3000])
def test_a_scratch_buffer_shrunk_under_a_frame_it_holds_leaves_room(held: int) -> None:
    # A server shrinks the buffer when an upload ends, whatever the client sent since.
    frames = [encode_frame(_HEADER, bytes([n]) * 5000) for n in range(3)]
    wire = b"".join(frames)
    reader = FrameReader(scratch_size=64 << 10)
    _read_like_a_transport(reader, wire[:held])
    reader.resize_scratch(1024)
    assert reader.buffered == held
    _read_like_a_transport(reader, wire[held:])
    assert [bytes(frame.payload) for frame in reader] == [bytes([n]) * 5000 for n in range(3)]
    assert reader.at_frame_boundary()


def test_a_larger_first_step_takes_a_download_frame_in_one_allocation() -> None:
    # The command line's reader (client/direct.py) commits 4 MiB at the first word of a
    # 4 MiB frame, where the default grows from 64 KiB: no copies, one allocation.
    reader = FrameReader(payload_first_step=4 << 20)
    payload = bytes(range(256)) * ((4 << 20) // 256)
    frame = encode_frame(_HEADER, payload)
    reader.feed(frame[:1000])
    buffer = reader.get_buffer()
    assert len(buffer) == len(payload) - (1000 - FRAME_OVERHEAD)
    for start in range(1000, len(frame), 256 << 10):
        reader.feed(frame[start : start + (256 << 10)])
        assert reader.get_buffer().obj is buffer.obj or reader.at_frame_boundary()
    received = reader.next_frame()
    assert received is not None
    assert bytes(received.payload) == payload
    # Never more than the frame announced, and only up to the first step ahead.
    announced_32_mib = FrameReader(payload_first_step=4 << 20)
    announced_32_mib.feed(encode_head(_HEADER, MESSAGE_MAX - 24))
    assert len(announced_32_mib.get_buffer()) == 4 << 20
    for step in (0, -1):
        with pytest.raises(ValueError, match="first step"):
            FrameReader(payload_first_step=step)

"""Frames: the length word, the 24-byte header, and the payload.

``FrameReader`` is an incremental parser built for asyncio's BufferedProtocol
(``get_buffer`` / ``buffer_updated``) but free of I/O: the transport writes
straight into the memory the reader hands out.

Theory of operation: small frames (every control message) are read into one
fixed scratch buffer, several per read, and their payloads copied out (they
are small). A frame too large for the scratch buffer gets a payload buffer of
its own as soon as its header is known; the few payload bytes already in the
scratch buffer move over, and every later read lands directly in the payload
buffer. Stream data therefore reaches the consumer as a memoryview over the
very buffer the kernel filled: no join and no per-frame copy. The length word
is checked (28 <= length <= 4 + 32 MiB, or a smaller limit) before anything is
allocated for it.

Memory is committed as bytes arrive, never on the word of a header: a large
frame takes a recycled buffer when one is free (memory that exists already),
else a fresh one of at most ``PAYLOAD_FIRST_STEP`` bytes that doubles each
time it fills, up to the announced length. A peer that announces 32 MiB and
sends nothing more costs 64 KiB, not 32 MiB; a peer that sends the bytes pays
for them with its bandwidth. Once the pool holds buffers (any steady stream),
frames land in them directly and nothing is copied.
"""

from __future__ import annotations

import collections
import struct
import sys

from virtvol.protocol.constants import (
    FRAME_OVERHEAD,
    LENGTH_WORD_SIZE,
    MESSAGE_MAX,
    PROGRAM_NAMES,
    MessageStatus,
    MessageType,
)
from virtvol.protocol.exceptions import RemoteProtocolError
from virtvol.protocol.record import Record

# The length word and the six header words.
FRAME_HEAD = struct.Struct(">IIIiiIi")
_LENGTH_WORD = struct.Struct(">I")
# The first fresh allocation for a large payload; it doubles as bytes arrive.
PAYLOAD_FIRST_STEP = 64 << 10
# The default buffer for small frames: a server keeps one per connection.
SCRATCH_SIZE = 16 << 10
# What a payload pool keeps for reuse, by default.
POOLED_MAX = 64 << 20

Payload = bytes | memoryview


class Header(Record):
    """The six header words. ``type`` and ``status`` stay plain ints here: an
    unknown value is the connection's to judge, not the framing's."""

    program: int
    version: int
    procedure: int
    type: int
    serial: int
    status: int

    def describe(self) -> str:
        program = PROGRAM_NAMES.get(self.program, f"0x{self.program:08x}")
        try:
            kind = MessageType(self.type).name
        except ValueError:
            kind = f"type={self.type}"
        try:
            status = MessageStatus(self.status).name
        except ValueError:
            status = f"status={self.status}"
        return f"{program} proc={self.procedure} {kind} serial={self.serial} {status}"


class Frame(Record):
    header: Header
    payload: Payload


# A received frame as the reader keeps it until it is taken: the length word and the six
# header words as ``struct`` unpacked them (one call, no record), and the payload.
Words = tuple[int, int, int, int, int, int, int]
RawFrame = tuple[Words, Payload]


def encode_head(header: Header, payload_length: int) -> bytes:
    """The 28 bytes (length word + header) that go before a payload of that length."""
    return FRAME_HEAD.pack(
        FRAME_OVERHEAD + payload_length,
        header.program,
        header.version,
        header.procedure,
        header.type,
        header.serial,
        header.status,
    )


def encode_frame(header: Header, payload: Payload = b"") -> bytes:
    """A whole frame as one bytes object (for control messages; data goes head + view)."""
    return encode_head(header, len(payload)) + payload


class PayloadBuffers:
    """Recycles the memory that large payloads are received into.

    A fresh buffer per frame costs an allocation, its zero-fill and the page
    faults of new memory, frame after frame; reused memory costs nothing.
    Whoever consumes a payload holds memoryviews of its buffer (the frame's
    payload, slices of it, a write still pending); every one of them keeps one
    shared reference to the buffer, so a buffer whose reference count is back
    to what the pool alone holds is free again. The pool keeps at most
    ``max_bytes``; beyond that, buffers are plain allocations left to the
    garbage collector.

    A server shares one pool among its connections, so what one peer does to it
    must not hurt the others: a payload gets a buffer at most twice its size
    (a small frame never ties up a 32 MiB buffer); buffers under ``MIN_POOLED``
    are not kept (cheap to allocate, and the many sizes a peer can make up would
    fill the pool); and a full pool makes room for a larger buffer by letting go
    of smaller free ones, so buffers a peer left behind give way to live traffic.
    """

    MIN_POOLED = 128 << 10

    def __init__(self, max_bytes: int = POOLED_MAX) -> None:
        self._buffers: collections.deque[bytearray] = collections.deque()
        self._pooled_bytes = 0
        self._max_bytes = max_bytes
        # Calibrate: what a buffer referenced by nothing but the pool counts in take().
        self._buffers.append(bytearray(1))
        self._free_refcount = self._refcount_of_first()
        self._buffers.clear()

    def _refcount_of_first(self) -> int:
        for buffer in self._buffers:
            return sys.getrefcount(buffer)
        return 0  # pragma: no cover - called only right after a buffer was added

    def take(self, size: int) -> memoryview:
        """Memory for a payload of ``size`` bytes (not zeroed: the peer fills all of it)."""
        view = self.take_free(size)
        if view is not None:
            return view
        buffer = bytearray(size)
        self.adopt(buffer)
        return memoryview(buffer)

    def take_free(self, size: int) -> memoryview | None:
        """A recycled buffer of at least ``size`` bytes, cut to ``size``; None if none is free."""
        buffers = self._buffers
        for _ in range(len(buffers)):
            buffer = buffers[0]
            buffers.rotate(-1)
            if size <= len(buffer) <= 2 * size and sys.getrefcount(buffer) <= self._free_refcount:
                return memoryview(buffer)[:size]
        return None

    def adopt(self, buffer: bytearray) -> None:
        """Keep ``buffer`` for reuse once its payload is consumed, if the pool has room
        (made by letting go of smaller free buffers if need be)."""
        size = len(buffer)
        if size < self.MIN_POOLED or size > self._max_bytes:
            return
        if self._pooled_bytes + size > self._max_bytes:
            self._let_go_of_smaller(size, self._pooled_bytes + size - self._max_bytes)
        if self._pooled_bytes + size <= self._max_bytes:
            self._buffers.append(buffer)
            self._pooled_bytes += size

    def _let_go_of_smaller(self, size: int, needed: int) -> None:
        """Drop free buffers smaller than ``size``, oldest first, until ``needed`` bytes
        are freed or none is left to drop."""
        kept: collections.deque[bytearray] = collections.deque()
        for buffer in self._buffers:
            if needed > 0 and len(buffer) < size and sys.getrefcount(buffer) <= self._free_refcount:
                needed -= len(buffer)
                self._pooled_bytes -= len(buffer)
            else:
                kept.append(buffer)
        self._buffers = kept


class FrameReader:
    """Turns a byte stream, in chunks of any size, into ``Frame`` objects.

    Args:
        max_message: the largest header + payload accepted (libvirt: 32 MiB).
        scratch_size: the buffer for small frames; larger frames get their own.
        payload_buffers: where large payloads' memory is recycled; a server shares one
            among its connections, so that a new connection's first frames land in
            memory that earlier ones left free. None: a pool of this reader's own.
        payload_first_step: the first fresh allocation for a large payload, before
            bytes arrive to justify more (``PAYLOAD_FIRST_STEP``). A client of one
            connection may commit a download frame's worth at once, where a server,
            which many peers could make wait with announced frames, may not.
    """

    def __init__(
        self,
        *,
        max_message: int = MESSAGE_MAX,
        scratch_size: int = SCRATCH_SIZE,
        payload_buffers: PayloadBuffers | None = None,
        payload_first_step: int = PAYLOAD_FIRST_STEP,
    ) -> None:
        if scratch_size < FRAME_OVERHEAD:
            raise ValueError("scratch buffer smaller than a frame head")
        if payload_first_step < 1:
            raise ValueError("a payload's first step must be at least one byte")
        self._payload_first_step = payload_first_step
        self._max_length = LENGTH_WORD_SIZE + max_message
        self._scratch = bytearray(scratch_size)
        self._scratch_view = memoryview(self._scratch)
        self._start = 0
        self._end = 0
        self._big_words: Words | None = None
        self._big_payload: memoryview | None = None
        self._big_filled = 0
        self._big_length = 0  # the announced payload length; _big_payload may be shorter yet
        self.ready: collections.deque[RawFrame] = collections.deque()
        """Complete frames not taken yet, oldest first, as (words, payload): ``words`` are
        the length word and the header's six words (program, version, procedure, type,
        serial, status). A consumer that handles runs of frames by their words alone
        takes them with ``popleft``; ``next_frame`` takes the oldest as a ``Frame``."""
        self._payload_buffers = PayloadBuffers() if payload_buffers is None else payload_buffers

    @property
    def max_message(self) -> int:
        """The largest header + payload accepted; a server may change it as the
        connection's rights change (it applies from the next frame header on)."""
        return self._max_length - LENGTH_WORD_SIZE

    @max_message.setter
    def max_message(self, value: int) -> None:
        self._max_length = LENGTH_WORD_SIZE + value

    @property
    def scratch_size(self) -> int:
        """The buffer for small frames: each read fills at most this much of it."""
        return len(self._scratch)

    def resize_scratch(self, size: int) -> None:
        """Make the buffer for small frames ``size`` bytes: a server gives more room to a
        connection whose reads bring many small frames. The bytes held move over, or, if
        they are the start of a frame they would fill the buffer with, to that frame's own
        memory. Not between ``get_buffer`` and its ``buffer_updated``.
        """
        if size < FRAME_OVERHEAD:
            raise ValueError("scratch buffer smaller than a frame head")
        pending = self._end - self._start
        if pending >= size:
            # The start of one frame (no whole frame is held) that would fill the new
            # buffer: it goes on in memory of its own, as it would have had it arrived
            # now. A full buffer would leave ``get_buffer`` nothing to read into.
            self._begin_big_frame(FRAME_HEAD.unpack_from(self._scratch, self._start))
            pending = 0
        scratch = bytearray(size)
        scratch[:pending] = self._scratch_view[self._start : self._end]
        self._scratch, self._scratch_view = scratch, memoryview(scratch)
        self._start, self._end = 0, pending

    @property
    def buffered(self) -> int:
        """Bytes received that do not yet form a whole frame."""
        if self._big_payload is not None:
            return FRAME_OVERHEAD + self._big_filled
        return self._end - self._start

    def at_frame_boundary(self) -> bool:
        """True when no partial frame is held (a clean place for the stream to end)."""
        return self._big_payload is None and self._start == self._end

    def get_buffer(self) -> memoryview:
        """Memory to receive the next bytes into; pass the count to ``buffer_updated``."""
        if self._big_payload is not None:
            return self._big_payload[self._big_filled :]
        if self._start and (self._start == self._end or len(self._scratch) - self._end < 4096):
            pending = self._end - self._start
            self._scratch[:pending] = self._scratch[self._start : self._end]
            self._start, self._end = 0, pending
        return self._scratch_view[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        """Account for ``nbytes`` written into the last ``get_buffer`` memory."""
        if self._big_payload is not None:
            self._big_filled += nbytes
            if self._big_filled == self._big_length:
                self._finish_big_frame()
            elif self._big_filled == len(self._big_payload):
                self._grow_big_payload()
            return
        self._end += nbytes
        self._parse_scratch()

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` in (a convenience for tests and tools that hold bytes)."""
        view = memoryview(data).cast("B")
        while view:
            target = self.get_buffer()
            count = min(len(target), len(view))
            target[:count] = view[:count]
            view = view[count:]
            self.buffer_updated(count)

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None when more bytes are needed."""
        if not self.ready:
            return None
        words, payload = self.ready.popleft()
        _, program, version, procedure, kind, serial, status = words
        return Frame(Header(program, version, procedure, kind, serial, status), payload)

    def __iter__(self) -> FrameReader:
        return self

    def __next__(self) -> Frame:
        frame = self.next_frame()
        if frame is None:
            raise StopIteration
        return frame

    def _check_length(self, length: int) -> None:
        if length < FRAME_OVERHEAD:
            raise RemoteProtocolError(f"frame length {length} is below the minimum of 28")
        if length > self._max_length:
            raise RemoteProtocolError(
                f"frame length {length} exceeds the maximum of {self._max_length}"
            )

    def _parse_scratch(self) -> None:
        # Per frame: one unpack of the 28-byte head, one copy of the payload; the
        # fragmented images' small frames come many to a read, so nothing else.
        scratch, view, ready = self._scratch, self._scratch_view, self.ready
        start, end, max_length = self._start, self._end, self._max_length
        try:
            while end - start >= FRAME_OVERHEAD:
                words: Words = FRAME_HEAD.unpack_from(scratch, start)
                length = words[0]
                if not FRAME_OVERHEAD <= length <= max_length:
                    self._check_length(length)
                if length > end - start:
                    if length > len(scratch):
                        self._start = start
                        self._begin_big_frame(words)
                        start, end = self._start, self._end
                    return  # else wait for the rest; compaction in get_buffer makes room
                ready.append((words, bytes(view[start + FRAME_OVERHEAD : start + length])))
                start += length
            if end - start >= LENGTH_WORD_SIZE:
                # A head cut short: its length word is checked as soon as it is there.
                self._check_length(_LENGTH_WORD.unpack_from(scratch, start)[0])
        finally:
            self._start = start

    def _begin_big_frame(self, words: Words) -> None:
        size = words[0] - FRAME_OVERHEAD
        already = self._end - self._start - FRAME_OVERHEAD
        payload = self._payload_buffers.take_free(size)
        if payload is None:
            fresh = bytearray(min(size, max(self._payload_first_step, 2 * already)))
            if len(fresh) == size:
                self._payload_buffers.adopt(fresh)
            payload = memoryview(fresh)
        payload[:already] = self._scratch_view[self._start + FRAME_OVERHEAD : self._end]
        self._start = self._end = 0
        self._big_words, self._big_payload, self._big_filled = words, payload, already
        self._big_length = size

    def _grow_big_payload(self) -> None:
        """The payload buffer is full but the frame is not: double it (a bytes-in-hand step)."""
        assert self._big_payload is not None
        grown = bytearray(min(self._big_length, 2 * len(self._big_payload)))
        grown[: self._big_filled] = self._big_payload
        if len(grown) == self._big_length:
            self._payload_buffers.adopt(grown)
        self._big_payload = memoryview(grown)

    def _finish_big_frame(self) -> None:
        assert self._big_words is not None
        assert self._big_payload is not None
        self.ready.append((self._big_words, self._big_payload))
        self._big_words, self._big_payload, self._big_filled = None, None, 0
        self._big_length = 0

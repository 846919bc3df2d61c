"""What every way of moving a volume's bytes shares, whatever drives the socket.

The event-loop streams (``streams``, ``transfer``) and the command line's
blocking transfers (``direct_transfer``) open their streams with the same
sparse negotiation, cut data into frames of the same size, split a read
buffer by the same zero rule and report the same ``TransferResult``. Nothing
here waits on anything but the awaitables it is given, so it runs on an event
loop and, driven by ``direct.run_blocking``, without one.

Negotiation (``sparse=None``): the opening call carries flag 1 (sparse). A peer
that predates sparse streams refuses it with VIR_ERR_INVALID_ARG "unsupported
flags (0x1) in function storageVolUpload" (or ``...Download``); the call is
then made once more without the flag, the stream is dense and one warning is
logged per connection. ``sparse=True`` turns that refusal into
``SparseUnsupported``; ``sparse=False`` never asks. In ``protocol="legacy"``
mode the flag is never sent.

An upload asks for sparse (``sparse=None``) only where a skip leaves zeros: on a
daemon that says so (virtvold's ``UPLOAD_SKIPS_LEAVE_ZEROS_FEATURE``), or on a
volume that holds no data at all, and then (libvirtd ending a sparse upload's file where
the stream ends) only when the upload, where its end is known (a file's), reaches the
volume's size. libvirtd seeks over a skip in a file, keeping
the bytes the volume held there, so an upload over a libvirtd volume that holds
data sends every byte: the volume then holds exactly the source's bytes. A
download from an offset past the volume's end does not ask (libvirtd fails a
sparse one there and serves a dense one as empty).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from virtvol.client.errors import (
    InvalidArgument,
    LibvirtError,
    SparseUnsupported,
    StreamError,
    core_errors,
)
from virtvol.client.log import log
from virtvol.protocol import procedures
from virtvol.protocol import remote as r
from virtvol.protocol.constants import UPLOAD_SKIPS_LEAVE_ZEROS_FEATURE, VolStreamFlags
from virtvol.protocol.hints import TYPE_CHECKING
from virtvol.protocol.record import Record
from virtvol.sparse.zeros import zero_runs

if TYPE_CHECKING:
    from virtvol.client.interfaces import VolumeLike
    from virtvol.sparse.reader import Chunk

__all__ = [
    "ABORT_WAIT",
    "ABORT_WAIT_INTERRUPTED",
    "FRAME_DATA_MAX",
    "SOURCE_WAIT_STEP",
    "Progress",
    "TransferResult",
    "at_stage",
    "check_stream_arguments",
    "negotiate_stream",
    "past_length",
    "piece_runs",
]


# Data bytes per frame we send. libvirt's own senders use 262120 (its legacy
# payload limit) but every libvirt >= 3.4 peer reads frames up to 32 MiB. Each
# frame costs a fixed amount of Python work (header, state machine, the
# writes), so 1 MiB frames cut that overhead four-fold against 256 KiB while
# staying small next to what the peer may hold per client (libvirtd keeps up to
# max_client_requests = 5 frames in flight).
FRAME_DATA_MAX = 1024 * 1024

# Seconds a source that cannot seek (a pipe) is waited for at a time; in between the
# command line answers the peer's keepalive PINGs (libvirtd's default allows 30 s of
# silence) and the library's reading thread sees whether its upload is still wanted.
SOURCE_WAIT_STEP = 0.1

# Seconds an aborted stream waits for the peer's confirmation, which frees the volume for
# the next stream (an honest peer confirms at once); a stream ended by an interruption
# (Ctrl-C, SIGTERM, a cancelled task: a time limit ran out) waits
# ``ABORT_WAIT_INTERRUPTED``: a peer that never confirms must not hold the user long.
ABORT_WAIT = 30.0
ABORT_WAIT_INTERRUPTED = 1.0

# Called as ``progress(data_bytes, hole_bytes)`` while a file moves.
Progress = Callable[[int, int], None]


class TransferResult(Record):
    """What a file transfer moved.

    Attributes:
        data_bytes: bytes that travelled as data.
        hole_bytes: bytes that travelled as holes (skips).
        zero_bytes: data bytes found to be zero and left as holes locally (download).
        seconds: wall-clock duration.
        sparse: whether the stream was sparse.
        fell_back: True when sparse was asked for, refused, and the stream went dense.
    """

    data_bytes: int
    hole_bytes: int
    zero_bytes: int
    seconds: float
    sparse: bool
    fell_back: bool

    @property
    def total_bytes(self) -> int:
        """Bytes of the image covered (data plus holes)."""
        return self.data_bytes + self.hole_bytes


def _is_sparse_refusal(exc: InvalidArgument) -> bool:
    return "unsupported flags (0x1)" in exc.message


def check_stream_arguments(
    volume: VolumeLike, offset: int, length: int, requested: bool | None
) -> None:
    """Refuse what a stream's opening would refuse before it sends anything: a negative
    offset or length, one the wire cannot carry, sparse required where the connection
    cannot have it. A download checks this before it touches its destination, which it
    may truncate (a file written in place): a mistake in the arguments must cost no file.

    Raises:
        ValueError: a negative offset or length.
        UnsendableValue: an offset or length past what the wire carries (2**64 - 1).
        SparseUnsupported: ``requested`` is True on a ``protocol="legacy"`` connection.
    """
    if offset < 0 or length < 0:
        raise ValueError("offset and length must not be negative")
    with core_errors(volume.connection._rpc.description):
        r.VolTransferArgs(volume.wire, offset, length, 0).encode()
    if requested is True and volume.connection.protocol == "legacy":
        raise _no_sparse_when_legacy()


def _no_sparse_when_legacy() -> SparseUnsupported:
    # Imported here, not with the module: every transfer would pay for making libvirt's
    # error numbers (~0.5 ms), which only this refusal names.
    from virtvol.protocol.error_codes import ErrorCode, ErrorDomain

    return SparseUnsupported(
        ErrorCode.NO_SUPPORT,
        ErrorDomain.STREAMS,
        "sparse streams are not available with protocol='legacy'",
        stage="open",
    )


async def negotiate_stream(
    volume: VolumeLike,
    requested: bool | None,
    direction: str,
    open_call: Callable[[int], Awaitable[None]],
    *,
    offset: int = 0,
    end: int | None = None,
) -> tuple[bool, bool]:
    """Open a stream by calling ``open_call(flags)`` as the module docstring says.
    ``end``: where an upload's data ends in the volume, where known before it opens.

    Returns:
        ``(sparse, fell_back)``: whether the stream is sparse, and whether it is
        dense because the peer refused sparse.

    Raises:
        SparseUnsupported: sparse was required and is not available.
        LibvirtError: the peer refused the stream.
    """
    legacy = volume.connection.protocol == "legacy"
    if requested is True and legacy:
        raise _no_sparse_when_legacy()
    ask = requested is not False and not legacy
    if ask and requested is None and direction == "upload":
        ask = await _skips_leave_zeros(volume, end)
    elif ask and requested is None and offset > 0:
        ask = await _starts_within(volume, offset)
    try:
        await open_call(VolStreamFlags.SPARSE if ask else 0)
        return ask, False
    except InvalidArgument as exc:
        if not ask or not _is_sparse_refusal(exc):
            raise
        if requested is True:
            raise SparseUnsupported(
                exc.code,
                exc.domain,
                f"{volume.connection.uri} does not support sparse streams: {exc.message}",
                level=exc.level,
                stage="open",
            ) from exc
        _report_fallback(volume, direction, exc)
    await open_call(0)
    return False, True


async def _starts_within(volume: VolumeLike, offset: int) -> bool:
    """Whether a download from ``offset`` starts within the volume or at its end:
    libvirtd fails a sparse download that starts past the end ("Library function
    returned error but did not set virError") and serves a dense one as empty."""
    info = await volume.connection._rpc.call(
        procedures.STORAGE_VOL_GET_INFO, r.VolArgs(volume.wire)
    )
    return offset <= info.capacity


async def _skips_leave_zeros(volume: VolumeLike, end: int | None) -> bool:
    """Whether skipping a hole of an upload into ``volume`` leaves zeros there, and leaves
    its size as a dense upload ending at ``end`` (where known) would (see the module
    docstring). The daemon's answer is asked once per connection."""
    conn = volume.connection
    if conn.upload_skips_leave_zeros is None:
        try:
            answer = await conn._rpc.call(
                procedures.CONNECT_SUPPORTS_FEATURE,
                r.ConnectSupportsFeatureArgs(UPLOAD_SKIPS_LEAVE_ZEROS_FEATURE),
            )
            conn.upload_skips_leave_zeros = answer.supported == 1
        except LibvirtError:  # libvirt's rule: an error answer means "not supported"
            conn.upload_skips_leave_zeros = False
    if conn.upload_skips_leave_zeros:
        return True
    info = await conn._rpc.call(procedures.STORAGE_VOL_GET_INFO, r.VolArgs(volume.wire))
    if info.allocation != 0:
        why = "holds data"
    # libvirtd ends a sparse upload's file where its stream ends (its skips truncate):
    # one ending before the volume's size would cut the volume, which a dense one keeps.
    # (A stream whose end is not known beforehand, one a caller writes, is the caller's.)
    elif end is not None and end < info.capacity:
        why = "is larger than what the upload covers"
    else:
        return True
    log.info(
        "%s keeps a volume's old bytes where an upload skips a hole, and ends the volume"
        " with a sparse stream; volume '%s' %s: the upload sends every byte, holes included",
        conn.uri,
        volume.name,
        why,
    )
    return False


def _report_fallback(volume: VolumeLike, direction: str, refusal: InvalidArgument) -> None:
    """One warning per connection: every later stream on it falls back the same way."""
    conn = volume.connection
    if conn.sparse_fallback_reported:
        log.debug("the %s of volume '%s' goes dense", direction, volume.name)
        return
    conn.sparse_fallback_reported = True
    log.warning(
        "%s has no sparse streams (%s): transfers on this connection send every byte,"
        " holes included",
        conn.uri,
        refusal.message,
    )


def at_stage(exc: LibvirtError, stage: str) -> LibvirtError:
    """``exc`` as met at ``stage`` of a stream (an error's fields are set when it is made)."""
    if exc.stage == stage:
        return exc
    staged = type(exc)(exc.code, exc.domain, exc.message, level=exc.level, stage=stage)
    return staged.with_traceback(exc.__traceback__)


def past_length(peer: str, length: int) -> StreamError:
    """The failure of a download whose peer sent more than the ``length`` bytes asked for
    (data or holes): nothing beyond the range asked for is written, the stream is aborted.
    libvirtd and virtvold send exactly the range."""
    return StreamError(f"{peer} sent more than the {length} bytes asked for")


def piece_runs(
    view: memoryview, pieces: list[Chunk], position: int, *, detect_zeroes: bool
) -> list[tuple[bool, int, int]]:
    """``(zero, start, stop)`` runs of a buffer ``read_pieces`` filled from file offset
    ``position``: data runs are ``view[start:stop]``; zero runs (holes, and with
    ``detect_zeroes`` zero blocks) only count ``stop - start`` bytes."""
    runs: list[tuple[bool, int, int]] = []
    used = 0
    for piece in pieces:
        if not piece.data:
            runs.append((True, 0, piece.length))
        elif detect_zeroes:
            data = view[used : used + piece.length]
            runs += [(z, used + a, used + b) for z, a, b in zero_runs(data, position)]
            used += piece.length
        else:
            runs.append((False, used, used + piece.length))
            used += piece.length
        position += piece.length
    return runs

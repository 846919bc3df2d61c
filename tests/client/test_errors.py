"""The client's exceptions carry every field from their making, stream stage included."""

from __future__ import annotations

import virtvol.client
from virtvol.client import errors, streams, transfer_base
from virtvol.protocol.errors import ErrorCode, ErrorDomain
from virtvol.protocol.remote import RemoteError


def test_stream_error_lives_with_the_other_errors() -> None:
    assert virtvol.client.StreamError is errors.StreamError
    assert streams.StreamError is errors.StreamError
    assert errors.StreamError.__module__ == "virtvol.client.errors"
    assert issubclass(errors.StreamError, virtvol.client.VirtvolError)


def test_stage_is_given_at_construction() -> None:
    misuse = errors.StreamError("the stream is closed", stage="finish")
    assert (str(misuse), misuse.stage) == ("the stream is closed", "finish")
    assert errors.StreamError("send after abort").stage is None
    refused = errors.NoStorageVolume(ErrorCode.NO_STORAGE_VOL, ErrorDomain.STORAGE, "gone")
    assert refused.stage is None
    remote = RemoteError(code=ErrorCode.NO_STORAGE_VOL, domain=ErrorDomain.STORAGE, message="x")
    opened = errors.error_from_remote(remote, stage="open")
    assert isinstance(opened, errors.NoStorageVolume)
    assert opened.stage == "open"


def test_an_error_met_at_a_stage_keeps_its_class_and_fields() -> None:
    original = errors.SparseUnsupported(
        ErrorCode.INVALID_ARG, ErrorDomain.STORAGE, "unsupported flags (0x1)", level=2
    )
    staged = transfer_base.at_stage(original, "open")
    assert type(staged) is errors.SparseUnsupported
    assert (staged.code, staged.domain, staged.message, staged.level, staged.stage) == (
        ErrorCode.INVALID_ARG,
        ErrorDomain.STORAGE,
        "unsupported flags (0x1)",
        2,
        "open",
    )
    assert original.stage is None
    assert transfer_base.at_stage(staged, "open") is staged

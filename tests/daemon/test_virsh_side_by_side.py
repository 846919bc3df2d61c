"""virsh gets the same answers from virtvold as from libvirtd, for calls python3-libvirt
cannot make (its binding takes a resize's size as a signed 64-bit number).

Each command runs against the reference libvirtd and against virtvold, in the same
order; stdout, stderr and the exit status must match once each daemon's pool folder
is written as POOL."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.conftest import run_virsh

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tests.conftest import ReferenceLibvirtd, Virtvold


def assert_same_virsh_answers(
    reference_libvirtd: ReferenceLibvirtd, virtvold: Virtvold, commands: Sequence[Sequence[str]]
) -> None:
    differences = []
    for args in commands:
        answers = []
        for uri, pool_dir in (
            (reference_libvirtd.tcp_uri, reference_libvirtd.pool_dir),
            (virtvold.tcp_uri, virtvold.pool_dir),
        ):
            done = run_virsh(uri, *args, check=False)
            answers.append(
                tuple(
                    text.replace(str(pool_dir), "POOL")
                    for text in (done.stdout, done.stderr, str(done.returncode))
                )
            )
        if answers[0] != answers[1]:
            differences.append(f"{args}:\n  libvirtd: {answers[0]}\n  virtvold: {answers[1]}")
    assert not differences, "\n".join(differences)


def test_a_resize_past_what_a_file_can_hold(
    reference_libvirtd: ReferenceLibvirtd, virtvold: Virtvold
) -> None:
    """ftruncate takes a signed off_t: a new size of 2**63 or more is negative there
    (EINVAL), one below it is only too large (EFBIG)."""
    assert_same_virsh_answers(
        reference_libvirtd,
        virtvold,
        [
            ["vol-create-as", "default", "v", "4096"],
            ["vol-resize", "v", "9223372036854775808", "default"],
            ["vol-resize", "v", "18446744073709551615", "default"],
            ["vol-resize", "v", "1", "default", "--delta"],
            ["vol-resize", "v", "18446744073709551615", "default", "--delta"],
            ["vol-resize", "v", "9223372036854775807", "default"],
            ["vol-resize", "v", "8E", "default"],
            ["vol-resize", "v", "1E", "default"],
            ["vol-info", "v", "default", "--bytes"],
        ],
    )

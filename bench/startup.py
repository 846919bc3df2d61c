"""The start-up row: a ``pool-list``, whole process, virtvol against virsh.

Every short command pays for starting its process, connecting, one call and the
output; ``pool-list`` is nothing else. The issue's target: virtvol's within 1.3x
of virsh's time. The two take turns run by run (as the transfers do), over TCP
and the Unix socket, and the medians are compared.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

from bench.harness import timed
from bench.peers import TRANSPORTS

if TYPE_CHECKING:
    from bench.peers import Libvirtd, Virtvold

RUNS = 21
# virtvol's pool-list may take this many times virsh's.
TARGET = 1.3


def measure(virtvold: Virtvold, libvirtd: Libvirtd, runs: int = RUNS) -> dict[str, list[float]]:
    """Seconds of each run, keyed ``"<client> <transport>"`` (``"virtvol tcp"``...)."""
    seconds: dict[str, list[float]] = {}
    for transport in TRANSPORTS:
        pair = [(virtvold.client, virtvold), (libvirtd.client, libvirtd)]
        for attempt in range(runs):
            for client, peer in pair[attempt % 2 :] + pair[: attempt % 2]:
                run = timed(peer.list_pools(transport))
                seconds.setdefault(f"{client} {transport}", []).append(run.seconds)
    return seconds


def report(seconds: dict[str, list[float]]) -> list[str]:
    """Print the medians; return the target misses."""
    misses = []
    runs = len(next(iter(seconds.values())))
    print(f"\nstart-up: `pool-list`, whole process, medians of {runs} runs taking turns:")
    for transport in TRANSPORTS:
        ours = statistics.median(seconds[f"virtvol {transport}"])
        theirs = statistics.median(seconds[f"virsh {transport}"])
        ratio = ours / theirs
        print(
            f"  {transport:4}  virtvol {ours:.3f} s, virsh {theirs:.3f} s:"
            f" {ratio:.2f}x virsh's time (target {TARGET}x)"
        )
        if ratio > TARGET:
            misses.append(f"pool-list / {transport}: {ratio:.2f}x virsh's time, target {TARGET}x")
    return misses

"""Side-by-side transfer benchmark: virtvol against real libvirt and the loopback limit.

    python -m bench.transfer [--size 1G] [--repeat 3] [--memory-sizes 256M,2G] [--tls]

Each client/daemon pair uploads and then downloads one sparse image (half
data, half holes) with sparse streams, ``--repeat`` times; the table shows the
median seconds and the data rate, and the ratios that matter: virtvol against
libvirt, and against the raw loopback rate measured in the same run. A second
part repeats one virtvol transfer at several image sizes and prints the peak
memory of client and daemon, which must not grow with the image. With
``--tls`` every client talks to both daemons over libvirt's TLS transport
(certificates from a throwaway CA made with openssl).
"""

from __future__ import annotations

import argparse
import compileall
import filecmp
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import loopback
from bench.harness import (
    VENV_BIN,
    Daemon,
    median,
    peak_rss_kib,
    reset_peak_rss,
    start_libvirtd,
    start_virtvold,
    timed,
    traversable_tempdir,
)
from bench.pki import make_pki

MIB = 1 << 20
EXTENT = 32 * MIB


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    suffix = text[-1].upper()
    return int(text[:-1]) * units[suffix] if suffix in units else int(text)


def compile_bytecode() -> None:
    """Compile virtvol's modules, as installing a wheel does.

    Each ``virtvol`` run is a new process; without cached bytecode (an
    editable install run with PYTHONDONTWRITEBYTECODE=1, as in CI) it compiles
    every module it imports first: 0.03 s more per run here, which is not what
    an installed client costs.
    """
    import virtvol

    for path in virtvol.__path__:
        compileall.compile_dir(path, quiet=1)


def make_image(path: Path, size: int) -> int:
    """Alternate 32 MiB of incompressible data and 32 MiB of hole; return the data bytes."""
    block = os.urandom(MIB)
    data = 0
    with path.open("wb") as image:
        for start in range(0, size, 2 * EXTENT):
            image.seek(start)
            for _ in range(min(EXTENT, size - start) // MIB):
                image.write(block)
                data += MIB
        image.truncate(size)
    return data


Command = Callable[[Daemon, str, Path], list[str]]


def virsh_command(verb: str) -> Command:
    def command(daemon: Daemon, volume: str, path: Path) -> list[str]:
        pool = ["--pool", daemon.pool]
        return ["virsh", "-q", "-c", daemon.uri, verb, *pool, volume, str(path), "--sparse"]

    return command


def virtvol_command(verb: str) -> Command:
    def command(daemon: Daemon, volume: str, path: Path) -> list[str]:
        program = str(VENV_BIN / "virtvol")
        pool = ["--pool", daemon.pool]
        return [program, "-c", daemon.uri, verb, volume, str(path), *pool, "--sparse", "--quiet"]

    return command


@dataclass(frozen=True)
class Client:
    name: str
    upload: Command
    download: Command


VIRSH = Client("virsh", virsh_command("vol-upload"), virsh_command("vol-download"))
VIRTVOL = Client("virtvol", virtvol_command("vol-upload"), virtvol_command("vol-download"))


@dataclass
class Result:
    client: str
    daemon: str
    upload_seconds: float
    download_seconds: float
    client_rss_kib: int
    daemon_rss_kib: int


def run_pair(client: Client, daemon: Daemon, image: Path, size: int, repeat: int) -> Result:
    volume = "bench.img"
    _run(["virsh", "-q", "-c", daemon.uri, "vol-create-as", daemon.pool, volume, str(size)])
    output = image.with_suffix(".out")
    uploads, downloads, client_rss = [], [], 0
    reset_peak_rss(daemon.pid)
    try:
        for attempt in range(repeat):
            up = timed(client.upload(daemon, volume, image))
            output.unlink(missing_ok=True)
            down = timed(client.download(daemon, volume, output))
            uploads.append(up.seconds)
            downloads.append(down.seconds)
            client_rss = max(client_rss, up.max_rss_kib, down.max_rss_kib)
            if attempt == 0 and not filecmp.cmp(image, output, shallow=False):
                raise RuntimeError(f"{client.name} <-> {daemon.name}: downloaded bytes differ")
        daemon_rss = peak_rss_kib(daemon.pid)
    finally:
        output.unlink(missing_ok=True)
        _run(["virsh", "-q", "-c", daemon.uri, "vol-delete", "--pool", daemon.pool, volume])
    return Result(
        client.name, daemon.name, median(uploads), median(downloads), client_rss, daemon_rss
    )


def _run(argv: list[str]) -> None:
    timed(argv)


def rate(data: int, seconds: float) -> float:
    return data / MIB / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="1G", help="virtual size of the image (half data)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--memory-sizes", default="256M,2G")
    parser.add_argument("--tls", action="store_true", help="connect over TLS (port 16514 style)")
    options = parser.parse_args()
    size = parse_size(options.size)
    compile_bytecode()
    workdir = traversable_tempdir("virtvol-bench-")
    image = workdir / "image.raw"
    data = make_image(image, size)
    print(
        f"image: {size / MIB:.0f} MiB virtual, {data / MIB:.0f} MiB data;"
        f" median of {options.repeat} runs"
    )

    raw = median([loopback.measure(data) for _ in range(options.repeat)])
    pki = make_pki(workdir / "pki") if options.tls else None
    libvirtd, virtvold = start_libvirtd(pki), start_virtvold(pki)
    results: list[Result] = []
    try:
        for client, daemon in (
            (VIRSH, libvirtd),
            (VIRTVOL, virtvold),
            (VIRSH, virtvold),
            (VIRTVOL, libvirtd),
        ):
            results.append(run_pair(client, daemon, image, size, options.repeat))
        print(
            f"\n{'client':8} {'daemon':13} {'upload':>16} {'download':>16}"
            f" {'client RSS':>11} {'daemon RSS':>11}"
        )
        print(f"{'raw TCP':8} {'loopback':13} {raw:7.2f}s {rate(data, raw):6.0f}MiB/s")
        if pki is not None:
            print("(every pair below over TLS)")
        for r in results:
            print(
                f"{r.client:8} {r.daemon:13}"
                f" {r.upload_seconds:7.2f}s {rate(data, r.upload_seconds):6.0f}MiB/s"
                f" {r.download_seconds:7.2f}s {rate(data, r.download_seconds):6.0f}MiB/s"
                f" {r.client_rss_kib / 1024:9.0f}MiB {r.daemon_rss_kib / 1024:9.0f}MiB"
            )
        base, ours = results[0], results[1]
        print(
            "\nratios (virtvol <-> virtvold against virsh <-> libvirtd, and against raw loopback):"
        )
        for label, mine, theirs in (
            ("upload", ours.upload_seconds, base.upload_seconds),
            ("download", ours.download_seconds, base.download_seconds),
        ):
            print(f"  {label:8} {theirs / mine:5.2f}x libvirt   {raw / mine:6.1%} of loopback")

        print("\npeak memory of virtvol <-> virtvold by image size (must stay flat):")
        for text in options.memory_sizes.split(","):
            other = workdir / f"image-{text}.raw"
            make_image(other, parse_size(text))
            result = run_pair(VIRTVOL, virtvold, other, parse_size(text), 1)
            other.unlink()
            print(
                f"  {text:>6}: client {result.client_rss_kib / 1024:6.0f} MiB,"
                f" daemon {result.daemon_rss_kib / 1024:6.0f} MiB"
            )
    finally:
        libvirtd.close()
        virtvold.close()
        image.unlink(missing_ok=True)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

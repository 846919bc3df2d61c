"""A download target refused before the stream opens reads as the file's failure."""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

from tests.client.test_cli_spellings import run_virtvol
from tests.conftest import run_virsh

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import Virtvold


def test_a_download_onto_a_socket_is_refused_as_a_file_not_a_stream(
    virtvold: Virtvold, tmp_path: Path
) -> None:
    """The refusal comes before the stream opens (download_output.download_target): it is
    about the file, not a failing receive handler. A socket takes no open(), and a
    rename would replace it (a FIFO or a device is written in place instead)."""
    (virtvold.pool_dir / "v").write_bytes(b"x" * 4096)
    folder = tmp_path / "downloads"
    folder.mkdir()
    path = folder / "sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        done = run_virtvol(
            "-c", virtvold.tcp_uri, "vol-download", "v", str(path), "--pool", "default"
        )
    assert done.returncode == 1
    assert done.stderr == (
        f"error: cannot create {path}\n"
        f"error: not a regular file: {path} (a download would replace it, not fill it)\n"
    )
    assert os.listdir(folder) == ["sock"]


def test_a_download_into_a_folder_that_does_not_exist_is_refused(virtvold: Virtvold) -> None:
    """A path ending in "copy/" names a folder: virsh cannot create the file and says
    only that; no file "copy" appears in its place."""
    (virtvold.pool_dir / "v").write_bytes(b"x" * 4096)
    folder = virtvold.pool_dir.parent / "downloads"
    folder.mkdir()
    done = run_virtvol(
        "-c", virtvold.tcp_uri, "vol-download", "v", f"{folder}/copy/", "--pool", "default"
    )
    assert done.returncode == 1
    assert done.stderr == f"error: cannot create {folder}/copy/\n", done.stderr
    assert os.listdir(folder) == []


def test_a_path_through_a_file_is_refused_in_virshs_words(
    virtvold: Virtvold, tmp_path: Path
) -> None:
    """ "image.raw/" names a file as if it were a folder: virsh says only that it cannot
    create it; a second line gave Python's own rendering of the error ("[Errno 20] Not a
    directory: 'image.raw/'"). The file is left alone."""
    (virtvold.pool_dir / "v").write_bytes(b"x" * 4096)
    image = tmp_path / "image.raw"
    image.write_bytes(b"old")
    args = ("vol-download", "v", f"{image}/", "--pool", "default")
    theirs = run_virsh(virtvold.tcp_uri, *args, check=False)
    ours = run_virtvol("-c", virtvold.tcp_uri, *args)
    assert (ours.returncode, ours.stderr) == (theirs.returncode, theirs.stderr)
    assert theirs.stderr == f"error: cannot create {image}/\n"
    assert image.read_bytes() == b"old"

"""A download target refused before the stream opens reads as the file's failure."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from tests.client.test_cli_spellings import run_virtvol

if TYPE_CHECKING:
    from tests.conftest import Virtvold


def test_a_download_onto_a_device_is_refused_as_a_file_not_a_stream(virtvold: Virtvold) -> None:
    """The refusal comes before the stream opens (transfer_base.download_target): it is
    about the file, not a failing receive handler."""
    (virtvold.pool_dir / "v").write_bytes(b"x" * 4096)
    done = run_virtvol(
        "-c", virtvold.tcp_uri, "vol-download", "v", "/dev/null", "--pool", "default"
    )
    assert done.returncode == 1
    assert done.stderr.startswith("error: cannot create /dev/null\n"), done.stderr


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

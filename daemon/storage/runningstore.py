"""What each running directory pool runs with, kept across a restart of the daemon:
``<state>/running/<name>.xml`` plus the boot it was written in (``boot_id``).

libvirtd keeps the same in its run directory, so that a transient pool, or a pool
defined anew while it ran (another folder), runs after a restart as it ran before. A
restart of the host empties a run directory; here the boot's id written beside the
records tells that they come from another boot, and they are forgotten. Losing them
costs less than a definition: the pools persisted still run after a restart (their
folder being there), so a record that cannot be written or read is logged, not refused.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from virtvol.protocol.errors import ErrorReport

from .poolxml import PoolDefinition, format_pool_xml, parse_pool_xml

log = logging.getLogger(__name__)

_XML = ".xml"
_BOOT = "boot_id"
# The kernel's id of this boot, new at every boot.
_BOOT_ID = "/proc/sys/kernel/random/boot_id"


class RunningStore:
    """The live definitions of the running directory pools, under ``<state_dir>/running``."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.directory = Path(state_dir) / "running"

    def load(self) -> list[PoolDefinition]:
        """The records written in this boot; those of another boot are removed."""
        if not self.directory.is_dir():
            return []
        try:
            written_in = (self.directory / _BOOT).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            written_in = None
        this_boot = _this_boot()
        if this_boot is None or written_in != this_boot:  # no boot to tell them apart by
            self._forget_all()
            return []
        records = []
        for path in sorted(self.directory.glob("*" + _XML)):
            try:
                definition = parse_pool_xml(path.read_text(encoding="utf-8"), stored=True)
            except (OSError, UnicodeDecodeError, ErrorReport) as exc:
                log.error("ignoring running pool record %s: %s", path, exc)
                continue
            if definition.name + _XML == path.name:
                records.append(definition)
        return records

    def save(self, definition: PoolDefinition) -> None:
        """Record that pool ``definition.name`` runs with ``definition``."""
        target = self.directory / (definition.name + _XML)
        temp = target.with_name("." + target.name + ".tmp")
        try:
            self.directory.mkdir(mode=0o700, exist_ok=True)
            boot = self.directory / _BOOT
            if not boot.exists():
                boot.write_text(f"{_this_boot()}\n", encoding="ascii")
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with open(fd, "w", encoding="utf-8") as out:
                out.write(format_pool_xml(definition, None))
            os.replace(temp, target)
        except OSError as exc:
            log.warning("cannot record running pool '%s': %s", definition.name, exc)

    def remove(self, name: str) -> None:
        """Forget the record of pool ``name`` (stopped)."""
        try:
            (self.directory / (name + _XML)).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot remove the running record of pool '%s': %s", name, exc)

    def _forget_all(self) -> None:
        try:
            paths = list(self.directory.iterdir())
        except OSError as exc:
            log.warning("cannot read the running pool records in %s: %s", self.directory, exc)
            return
        for path in paths:
            try:
                path.unlink()
            except OSError as exc:
                log.warning("cannot remove running pool record %s: %s", path, exc)


def _this_boot() -> str | None:
    """The kernel's id of this boot; None where it cannot be read (no records are then
    trusted: a host's restart would not show)."""
    try:
        with open(_BOOT_ID, encoding="ascii") as source:
            return source.read().strip() or None
    except (OSError, UnicodeDecodeError):
        return None

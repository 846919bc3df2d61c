"""Persistent pool definitions: ``<state>/pools/<name>.xml`` plus ``<name>.autostart`` markers."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from virtvol.protocol.errors import ErrorReport

from .poolxml import PoolDefinition, format_pool_xml, parse_pool_xml
from .reports import system_error

log = logging.getLogger(__name__)

_XML = ".xml"
_AUTOSTART = ".autostart"


@dataclass(frozen=True, slots=True)
class StoredPool:
    """A persisted definition and whether it starts with the daemon."""

    definition: PoolDefinition
    autostart: bool


class ConfigStore:
    """Reads and writes pool definitions under ``<state_dir>/pools``."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.directory = Path(state_dir) / "pools"

    def _xml_path(self, name: str) -> Path:
        return self.directory / (name + _XML)

    def _marker_path(self, name: str) -> Path:
        return self.directory / (name + _AUTOSTART)

    def load(self) -> list[StoredPool]:
        """Every readable definition. Unreadable ones are logged and left on disk untouched."""
        if not self.directory.is_dir():
            return []
        stored = []
        for path in sorted(self.directory.glob("*" + _XML)):
            if not path.is_file():
                continue
            try:
                definition = parse_pool_xml(path.read_text(encoding="utf-8"), stored=True)
            except (OSError, UnicodeDecodeError, ErrorReport) as exc:
                log.error("ignoring pool definition %s: %s", path, exc)
                continue
            if definition.name + _XML != path.name:
                log.error("ignoring pool definition %s: it defines pool %r", path, definition.name)
                continue
            autostart = self._marker_path(definition.name).exists()
            stored.append(StoredPool(definition, autostart))
        return stored

    def save(self, definition: PoolDefinition) -> None:
        """Write the definition atomically (temporary file of mode 0600, fsync, rename)."""
        target = self._xml_path(definition.name)
        temp = target.with_name("." + target.name + ".tmp")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            # Owner only, as libvirt saves definitions; fchmod for a temporary left by a crash.
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with open(fd, "w", encoding="utf-8") as out:
                os.fchmod(fd, 0o600)
                out.write(format_pool_xml(definition, None))
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise system_error(f"cannot save pool config '{target}'", exc) from None

    def remove(self, name: str) -> None:
        """Forget a definition and its autostart marker."""
        for path in (self._marker_path(name), self._xml_path(name)):
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                raise system_error(f"cannot remove config file '{path}'", exc) from None

    def set_autostart(self, name: str, autostart: bool) -> None:
        """Create or remove the autostart marker."""
        marker = self._marker_path(name)
        try:
            if autostart:
                self.directory.mkdir(parents=True, exist_ok=True)
                marker.touch()
            else:
                marker.unlink(missing_ok=True)
        except OSError as exc:
            raise system_error(f"cannot change autostart marker '{marker}'", exc) from None

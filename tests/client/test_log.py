"""The client's deferred logger: logging is imported by the first record, not before."""

from __future__ import annotations

import logging
import subprocess
import sys
from typing import TYPE_CHECKING

from virtvol.client.log import LOGGER_NAME, log

if TYPE_CHECKING:
    import pytest

PROBE = """
import sys
from virtvol.client.log import log, when_first_used
seen = []
when_first_used(lambda: seen.append(f"configured, logging imported: {'logging' in sys.modules}"))
print("before:", "logging" in sys.modules, seen)
log.debug("nothing to see")
print("after:", seen)
when_first_used(lambda: seen.append("late"))
print("late:", seen)
"""


def test_logging_is_imported_and_configured_at_the_first_record() -> None:
    probe = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=30, check=True
    )
    assert probe.stdout.splitlines() == [
        "before: False []",
        "after: ['configured, logging imported: True']",
        "late: ['configured, logging imported: True', 'late']",
    ], probe.stderr


def test_records_name_their_caller_and_the_client_logger(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        log.warning("volume %s went dense", "vol")
        log.debug("below the level")
    (record,) = caplog.records
    assert record.name == "virtvol.client"
    assert record.getMessage() == "volume vol went dense"
    assert record.funcName == "test_records_name_their_caller_and_the_client_logger"


def test_attributes_set_on_it_are_the_loggers() -> None:
    real = logging.getLogger(LOGGER_NAME)
    before = real.propagate
    try:
        log.propagate = not before
        assert real.propagate is (not before)
    finally:
        real.propagate = before

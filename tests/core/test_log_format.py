"""The worker log's text lines: the formatter that makes the time text once per second writes what the
standard formatter writes, record for record."""

from __future__ import annotations

import logging

from megalodon_core.cli import LOG_FORMAT, _TextFormatter


def _record(created: float, message: str) -> logging.LogRecord:
    record = logging.LogRecord("megalodon_core.worker.loop", logging.INFO, __file__, 1, message, None, None)
    record.created = created
    record.msecs = (created - int(created)) * 1000
    return record


def test_lines_are_those_of_the_standard_formatter_within_and_across_seconds() -> None:
    cached, standard = _TextFormatter(LOG_FORMAT), logging.Formatter(LOG_FORMAT)
    base = 1_764_633_600.0
    for offset in (0.0, 0.001, 0.5, 0.999, 1.0, 1.25, 61.75, 3600.003, 0.2):  # the last goes back in time
        record = _record(base + offset, f"task {offset} claimed")
        assert cached.format(record) == standard.format(record)


def test_an_explicit_date_format_is_the_standard_one() -> None:
    record = _record(1_764_633_600.5, "x")
    assert _TextFormatter(LOG_FORMAT).formatTime(record, "%H:%M") == logging.Formatter().formatTime(record, "%H:%M")

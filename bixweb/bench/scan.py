"""Cheap looks into bixweb frames, without parsing JSON or HTML.

A bot frame is counted by its ``"ts":`` keys (each server message has one,
a ``batch`` has none of its own), and its latency is sampled from the first
``ts``. A dashboard frame carries the status fragment's
``<time datetime="...">`` about once a second; its value names the broadcast.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Final

from bixweb.bench.wsframes import Buffer

TS_KEY: Final = b'"ts":'
_TS_VALUE = re.compile(rb" ?(\d{1,19})")
TIME_TAG: Final = b'<time datetime="'


def count_messages(buf: Buffer, start: int, end: int) -> int:
    """Server messages in the frame ``buf[start:end]``: one per ``"ts":``, at least one."""
    return buf.count(TS_KEY, start, end) or 1


def first_ts(buf: Buffer, start: int, end: int) -> int | None:
    """The first ``"ts":`` value in ``buf[start:end]`` (ms since the epoch), if any."""
    at = buf.find(TS_KEY, start, end)
    if at < 0:
        return None
    found = _TS_VALUE.match(buf, at + 5, end)
    return int(found[1]) if found else None


def status_time(buf: Buffer, start: int, end: int) -> bytes | None:
    """The ``datetime`` attribute of the status fragment's ``<time>`` in ``buf[start:end]``."""
    at = buf.find(TIME_TAG, start, end)
    if at < 0:
        return None
    at += len(TIME_TAG)
    close = buf.find(b'"', at, min(end, at + 64))
    return bytes(buf[at:close]) if close > at else None


def stamp_ms(value: bytes) -> float | None:
    """Epoch ms of an ISO 8601 ``datetime`` value that has sub-second digits, else None.

    A value in whole seconds names a broadcast but cannot time it.
    """
    text = value.decode("ascii", "replace")
    if "." not in text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000.0
    except ValueError:
        return None

"""The most expensive client messages we know how to build, and what each costs to refuse.

``python -m tests.hostile`` prints a table: µs of CPU (median) per message through each
socket's parse path (``protocol.parse_client_message`` for ``/ws``, ``dashboard.parse_action``
for ``/ws/ui``). It imports only those two functions, so it runs on older code too (for the
"before" column in ``docs/reliability.md``).
"""

from __future__ import annotations

import json
import statistics
import string
import sys
import time
from collections.abc import Callable, Iterator

from bixweb import protocol
from bixweb.dashboard import parse_action
from bixweb.errors import ProtocolError

MAX_FRAME = 16_384
"""The default ``--max-message-bytes``: every message here fits in one frame."""

ZEROS_FRAME = '{"type":"subscribe","symbols":[' + ",".join(["0"] * 8_100) + '],"channels":["ticker"]}'
"""The frame of issue 12: 16,254 bytes, 8,101 schema errors (8,100 wrong types and one maxItems)."""


def largest_valid_subscribe() -> str:
    """A ``subscribe`` at every bound of its schema (200 symbols, 16 channels, 1,000 ``since.seq``
    entries, a 64-character id): the costliest message the server must accept."""
    from bixweb.model import CHANNELS

    streams = [f"{channel}:S{n:04d}" for n in range(125) for channel in CHANNELS]  # 1,000: the schema's maximum
    message = {
        "type": "subscribe",
        "id": "x" * 64,
        "symbols": ["*"] + [f"S{n:04d}" for n in range(199)],
        "channels": list(CHANNELS) * 2,
        "since": {"epoch": 1, "seq": dict.fromkeys(streams, 2**63)},
    }
    return json.dumps(message)


def names(count: int) -> Iterator[str]:
    """``count`` distinct short keys: a, b, …, aa, ab, …"""
    alphabet = string.ascii_lowercase + string.digits
    made, width = 0, 1
    while made < count:
        for n in range(len(alphabet) ** width):
            if made == count:
                return
            key, rest = "", n
            for _ in range(width):
                rest, digit = divmod(rest, len(alphabet))
                key = alphabet[digit] + key
            if width == 1 or key[0].isalpha():
                made += 1
                yield key
        width += 1


def filled(prefix: str, item: str, suffix: str) -> str:
    """``prefix`` + as many ``item``s, comma-separated, as fit in a frame + ``suffix``."""
    count = (MAX_FRAME - len(prefix) - len(suffix) + 1) // (len(item) + 1)
    return prefix + ",".join([item] * count) + suffix


def keyed(prefix: str, suffix: str, value: str, count: int | None = None) -> str:
    """An object body of distinct short keys, each with ``value``, as many as fit (or ``count``)."""
    parts: list[str] = []
    size = len(prefix) + len(suffix)
    for key in names(count or MAX_FRAME):
        part = f'"{key}":{value}'
        if size + len(part) + 1 > MAX_FRAME:
            break
        parts.append(part)
        size += len(part) + 1
    return prefix + ",".join(parts) + suffix


HEADERS_FRAME = keyed('{"action":"view","headers":{', "}}", "0", count=2_000)
"""The dashboard's equivalent: a ``headers`` object with 2,000 keys (each also of the wrong type)."""

BOT: dict[str, str] = {
    "subscribe, symbols: 8,100 zeros (issue 12)": ZEROS_FRAME,
    "subscribe, symbols: 1,600 lower-case strings": filled(
        '{"type":"subscribe","symbols":[', '"abcdefgh"', '],"channels":["ticker"]}'
    ),
    "subscribe, symbols: 1,400 strings, the last one bad": filled(
        '{"type":"subscribe","symbols":[', '"BTCUSDT"', ',"x"],"channels":["ticker"]}'
    ),
    "subscribe, symbols: 5,400 empty objects": filled(
        '{"type":"subscribe","symbols":[', "{}", '],"channels":["ticker"]}'
    ),
    "subscribe, channels: 8,100 zeros": filled('{"type":"subscribe","symbols":["*"],"channels":[', "0", "]}"),
    "subscribe, since.seq: 1,800 bad keys": keyed(
        '{"type":"subscribe","symbols":["*"],"channels":["ticker"],"since":{"epoch":1,"seq":{', "}}}", "0"
    ),
    "subscribe, since.seq: 1,000 keys, the last one bad": '{"type":"subscribe","symbols":["*"],"channels":["ticker"],'
    '"since":{"epoch":1,"seq":{' + ",".join(f'"book:Z{key.upper()}":0' for key in names(999)) + ',"x":0}}}',
    "ping with 2,000 unknown keys": keyed('{"type":"ping",', "}", "0"),
    "ping, id: a 16 KB string": '{"type":"ping","id":"' + "x" * (MAX_FRAME - 40) + '"}',
    "ping, id: 1,023 nested lists": '{"type":"ping","id":' + "[" * 1_023 + "]" * 1_023 + "}",
    "ping, id: 16 nested lists around 5,000 zeros": '{"type":"ping","id":'
    + "[" * 15
    + ",".join(["0"] * 5_000)
    + "]" * 15
    + "}",
    "alert_create, note: 16 KB": '{"type":"alert_create","symbol":"BTCUSDT","condition":"above","level":1,"note":"'
    + "x" * (MAX_FRAME - 100)
    + '"}',
    "a string full of escaped quotes": '{"type":"ping","id":"' + '\\"' * ((MAX_FRAME - 30) // 2) + '"}',
}

UI: dict[str, str] = {
    "view, headers: 2,000 keys (issue 12)": HEADERS_FRAME,
    "view, headers: 8,100 zeros under one key": filled('{"action":"view","headers":{"a":[', "0", "]}}"),
    "view with 2,000 unknown keys": keyed('{"action":"view",', "}", '""'),
    "alert_create, note: 16 KB": '{"action":"alert_create","symbol":"BTCUSDT","condition":"above","note":"'
    + "x" * (MAX_FRAME - 100)
    + '"}',
    "view, headers: 31 keys of 500-byte values": keyed('{"action":"view","headers":{', "}}", '"' + "v" * 500 + '"'),
}


def bot_parse(frame: str) -> None:
    try:
        protocol.parse_client_message(frame)
    except ProtocolError:
        pass


def ui_parse(frame: str) -> None:
    try:
        parse_action(frame)
    except ProtocolError:
        pass


def cost_us(
    parse: Callable[[str], None],
    frame: str,
    repeat: int = 15,
    statistic: Callable[[list[float]], float] = statistics.median,
) -> float:
    """CPU time of one parse in µs (the median of ``repeat`` runs, after a warm-up run)."""
    parse(frame)
    samples = []
    for _ in range(repeat):
        started = time.thread_time()
        parse(frame)
        samples.append(time.thread_time() - started)
    return statistic(samples) * 1e6


def main() -> None:
    for name, frame in [*BOT.items(), *UI.items()]:
        assert len(frame.encode()) <= MAX_FRAME, (name, len(frame))
    print("| socket | message | bytes | µs |")
    print("| --- | --- | ---: | ---: |")
    for socket, parse, messages in (("/ws", bot_parse, BOT), ("/ws/ui", ui_parse, UI)):
        for name, frame in messages.items():
            print(f"| {socket} | {name} | {len(frame):,} | {cost_us(parse, frame):,.0f} |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()

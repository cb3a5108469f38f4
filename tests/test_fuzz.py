"""Property-based fuzzing of client messages against the real app.

The app runs once for the module in a thread with its own event loop; the
tests speak to it with a synchronous ``websockets`` client. Each example is
one frame followed by a ``ping`` fence: everything the server sends until the
fence's ``pong`` must match its schema, a refusal is exactly one ``error``,
and the connection stays open. At the end a canary that listened all along
must still have been fed, and the server must have logged nothing at ERROR.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from bixweb.config import Settings
from bixweb.feeds.simulated import DEFAULT_SYMBOLS
from bixweb.model import CHANNELS
from bixweb.web.app import create_app
from tests.support import assert_valid, fast_settings, unwrap

Message = dict[str, Any]
Frame = str | bytes | list[str]
"""Text, binary, or text sent as fragments."""

MAX_MESSAGE_BYTES = 16_384
FUZZ = settings(
    deadline=None,
    database=None,  # nothing written into the work tree; a failure prints its reproduction blob
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ALL_OFF = {"type": "unsubscribe", "id": "fuzz-cleanup", "symbols": ["*"], "channels": list(CHANNELS)}


class ServerThread:
    """The real app on ``127.0.0.1:<port>``, in a thread with its own event loop.

    Log records emitted in that thread by ``aiohttp``, ``bixweb`` and
    ``asyncio`` loggers are kept in :attr:`records`, whatever their level.
    """

    LOGGERS = ("aiohttp", "bixweb", "asyncio")

    def __init__(self, app_settings: Settings) -> None:
        self.settings = app_settings
        self.port = 0
        self.records: list[logging.LogRecord] = []
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), name="bixweb-under-fuzz")
        self._handler = logging.Handler(logging.DEBUG)
        self._handler.emit = self._keep  # type: ignore[method-assign]

    def _keep(self, record: logging.LogRecord) -> None:
        if record.thread == self._thread.ident and record.name.split(".")[0] in self.LOGGERS:
            self.records.append(record)

    @property
    def errors(self) -> list[str]:
        return [
            f"{r.name} {r.levelname} {r.getMessage()} {r.exc_text or ''}"
            for r in self.records
            if r.levelno >= logging.ERROR
        ]

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        # INFO too, so that an empty record list means "nothing logged", not "nothing captured"
        levels = {name: logging.getLogger(name).level for name in self.LOGGERS[:2]}
        for name in levels:
            logging.getLogger(name).setLevel(logging.INFO)
        logging.getLogger().addHandler(self._handler)
        runner = web.AppRunner(create_app(self.settings), shutdown_timeout=2.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = int(runner.addresses[0][1])
            self._ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()
            logging.getLogger().removeHandler(self._handler)
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        assert self._ready.wait(10), "the app did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def open_ws(url: str, **options: Any) -> ClientConnection:
    """A plain client: no proxy, compression or size limit, and no keepalive pings, whose
    random payloads would touch the global random state while hypothesis watches it."""
    return connect(url, proxy=None, compression=None, max_size=None, ping_interval=None, legacy=True, **options)


class Canary:
    """A client that only listens, in its own thread, noting when each market_update arrived."""

    def __init__(self, url: str) -> None:
        self.ws = open_ws(f"{url}?symbols=BTCUSDT")
        self.arrivals: list[float] = []
        self.failure: BaseException | None = None
        self._thread = threading.Thread(target=self._listen, name="canary", daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        try:
            for raw in self.ws:
                if any(m["type"] == "market_update" for m in unwrap(json.loads(raw))):
                    self.arrivals.append(time.monotonic())
        except ConnectionClosed as exc:
            if exc.rcvd is None or exc.rcvd.code != 1000:
                self.failure = exc
        except BaseException as exc:
            self.failure = exc

    def close(self) -> None:
        self.ws.close()
        self._thread.join(5)


class Prober:
    """One connection for a run of examples; reconnects after a failed one so shrinking can go on."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ws: ClientConnection | None = None
        self.epoch = 0
        self.subscribed = False
        self.examples = 0
        self._fences = itertools.count()

    def _connect(self) -> ClientConnection:
        ws = open_ws(f"{self.url}?channels=none", close_timeout=1)
        welcome = json.loads(ws.recv(timeout=5))
        assert_valid(welcome)
        self.epoch, self.subscribed = welcome["epoch"], False
        return ws

    def exchange(self, frame: Frame) -> list[Message]:
        """Send ``frame``, then a fence; every message that came back, validated, batches unwrapped."""
        self.examples += 1
        if self.ws is None:
            self.ws = self._connect()
        ws = self.ws
        try:
            ws.send(frame)
            replies = self._fence(ws)
            if self.subscribed:
                ws.send(json.dumps(ALL_OFF))
                self._fence(ws)
            return replies
        except ConnectionClosed as exc:
            self.ws = None
            raise AssertionError(f"the server closed the connection: {exc}") from None
        except BaseException:
            ws.close()
            self.ws = None
            raise

    def _fence(self, ws: ClientConnection, timeout: float = 10.0) -> list[Message]:
        fence = f"fence-{next(self._fences)}"
        ws.send(json.dumps({"type": "ping", "id": fence}))
        seen: list[Message] = []
        deadline = time.monotonic() + timeout
        while True:
            raw = ws.recv(timeout=max(0.0, deadline - time.monotonic()))
            assert isinstance(raw, str), "the server sent a binary frame"
            frame = json.loads(raw)
            assert_valid(frame)
            for message in unwrap(frame):
                if message["type"] == "pong" and message.get("id") == fence:
                    return seen
                if message["type"] == "ack":
                    self.subscribed = bool(message["subscriptions"])
                seen.append(message)

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()


class Fixture:
    """What the fuzz tests share: the server, the canary listening all along, and the prober."""

    def __init__(self, server: ServerThread, canary: Canary, prober: Prober) -> None:
        self.server, self.canary, self.prober = server, canary, prober
        self.started = time.monotonic()


@pytest.fixture(scope="module")
def target() -> Iterator[Fixture]:
    # short histories keep snapshots and replays small: each is validated twice (strict server, and here)
    fuzzed = fast_settings(
        max_messages_per_s=100_000,
        max_message_bytes=MAX_MESSAGE_BYTES,
        history_points=5,
        trade_history=5,
        replay_depth=64,
    )
    with ServerThread(fuzzed) as server:
        canary = Canary(server.url)
        prober = Prober(server.url)
        try:
            yield Fixture(server, canary, prober)
        finally:
            prober.close()
            canary.close()


# -- what a refusal looks like -------------------------------------------------


def request_id(frame: Frame) -> Any:
    """The id the server should echo: the frame's ``id`` if it is a JSON object with a usable one."""
    text = "".join(frame) if isinstance(frame, list) else frame
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    value = obj.get("id") if isinstance(obj, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None
    return value if isinstance(value, int) or len(value) <= 64 else None


def answers(replies: list[Message]) -> list[Message]:
    """The direct answers to a request: its error, pong or ack (data and status are not answers)."""
    return [m for m in replies if m["type"] in ("error", "pong", "ack")]


def check_reply(frame: Frame, replies: list[Message]) -> Message:
    """One answer, echoing the request id; returns it."""
    answer_list = answers(replies)
    assert len(answer_list) == 1, [m["type"] for m in replies]
    answer = answer_list[0]
    unread = answer["type"] == "error" and (
        answer["code"] == "invalid_json"
        # too deep to be read at all; its id is not echoed, though the protocol says "when it could be read"
        or (answer["code"] == "invalid_message" and answer.get("path") == "$")
    )
    if not unread:
        assert answer.get("id") == request_id(frame), (answer, request_id(frame))
    return answer


# -- strategies ------------------------------------------------------------------

SYMBOLS = st.sampled_from(DEFAULT_SYMBOLS)
CHANNEL_NAMES = st.sampled_from(CHANNELS)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63 - 5, max_value=2**64 + 5)
    | st.floats()
    | st.text()
    | st.text(alphabet=st.characters(codec="utf-8", min_codepoint=0x80))
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=24,
)


@st.composite
def deeply_nested(draw: st.DrawFn, max_depth: int = 50) -> Any:
    value: Any = draw(scalars)
    for kind in draw(st.lists(st.sampled_from(["list", "dict"]), min_size=1, max_size=max_depth)):
        value = [value] if kind == "list" else {draw(st.sampled_from(["type", "id", "symbols", "x"])): value}
    return value


any_json = json_values | deeply_nested()
request_ids = st.integers() | st.text(max_size=70) | any_json
symbol_like = SYMBOLS | st.just("*") | st.from_regex(r"[A-Z0-9]{1,22}", fullmatch=True) | st.text(max_size=24)
channel_like = CHANNEL_NAMES | st.text(max_size=40)
stream_key_like = st.builds(lambda c, s: f"{c}:{s}", CHANNEL_NAMES, SYMBOLS) | st.text(max_size=30)
since_like = (
    st.fixed_dictionaries(
        {},
        optional={
            "epoch": st.integers(min_value=-1) | any_json,
            "seq": st.dictionaries(stream_key_like, st.integers(min_value=-2, max_value=2**64) | any_json, max_size=4)
            | any_json,
            "extra": any_json,
        },
    )
    | any_json
)


def encode(value: Any) -> str:
    """JSON text the way a careless client writes it: NaN and Infinity included."""
    return json.dumps(value, ensure_ascii=False)


def fragments(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in itertools.pairwise(points)]


@st.composite
def delivered(draw: st.DrawFn, text: st.SearchStrategy[str]) -> Frame:
    """A text frame, sometimes sent as a fragmented message."""
    value = draw(text)
    if value and draw(st.integers(0, 4)) == 0:
        return fragments(value, draw(st.lists(st.integers(0, 10_000), min_size=1, max_size=4)))
    return value


valid_json_messages = st.builds(
    encode,
    st.fixed_dictionaries(
        {"type": st.sampled_from(["subscribe", "unsubscribe", "ping"])},
        optional={
            "id": request_ids,
            "symbols": st.lists(SYMBOLS, min_size=1, max_size=3),
            "channels": st.lists(CHANNEL_NAMES, min_size=1, max_size=2),
        },
    ),
)


@st.composite
def broken_json(draw: st.DrawFn) -> str:
    """Text that is mostly not JSON: noise, and real messages cut, spliced and corrupted."""
    kind = draw(st.sampled_from(["noise", "cut", "splice", "corrupt"]))
    if kind == "noise":
        return draw(st.text(max_size=200))
    text = draw(valid_json_messages)
    at = draw(st.integers(0, len(text)))
    if kind == "cut":
        return text[:at]
    if kind == "splice":
        return text[:at] + draw(st.text(alphabet='{}[]":,\\ 0123456789eE.-+truefalsn\x00', max_size=10)) + text[at:]
    return text[:at] + draw(st.sampled_from(["\\", '"', "NaN", "\ud7ff", "'", "}", "\u2028", "\\ud800"])) + text[at:]


@st.composite
def message_like(draw: st.DrawFn) -> Any:
    """Objects shaped like client messages: known and unknown types; fields missing, extra or mistyped."""
    message_type = draw(st.sampled_from(["subscribe", "unsubscribe", "ping"]) | st.text(max_size=20) | any_json)
    fields = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "type": st.just(message_type),
                "id": request_ids,
                "symbols": st.lists(symbol_like, max_size=205) | any_json,
                "channels": st.lists(channel_like, max_size=18) | any_json,
                "since": since_like,
            },
        )
    )
    extra = draw(st.dictionaries(st.text(max_size=12), any_json, max_size=3))
    return {**extra, **fields} if draw(st.booleans()) else {**fields, **extra}


CURRENT_EPOCH = "<the server's epoch>"


@st.composite
def plausible_requests(draw: st.DrawFn) -> dict[str, Any]:
    """Subscribes and unsubscribes a bot might send, some with ``since``; a few names are wrong."""
    every_symbol = draw(st.integers(0, 7)) == 0  # rarely: its snapshot is 20 times the size
    symbols = (
        ["*"] if every_symbol else draw(st.lists(SYMBOLS | st.just("NOPEUSDT"), min_size=1, max_size=4, unique=True))
    )
    channels = draw(
        st.lists(CHANNEL_NAMES | st.just("tickers"), min_size=1, max_size=1 if every_symbol else 3, unique=True)
    )
    request: dict[str, Any] = {
        "type": draw(st.sampled_from(["subscribe", "subscribe", "unsubscribe"])),
        "symbols": symbols,
        "channels": channels,
    }
    if draw(st.booleans()):
        request["id"] = draw(st.integers(-(2**63), 2**64 - 1) | st.text(max_size=64))
    if request["type"] == "subscribe" and draw(st.booleans()):
        keys = [f"{c}:{s}" for c in channels for s in symbols if s in DEFAULT_SYMBOLS and c in CHANNELS]
        chosen = draw(st.lists(st.sampled_from(keys), unique=True)) if keys else []
        request["since"] = {
            "epoch": draw(st.just(CURRENT_EPOCH) | st.integers(0, 2**63)),
            "seq": {key: draw(st.integers(0, 3_000) | st.integers(0, 2**64 - 1)) for key in chosen},
        }
    return request


def with_epoch(request: dict[str, Any], epoch: int) -> dict[str, Any]:
    since = request.get("since")
    if since and since["epoch"] == CURRENT_EPOCH:
        return {**request, "since": {**since, "epoch": epoch}}
    return request


# -- the properties --------------------------------------------------------------


@settings(FUZZ, max_examples=450)
@given(frame=delivered(broken_json()))
def test_malformed_json_text_is_refused_with_one_error(target: Fixture, frame: Frame) -> None:
    replies = target.prober.exchange(frame)
    answer = check_reply(frame, replies)
    text = "".join(frame) if isinstance(frame, list) else frame
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        assert answer["type"] == "error" and answer["code"] == "invalid_json", answer


@settings(FUZZ, max_examples=450)
@given(value=any_json)
def test_any_json_value_gets_one_answer(target: Fixture, value: Any) -> None:
    frame = encode(value)
    replies = target.prober.exchange(frame)
    answer = check_reply(frame, replies)
    if not isinstance(value, dict):
        assert answer["type"] == "error" and answer["code"] in ("invalid_json", "invalid_message"), answer


@settings(FUZZ, max_examples=700)
@given(frame=delivered(st.builds(encode, message_like())))
def test_message_shaped_objects_get_one_answer(target: Fixture, frame: Frame) -> None:
    replies = target.prober.exchange(frame)
    answer = check_reply(frame, replies)
    if answer["type"] == "error" and answer["code"] == "invalid_message":
        assert answer["path"].startswith("$"), answer


@settings(FUZZ, max_examples=400)
@given(request=plausible_requests())
def test_plausible_subscribes_are_acknowledged_or_refused(target: Fixture, request: dict[str, Any]) -> None:
    frame = encode(with_epoch(request, target.prober.epoch))
    replies = target.prober.exchange(frame)
    answer = check_reply(frame, replies)
    named_wrong = "NOPEUSDT" in request["symbols"] or "tickers" in request["channels"]
    if named_wrong:
        assert answer["type"] == "error" and answer["code"] in ("unknown_symbol", "unknown_channel"), answer
    else:
        assert answer["type"] == "ack" and answer["op"] == request["type"], answer
        snapshots = [m for m in replies if m["type"] == "initial_data"]
        assert len(snapshots) <= 1
        if "recovered" in answer and not answer["recovered"]:
            assert snapshots and snapshots[0]["recovered"] is False


@settings(FUZZ, max_examples=200)
@given(data=st.binary(max_size=MAX_MESSAGE_BYTES))
def test_binary_frames_are_refused_with_one_error(target: Fixture, data: bytes) -> None:
    replies = target.prober.exchange(data)
    answer = answers(replies)
    assert [a.get("code") for a in answer] == ["binary_not_supported"], answer


# -- frames that end the connection ----------------------------------------------


def closed_with(server: ServerThread, send: Any) -> int | None:
    """Connect, ``send(ws)``, and read until the server closes; returns its close code."""
    with open_ws(f"{server.url}?symbols=BTCUSDT") as ws:
        ws.recv(timeout=5)
        send(ws)
        with contextlib.suppress(ConnectionClosed):
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                assert_valid(json.loads(ws.recv(timeout=deadline - time.monotonic())))
        assert ws.close_code is not None, "the server did not close the connection"
        return ws.close_code


@pytest.mark.parametrize(
    "frame",
    [
        "x" * (MAX_MESSAGE_BYTES + 1),
        json.dumps({"type": "ping", "id": "y" * MAX_MESSAGE_BYTES}),
        json.dumps({"type": "subscribe", "symbols": ["BTCUSDT"] * 3_000, "channels": ["ticker"]}),
        b"\x00" * (MAX_MESSAGE_BYTES + 1),
        ["z" * 10_000] * 2,
        "\u00e9" * (MAX_MESSAGE_BYTES // 2 + 1),  # short in characters, long in bytes
    ],
    ids=["text", "ping", "subscribe", "binary", "fragmented", "two-byte-chars"],
)
def test_an_oversized_frame_closes_that_connection_only_with_1009(target: Fixture, frame: Frame) -> None:
    assert closed_with(target.server, lambda ws: ws.send(frame)) == 1009
    assert [a.get("id") for a in answers(target.prober.exchange(json.dumps({"type": "ping", "id": "after"})))] == [
        "after"
    ]


def test_invalid_utf8_in_a_text_frame_closes_that_connection_only_with_1007(target: Fixture) -> None:
    assert closed_with(target.server, lambda ws: ws.send(b'{"type": "ping", "id": "\xff\xfe"}', text=True)) == 1007
    assert answers(target.prober.exchange(json.dumps({"type": "ping", "id": 1})))[0]["id"] == 1


@pytest.mark.parametrize("depth", [17, 900, 1_000, 1_023])  # 1 024 is where orjson stops
@pytest.mark.parametrize("field", ["id", "symbols"])
def test_a_value_nested_as_deep_as_the_json_parser_allows_is_refused_with_an_error(field: str, depth: int) -> None:
    message = {"type": "subscribe", "symbols": ["BTCUSDT"], "channels": ["ticker"]}
    frame = json.dumps(message)[:-1] + f', "{field}": ' + "[" * depth + "]" * depth + "}"
    with ServerThread(fast_settings()) as server:
        prober = Prober(server.url)
        try:
            answer = answers(prober.exchange(frame))
        finally:
            prober.close()
    assert [a.get("code") for a in answer] == ["invalid_message"]
    assert not server.errors, server.errors[:3]


# -- and the server took it all in its stride --------------------------------------


def test_the_canary_was_fed_throughout_and_nothing_was_logged_as_an_error(target: Fixture) -> None:
    canary, server = target.canary, target.server
    time.sleep(0.5)
    assert canary.failure is None, canary.failure
    ended = time.monotonic()
    arrivals = [target.started, *canary.arrivals, ended]
    longest_gap = max(b - a for a, b in itertools.pairwise(arrivals))
    print(
        f"\nfuzz: {target.prober.examples} examples in {ended - target.started:.1f} s; canary got "
        f"{len(canary.arrivals)} market_update frames, longest gap {longest_gap:.2f} s; "
        f"{len(server.records)} log records kept, {len(server.errors)} at ERROR"
    )
    assert longest_gap < 2.0, longest_gap
    assert any(r.name.startswith("bixweb") for r in server.records), "the server's log was not captured"
    assert not server.errors, server.errors[:5]

"""Every inbound message has a cost bound, on both sockets (issue 12, point 1).

Pure checks first (what validation does, what each hostile message costs),
then the real app: hostile clients within the rate limit while a canary bot
reads its stream and ``/healthz`` is polled, and a client whose messages keep
failing is throttled, then closed with 1008, while a well-behaved one carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jsonschema_rs
import orjson
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient

from bixweb import protocol
from bixweb.errors import ProtocolError
from bixweb.validation import MAX_NESTING, MAX_VALUES, SchemaSet, count_values, json_path
from bixweb.web.app import create_app
from tests import hostile
from tests.support import ServerProcess, fast_settings, unwrap

Factory = Callable[..., Any]

CPU_BOUND_US = 1_000.0
"""The issue's bound: no message, valid or not, costs more than ~1 ms of server CPU (on this machine)."""
REFERENCE_US_HERE = 1_900.0
"""What :func:`reference_work` costs on the 2-core development machine (2026-12-01, min of 15): a
slower machine, or a run under coverage, scales the bound by its own figure for it."""


def reference_work() -> None:
    """Plain interpreter work, nothing of bixweb's: it slows with the machine and under a tracer."""
    total = 0
    for n in range(20_000):
        total += n * n % 7


def cpu_bound_us() -> float:
    """:data:`CPU_BOUND_US` on the machine running the test: as much slower as it runs plain Python
    slower than the development machine (never tighter). Measured beside each case, not once: a
    machine that is busier now than at the session's start is slower for both."""
    reference = hostile.cost_us(lambda _: reference_work(), "", statistic=min)
    # The bound is ~1 ms: 10 % of room, because on a core whose neighbour is busy, memory-heavy
    # parsing slows more than this plain arithmetic does (make test runs this file with no neighbour).
    return CPU_BOUND_US * 1.1 * max(1.0, reference / REFERENCE_US_HERE)


LATENCY_BOUND_S = 0.050
"""The issue's bound on /healthz and canary lag, p99."""
HOSTILE_RATE = 18.0
"""Messages per second from each hostile client: under the default limit of 20."""


# -- validation stops early ------------------------------------------------------------------


class CountingValidator:
    """A compiled validator that counts how it is used."""

    def __init__(self, inner: jsonschema_rs.Validator) -> None:
        self.inner = inner
        self.validations = 0
        self.listings = 0

    def validate(self, instance: Any) -> None:
        self.validations += 1
        self.inner.validate(instance)

    def iter_errors(self, instance: Any) -> Any:
        self.listings += 1
        return self.inner.iter_errors(instance)


def test_first_error_of_the_8101_error_frame_draws_one_error_and_names_the_list() -> None:
    real = protocol.schemas()
    counting = CountingValidator(real.fast["client"]["subscribe"])
    schemas = SchemaSet(real.files, real.validators, {"client": {"subscribe": counting}})  # type: ignore[dict-item]
    message = orjson.loads(hostile.ZEROS_FRAME)
    assert len(real.errors("client", message)) == 8_101  # what the old code ranked, one by one
    error = schemas.first_error("client", "subscribe", message)
    assert error is not None
    path, reason = error
    assert path == "$.symbols" and "200" in reason  # the list is too long: the most telling of its errors
    assert (counting.validations, counting.listings) == (1, 0)  # one error drawn, none listed
    assert "0, 0" not in reason  # the value is not quoted back


def test_the_8101_error_frame_is_refused_before_it_is_parsed() -> None:
    assert count_values(hostile.ZEROS_FRAME) > MAX_VALUES
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_client_message(hostile.ZEROS_FRAME)
    assert (caught.value.code, caught.value.path) == ("invalid_message", "$")


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ('{"a": 1}', 1),
        ('{"a": [1, 2, 3]}', 4),
        ('{"a": "x,y[z{"}', 1),
        ('{"a": "q\\"[,", "b": [{}]}', 4),
        ('{"a": "\\\\", "b": 2}', 2),
        ("[]", 1),
    ],
)
def test_values_are_counted_outside_strings(text: str, values: int) -> None:
    padding = " " + "[]," * MAX_VALUES  # over the bound, so the count is the exact one, strings left out
    assert count_values(f"[{text},{padding}0]") == values + 2 * MAX_VALUES + 2
    assert values <= count_values(text) <= values + text.count(",") + text.count("[") + text.count("{")


def test_commas_in_strings_never_make_a_message_too_big() -> None:
    note = "," * 15_000  # within one 16 KB frame: far more commas than MAX_VALUES, all in a string
    assert count_values(json.dumps({"type": "ping", "id": 1, "note": note})) <= 3


def test_the_largest_valid_messages_are_within_the_bounds() -> None:
    frame = hostile.largest_valid_subscribe()
    assert count_values(frame) <= MAX_VALUES
    assert isinstance(protocol.parse_client_message(frame), protocol.Subscribe)
    assert isinstance(
        protocol.parse_client_message(json.dumps({"type": "ping", "id": [[[[]]]]} | {"id": 1})), protocol.Ping
    )


def test_nesting_past_the_bound_is_refused_and_at_the_bound_is_validated() -> None:
    deep = '{"type": "ping", "id": ' + "[" * (MAX_NESTING - 1) + "]" * (MAX_NESTING - 1) + "}"
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_client_message(deep)
    assert caught.value.path == "$.id"  # the schema's answer: nesting was not the problem
    deeper = '{"type": "ping", "id": ' + "[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1) + "}"
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_client_message(deeper)
    assert caught.value.path == "$" and "nests" in caught.value.message


def test_paths_quote_keys_that_are_not_plain_names_and_stay_short() -> None:
    assert json_path(["since", "seq", "ticker:BTCUSDT"]) == "$.since.seq['ticker:BTCUSDT']"
    assert json_path(["symbols", 3]) == "$.symbols[3]"
    assert len(json_path(["x" * 5_000] * 10)) <= 200


@pytest.mark.parametrize("name", list(hostile.BOT))
def test_each_hostile_bot_message_costs_under_a_millisecond(name: str) -> None:
    frame = hostile.BOT[name]
    assert len(frame.encode()) <= hostile.MAX_FRAME
    with pytest.raises(ProtocolError):
        protocol.parse_client_message(frame)
    assert hostile.cost_us(hostile.bot_parse, frame, statistic=min) <= cpu_bound_us()  # min: the work


def test_the_largest_valid_message_costs_under_a_millisecond() -> None:
    frame = hostile.largest_valid_subscribe()
    assert isinstance(protocol.parse_client_message(frame), protocol.Subscribe)
    assert hostile.cost_us(protocol.parse_client_message, frame, statistic=min) <= cpu_bound_us()


@pytest.mark.parametrize("name", list(hostile.UI))
def test_each_hostile_dashboard_message_costs_under_a_millisecond(name: str) -> None:
    frame = hostile.UI[name]
    assert len(frame.encode()) <= hostile.MAX_FRAME
    assert hostile.cost_us(hostile.ui_parse, frame, statistic=min) <= cpu_bound_us()


# -- the real app under hostile clients ------------------------------------------------------


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[98]


@dataclass
class Watch:
    """What the well-behaved side saw while the hostile clients were at it."""

    healthz_s: list[float] = field(default_factory=list)
    canary_gaps_s: list[float] = field(default_factory=list)
    hostile_closes: list[int | None] = field(default_factory=list)
    hostile_sent: int = 0


Session = aiohttp.ClientSession | TestClient[Any, Any]
"""Where the clients connect: a session on a server process, or the in-process app's client."""


async def hostile_client(
    session: Session, path: str, frame: str, go: asyncio.Event, stop: asyncio.Event, watch: Watch, *, reconnect: bool
) -> None:
    """Connect; from ``go`` on send ``frame`` at :data:`HOSTILE_RATE` and read the answers; reconnect when closed."""
    while not stop.is_set():
        async with session.ws_connect(path) as ws:
            await go.wait()

            async def drain(socket: aiohttp.ClientWebSocketResponse = ws) -> None:
                async for _ in socket:
                    pass

            reader = asyncio.create_task(drain())
            with contextlib.suppress(ConnectionError):
                while not stop.is_set() and not ws.closed and not reader.done():
                    await ws.send_str(frame)
                    watch.hostile_sent += 1
                    await asyncio.sleep(1 / HOSTILE_RATE)
            if reader.done():
                watch.hostile_closes.append(ws.close_code)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        if not reconnect:
            return


async def poll_healthz(session: Session, stop: asyncio.Event, watch: Watch) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        async with session.get("/healthz") as response:
            await response.read()
        watch.healthz_s.append(time.perf_counter() - started)
        await asyncio.sleep(0.020)


async def canary(session: Session, interval: float, stop: asyncio.Event, watch: Watch) -> None:
    """A bot on every symbol's ticker: the gaps between its frames, less the tick ``interval``."""
    async with session.ws_connect("/ws?channels=ticker") as ws:
        last: float | None = None
        while not stop.is_set():
            msg = await ws.receive(timeout=5)
            assert msg.type is WSMsgType.TEXT, msg
            now = time.perf_counter()
            if '"market_update"' in msg.data:
                if last is not None:
                    watch.canary_gaps_s.append(max(0.0, now - last - interval))
                last = now


async def under_attack(
    session: Session,
    path: str,
    frame: str,
    *,
    attackers: int,
    interval: float,
    seconds: float = 4.0,
    warm_up: float = 1.5,
    reconnect: bool = True,
) -> Watch:
    watch, go, stop = Watch(), asyncio.Event(), asyncio.Event()
    tasks = [
        asyncio.create_task(canary(session, interval, stop, watch)),
        asyncio.create_task(poll_healthz(session, stop, watch)),
    ]
    tasks += [
        asyncio.create_task(hostile_client(session, path, frame, go, stop, watch, reconnect=reconnect))
        for _ in range(attackers)
    ]
    await asyncio.sleep(warm_up)  # everybody connected (a dashboard page's first render compiles its templates)
    watch.healthz_s.clear()
    watch.canary_gaps_s.clear()
    go.set()
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks)
    print(
        f"\n{attackers} x {path}: sent {watch.hostile_sent}, closed {watch.hostile_closes}; /healthz p99 "
        f"{p99(watch.healthz_s) * 1000:.1f} ms (n={len(watch.healthz_s)}), canary lag p99 "
        f"{p99(watch.canary_gaps_s) * 1000:.1f} ms (n={len(watch.canary_gaps_s)})"
    )
    return watch


def assert_unharmed(watch: Watch) -> None:
    assert len(watch.healthz_s) >= 50 and len(watch.canary_gaps_s) >= 20, watch
    assert p99(watch.healthz_s) <= LATENCY_BOUND_S, sorted(watch.healthz_s)[-5:]
    assert p99(watch.canary_gaps_s) <= LATENCY_BOUND_S, sorted(watch.canary_gaps_s)[-5:]


async def make_client(aiohttp_client: Factory, **overrides: Any) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await aiohttp_client(create_app(fast_settings(strict=False, **overrides)))
    return client


TICK_RATE = 50.0


@pytest.fixture
async def server(server_process: Callable[..., ServerProcess]) -> AsyncIterator[aiohttp.ClientSession]:
    """A real server process at the default limits (its own CPU: what the test clients do does not count)."""
    started = server_process("--seed", "7", "--tick-rate", str(TICK_RATE))
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{started.port}") as session:
        yield session


@pytest.mark.parametrize("attackers", [1, 5])
async def test_the_8101_error_frame_at_18_per_s_stalls_nobody(server: aiohttp.ClientSession, attackers: int) -> None:
    watch = await under_attack(
        server, "/ws?channels=none", hostile.ZEROS_FRAME, attackers=attackers, interval=1 / TICK_RATE
    )
    assert_unharmed(watch)


@pytest.mark.parametrize("attackers", [1, 5])
async def test_the_2000_header_action_on_the_dashboard_socket_stalls_nobody(
    server: aiohttp.ClientSession, attackers: int
) -> None:
    # not reconnecting: a page's connect renders the whole page (~7 ms), which is not what is measured here
    watch = await under_attack(
        server,
        "/ws/ui?page=hostile-page-0001",
        hostile.HEADERS_FRAME,
        attackers=attackers,
        interval=1 / TICK_RATE,
        reconnect=False,
    )
    assert_unharmed(watch)


async def test_the_costliest_bot_messages_stall_nobody(server: aiohttp.ClientSession) -> None:
    worst = max(hostile.BOT.values(), key=lambda frame: hostile.cost_us(hostile.bot_parse, frame, repeat=3))
    assert_unharmed(await under_attack(server, "/ws?channels=none", worst, attackers=5, interval=1 / TICK_RATE))


# -- the budget: failing clients are throttled, then closed ----------------------------------


async def answers_until_closed(
    ws: aiohttp.ClientWebSocketResponse, frame: str, *, rate: float, seconds: float
) -> tuple[list[str | None], float]:
    """Send ``frame`` at ``rate`` until closed (or ``seconds``); the error codes seen, and when it closed."""
    codes: list[str | None] = []
    started = time.monotonic()

    async def read() -> None:
        async for msg in ws:
            if msg.type is WSMsgType.TEXT and msg.data.startswith("{"):  # a bot's JSON, not a page's HTML
                codes.extend(m.get("code") for m in unwrap(json.loads(msg.data)) if m["type"] == "error")

    reader = asyncio.create_task(read())
    with contextlib.suppress(ConnectionError):
        while not reader.done() and time.monotonic() - started < seconds:
            await ws.send_str(frame)
            await asyncio.sleep(1 / rate)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(reader, 3)
    return codes, time.monotonic() - started


async def test_a_client_whose_messages_keep_failing_is_throttled_then_closed_with_1008(
    aiohttp_client: Factory,
) -> None:
    client = await make_client(aiohttp_client)
    async with (
        client.ws_connect("/ws?channels=ticker&symbols=BTCUSDT") as polite,
        client.ws_connect("/ws?channels=none") as failing,
    ):
        pongs: list[int] = []
        sent = 0

        async def behave() -> None:  # pings at 5/s, each to be answered, while the other one fails
            nonlocal sent
            while not failing.closed:
                await polite.send_json({"type": "ping", "id": sent})
                sent += 1
                await asyncio.sleep(0.2)

        async def listen() -> None:
            async for msg in polite:
                messages = unwrap(json.loads(msg.data))
                assert not any(m["type"] == "error" for m in messages), messages
                pongs.extend(m["id"] for m in messages if m["type"] == "pong")

        listener = asyncio.create_task(listen())
        behaving = asyncio.create_task(behave())
        codes, took = await answers_until_closed(failing, hostile.ZEROS_FRAME, rate=HOSTILE_RATE, seconds=15)
        await behaving
        await asyncio.sleep(0.5)
        assert failing.close_code == 1008, (failing.close_code, took)
        assert codes[0] == "invalid_message" and "rate_limited" in codes  # answered, then throttled, then closed
        assert codes.count("invalid_message") < len(codes) / 2  # most were refused unparsed
        assert took < 10
        assert not polite.closed and sent >= 5 and pongs == list(range(sent)), (sent, pongs)
        listener.cancel()


async def test_a_dashboard_page_whose_actions_keep_failing_is_closed_with_1008(aiohttp_client: Factory) -> None:
    client = await make_client(aiohttp_client)
    async with (
        client.ws_connect("/ws/ui?page=failing-page-0001") as failing,
        client.ws_connect("/ws?channels=ticker&symbols=BTCUSDT") as bystander,
    ):
        _, took = await answers_until_closed(failing, hostile.HEADERS_FRAME, rate=HOSTILE_RATE, seconds=15)
        assert failing.close_code == 1008 and took < 10, (failing.close_code, took)
        msg = await bystander.receive(timeout=3)
        assert msg.type is WSMsgType.TEXT and not bystander.closed


async def test_a_well_behaved_client_near_the_rate_limit_is_never_throttled(aiohttp_client: Factory) -> None:
    client = await make_client(aiohttp_client)
    async with client.ws_connect("/ws?channels=none") as ws:
        codes, _ = await answers_until_closed(ws, json.dumps({"type": "ping"}), rate=HOSTILE_RATE, seconds=3)
        assert not ws.closed and codes == []


async def test_a_flood_of_refusals_logs_a_few_lines_not_one_each(
    aiohttp_client: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_client(aiohttp_client, max_messages_per_s=1_000.0)  # refused for content, not rate
    with caplog.at_level("INFO", logger="bixweb"):
        async with client.ws_connect("/ws?channels=none") as ws:
            for _ in range(300):
                await ws.send_str('{"type": "nonsense"}')
            await ws.send_str(json.dumps({"type": "ping", "id": "fence"}))
            async for msg in ws:
                if any(m.get("id") == "fence" for m in unwrap(json.loads(msg.data))):
                    break
    refused = [r for r in caplog.records if "refused_message" in r.getMessage()]
    assert 1 <= len(refused) <= 3, [r.getMessage() for r in refused]
    assert "nonsense" not in " ".join(r.getMessage() for r in caplog.records)

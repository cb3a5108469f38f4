"""A local stand-in for Binance's combined spot market streams, for tests.

Written from Binance's published format ("WebSocket Streams for Binance"):
``GET /stream?streams=<name>/<name>/…`` upgrades to a WebSocket whose text
frames are ``{"stream": "<name>", "data": <payload>}``; stream names are
lower case; decimals are strings; a partial-depth payload carries no symbol
and no event type. Like Binance it accepts a stream for a symbol it does not
list and then sends nothing on it, and it refuses a malformed stream name
with HTTP 400.

The test drives it: :meth:`FakeExchange.publish` sends a payload to every
connection that asked for the stream, :meth:`pause` makes it silent while
keeping the sockets open, :meth:`drop` cuts every connection (a TCP reset),
:meth:`ping` pings and records the pongs, and :meth:`run_trades` keeps a
steady flow of trades with consecutive ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

STREAM_NAME = re.compile(
    r"(?P<symbol>[a-z0-9]{2,20})@(?P<channel>ticker|trade|depth(5|10|20)(@100ms)?|kline_(1s|1m|3m|5m|15m|1h))"
)

Payload = dict[str, Any]


def decimal(value: float) -> str:
    return f"{value:.8f}"


def ticker_event(
    symbol: str,
    *,
    last: float,
    bid: float,
    ask: float,
    open: float,
    high: float,
    low: float,
    volume: float,
    quote_volume: float,
    time: int,
) -> Payload:
    """A ``24hrTicker`` event with every published field."""
    return {
        "e": "24hrTicker",
        "E": time,
        "s": symbol,
        "p": decimal(last - open),
        "P": f"{100 * (last - open) / open:.3f}",
        "w": decimal(quote_volume / volume),
        "x": decimal(open),
        "c": decimal(last),
        "Q": decimal(0.01),
        "b": decimal(bid),
        "B": decimal(1.5),
        "a": decimal(ask),
        "A": decimal(2.5),
        "o": decimal(open),
        "h": decimal(high),
        "l": decimal(low),
        "v": decimal(volume),
        "q": decimal(quote_volume),
        "O": time - 86_400_000,
        "C": time,
        "F": 1,
        "L": 1000,
        "n": 1000,
    }


def trade_event(symbol: str, trade_id: int, price: float, qty: float, *, buyer_is_maker: bool, time: int) -> Payload:
    """A ``trade`` event: ``m`` is true when the buyer was the maker, i.e. the taker sold."""
    return {
        "e": "trade",
        "E": time + 1,
        "s": symbol,
        "t": trade_id,
        "p": decimal(price),
        "q": decimal(qty),
        "T": time,
        "m": buyer_is_maker,
        "M": True,
    }


def depth_payload(bids: Sequence[tuple[float, float]], asks: Sequence[tuple[float, float]], update_id: int) -> Payload:
    """A partial-depth payload: no symbol, no event type, no time."""
    return {
        "lastUpdateId": update_id,
        "bids": [[decimal(p), decimal(q)] for p, q in bids],
        "asks": [[decimal(p), decimal(q)] for p, q in asks],
    }


def kline_event(
    symbol: str,
    *,
    start: int,
    open: float,
    high: float,
    low: float,
    close: float,
    volume: float,
    closed: bool,
    time: int,
    interval: str = "1m",
    length_ms: int = 60_000,
) -> Payload:
    """A ``kline`` event with every published field."""
    return {
        "e": "kline",
        "E": time,
        "s": symbol,
        "k": {
            "t": start,
            "T": start + length_ms - 1,
            "s": symbol,
            "i": interval,
            "f": 100,
            "L": 200,
            "o": decimal(open),
            "c": decimal(close),
            "h": decimal(high),
            "l": decimal(low),
            "v": decimal(volume),
            "n": 100,
            "x": closed,
            "q": decimal(volume * close),
            "V": decimal(volume / 2),
            "Q": decimal(volume * close / 2),
            "B": "0",
        },
    }


@dataclass(eq=False)
class Peer:
    """One client connection and the streams it asked for."""

    number: int
    ws: web.WebSocketResponse
    streams: frozenset[str]
    transport: asyncio.BaseTransport | None
    pongs: list[bytes] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)


class FakeExchange:
    """See the module docstring. ``listed``: the (upper-case) symbols it has data for."""

    def __init__(self, listed: Iterable[str]) -> None:
        self.listed = set(listed)
        self.app = web.Application()
        self.app.router.add_get("/stream", self._stream)
        self.app.on_shutdown.append(self._close_on_shutdown)
        self.peers: list[Peer] = []
        """Every connection ever made, in order."""
        self.refused: list[str] = []
        self.most_open = 0
        """The most connections open at once (two while the feed replaces one)."""
        self.silent = False
        self._trade_ids: dict[str, int] = {}

    # -- what a test looks at -------------------------------------------------------

    @property
    def open_peers(self) -> list[Peer]:
        return [p for p in self.peers if not p.closed.is_set()]

    async def wait_for_peers(self, count: int, timeout: float = 5.0) -> Peer:
        """Wait until ``count`` connections have been made; return the last."""
        async with asyncio.timeout(timeout):
            while len(self.peers) < count:
                await asyncio.sleep(0.01)
        return self.peers[count - 1]

    # -- what a test does -----------------------------------------------------------

    async def publish(self, stream: str, data: Payload) -> int:
        """Send ``data`` on ``stream`` to every open connection that asked for it; return how many."""
        if self.silent or not self._listed(stream):
            return 0
        frame = json.dumps({"stream": stream, "data": data})
        sent = 0
        for peer in self.open_peers:
            if stream in peer.streams:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await peer.ws.send_str(frame)
                    sent += 1
        return sent

    async def send_raw(self, frame: str | bytes) -> None:
        """Send a frame as it is (for malformed input) to every open connection."""
        for peer in self.open_peers:
            if isinstance(frame, bytes):
                await peer.ws.send_bytes(frame)
            else:
                await peer.ws.send_str(frame)

    async def trade(
        self, symbol: str, price: float, qty: float = 0.5, *, buyer_is_maker: bool = False, time: int
    ) -> int:
        """Publish the next trade of ``symbol``; return its id."""
        trade_id = self._trade_ids.get(symbol, 1000) + 1
        self._trade_ids[symbol] = trade_id
        await self.publish(
            f"{symbol.lower()}@trade",
            trade_event(symbol, trade_id, price, qty, buyer_is_maker=buyer_is_maker, time=time),
        )
        return trade_id

    async def run_trades(self, symbol: str, *, period: float = 0.01, price: float = 100.0) -> None:
        """Publish a trade every ``period`` seconds, for ever (cancel it); ids run on while silent."""
        loop = asyncio.get_running_loop()
        while True:
            now = int(loop.time() * 1000)
            if self.silent:
                self._trade_ids[symbol] = self._trade_ids.get(symbol, 1000) + 1
            else:
                await self.trade(symbol, price, time=now)
            await asyncio.sleep(period)

    def pause(self) -> None:
        """Fall silent, sockets open (pings still answered)."""
        self.silent = True

    def resume(self) -> None:
        self.silent = False

    def drop(self) -> None:
        """Cut every open connection without a closing handshake."""
        for peer in self.open_peers:
            if peer.transport is not None:
                peer.transport.abort()  # type: ignore[attr-defined]

    async def close_all(self, code: int = 1001) -> None:
        """Close every open connection politely, as Binance does at the 24 h mark."""
        for peer in self.open_peers:
            await peer.ws.close(code=code)

    async def ping(self, payload: bytes) -> None:
        for peer in self.open_peers:
            await peer.ws.ping(payload)

    # -- the endpoint -----------------------------------------------------------------

    async def _close_on_shutdown(self, app: web.Application) -> None:
        self.silent = True
        await self.close_all(1001)

    def _listed(self, stream: str) -> bool:
        match = STREAM_NAME.fullmatch(stream)
        return match is not None and match["symbol"].upper() in self.listed

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        names = request.query.get("streams", "").split("/")
        bad = [n for n in names if not STREAM_NAME.fullmatch(n)]
        if bad or not names:
            self.refused.extend(bad)
            return web.json_response({"code": 2, "msg": "Invalid request: invalid stream"}, status=400)
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        peer = Peer(len(self.peers) + 1, ws, frozenset(names), request.transport)
        self.peers.append(peer)
        self.most_open = max(self.most_open, len(self.open_peers))
        try:
            async for msg in ws:
                if msg.type is WSMsgType.PONG:
                    peer.pongs.append(msg.data)
                elif msg.type is WSMsgType.PING:
                    await ws.pong(msg.data)
        finally:
            peer.closed.set()
        return ws

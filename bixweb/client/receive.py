"""A client's receive loop: connect, read, reconnect; and what it does with each message.

A mixin of :class:`~bixweb.client.WebSocketClient`, which starts :meth:`ReceiveLoop._run`
as one task on its event loop. The loop reads the socket, unwraps ``batch``
frames, passes each message through the
:class:`~bixweb.client.view.MarketView` (dedupe, trade gaps, book
checksums), answers pending requests, queues the message and calls the
callbacks. After a close nobody asked for, it waits as the
:class:`~bixweb.client.reconnect.Backoff` says and connects again, and the
:class:`~bixweb.client.session.Subscriptions` resume every stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl as ssl_module
import threading
import time
from typing import Any, Literal

import aiohttp
import orjson

from bixweb.client.address import scrub
from bixweb.client.bridge import Bridge
from bixweb.client.events import Listeners, payloads
from bixweb.client.reconnect import Backoff, retryable
from bixweb.client.refusal import read_refusal
from bixweb.client.requests import Pacer, Pending
from bixweb.client.session import Subscriptions, describe
from bixweb.client.streams import CLOSE_REASONS, Message, unwrap
from bixweb.client.view import MarketView

log = logging.getLogger("bixweb.client")
Socket = aiohttp.ClientWebSocketResponse[Literal[False]]


class ReceiveLoop:
    """The receive loop of a client (its state lives on the client)."""

    url: str
    resume_url: str
    auto_reconnect: bool
    connect_timeout: float
    heartbeat: float | None
    max_message_size: int
    token: str | None
    ssl: ssl_module.SSLContext | bool
    compress: bool
    view: MarketView
    welcome: Message | None
    close_code: int | None
    connections: int
    on_status: list[Any]
    _backoff: Backoff
    _pacer: Pacer
    _secrets: tuple[str, ...]
    _listeners: Listeners
    _pending: Pending
    _bridge: Bridge
    _subs: Subscriptions
    _online: threading.Event
    _closing: bool
    _connected: asyncio.Event | None
    _stop: asyncio.Event | None
    _session: aiohttp.ClientSession | None
    _ws: Socket | None

    def _enqueue(self, message: Message) -> None:
        raise NotImplementedError

    def _wake(self) -> None:
        raise NotImplementedError

    def _restored(self) -> None:
        """The subscriptions are back on the new socket: requests waiting for it go now."""
        ws = self._ws
        if ws is not None and not ws.closed and self._connected is not None:
            self._connected.set()

    async def _run(self) -> None:
        announced = False  # a reconnect was announced (on_status): say so if disconnect() cancels it
        try:
            while not self._closing:
                announced = False
                ws = self._ws
                if ws is None or ws.closed:
                    try:
                        ws = await self._open()
                    except Exception as exc:
                        if not self.auto_reconnect or not retryable(exc):
                            raise
                        delay = self._backoff.next_delay(exc)
                        target = self.resume_url if self._subs.resuming else self.url
                        error = scrub(describe(exc), self._secrets)
                        log.warning(
                            "cannot connect to %s (%s); retrying in %.2f s", scrub(target, self._secrets), error, delay
                        )
                        await self._status("retrying", error=error, reconnect_in=delay)
                        await self._sleep(delay)
                        announced = True
                        continue
                try:
                    await self._read(ws)
                finally:
                    await self._lost(ws)
                self._backoff.closed(time.monotonic())
                reason = CLOSE_REASONS.get(self.close_code or 0, "unexpected close")
                if self._closing or not self.auto_reconnect:
                    await self._status("disconnected", close_code=self.close_code, reason=reason, reconnect_in=None)
                    break
                self._subs.resuming = self._subs.known
                delay = self._backoff.next_delay()
                log.warning("connection closed with %s (%s); reconnecting in %.2f s", self.close_code, reason, delay)
                await self._status("disconnected", close_code=self.close_code, reason=reason, reconnect_in=delay)
                await self._sleep(delay)
                announced = True
            if announced:
                await self._status("disconnected", close_code=self.close_code, reason="disconnected", reconnect_in=None)
        except Exception as exc:
            await self._status("failed", error=scrub(describe(exc), self._secrets))
            raise
        finally:
            await self._release()
            await self._bridge.close()  # requests in flight cannot be answered now: fail them at once
            self._wake()

    async def _sleep(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or less if :meth:`disconnect` is called."""
        assert self._stop is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._stop.wait()

    async def _open(self) -> Socket:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(middlewares=(read_refusal,))
        resuming = self._subs.resuming
        url = self.resume_url if resuming else self.url
        async with asyncio.timeout(self.connect_timeout):
            ws = await self._session.ws_connect(
                url,
                heartbeat=self.heartbeat,
                max_msg_size=self.max_message_size,
                decode_text=False,
                headers={"Authorization": f"Bearer {self.token}"} if self.token else None,
                ssl=self.ssl,
                compress=15 if self.compress else 0,
            )
        self._ws = ws
        self.connections += 1
        self._backoff.opened(time.monotonic())
        if not resuming:
            self.view.reset()
        self._online.set()  # requests wait for _connected: set once the subscriptions are back (welcome)
        log.info("connected to %s", scrub(url, self._secrets))
        await self._status("connected", connections=self.connections, resumed=resuming)
        return ws

    async def _read(self, ws: Socket) -> None:
        async for frame in ws:
            if frame.type is aiohttp.WSMsgType.TEXT:
                await self._on_frame(frame.data)
            elif frame.type is aiohttp.WSMsgType.ERROR:
                log.warning("socket error: %s", scrub(describe(ws.exception()), self._secrets))
                return
            else:
                log.debug("ignored a %s frame", frame.type.name)

    async def _close_socket(self, reason: bytes) -> None:
        ws = self._ws
        if ws is not None and not ws.closed:
            await ws.close(message=reason)

    async def _lost(self, ws: Socket) -> None:
        if not ws.closed:
            with contextlib.suppress(Exception):
                await ws.close()
        self._ws = None
        self.close_code = ws.close_code
        self._online.clear()
        if self._connected is not None:
            self._connected.clear()
        self._pending.fail_all(ConnectionError(f"connection closed ({self.close_code})"))
        self.view.connection_lost()
        self._subs.cancel()

    async def _release(self) -> None:
        """Close what is still open: after :meth:`disconnect` or when the loop ends."""
        ws, session = self._ws, self._session
        if ws is not None:
            await self._lost(ws)
        self._session = None
        if session is not None:
            await session.close()

        # -- dispatch --------------------------------------------------------

    async def _on_frame(self, data: bytes) -> None:
        try:
            frame = orjson.loads(data)
        except orjson.JSONDecodeError:
            log.warning("ignored a frame that is not JSON (%d bytes)", len(data))
            return
        if not isinstance(frame, dict):
            log.warning("ignored a frame that is not an object (%d bytes)", len(data))
            return
        for message in unwrap(frame):
            received = self.view.receive(message)
            self._subs.resync(received.resyncs)
            for item in received.deliver:
                await self._deliver(item)

    async def _deliver(self, message: Message) -> None:
        kind = message.get("type")
        if isinstance(message.get("seq"), int):  # a data message (an initial_data's seq is a map)
            self._backoff.data_seen = True
        if kind == "welcome":
            self.welcome = message
            limits = message.get("limits")
            rate = limits.get("max_messages_per_s") if isinstance(limits, dict) else None
            if isinstance(rate, int | float) and rate > 0:
                self._pacer.configure(float(rate))
            self._subs.on_welcome(message)
        elif kind == "ack":
            self._subs.on_ack(message)
        if self._pending.answer(message):
            self._pacer.drain()
        self._enqueue(message)
        await self._listeners.call("message", message)
        for what, payload in payloads(message):
            await self._listeners.call(what, payload)

    async def _status(self, event: str, **fields: Any) -> None:
        if self.on_status:
            await self._listeners.call("status", {"event": event, **fields})

    async def _on_resumed(self, recovered: bool) -> None:
        await self._status("resumed", recovered=recovered, resumes=self._subs.resumes)

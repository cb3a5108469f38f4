"""``GET /ws``: the JSON WebSocket for bots (protocol v1, ``docs/protocol.md``)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Mapping

from aiohttp import WSMsgType, web

from bixweb import __version__, protocol
from bixweb.access import presented_token
from bixweb.desk import Desk, DeskView
from bixweb.errors import ProtocolError
from bixweb.hub import Backlog, Outbox
from bixweb.limits import InboundLimiter
from bixweb.logs import event
from bixweb.model import CHANNELS, REPLAYED, TICKER, canonical_symbol, stream_key
from bixweb.web import gate
from bixweb.web.connection import CLOSE_POLICY, Connection
from bixweb.web.service import SERVICE, Service, now_ms
from bixweb.web.upgrade import GuardedWebSocket, guard_connection, version_refusal

log = logging.getLogger("bixweb.bot")

MAX_PENDING_DESK_REQUESTS = 8
"""Alert and annotation requests one bot may have in flight to the feed process."""


def initial_streams(query: Mapping[str, str], symbols: list[str], limit: int) -> list[tuple[str, str]]:
    """The subscription a connection starts with, from ``?symbols=…&channels=…``.

    A missing or empty parameter takes its default: every symbol, the ticker.
    ``channels=none`` starts with no subscription (to subscribe, or resume, by message).
    Symbols are read in upper case (``btcusdt`` is ``BTCUSDT``).
    """
    if query.get("channels") == "none":
        return []
    wanted_symbols = [canonical_symbol(s.strip()) for s in query.get("symbols", "").split(",") if s.strip()]
    wanted_channels = [c.strip() for c in query.get("channels", "").split(",") if c.strip()]
    streams = protocol.resolve_streams(wanted_symbols or ["*"], wanted_channels or [TICKER], symbols, CHANNELS)
    if len(streams) > limit:
        raise ProtocolError("too_many_subscriptions", f"at most {limit} streams per connection")
    return streams


class BotSession:
    """The per-connection logic of the bot protocol: subscriptions and requests."""

    def __init__(
        self, service: Service, conn: Connection, streams: list[tuple[str, str]], *, owner: str = "bot"
    ) -> None:
        self.service = service
        self.conn = conn
        self.owner = owner
        """Who this bot is for its alert rules: its token's fingerprint, else its address."""
        self._pending: set[asyncio.Task[None]] = set()
        self.streams: set[tuple[str, str]] = set()
        self.limiter = InboundLimiter(service.settings.max_messages_per_s, time.monotonic())
        self._subscribe(streams)

    def send(self, message: protocol.Message) -> None:
        self.conn.send(self.service.hub.encode(message))

    def send_snapshot(self, message: protocol.Message) -> None:
        """An ``initial_data``: ahead of live traffic, at the pace the bot reads (it may be large)."""
        self.conn.send_paced(self.service.hub.encode(message), limit=self.backlog_limit())

    def backlog_limit(self) -> int:
        """Messages of earlier snapshots and replays a bot may leave unread and still be sent more.

        One replay of its whole subscription (``replay_depth`` per trades or alerts stream, one message
        per state stream) and an outbox's worth on top: a bot that resumes in several requests
        without waiting for the answers stays within it; one that asks again
        and again without reading does not.
        """
        settings = self.service.settings
        replayed = sum(channel in REPLAYED for channel, _ in self.streams)  # the others replay their latest
        return settings.outbox_messages + settings.replay_depth * replayed + len(self.streams) - replayed

    def _subscribe(self, streams: list[tuple[str, str]]) -> list[tuple[str, str]]:
        added = [s for s in streams if s not in self.streams]
        self.streams.update(added)
        self._listen()
        return added

    def _listen(self) -> None:
        """Tell the hub what this connection is subscribed to now."""
        self.service.hub.set_streams(self.conn, frozenset(stream_key(c, s) for c, s in self.streams))

    def welcome(self) -> bytes:
        """The first frame: server facts and the initial subscription."""
        s = self.service.settings
        return self.service.hub.encode(
            protocol.welcome_message(
                now_ms(),
                epoch=self.service.market.epoch,
                server=__version__,
                session=self.conn.session,
                symbols=self.service.market.symbols,
                channels=CHANNELS,
                heartbeat_s=s.heartbeat,
                status_interval_s=s.status_interval,
                limits={
                    "max_message_bytes": s.max_message_bytes,
                    "max_messages_per_s": s.max_messages_per_s,
                    "max_subscriptions": s.max_subscriptions,
                    "outbox_messages": s.outbox_messages,
                    "outbox_bytes": s.outbox_bytes,
                    "history_points": s.history_points,
                },
                subscriptions=self.streams,
            )
        )

    def start(self) -> None:
        """Queue the snapshot of the initial subscription."""
        if self.streams:
            self.send_snapshot(self.service.market.snapshot(sorted(self.streams), now_ms()))

    def receive(self, frame: str | bytes) -> None:
        """Handle one client frame; every refusal becomes an ``error`` message.

        The limiter is charged the CPU time each message took, and extra for
        a refused one: a client whose messages are costly or keep failing is
        answered ``rate_limited`` unparsed, then closed with 1008.
        """
        if self.conn.closing:
            return
        verdict = self.limiter.check(time.monotonic())
        if verdict == "close":
            event(log, logging.WARNING, "flood", kind="bot", session=self.conn.session, peer=self.conn.peer)
            self.conn.close_soon(CLOSE_POLICY, "too many messages")
            return
        if verdict == "refuse":
            self._refuse(
                ProtocolError(
                    "rate_limited",
                    f"more than {self.limiter.bucket.rate:g} messages per second "
                    "(refused and costly messages count more)",
                )
            )
            return
        started = time.thread_time()
        failed = True
        try:
            if isinstance(frame, bytes):
                raise ProtocolError("binary_not_supported", "send JSON in text frames")
            self.handle(protocol.parse_client_message(frame))
            failed = False
        except ProtocolError as exc:
            self._refuse(exc)
        except Exception:  # a bug must cost one answer, not the connection or the server
            log.exception("internal error session=%s peer=%s", self.conn.session, self.conn.peer)
            self.send(protocol.error_message(now_ms(), ProtocolError("internal_error", "the server failed")))
        finally:
            self.limiter.charge(time.monotonic(), time.thread_time() - started, failed=failed)

    def _refuse(self, exc: ProtocolError) -> None:
        """Answer a refused message; log the first refusal, then a count at most every few seconds."""
        count = self.limiter.refused(time.monotonic())
        if count is not None:
            event(
                log,
                logging.INFO,
                "refused_message",
                kind="bot",
                session=self.conn.session,
                peer=self.conn.peer,
                code=exc.code,
                path=exc.path,
                count=count,
            )
        self.send(protocol.error_message(now_ms(), exc))

    def handle(self, request: protocol.ClientMessage) -> None:
        if isinstance(request, protocol.Ping):
            self.send(protocol.pong_message(now_ms(), request.id))
            return
        if isinstance(request, protocol.DeskRequest):
            self.handle_desk(request)
            return
        market = self.service.market
        streams = protocol.resolve_streams(
            request.symbols, request.channels, market.symbols, CHANNELS, request_id=request.id
        )
        symbols = sorted({s for _, s in streams})
        channels = list(dict.fromkeys(c for c, _ in streams))
        if isinstance(request, protocol.Subscribe):
            limit = self.service.settings.max_subscriptions
            if len(self.streams | set(streams)) > limit:
                raise ProtocolError(
                    "too_many_subscriptions", f"at most {limit} streams per connection", request_id=request.id
                )
            added = self._subscribe(streams)
            if request.since is None:
                self._ack("subscribe", symbols, channels, request.id)
                if added:
                    self.send_snapshot(market.snapshot(sorted(added), now_ms()))
                return
            missed = market.replay(request.since, streams)
            self._ack("subscribe", symbols, channels, request.id, recovered=missed is not None)
            if missed is None:
                self.send_snapshot(market.snapshot(sorted(streams), now_ms(), recovered=False))
                return
            self.conn.replay(missed, limit=self.backlog_limit())  # encoded as the bot reads: no spike, no copy
        else:
            self.streams.difference_update(streams)
            self._listen()
            self._ack("unsubscribe", symbols, channels, request.id)

    def handle_desk(self, request: protocol.DeskRequest) -> None:
        """Alert rules and annotations: create, delete, list.

        A desk in this process answers at once; the feed process's desk (with
        ``--broker redis://``) answers through the broker, in a task of this
        connection's, so the socket keeps reading meanwhile.
        """
        desk = self.service.desk
        if desk is None:
            raise ProtocolError("unavailable", "this server keeps no alerts", request_id=request.id)
        if isinstance(desk, Desk):
            self.send(
                desk.perform(request.kind, request.fields, owner=self.owner, now_ms=now_ms(), request_id=request.id)
            )
            return
        if len(self._pending) >= MAX_PENDING_DESK_REQUESTS:
            raise ProtocolError(
                "rate_limited",
                f"at most {MAX_PENDING_DESK_REQUESTS} alert requests at a time; wait for the answers",
                request_id=request.id,
            )
        task = asyncio.create_task(self._forward(desk, request), name=f"desk-{self.conn.session}")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _forward(self, desk: DeskView, request: protocol.DeskRequest) -> None:
        try:
            reply = await desk.perform_async(
                request.kind, request.fields, owner=self.owner, now_ms=now_ms(), request_id=request.id
            )
        except ProtocolError as exc:
            self.send(protocol.error_message(now_ms(), exc))
            return
        except Exception:  # a bug must cost one answer, not the connection
            log.exception("internal error session=%s (desk request)", self.conn.session)
            self.send(
                protocol.error_message(
                    now_ms(), ProtocolError("internal_error", "the server failed", request_id=request.id)
                )
            )
            return
        self.send(reply)

    def _ack(
        self,
        op: str,
        symbols: list[str],
        channels: list[str],
        request_id: str | int | None,
        *,
        recovered: bool | None = None,
    ) -> None:
        self.send(
            protocol.ack_message(
                now_ms(),
                op=op,
                symbols=symbols,
                channels=channels,
                subscriptions=self.streams,
                request_id=request_id,
                recovered=recovered,
            )
        )

    def close(self) -> None:
        self.service.hub.remove(self.conn)
        for task in self._pending:
            task.cancel()


def bot_owner(request: web.Request, service: Service) -> str:
    """A name for a bot that outlives its connection: a fingerprint of its token, else its address."""
    token = presented_token(request.headers, request.query) if service.tokens else None
    if token is not None:
        return "bot:" + hashlib.sha256(token.encode()).hexdigest()[:12]
    return f"bot:{request.remote or '-'}"


async def bot_socket(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE]
    refused = gate.bot_access(request, service)  # room: counted with its connection (bixweb.web.tcp)
    if refused is not None:
        return refused
    return await _serve(request, service)


async def _serve(request: web.Request, service: Service) -> web.StreamResponse:
    settings = service.settings
    try:
        streams = initial_streams(request.query, service.market.symbols, settings.max_subscriptions)
    except ProtocolError as exc:
        return gate.refuse(request, service, kind="bot", status=400, code=exc.code, message=exc.message, path=exc.path)
    refused = version_refusal(request, service, "bot")
    if refused is not None:
        return refused
    ws = GuardedWebSocket(
        heartbeat=settings.heartbeat, max_msg_size=settings.max_message_bytes, compress=settings.bot_compression
    )
    if not ws.can_prepare(request).ok:
        return web.json_response(
            {"code": "upgrade_required", "message": "this is a WebSocket endpoint"},
            status=426,
            headers={"Upgrade": "websocket"},
        )
    await ws.prepare(request)
    conn = Connection(
        ws,
        request,
        kind="bot",
        outbox=Outbox(max_messages=settings.outbox_messages, max_bytes=settings.outbox_bytes),
        backlog=Backlog(encode=service.hub.encode),
    )
    service.opened(conn)
    session = BotSession(service, conn, streams, owner=bot_owner(request, service))
    session.start()  # the snapshot is queued where the subscription starts: no update can come between
    welcome = session.welcome()
    try:
        await ws.send_frame(welcome, WSMsgType.TEXT)  # first and alone; the writer starts after it
        conn.frames_sent += 1
        conn.messages_sent += 1
        conn.bytes_sent += len(welcome)
    except ConnectionError:
        session.close()
        service.closed(conn, ws.close_code)
        return ws
    conn.start()
    guard_connection(ws, conn)
    event(
        log,
        logging.INFO,
        "connected",
        kind="bot",
        session=conn.session,
        peer=conn.peer,
        streams=len(streams),
        compressed=bool(ws.compress),
    )
    try:
        async for msg in ws.messages():
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                session.receive(msg.data)
    finally:
        session.close()
        code = conn.close_code or ws.close_code
        service.closed(conn, code)
        await conn.stop()
        event(
            log,
            logging.INFO,
            "disconnected",
            kind="bot",
            session=conn.session,
            peer=conn.peer,
            code=code,
            reason=conn.close_reason or ws.lost_reason,
            frames=conn.frames_sent,
            bytes=conn.bytes_sent,
        )
    return ws

"""The listening sockets: a deep kernel backlog, a short accept loop, and accept errors at a bounded rate.

asyncio passes one ``backlog`` both to ``listen()`` and to its accept loop
(``_accept_connection`` calls ``accept()`` up to ``backlog`` times per
wakeup). When the process is out of file descriptors every one of those
calls fails with EMFILE, and each failure is logged through the loop's
exception handler and schedules another retry, without leaving the loop:
with a backlog of 4,096 that was up to 4,096 ERROR lines per wakeup
(issue 12: 172 MB of log in 21 s). So the site is started with a small
:data:`ACCEPT_BATCH` and the socket then listens again with
:data:`LISTEN_BACKLOG` (on Linux ``listen()`` on a listening socket only
changes its backlog): bursts of handshakes wait in the kernel, and one
wakeup accepts at most a batch.

:class:`AcceptGuard` is the loop's exception handler while serving: accept
failures make one log line per interval with their count, everything else
goes to the handler that was there before. It keeps one spare descriptor:
when accepting fails for want of descriptors, it gives the spare up to
accept and close the connections waiting (they get a prompt close instead
of hanging in the backlog), then takes it back.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from bixweb.errors import ConfigError
from bixweb.limits import LogThrottle
from bixweb.logs import event

log = logging.getLogger("bixweb.listen")

LISTEN_BACKLOG = 4096
"""Handshakes the kernel may hold while the server accepts; aiohttp's default of 128 drops bursts."""
ACCEPT_BATCH = 16
"""Connections accepted per wakeup of the listening socket (asyncio's loop takes this from ``backlog``)."""
ACCEPTED_IN_FLIGHT = 4 * ACCEPT_BATCH
"""Descriptors accepted but not yet counted or closed: asyncio accepts a batch per loop iteration,
and a connection is counted (or turned away) two iterations later, its socket closed one after."""
ACCEPT_ERROR_LOG_INTERVAL = 10.0
"""Seconds between the log lines that count failed accepts."""
ACCEPT_RESOURCE_ERROR = "socket.accept() out of system resource"
"""The message asyncio's selector loop reports EMFILE, ENFILE, ENOBUFS and ENOMEM on accept with."""


def deepen_backlog(sockets: Iterable[Any], backlog: int = LISTEN_BACKLOG) -> list[socket.socket]:
    """Listen again with ``backlog`` on each of the server's sockets; their duplicates, for :class:`AcceptGuard`.

    asyncio hands out wrappers that refuse ``listen()``; a duplicate of the
    descriptor is the same socket. Close the duplicates when serving stops,
    or the port stays open.
    """
    duplicates = []
    for transport_socket in sockets:
        same = socket.socket(fileno=os.dup(transport_socket.fileno()))
        same.setblocking(False)
        same.listen(backlog)
        duplicates.append(same)
    return duplicates


class AcceptGuard:
    """The event loop's exception handler while serving: bounded logs for failed accepts, a spare fd."""

    def __init__(self, loop: asyncio.AbstractEventLoop, listeners: list[socket.socket]) -> None:
        self.loop = loop
        self.listeners = listeners
        self.previous = loop.get_exception_handler()
        self.throttle = LogThrottle(ACCEPT_ERROR_LOG_INTERVAL)
        self.failed = 0
        """Accepts that failed for want of a resource, since start."""
        self.shed = 0
        """Connections accepted and closed at once with the spare descriptor, since start."""
        self._shed_since_line = 0
        self._spare = self._take_spare()
        self._last_error = ""

    def install(self) -> None:
        self.loop.set_exception_handler(self)

    def close(self) -> None:
        """Put the previous handler back, close the duplicates and the spare."""
        self.loop.set_exception_handler(self.previous)
        for listener in self.listeners:
            listener.close()
        self.listeners = []
        if self._spare >= 0:
            os.close(self._spare)
            self._spare = -1

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != ACCEPT_RESOURCE_ERROR:
            if self.previous is not None:
                self.previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        self.failed += 1
        error = context.get("exception")
        self._last_error = os.strerror(error.errno) if isinstance(error, OSError) and error.errno else str(error)
        self._shed_since_line += self.shed_waiting()
        count = self.throttle.note(loop.time())
        if count is not None:
            self._report(count)
        elif self.throttle.held == 1:  # the first held back: the rest are told when the interval ends
            loop.call_at(self.throttle.quiet_until, self._flush)

    def shed_waiting(self) -> int:
        """Accept and close what waits, with the spare descriptor; how many. Nothing without a spare."""
        if self._spare < 0:
            self._spare = self._take_spare()
            return 0
        os.close(self._spare)
        self._spare = -1
        shed = 0
        try:
            for listener in self.listeners:
                for _ in range(ACCEPT_BATCH):
                    try:
                        conn, _ = listener.accept()
                    except OSError:  # nothing waits (EAGAIN), or still no descriptor
                        break
                    conn.close()
                    shed += 1
        finally:
            self._spare = self._take_spare()
        self.shed += shed
        return shed

    def _flush(self) -> None:
        count = self.throttle.flush(self.loop.time())
        if count is not None:
            self._report(count)

    def _report(self, count: int) -> None:
        shed, self._shed_since_line = self._shed_since_line, 0
        event(
            log,
            logging.ERROR,
            "accept_failed",
            error=self._last_error,
            count=count,
            shed=shed,
            interval_s=ACCEPT_ERROR_LOG_INTERVAL,
        )

    @staticmethod
    def _take_spare() -> int:
        try:
            return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return -1


async def start_site(runner: web.AppRunner, host: str, port: int, *, backlog: int = ACCEPT_BATCH) -> list[Any]:
    """Listen on ``host``:``port`` for ``runner``'s app; the listening sockets. A failure a person
    can act on (port in use, an address not of this machine, a port reserved to root) is a
    :class:`ConfigError` of one line saying which option to change."""
    site = web.TCPSite(runner, host, port, backlog=backlog)
    try:
        await site.start()
    except OSError as exc:
        raise ConfigError(listen_failure(exc, host, port)) from None
    server = site._server  # the only way to learn which port 0 chose
    return list(getattr(server, "sockets", ()))


def check_listenable(host: str, port: int) -> None:
    """Bind ``host``:``port`` as asyncio will (``SO_REUSEADDR``, each address it resolves to) and let
    go: a port in use is one line before anything starts, not after the app has started and logged."""
    if port == 0:
        return  # always free
    try:
        for family, kind, proto, _, address in socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ):
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                probe.bind(address)
    except OSError as exc:
        raise ConfigError(listen_failure(exc, host, port)) from None


def listen_failure(exc: OSError, host: str, port: int) -> str:
    """The one line that says why ``host``:``port`` cannot be listened on, and what to change."""
    where = f"port {port} on {host}"
    change_port = "choose another with --port or BIXWEB_PORT (0 picks a free one)"
    change_host = "choose another with --host or BIXWEB_HOST (127.0.0.1: this machine only; 0.0.0.0: every interface)"
    if isinstance(exc, socket.gaierror):
        return f"cannot listen on {host!r}: {exc.strerror or exc}: {change_host}"
    if exc.errno == errno.EADDRINUSE:
        return f"{where} is in use: {change_port}"
    if exc.errno == errno.EACCES:
        return f"{where} is refused to this user (ports below 1024 need root or CAP_NET_BIND_SERVICE): {change_port}"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {host}: it is not an address of this machine: {change_host}"
    return f"cannot listen on {where}: {exc.strerror or exc}: check --host and --port (BIXWEB_HOST, BIXWEB_PORT)"

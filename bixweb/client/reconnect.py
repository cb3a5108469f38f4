"""When a client tries again: the reconnect policy, as a value that is told what happened.

A successful handshake proves little: a server that accepts and closes at
once (a slow-consumer loop, a proxy in trouble) would otherwise be hammered
twice a second. So the delays keep growing across handshakes and start over
only after a connection that was *healthy*: open for ``healthy_after``
seconds and carrying at least one data message.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import aiohttp

from bixweb.client.refusal import backoff_with_hint
from bixweb.client.streams import backoff_delays
from bixweb.errors import HandshakeRefused


def retryable(exc: BaseException) -> bool:
    """Connection failures worth retrying: network errors and transient refusals. A refusal
    that is not transient (a bad token, an unknown symbol) will not change by itself, nor will
    an answer that is no upgrade at all (``200`` from a web page, a ``301``)."""
    if isinstance(exc, HandshakeRefused):
        return exc.transient
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return False  # a page, a redirect or a bad upgrade at that URL: not a bixweb socket, and it will not become one
    return isinstance(exc, aiohttp.ClientError | OSError | TimeoutError)


class Backoff:
    """Delays before each reconnection attempt; no clock or sleep of its own (``now`` is passed in).

    Without ``fixed``: full-jitter exponential delays from ``initial`` up to
    ``maximum`` (:func:`~bixweb.client.streams.backoff_delays`). With
    ``fixed`` (the old client's 5 s): that delay every time, no jitter. A
    refusal's ``Retry-After`` lengthens a delay, never beyond ``maximum``
    (or ``fixed``, if longer).
    """

    def __init__(
        self,
        *,
        initial: float = 1.0,
        maximum: float = 30.0,
        fixed: float | None = None,
        healthy_after: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        if initial <= 0 or maximum < initial:  # now, not at the first reconnect
            raise ValueError("need 0 < reconnect_initial <= reconnect_max")
        if fixed is not None and fixed < 0:
            raise ValueError("reconnect_delay must be 0 or more seconds")
        if healthy_after < 0:
            raise ValueError("healthy_after must be 0 or more seconds")
        self.initial, self.maximum, self.fixed, self.healthy_after = initial, maximum, fixed, healthy_after
        self._rng = rng or random.Random()
        self._delays: Iterator[float] | None = None
        self._opened_at: float | None = None
        self.data_seen = False
        """Set by the receive loop when a data message arrives on the open connection."""

    def next_delay(self, exc: BaseException | None = None) -> float:
        """The wait before the next attempt; ``exc`` (what failed) may carry a ``Retry-After``."""
        if self.fixed is not None:
            delay = self.fixed
            ceiling = max(self.fixed, self.maximum)
        else:
            if self._delays is None:
                self._delays = backoff_delays(self.initial, self.maximum, self._rng)
            delay = next(self._delays)
            ceiling = self.maximum
        return backoff_with_hint(delay, exc, ceiling) if exc is not None else delay

    def opened(self, now: float) -> None:
        """A socket is open (at monotonic time ``now``)."""
        self._opened_at = now
        self.data_seen = False

    def closed(self, now: float) -> bool:
        """The socket is gone; returns whether it was healthy (the delays then start over)."""
        opened_at, self._opened_at = self._opened_at, None
        healthy = opened_at is not None and self.data_seen and now - opened_at >= self.healthy_after
        if healthy:
            self._delays = None
        return healthy

    def reset(self) -> None:
        """Start the delays over (the user started the client: ``connect()``, ``start_background()``)."""
        self._delays = None

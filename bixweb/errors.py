"""The bixweb exception tree.

::

    BixwebError
    ├── ConfigError          bad option or environment variable; raised at start-up
    ├── InstallError         the install lacks files or an extra it needs; raised at start-up
    ├── FeedError            a market-data feed cannot be opened or has failed
    ├── BrokerError          the broker (Redis) failed or carried something unreadable
    ├── StoreError           alert rules, history or annotations could not be written
    ├── ProtocolError        a client message is refused; carries an error ``code``
    │                        (one of ``ERROR_CODES``), the request ``id`` and the
    │                        JSON ``path`` that failed, and becomes an ``error`` message
    └── HandshakeRefused     (client side) the server answered a WebSocket handshake with an
                             HTTP error: its ``status``, the ``code`` and ``message`` of its
                             JSON body, ``retry_after``; ``transient`` says if a retry can help
"""

from __future__ import annotations

from typing import Final

ERROR_CODES: Final = frozenset(
    {
        "invalid_json",
        "invalid_message",
        "unknown_type",
        "unknown_symbol",
        "unknown_channel",
        "too_many_subscriptions",
        "rate_limited",
        "binary_not_supported",
        "internal_error",
        "too_many_rules",
        "too_many_annotations",
        "unknown_rule",
        "unknown_annotation",
        "storage_failed",
        "unavailable",
    }
)


class BixwebError(Exception):
    """Base class of every error bixweb raises on purpose."""


class ConfigError(BixwebError):
    """An option or ``BIXWEB_*`` variable has a value bixweb cannot use."""


class InstallError(BixwebError):
    """The installed bixweb lacks files it serves (templates, static files, schemas, htmx) or the
    extra a chosen option needs (``bixweb[redis]``); the message says which and how to mend it."""


class FeedError(BixwebError):
    """A market-data feed cannot be opened or has stopped."""


class BrokerError(BixwebError):
    """The broker between the feed process and the web processes failed or sent something unreadable."""


class StoreError(BixwebError):
    """Alert rules, history or annotations could not be written (after a clean start-up)."""


class ProtocolError(BixwebError):
    """A client message that the server refuses with an ``error`` message."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        request_id: str | int | None = None,
        path: str | None = None,
    ) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.path = path


TRANSIENT_STATUSES: Final = frozenset({408, 429})
"""4xx answers to a handshake that may change by themselves; every 5xx may too."""


class HandshakeRefused(BixwebError):
    """The server answered a WebSocket handshake with an HTTP error instead of ``101``.

    ``status`` is the HTTP status; ``code`` and ``message`` come from the
    server's JSON body (``{"code": "unknown_symbol", "message": …}``); ``code``
    is ``None`` when the body is not such JSON (a proxy's error page), and
    ``message`` is then the status's reason phrase. ``retry_after`` is the
    answer's ``Retry-After`` in seconds, if it had one.
    """

    def __init__(self, status: int, code: str | None, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code or '-'}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[type[HandshakeRefused], tuple[int, str | None, str], dict[str, float | None]]:
        # keyword-only retry_after: pickle (multiprocessing) and copy would call __init__ without it
        return type(self), (self.status, self.code, self.message), {"retry_after": self.retry_after}

    @property
    def transient(self) -> bool:
        """Whether the same handshake may succeed later (429 ``too_many_connections``, 503
        ``server_full``, any 5xx): a bad token, an unknown symbol or a forbidden origin will not."""
        return self.status in TRANSIENT_STATUSES or self.status >= 500

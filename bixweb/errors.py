"""The bixweb exception tree.

::

    BixwebError
    ├── ConfigError          bad option or environment variable; raised at start-up
    ├── InstallError         the install lacks files or an extra it needs; raised at start-up
    ├── FeedError            a market-data feed cannot be opened or has failed
    ├── BrokerError          the broker (Redis) failed or carried something unreadable
    ├── StoreError           alert rules, history or annotations could not be written
    └── ProtocolError        a client message is refused; carries an error ``code``
                             (one of ``ERROR_CODES``), the request ``id`` and the
                             JSON ``path`` that failed, and becomes an ``error`` message
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

"""The bot client library for ``GET /ws``: see :class:`WebSocketClient`.

It uses aiohttp's client only and never imports ``aiohttp.web``.
"""

from __future__ import annotations

from bixweb.client.streams import (
    MarketView,
    backoff_delays,
    error_from_message,
    message_stream,
    subscription_requests,
    unwrap,
)
from bixweb.client.websocket import WebSocketClient

__all__ = [
    "MarketView",
    "WebSocketClient",
    "backoff_delays",
    "error_from_message",
    "message_stream",
    "subscription_requests",
    "unwrap",
]

"""The bot client library for ``GET /ws``: see :class:`WebSocketClient`.

It uses aiohttp's client only and never imports ``aiohttp.web``.
"""

from __future__ import annotations

from bixweb.client.bridge import Reply
from bixweb.client.reconnect import Backoff
from bixweb.client.streams import (
    backoff_delays,
    error_from_message,
    message_stream,
    resume_requests,
    subscription_requests,
    unwrap,
)
from bixweb.client.view import MarketView, Received, Resync, book_verified
from bixweb.client.websocket import WebSocketClient
from bixweb.errors import BixwebError, HandshakeRefused, ProtocolError

__all__ = [
    "Backoff",
    "BixwebError",
    "HandshakeRefused",
    "MarketView",
    "ProtocolError",
    "Received",
    "Reply",
    "Resync",
    "WebSocketClient",
    "backoff_delays",
    "book_verified",
    "error_from_message",
    "message_stream",
    "resume_requests",
    "subscription_requests",
    "unwrap",
]

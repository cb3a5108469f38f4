"""Why a server refused a bot's handshake: its HTTP answer read into a :class:`HandshakeRefused`.

aiohttp's ``ws_connect`` turns every answer but ``101`` into a
``WSServerHandshakeError`` and closes the response unread, so the server's
JSON body (``{"code": "unknown_symbol", "message": …}``) is lost. The client's
session therefore carries :func:`read_refusal`, a client middleware that sees
the response first: on an HTTP error it reads at most :data:`MAX_BODY_BYTES`
of the body and raises :class:`HandshakeRefused` out of ``ws_connect``
instead. The reading of that answer is :func:`refusal`, a plain function.
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp
import orjson

from bixweb.errors import HandshakeRefused

MAX_BODY_BYTES = 4096
"""The most of a refusal's body the client reads: bixweb's are under 200 bytes, a proxy's page may be any size."""
MAX_CODE_CHARS = 64
MAX_MESSAGE_CHARS = 500


def retry_after(value: str | None) -> float | None:
    """Seconds of a ``Retry-After`` header (RFC 9110 delay-seconds); ``None`` if absent or a date."""
    if value is None:
        return None
    value = value.strip()
    if not value.isascii() or not value.isdigit() or len(value) > 9:
        return None
    return float(value)


def printable(text: str) -> str:
    """``text`` without control characters: what a server or proxy sends must not forge log lines."""
    return text if text.isprintable() else "".join(c if c.isprintable() else " " for c in text)


def refusal(status: int, reason: str | None, headers: Mapping[str, str], body: bytes) -> HandshakeRefused:
    """The error for an HTTP answer ``status`` to a handshake, from its headers and (the start of) its body."""
    code: str | None = None
    message = printable(reason or f"HTTP {status}")[:MAX_MESSAGE_CHARS]
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        if isinstance(data.get("code"), str):
            code = data["code"][:MAX_CODE_CHARS]
        if isinstance(data.get("message"), str):
            message = printable(data["message"])[:MAX_MESSAGE_CHARS]
    return HandshakeRefused(status, code, message, retry_after=retry_after(headers.get("Retry-After")))


def backoff_with_hint(delay: float, exc: BaseException, maximum: float) -> float:
    """The wait before the next attempt: the backoff's ``delay``, or longer if the server asked
    for it with ``Retry-After`` (but never beyond ``maximum``, the client's longest wait)."""
    if isinstance(exc, HandshakeRefused) and exc.retry_after is not None:
        return max(delay, min(exc.retry_after, maximum))
    return delay


async def _read_at_most(content: aiohttp.StreamReader, limit: int) -> bytes:
    """Up to ``limit`` bytes of a body; what arrived if the connection fails meanwhile."""
    chunks: list[bytes] = []
    size = 0
    try:
        while size < limit:
            chunk = await content.read(limit - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except (aiohttp.ClientError, OSError):
        pass  # a refusal cut short still says its status
    return b"".join(chunks)


async def read_refusal(request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType) -> aiohttp.ClientResponse:
    """Client middleware for the client's own session: an HTTP error answer becomes :class:`HandshakeRefused`.

    Answers below 400 pass: ``101``, and the redirects aiohttp follows (each
    hop comes through here); ``ws_connect`` judges them as usual.
    """
    response = await handler(request)
    if response.status < 400:
        return response
    try:
        body = await _read_at_most(response.content, MAX_BODY_BYTES)
    finally:
        response.close()
    raise refusal(response.status, response.reason, response.headers, body)

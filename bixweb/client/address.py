"""Where a client connects: ``host``/``port``/``url`` to checked ``ws://`` addresses, as values.

The old client took ``WebSocketClient(host='localhost', port=8765)``; today's
callers also pass a URL, positionally or as ``url=``. Whatever comes in is
checked here, once, at construction: a typo raises :class:`ValueError` with
one clear line instead of a reconnect loop that retries it forever.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, quote_plus, urlsplit

from yarl import URL

from bixweb.model import canonical_symbol

DEFAULT_URL: Final = "ws://127.0.0.1:8080/ws"
"""bixweb's own default address (``bixweb`` listens on 8080 unless told otherwise)."""
URL_VARIABLE: Final = "BIXWEB_URL"
"""The environment variable a client without an address reads (point old code at a server)."""
SCHEMES: Final = ("ws", "wss")
# Host names: dot-separated labels that neither start nor end with "-" (and "_", which
# resolvers accept in practice); whitespace, slashes and the like never reach a resolver.
_LABEL = r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)"
_NAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*\.?$")
HOST_RULE: Final = "host must be a host name or an IP address (like 'localhost' or '127.0.0.1'), not {!r}"


@dataclass(frozen=True, slots=True)
class Address:
    """The first connection's URL (with the initial subscription) and where a resume goes."""

    url: str
    resume_url: str
    """No initial subscription (``?channels=none``), so no ``initial_data``: a resume asks for what it missed."""
    secrets: tuple[str, ...] = ()
    """The URL's password and ``token``: never written to a log (:func:`scrub`)."""


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with every secret replaced by ``***`` (a URL or an error message quoting one)."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def names(value: str | Iterable[str]) -> list[str]:
    """A list or a comma-separated string of names, blanks left out."""
    items = value.split(",") if isinstance(value, str) else value
    return [item.strip() for item in items if item.strip()]


def symbols(value: str | Iterable[str]) -> list[str]:
    """Symbols in any case, named as the server names them (upper case)."""
    return [canonical_symbol(name) for name in names(value)]


def _port(port: object) -> int:
    if isinstance(port, bool) or not isinstance(port, int | str):
        raise ValueError(f"port must be a number from 1 to 65535, not {port!r}")
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"port must be a number from 1 to 65535, not {port!r}") from None
    if not 1 <= number <= 65535:
        raise ValueError(f"port must be a number from 1 to 65535, not {port!r}")
    return number


def _host(host: object) -> str:
    """``host`` if it can name a server: an IPv4 or IPv6 address (``[::1]``, ``fe80::1%eth0``) or a name."""
    if not isinstance(host, str):
        raise ValueError(HOST_RULE.format(host))
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in bare:
        try:
            ipaddress.IPv6Address(bare)
        except ValueError:
            raise ValueError(HOST_RULE.format(host)) from None
        return bare
    try:
        ascii_name = host.encode("idna").decode("ascii") if not host.isascii() else host  # "bücher.de"
    except UnicodeError:
        raise ValueError(HOST_RULE.format(host)) from None
    if not _NAME.match(ascii_name) or (all(p.isdigit() for p in host.rstrip(".").split(".")) and not _ipv4(host)):
        raise ValueError(HOST_RULE.format(host))  # "1.2.3.4.5", "999.1.1.1": numbers, but no address
    return host


def _ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _url(url: str) -> URL:
    try:
        address = URL(url)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not a WebSocket URL: {url!r} ({exc})") from None
    if address.scheme not in SCHEMES:
        raise ValueError(f"not a WebSocket URL: {url!r} (use ws://host:port/ws or wss://…)")
    if not address.host:
        raise ValueError(f"not a WebSocket URL: {url!r} (it names no host)")
    _host(address.host)
    try:
        port = address.port  # yarl checks the port only when asked
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError(f"not a WebSocket URL: {url!r} (bad port: use 1 to 65535)")
    if not urlsplit(url).path:  # "ws://host:8765", as the old client's server was addressed: bixweb's is /ws
        address = address.with_path("/ws", keep_query=True)
    return address


def address(
    host: str | None = None,
    port: int | str | None = None,
    url: str | None = None,
    *,
    symbols_query: str | Iterable[str] | None = None,
    channels_query: str | Iterable[str] | None = None,
) -> Address:
    """Check and build the client's addresses.

    ``host`` may be a whole URL (``"ws://h:8080/ws"``), as ``url`` may; with
    neither, ``host`` (default ``127.0.0.1``) and ``port`` (default 8080) make
    ``ws://host:port/ws``; with nothing at all, ``$BIXWEB_URL`` or
    :data:`DEFAULT_URL`. ``symbols_query``/``channels_query`` become the
    ``?symbols=&channels=`` query that chooses the initial subscription.
    """
    if host is not None and "://" in host:
        if url is not None:
            raise ValueError("give the address once: a URL as host or url=, not both")
        host, url = None, host
    if url is not None:
        if host is not None or port is not None:
            raise ValueError("give either url= or host and port, not both")
        where = _url(url)
    elif host is None and port is None:
        where = _url(os.environ.get(URL_VARIABLE) or DEFAULT_URL)
    else:
        name, number = _host("127.0.0.1" if host is None else host), _port(8080 if port is None else port)
        try:
            where = URL.build(scheme="ws", host=name, port=number, path="/ws")
        except ValueError:
            raise ValueError(HOST_RULE.format(host)) from None
    if symbols_query is not None:
        where = where.update_query(symbols=",".join(symbols(symbols_query)))
    if channels_query is not None:
        where = where.update_query(channels=",".join(names(channels_query)))
    rest = {k: v for k, v in where.query.items() if k not in ("symbols", "channels")}
    raw_tokens = [part[len("token=") :] for part in where.raw_query_string.split("&") if part.startswith("token=")]
    found = {where.password, where.raw_password, *where.query.getall("token", ()), *raw_tokens}
    spelled = {form for secret in found if secret for form in (secret, quote(secret, safe=""), quote_plus(secret))}
    secrets = tuple(sorted(spelled, key=len, reverse=True))  # longest first: no partial scrub
    return Address(str(where), str(where.with_query({**rest, "channels": "none"})), secrets)

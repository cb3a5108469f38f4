"""Who is asking, and may they: forwarded addresses, origins, bearer tokens.

Values in, values out: the web layer hands over headers and addresses and
acts on the answer. Nothing here reads a clock or a socket.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from bixweb.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(texts: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(text, strict=False) for text in texts)


def within(address: str, trusted: tuple[Network, ...]) -> bool:
    if not trusted:  # asked of every connection: no address to parse when nothing is trusted
        return False
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return False
    return any(ip in network for network in trusted)


@dataclass(frozen=True, slots=True)
class Forwarded:
    """Where a request really comes from, once trusted proxies are accounted for."""

    client: str
    scheme: str | None
    """``https`` or ``http`` if a trusted proxy said so; ``None`` otherwise."""


def forwarded(peer: str | None, headers: Mapping[str, str], trusted: tuple[Network, ...]) -> Forwarded:
    """The client address and scheme of a request that reached us from ``peer``.

    ``X-Forwarded-For`` is read right to left, each hop added by the proxy
    that received it: the first address that is not a trusted proxy is the
    client. Anything further left was written by the client itself and is
    ignored. A peer that is not a trusted proxy is the client, whatever its
    headers say.
    """
    client = peer or "-"
    if not trusted or not within(client, trusted):
        return Forwarded(client, None)
    hops = [hop.strip() for hop in headers.get("X-Forwarded-For", "").split(",") if hop.strip()]
    for hop in reversed(hops):
        client = hop
        if not within(hop, trusted):
            break
    proto = headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return Forwarded(client, proto if proto in ("http", "https") else None)


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


def local_host(host: str, allowed: tuple[str, ...] = ()) -> bool:
    """Is ``host`` (a ``Host`` header) a name only this machine answers to: an IP address,
    ``localhost``, or the host of an allowed origin? A DNS name that happens to point
    at 127.0.0.1 is not: that is how DNS rebinding reaches a local server."""
    try:
        name = urlsplit("//" + host).hostname or ""
    except ValueError:  # "[::1", a bracket without its pair: no name at all
        return False
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    return any(urlsplit(origin).hostname == name for origin in allowed)


def origin_allowed(origin: str | None, host: str, allowed: tuple[str, ...]) -> bool:
    """May a page from ``origin`` open a socket on ``host``?

    No ``Origin`` header means no browser, so nothing to protect. With an
    allowlist the origin must be on it; without one its host and port must be
    the ``Host`` the socket was asked of (a page of this server).
    """
    if origin is None:
        return True
    origin = origin.strip().rstrip("/").lower()
    if allowed:
        return origin in allowed
    try:
        return urlsplit(origin).netloc == host.lower()
    except ValueError:  # not a URL at all
        return False


def presented_token(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """The bearer token of a request: ``Authorization: Bearer …``, else ``?token=…``."""
    authorization = headers.get("Authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return query.get("token") or None


class Tokens:
    """The bearer tokens the bot socket accepts, compared in constant time."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = tuple(t.encode() for t in tokens)

    def __bool__(self) -> bool:
        return bool(self._tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def accepts(self, presented: str | None) -> bool:
        """Every configured token is compared, so the time taken tells nothing.

        A header that is not UTF-8 reaches us with surrogates in it; they are
        encoded as they are (and match no configured token) instead of failing.
        """
        candidate = (presented or "").encode("utf-8", "surrogatepass")
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(candidate, token)
        return matched and presented is not None

    @classmethod
    def load(cls, tokens: Iterable[str], token_file: str) -> Tokens:
        """The tokens given directly plus those in ``token_file`` (one per line, ``#`` comments)."""
        found = list(tokens)
        if token_file:
            try:
                text = Path(token_file).read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"--token-file: cannot read {token_file}: {exc}") from None
            lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
            from_file = [line for line in lines if line]
            if not from_file:
                raise ConfigError(f"--token-file: {token_file} holds no token")
            found += from_file
        short = [t for t in found if len(t) < MIN_TOKEN_LENGTH]
        if short:
            raise ConfigError(f"bot tokens must be at least {MIN_TOKEN_LENGTH} characters ({len(short)} too short)")
        return cls(found)


MIN_TOKEN_LENGTH = 16

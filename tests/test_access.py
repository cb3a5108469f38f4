"""Forwarded client addresses, origins and bearer tokens, as values."""

from __future__ import annotations

from pathlib import Path

import pytest

from bixweb.access import Tokens, forwarded, is_loopback, networks, origin_allowed, presented_token
from bixweb.errors import ConfigError

PROXY = networks(["127.0.0.1", "10.0.0.0/8"])


def test_a_peer_that_is_not_a_trusted_proxy_is_the_client_whatever_it_says() -> None:
    spoofed = {"X-Forwarded-For": "1.2.3.4", "X-Forwarded-Proto": "https"}
    assert forwarded("198.51.100.7", spoofed, PROXY) == forwarded("198.51.100.7", {}, PROXY)
    assert forwarded("198.51.100.7", spoofed, PROXY).client == "198.51.100.7"
    assert forwarded("198.51.100.7", spoofed, PROXY).scheme is None
    assert forwarded("127.0.0.1", spoofed, ()).client == "127.0.0.1"  # nothing trusted: headers ignored


def test_the_client_is_the_rightmost_address_that_is_not_a_trusted_proxy() -> None:
    headers = {"X-Forwarded-For": "6.6.6.6, 203.0.113.9, 10.1.2.3", "X-Forwarded-Proto": "https"}
    found = forwarded("127.0.0.1", headers, PROXY)
    assert found.client == "203.0.113.9"  # 6.6.6.6 was written by the client itself
    assert found.scheme == "https"


def test_a_trusted_proxy_without_headers_is_the_client_and_odd_protos_are_ignored() -> None:
    assert forwarded("127.0.0.1", {}, PROXY).client == "127.0.0.1"
    assert forwarded("127.0.0.1", {"X-Forwarded-Proto": "gopher"}, PROXY).scheme is None
    assert forwarded("127.0.0.1", {"X-Forwarded-For": "10.0.0.1, 10.0.0.2"}, PROXY).client == "10.0.0.1"
    assert forwarded(None, {}, PROXY).client == "-"


def test_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.0.0.2") and is_loopback("::1")
    assert not is_loopback("203.0.113.9") and not is_loopback("-") and not is_loopback("")


@pytest.mark.parametrize(
    ("origin", "host", "allowed", "ok"),
    [
        (None, "example.com", (), True),  # not a browser
        ("https://example.com", "example.com", (), True),
        ("https://example.com:8443", "example.com:8443", (), True),
        ("https://evil.example", "example.com", (), False),
        ("https://example.com", "example.com:8443", (), False),  # another port is another origin
        ("null", "example.com", (), False),
        ("https://app.example.com", "api.example.com", ("https://app.example.com",), True),
        ("https://APP.example.com/", "x", ("https://app.example.com",), True),
        ("https://example.com", "example.com", ("https://app.example.com",), False),
    ],
)
def test_origins(origin: str | None, host: str, allowed: tuple[str, ...], ok: bool) -> None:
    assert origin_allowed(origin, host, allowed) is ok


def test_a_token_comes_from_the_authorization_header_before_the_query() -> None:
    assert presented_token({"Authorization": "Bearer abc"}, {"token": "xyz"}) == "abc"
    assert presented_token({"Authorization": "bearer  abc "}, {}) == "abc"
    assert presented_token({"Authorization": "Basic abc"}, {"token": "xyz"}) == "xyz"
    assert presented_token({}, {}) is None
    assert presented_token({"Authorization": "Bearer "}, {"token": ""}) is None


def test_tokens_accept_exactly_the_configured_ones() -> None:
    tokens = Tokens(["a" * 20, "b" * 32])
    assert tokens.accepts("a" * 20) and tokens.accepts("b" * 32)
    assert not tokens.accepts("a" * 19) and not tokens.accepts("a" * 21)
    assert not tokens.accepts(None) and not tokens.accepts("")
    assert not Tokens([]) and not Tokens([]).accepts("")


def test_tokens_load_from_a_file_and_refuse_what_is_unusable(tmp_path: Path) -> None:
    file = tmp_path / "tokens"
    file.write_text("# bots\n" + "t" * 24 + "\n\n" + "u" * 24 + "  # desk 2\n")
    tokens = Tokens.load(["v" * 16], str(file))
    assert len(tokens) == 3 and tokens.accepts("u" * 24) and tokens.accepts("v" * 16)
    with pytest.raises(ConfigError, match="cannot read"):
        Tokens.load([], str(tmp_path / "missing"))
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(ConfigError, match="holds no token"):
        Tokens.load([], str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="at least 16"):
        Tokens.load(["short"], "")

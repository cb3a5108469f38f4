"""Where a client connects: host/port/url checked at construction (bixweb.client.address)."""

from __future__ import annotations

import pytest

from bixweb.client import WebSocketClient
from bixweb.client.address import DEFAULT_URL, address, scrub


def test_host_and_port_make_the_ws_path_as_the_old_client_did() -> None:
    assert address("localhost", 8765).url == "ws://localhost:8765/ws"
    assert WebSocketClient("127.0.0.1", 9000).url == "ws://127.0.0.1:9000/ws"
    assert WebSocketClient(host="192.168.1.100", port=9000).url == "ws://192.168.1.100:9000/ws"
    assert WebSocketClient("::1", 8080).url == "ws://[::1]:8080/ws"
    assert address("localhost").url == "ws://localhost:8080/ws"
    assert address(port=9001).url == "ws://127.0.0.1:9001/ws"
    client = WebSocketClient("127.0.0.1", 9000, False)
    assert client.auto_reconnect is False


def test_a_url_goes_positionally_or_as_url(monkeypatch: pytest.MonkeyPatch) -> None:
    assert WebSocketClient("wss://example.com/ws?token=x").resume_url == "wss://example.com/ws?token=x&channels=none"
    assert WebSocketClient(url="ws://h:1/ws").url == "ws://h:1/ws"
    monkeypatch.delenv("BIXWEB_URL", raising=False)
    assert WebSocketClient().url == DEFAULT_URL
    monkeypatch.setenv("BIXWEB_URL", "ws://10.0.0.2:8765/ws")
    assert WebSocketClient(symbols="btcusdt").url == "ws://10.0.0.2:8765/ws?symbols=BTCUSDT"
    assert WebSocketClient("127.0.0.1", 1).url == "ws://127.0.0.1:1/ws"  # given wins over the variable


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"host": "bad host"}, "host must be"),
        ({"host": ""}, "host must be"),
        ({"host": "a/b"}, "host must be"),
        ({"host": "a..b"}, "host must be"),
        ({"host": "-bad-"}, "host must be"),
        ({"host": "1.2.3.4.5"}, "host must be"),
        ({"host": "999.1.1.1"}, "host must be"),
        ({"host": "::::"}, "host must be"),
        ({"host": ":"}, "host must be"),
        ({"url": "ws://h:0/ws"}, "bad port"),
        ({"host": "localhost", "port": 0}, "port must be"),
        ({"host": "localhost", "port": 70000}, "port must be"),
        ({"host": "localhost", "port": "abc"}, "port must be"),
        ({"host": "localhost", "port": True}, "port must be"),
        ({"url": "http://example.com/ws"}, "not a WebSocket URL"),
        ({"url": "ws:///ws"}, "not a WebSocket URL"),
        ({"url": "ws://h:99999/ws"}, "not a WebSocket URL"),
        ({"url": "localhost"}, "not a WebSocket URL"),
        ({"url": "ws://h/ws", "host": "h"}, "not both"),
        ({"host": "ws://h/ws", "url": "ws://h/ws"}, "once"),
    ],
)
def test_a_bad_address_raises_at_construction(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError, match=words) as raised:
        WebSocketClient(**kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(raised.value)


def test_a_bad_variable_raises_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIXWEB_URL", "localhost:8080")
    with pytest.raises(ValueError, match="not a WebSocket URL"):
        WebSocketClient()


def test_names_and_addresses_that_can_work_are_taken() -> None:
    for host, url in [
        ("my_host", "ws://my_host:8080/ws"),
        ("fe80::1%eth0", "ws://[fe80::1%eth0]:8080/ws"),
        ("[::1]", "ws://[::1]:8080/ws"),
        ("example.com.", "ws://example.com.:8080/ws"),
        ("10.0.0.1", "ws://10.0.0.1:8080/ws"),
        ("bücher.de", "ws://xn--bcher-kva.de:8080/ws"),
    ]:
        assert address(host, 8080).url == url
    # the old client's server had no path: ws://host:8765 means bixweb's socket, /ws
    assert address(url="ws://h:8765").url == "ws://h:8765/ws"
    assert address(url="ws://h:8765?token=a%20b").url == "ws://h:8765/ws?token=a%20b"
    assert address(url="ws://h:8765/").url == "ws://h:8765/"  # a path given is kept


def test_passwords_and_tokens_never_reach_a_log_line() -> None:
    where = address(url="ws://bot:s3cret@127.0.0.1:1/ws?token=t0p%20secret&symbols=BTCUSDT")
    assert set(where.secrets) >= {"s3cret", "t0p secret", "t0p%20secret"}
    line = f"cannot connect to {where.url} (ClientError: url={where.resume_url})"
    assert "s3cret" not in scrub(line, where.secrets) and "t0p" not in scrub(line, where.secrets)
    assert address("localhost", 1).secrets == ()

"""Settings from flags over ``BIXWEB_*`` variables over defaults."""

from __future__ import annotations

import pytest

from bixweb.config import Settings, settings_from
from bixweb.errors import ConfigError


def test_defaults_without_flags_or_variables() -> None:
    settings = settings_from({}, {})
    assert settings == Settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert len(settings.symbols) >= 12 and settings.heartbeat <= 30


def test_a_variable_sets_an_option_and_a_flag_wins_over_it() -> None:
    env = {"BIXWEB_PORT": "9000", "BIXWEB_SYMBOLS": "btcusdt, ethusdt", "BIXWEB_STRICT": "yes"}
    settings = settings_from({}, env)
    assert (settings.port, settings.symbols, settings.strict) == (9000, ("BTCUSDT", "ETHUSDT"), True)
    assert settings_from({"port": "9100"}, env).port == 9100


@pytest.mark.parametrize(
    ("flags", "env", "source"),
    [
        ({"port": "70000"}, {}, "--port"),
        ({}, {"BIXWEB_TICK_RATE": "-1"}, "BIXWEB_TICK_RATE"),
        ({"log_level": "loud"}, {}, "--log-level"),
        ({}, {"BIXWEB_SYMBOLS": " , "}, "BIXWEB_SYMBOLS"),
        ({}, {"BIXWEB_STRICT": "maybe"}, "BIXWEB_STRICT"),
        ({"trusted_proxies": "10.0.0.0/8,nginx"}, {}, "--trusted-proxies"),
        ({"allowed_origins": "example.com"}, {}, "--allowed-origins"),
        ({}, {"BIXWEB_ALLOWED_ORIGINS": "https://example.com/app"}, "BIXWEB_ALLOWED_ORIGINS"),
        ({"max_connections": "-1"}, {}, "--max-connections"),
        ({"log_format": "xml"}, {}, "--log-format"),
    ],
)
def test_bad_values_name_their_source(flags: dict[str, str], env: dict[str, str], source: str) -> None:
    with pytest.raises(ConfigError, match=source):
        settings_from(flags, env)


def test_access_and_limit_options() -> None:
    settings = settings_from(
        {
            "trusted_proxies": "127.0.0.1, 10.0.0.0/8",
            "allowed_origins": "https://App.example.com/",
            "max_connections_per_client": "0",
            "open_bots": "true",
        },
        {"BIXWEB_TOKENS": "aaaaaaaaaaaaaaaaaaaa,bbbbbbbbbbbbbbbbbbbb", "BIXWEB_LOG_FORMAT": "JSON"},
    )
    assert settings.trusted_proxies == ("127.0.0.1", "10.0.0.0/8")
    assert settings.allowed_origins == ("https://app.example.com",)
    assert settings.tokens == ("a" * 20, "b" * 20)
    assert (settings.max_connections_per_client, settings.open_bots, settings.log_format) == (0, True, "json")
    defaults = Settings()
    assert (defaults.trusted_proxies, defaults.tokens, defaults.open_bots) == ((), (), False)
    assert defaults.max_connections > defaults.max_connections_per_client > 0
    assert not defaults.ui_compression and not defaults.bot_compression

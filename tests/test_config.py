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
    ],
)
def test_bad_values_name_their_source(flags: dict[str, str], env: dict[str, str], source: str) -> None:
    with pytest.raises(ConfigError, match=source):
        settings_from(flags, env)

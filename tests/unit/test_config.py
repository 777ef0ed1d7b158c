"""Which Realtime endpoint the environment chooses, rule by rule (config.py's docstring lists the order)."""

from __future__ import annotations

import logging

import pytest

from voicebridge.config import OPENAI_BASE_URL, Settings, endpoint_from_env

pytestmark = pytest.mark.unit
KEY = "sk-" + "unit"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, ("", "")),
        ({"OPENAI_API_KEY": KEY}, (OPENAI_BASE_URL, "OPENAI_API_KEY")),
        ({"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": "http://gw.test/v1/"}, ("http://gw.test/v1", "OPENAI_BASE_URL")),
        (
            {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": "http://gw.test/v1", "VOICEBRIDGE_BASE_URL": "http://vb/v1"},
            ("http://vb/v1", "VOICEBRIDGE_BASE_URL"),
        ),
        ({"VOICEBRIDGE_BASE_URL": "http://127.0.0.1:8765/v1"}, ("http://127.0.0.1:8765/v1", "VOICEBRIDGE_BASE_URL")),
        ({"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": "  "}, (OPENAI_BASE_URL, "OPENAI_API_KEY")),
    ],
)
def test_endpoint_rules(env: dict[str, str], expected: tuple[str, str]) -> None:
    assert endpoint_from_env(env) == expected


def test_a_base_url_without_a_key_stays_offline_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert endpoint_from_env({"OPENAI_BASE_URL": "http://gw.test/v1"}) == ("", "")
    assert "OPENAI_BASE_URL is set but OPENAI_API_KEY is not" in caplog.text


def test_settings_carry_the_source_and_hide_the_key() -> None:
    settings = Settings.from_mapping({"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": "http://gw.test/v1"})
    assert (settings.base_url, settings.base_url_source) == ("http://gw.test/v1", "OPENAI_BASE_URL")
    assert KEY not in repr(settings)
    assert Settings.from_mapping({}, base_url="http://x/v1").base_url_source == "command line"

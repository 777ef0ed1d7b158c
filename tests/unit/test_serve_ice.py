"""`voicebridge serve` keeps ICE on 127.0.0.1 only when both the backend and the browsers are on this machine."""

from __future__ import annotations

import pytest

from voicebridge.backend import keep_ice_on_loopback
from voicebridge.signaling.security import is_loopback_host

pytestmark = pytest.mark.unit
LOCAL_EMULATOR = "http://127.0.0.1:8765/v1"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"])
def test_loopback_serve_with_a_local_backend_stays_on_loopback(host: str) -> None:
    assert keep_ice_on_loopback(LOCAL_EMULATOR, not is_loopback_host(host))


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "voicebridge.example"])
def test_serving_beyond_loopback_gathers_real_candidates(host: str) -> None:
    # Browsers on other machines must reach this one, so the embedded emulator's legs use real addresses too.
    assert not keep_ice_on_loopback(LOCAL_EMULATOR, not is_loopback_host(host))


def test_a_remote_backend_never_restricts() -> None:
    assert not keep_ice_on_loopback("https://api.openai.com/v1", browsers_off_loopback=False)

"""The Realtime legs' HTTP clients (realtime/http.py): one TLS context per process, built once, while each leg keeps
its own base URL, key and client (closing one leg's leaves the others working)."""

from __future__ import annotations

import ssl

import pytest

from voicebridge.realtime.api import RealtimeApi
from voicebridge.realtime.http import tls_context

pytestmark = pytest.mark.unit


def _context(api: RealtimeApi) -> ssl.SSLContext:
    # httpx2's transport -> httpcore2's pool: where the context the client connects with is kept.
    context: ssl.SSLContext = api._client._client._transport._pool._ssl_context  # type: ignore[attr-defined]
    return context


async def test_legs_share_one_tls_context_and_keep_their_own_url_key_and_client() -> None:
    first = RealtimeApi("http://127.0.0.1:9/v1", "sk-first")
    second = RealtimeApi("https://127.0.0.2:9/v1/", "sk-second")
    assert _context(first) is _context(second) is tls_context()
    assert tls_context().verify_mode == ssl.CERT_REQUIRED and tls_context().check_hostname  # still verifies
    assert (first.base_url, first._client.api_key) == ("http://127.0.0.1:9/v1", "sk-first")
    assert (second.base_url, second._client.api_key) == ("https://127.0.0.2:9/v1", "sk-second")
    await first.close()
    assert first._client.is_closed() and not second._client.is_closed()
    await second.close()

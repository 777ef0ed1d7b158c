"""The emulator's HTTP surface: SDK calls, ephemeral keys, every error case in the API's shape, CORS."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest
from openai import AsyncOpenAI

from tests.integration.conftest import Client
from voicebridge.emulator.server import MAX_BODY_BYTES, Emulator

pytestmark = pytest.mark.integration


def _assert_api_error(body: dict[str, Any], code: str | None, param: str | None = None) -> None:
    err = body["error"]
    assert set(err) == {"message", "type", "code", "param"}
    assert err["message"] and err["type"]
    assert err["code"] == code
    if param is not None:
        assert err["param"] == param


async def _post(url: str, **kwargs: Any) -> tuple[int, dict[str, str], Any]:
    async with aiohttp.ClientSession() as http, http.post(url, **kwargs) as r:
        body: Any = await r.json() if r.content_type == "application/json" else await r.text()
        return r.status, dict(r.headers), body


async def test_ephemeral_key_works_once_for_a_raw_sdp_call(emulator: Emulator, client: Client) -> None:
    sdk = AsyncOpenAI(base_url=emulator.base_url, api_key="sk-test")
    try:
        secret = await sdk.realtime.client_secrets.create(
            expires_after={"anchor": "created_at", "seconds": 60},
            session={"type": "realtime", "instructions": "Be brief."},
        )
    finally:
        await sdk.close()
    assert secret.value.startswith("ek_") and secret.expires_at > time.time()
    offer = await client.offer()
    headers = {
        "Authorization": f"Bearer {secret.value}",
        "Content-Type": "application/sdp",
        "Origin": "http://localhost:8080",
    }
    status, h, answer = await _post(f"{emulator.base_url}/realtime/calls", data=offer, headers=headers)
    assert status == 201 and h["Location"].startswith("/v1/realtime/calls/rtc_")
    assert h["Access-Control-Allow-Origin"] == "http://localhost:8080"
    await client.answer(answer)
    created = await client.wait_for("session.created")
    assert created["session"]["instructions"] == "Be brief."
    status, _, body = await _post(f"{emulator.base_url}/realtime/calls", data=offer, headers=headers)
    assert status == 401
    _assert_api_error(body, "invalid_api_key")


async def test_expired_ephemeral_key_is_refused(emulator: Emulator) -> None:
    status, _, body = await _post(
        f"{emulator.base_url}/realtime/client_secrets", json={}, headers={"Authorization": "Bearer sk-x"}
    )
    assert status == 200
    emulator.keys.clock = lambda: time.time() + 600 + 1  # its default lifetime has passed
    status, _, err = await _post(
        f"{emulator.base_url}/realtime/calls",
        data="v=0\r\nm=audio 9 x\r\n",
        headers={"Authorization": f"Bearer {body['value']}", "Content-Type": "application/sdp"},
    )
    assert status == 401
    _assert_api_error(err, "invalid_api_key")


async def test_cors_preflight_answers_the_headers_asked_for(emulator: Emulator) -> None:
    asked = "authorization,content-type,x-stainless-os,openai-project"
    async with (
        aiohttp.ClientSession() as http,
        http.options(
            f"{emulator.base_url}/realtime/calls",
            headers={
                "Origin": "http://example.test",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": asked,
            },
        ) as r,
    ):
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Headers"] == asked
        assert "POST" in r.headers["Access-Control-Allow-Methods"]
        assert r.headers["Access-Control-Allow-Origin"] == "http://example.test"


SESSION_JSON = '{"type": "realtime"}'


def _form(sdp: str, session: str = SESSION_JSON, extra: dict[str, str] | None = None) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("sdp", sdp, content_type="application/sdp")
    form.add_field("session", session, content_type="application/json")
    for k, v in (extra or {}).items():
        form.add_field(k, v)
    return form


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, None),
        ({"Authorization": "Bearer nope"}, "invalid_api_key"),
        ({"Authorization": "Basic sk-abc"}, "invalid_api_key"),
        ({"Authorization": "Bearer ek_unknown"}, "invalid_api_key"),
    ],
)
async def test_missing_or_bad_key_is_401(
    emulator: Emulator, headers: dict[str, str], code: str | None
) -> None:
    status, _, body = await _post(f"{emulator.base_url}/realtime/calls", data=_form("v=0"), headers=headers)
    assert status == 401
    _assert_api_error(body, code)


async def test_sdp_and_session_errors_are_400(emulator: Emulator, client: Client) -> None:
    url = f"{emulator.base_url}/realtime/calls"
    key = {"Authorization": "Bearer sk-test"}
    offer = await client.offer()
    cases: list[tuple[aiohttp.FormData, str, str | None]] = [
        (_form("hello"), "invalid_offer", "sdp"),
        (_form(offer.replace("m=audio", "m=video")), "invalid_offer", "sdp"),
        (_form(offer, '{"type": "realtime", "voice": "marin"}'), "unknown_parameter", "session.voice"),
        (
            _form(
                offer,
                '{"type": "realtime", "audio": {"input": {"turn_detection": {"type": "server_vad", '
                '"silence_ms": 3}}}}',
            ),
            "unknown_parameter",
            "session.audio.input.turn_detection.silence_ms",
        ),
        (_form(offer, '{"type": "realtime", "instructions": 5}'), "invalid_value", "session.instructions"),
        (_form(offer, "{not json"), "invalid_value", "session"),
        (_form(offer, extra={"model": "gpt-realtime"}), "unknown_parameter", "model"),
    ]
    for form, code, param in cases:
        status, _, body = await _post(url, data=form, headers=key)
        assert status == 400, (code, param, body)
        _assert_api_error(body, code, param)
    assert not emulator.sessions  # no half-made session is left behind by a refused offer


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/realtime?model=gpt-realtime", {}),
        ("/realtime/sessions", {}),
        ("/realtime/calls", {"OpenAI-Beta": "realtime=v1"}),
    ],
)
async def test_beta_shaped_requests_are_refused(
    emulator: Emulator, path: str, headers: dict[str, str]
) -> None:
    status, _, body = await _post(
        f"{emulator.base_url}{path}", json={}, headers={"Authorization": "Bearer sk-test", **headers}
    )
    assert status == 400
    _assert_api_error(body, "beta_api_shape_disabled")


async def test_oversized_body_is_413(emulator: Emulator) -> None:
    big = "v=0\r\n" + "a=x\r\n" * (MAX_BODY_BYTES // 4)
    status, _, body = await _post(
        f"{emulator.base_url}/realtime/calls",
        data=big,
        headers={"Authorization": "Bearer sk-test", "Content-Type": "application/sdp"},
    )
    assert status == 413
    _assert_api_error(body, "request_too_large")


async def test_unknown_call_id_is_404(emulator: Emulator) -> None:
    status, _, body = await _post(
        f"{emulator.base_url}/realtime/calls/rtc_nothere/hangup", headers={"Authorization": "Bearer sk-test"}
    )
    assert status == 404
    _assert_api_error(body, "call_id_not_found", "call_id")


async def test_client_secret_validation(emulator: Emulator) -> None:
    url = f"{emulator.base_url}/realtime/client_secrets"
    key = {"Authorization": "Bearer sk-test"}
    status, _, body = await _post(
        url, json={"session": {"type": "realtime", "modalities": ["audio"]}}, headers=key
    )
    assert status == 400
    _assert_api_error(body, "unknown_parameter", "session.modalities")
    status, _, body = await _post(
        url, json={"expires_after": {"anchor": "created_at", "seconds": 1}}, headers=key
    )
    assert status == 400
    _assert_api_error(body, "invalid_value", "expires_after.seconds")
    status, _, body = await _post(url, json={}, headers={"Authorization": "Bearer ek_x"})
    assert status == 401

"""Property-based bad input over real HTTP (hypothesis): the signaling API's bodies, hostile shapes (deep
nesting, huge numbers, header bytes that are not UTF-8) on every endpoint of both servers (enumerated from
their routers, so a new endpoint is covered without touching this file), SDP offers to the emulator and
data-channel messages to an emulator session. Every answer is a clear 4xx in the right JSON shape (never a
5xx, never a dropped connection) and the server or session keeps serving afterwards. Example counts are
modest so the file runs in well under a minute."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiortc import RTCConfiguration, RTCPeerConnection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.test_dns_rebinding import routes
from tests.integration.test_signaling_api import FakeCall
from voicebridge.config import Settings
from voicebridge.emulator import events as ev
from voicebridge.emulator.handlers import MAX_EVENT_BYTES, handle
from voicebridge.emulator.server import MAX_BODY_BYTES, Emulator
from voicebridge.emulator.session import Session
from voicebridge.emulator.session_config import default_session
from voicebridge.observability.capacity import CapacityLimits
from voicebridge.signaling.app import create_app
from voicebridge.signaling.security import RateLimit, SecurityPolicy

pytestmark = pytest.mark.integration
FAST = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
bodies = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(str.encode),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["scenario", "role", "ttl_s", "x", ""]), json_values, max_size=3).map(
        lambda v: json.dumps(v).encode()
    ),
    st.integers(3000, 6000).map(lambda n: b'{"scenario": "' + b"x" * n + b'"}'),  # over the 2 KiB limit below
)
content_types = st.sampled_from(["application/json", "", "text/plain", "application/x-www-form-urlencoded"])
call_ids = st.one_of(st.just("LIVE"), st.text(min_size=1, max_size=60))


def assert_api_error(status: int, text: str) -> dict[str, Any]:
    assert 400 <= status < 500, (status, text)
    body = json.loads(text)
    assert set(body) == {"error"} and isinstance(body["error"]["message"], str) and body["error"]["message"]
    return dict(body)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    FakeCall.made = []
    settings_ = Settings(base_url="http://127.0.0.1:1/v1", api_key="sk-test", artifacts_dir=tmp_path)
    roomy = SecurityPolicy(call_rate=RateLimit(10_000, 1000), join_rate=RateLimit(10_000, 1000))
    # No capacity refusals: hypothesis stops the loop between examples, which its lag meter would read as lag.
    off = CapacityLimits(per_core=0, max_lag_ms=0)
    app = await create_app(
        settings_, call_factory=FakeCall, max_live_calls=5, max_body_bytes=2048, security=roomy, capacity=off
    )
    async with TestClient(TestServer(app)) as client:
        resp = await client.post("/api/calls", json={"scenario": "late_order"})
        assert resp.status == 201
        yield client


@FAST
@given(
    route=st.sampled_from(["create", "tokens", "hangup", "join"]),
    call_id=call_ids,
    body=bodies,
    ctype=content_types,
)
async def test_api_bodies_get_a_clear_4xx_never_a_5xx(
    api: TestClient[Any, Any], route: str, call_id: str, body: bytes, ctype: str
) -> None:
    cid = FakeCall.made[0].id if call_id == "LIVE" else quote(call_id, safe="")
    path = "/api/calls" if route == "create" else f"/api/calls/{cid}/{route}"
    headers = {"Content-Type": ctype} if ctype else {}
    resp = await api.post(path, data=body, headers=headers)
    text = await resp.text()
    if resp.status >= 300:
        assert_api_error(resp.status, text)
    if resp.status == 413:
        assert "2048-byte limit" in text
    health = await api.get("/healthz")
    assert health.status == 200  # still serving


async def test_the_api_limits_bodies_and_names() -> None:
    # Each input has a bound; these pin the ones the properties above rely on.
    from voicebridge.signaling.http import MAX_BODY_BYTES as API_MAX

    assert API_MAX <= 64 * 1024 and MAX_BODY_BYTES <= 1024 * 1024 and MAX_EVENT_BYTES <= 16 * 1024 * 1024


# ---- hostile shapes on every endpoint of both servers ----------------------------------------------------

ADMIN = "admin-token-for-bad-input-0123456789"


def _deep(n: int, closed: bool) -> bytes:
    return b"[" * n + (b"]" * n if closed else b"")


hostile_json = st.one_of(
    st.builds(_deep, st.integers(33, 20_000), st.booleans()),
    st.integers(41, 6_000).map(lambda n: b"9" * n),
    st.integers(300, 6_000).map(lambda n: b"1e%d" % n),
    st.sampled_from([b"NaN", b"-Infinity", b'{"a": [1, 2, 3]}']),
)
hostile_bodies = st.one_of(
    hostile_json,
    st.builds(
        lambda key, value: b'{"%s": %s}' % (key.encode(), value),
        st.sampled_from(["scenario", "role", "ttl_s", "sdp", "participant_id", "session", "expires_after"]),
        hostile_json,
    ),
    st.builds(lambda value: b'{"expires_after": {"anchor": "created_at", "seconds": %s}}' % value, hostile_json),
)
# Header values that are not UTF-8 (or are, but not ASCII). No control characters: aiohttp's HTTP parser
# refuses those itself (a plain-text 400) before any application code runs.
header_bytes = st.binary(min_size=1, max_size=24).map(
    lambda b: bytes(c for c in b if c >= 0x20 and c != 0x7F).strip() or b"\xff"
) | st.sampled_from([b"Bearer \xff\xfe", b"Bearer sk-\xc3\x28", "Bearer é".encode(), b"http://\xff.example"])
header_names = st.sampled_from(
    ["Authorization", "Origin", "Host", "Content-Type", "OpenAI-Beta", "Upgrade", "Accept",
     "Access-Control-Request-Headers", "Cookie", "X-Anything"]
)  # fmt: skip
BOUNDARY = b"vb-hostile-boundary"


def _multipart(session: bytes) -> bytes:
    part = b'--%s\r\nContent-Disposition: form-data; name="%s"\r\nContent-Type: %s\r\n\r\n%s\r\n'
    return (
        part % (BOUNDARY, b"sdp", b"application/sdp", b"v=0")
        + part % (BOUNDARY, b"session", b"application/json", session)
        + b"--%s--\r\n" % BOUNDARY
    )


async def raw_request(
    port: int, method: str, path: str, headers: dict[bytes, bytes], body: bytes
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request written byte for byte (aiohttp's client cannot send a header that is not UTF-8)."""
    fields = {b"Host": b"127.0.0.1:%d" % port, b"Connection": b"close", b"Content-Length": b"%d" % len(body)}
    fields.update(headers)
    head = b"%s %s HTTP/1.1\r\n" % (method.encode(), path.encode()) + b"".join(
        b"%s: %s\r\n" % kv for kv in fields.items()
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + b"\r\n" + body)
        data = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    assert data, f"{method} {path}: the connection was dropped without an answer"
    top, _, rest = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    answer = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    if answer.get("transfer-encoding") == "chunked":
        chunks = b""
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size, 16)
            chunks, rest = chunks + rest[:n], rest[n + 2 :]
        rest = chunks
    return int(lines[0].split(" ")[1]), answer, rest


def _fill(path: str, call_id: str) -> str:
    path = re.sub(r"\{path[^}]*\}", "app.js", path)
    return re.sub(r"\{[^}]+\}", quote(call_id, safe=""), path)


@pytest.fixture
async def servers(tmp_path: Path) -> AsyncIterator[dict[str, tuple[int, list[tuple[str, str]], dict[bytes, bytes]]]]:
    """`serve` open (loopback, no token) and with an admin token, and the emulator: port, routes, auth header."""
    FakeCall.made = []
    emu = Emulator(load_builtin=False)
    await emu.start()
    emu_port = int(emu.base_url.rsplit(":", 1)[1].split("/")[0])
    settings_ = Settings(base_url=emu.base_url, api_key="sk-test", artifacts_dir=tmp_path)  # /readyz: 200
    roomy = dict(call_rate=RateLimit(10_000, 1000), join_rate=RateLimit(10_000, 1000))
    off = CapacityLimits(per_core=0, max_lag_ms=0)  # hypothesis stops the loop between examples: no lag refusals
    open_app = await create_app(
        settings_, call_factory=FakeCall, max_live_calls=5, security=SecurityPolicy(**roomy), capacity=off
    )
    admin_app = await create_app(
        settings_, call_factory=FakeCall, max_live_calls=5, security=SecurityPolicy(admin_token=ADMIN, **roomy),
        capacity=off,
    )
    async with TestClient(TestServer(open_app)) as open_c, TestClient(TestServer(admin_app)) as admin_c:
        try:
            yield {
                "serve": (open_c.port, routes(open_app), {}),
                "serve-admin": (admin_c.port, routes(admin_app), {b"Authorization": b"Bearer " + ADMIN.encode()}),
                "emulator": (emu_port, routes(emu.app), {b"Authorization": b"Bearer sk-test"}),
            }
        finally:
            await emu.stop()


@settings(FAST, max_examples=200)  # cheap requests: enough examples to reach every route with every shape
@given(
    data=st.data(),
    server=st.sampled_from(["serve", "serve-admin", "emulator"]),
    body=hostile_bodies,
    ctype=st.sampled_from([b"application/json", b"multipart/form-data", b"application/sdp", b""]),
    bad_header=st.none() | st.tuples(header_names, header_bytes),
    call_id=st.sampled_from(["rtc_nothere", "call_fake_0"]) | st.text(min_size=1, max_size=20),
)
async def test_hostile_shapes_on_every_endpoint_get_a_clear_4xx(
    servers: dict[str, tuple[int, list[tuple[str, str]], dict[bytes, bytes]]],
    data: st.DataObject,
    server: str,
    body: bytes,
    ctype: bytes,
    bad_header: tuple[str, bytes] | None,
    call_id: str,
) -> None:
    port, paths, auth = servers[server]
    method, template = data.draw(st.sampled_from(paths), label="route")
    path = _fill(template, call_id)
    headers = dict(auth)
    if ctype == b"multipart/form-data":
        body, ctype = _multipart(body), b"multipart/form-data; boundary=" + BOUNDARY
    if ctype:
        headers[b"Content-Type"] = ctype
    if bad_header is not None:
        headers[bad_header[0].encode()] = bad_header[1]
    status, answer, text = await raw_request(port, method, path, headers, body)
    assert status < 500, (server, method, path, headers, body[:80], status, text[:300])
    api = path.startswith(("/api/", "/v1/")) or path in ("/healthz", "/readyz", "/metrics")
    if status >= 400 and (api or status in (400, 421)):
        assert answer.get("content-type", "").startswith("application/json"), (path, status, text[:200])
        error = json.loads(text)["error"]
        assert isinstance(error["message"], str) and error["message"] and error["type"]
    health = "/v1/realtime/calls/rtc_nothere/hangup" if server == "emulator" else "/healthz"
    status, _, text = await raw_request(port, "POST" if server == "emulator" else "GET", health, auth, b"")
    assert status in (200, 404), text[:200]  # still serving


async def test_named_hostile_inputs_are_4xx_in_the_api_shape(
    servers: dict[str, tuple[int, list[tuple[str, str]], dict[bytes, bytes]]],
) -> None:
    """The shapes issue 12 found as 500s, one by one, with what each answer must say."""
    serve, _, _ = servers["serve"]
    admin, _, _ = servers["serve-admin"]
    emu, _, emu_auth = servers["emulator"]
    json_type = {b"Content-Type": b"application/json"}
    cases: list[tuple[int, str, dict[bytes, bytes], bytes, str]] = [
        (serve, "/api/calls", json_type, b"[" * 16_000, "levels deep"),
        (serve, "/api/calls", json_type, b'{"scenario": ' + b"1" * 5_000 + b"}", "5000 digits"),
        (admin, "/api/calls", {**json_type, b"Authorization": b"Bearer \xff\xfe"}, b"{}", "'Authorization' header"),
        (emu, "/v1/realtime/calls",
         {**emu_auth, b"Content-Type": b"multipart/form-data; boundary=" + BOUNDARY}, _multipart(b"[" * 16_000),
         "levels deep"),
        (emu, "/v1/realtime/client_secrets", {**emu_auth, **json_type}, b'{"session": ' + b"[" * 16_000 + b"}",
         "levels deep"),
        (emu, "/v1/realtime/client_secrets", {**emu_auth, **json_type},
         b'{"expires_after": {"anchor": "created_at", "seconds": ' + b"9" * 5_000 + b"}}", "5000 digits"),
        (emu, "/v1/realtime/client_secrets", {b"Authorization": b"Bearer sk-\xff"}, b"", "'Authorization' header"),
        (emu, "/v1/realtime/calls", {**emu_auth, b"Origin": b"http://\xff"}, b"", "'Origin' header"),
    ]  # fmt: skip
    for port, path, headers, body, why in cases:
        status, _, text = await raw_request(port, "POST", path, headers, body)
        assert status == 400, (path, status, text[:300])
        assert why in json.loads(text)["error"]["message"], (path, text[:300])
    assert not FakeCall.made  # none of them started a call


# ---- SDP offers to the emulator -------------------------------------------------------------------------


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    e = Emulator(load_builtin=False)
    await e.start()
    try:
        yield e
    finally:
        await e.stop()


async def _good_offer() -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("audio", direction="sendrecv")
    pc.createDataChannel("oai-events")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = str(pc.localDescription.sdp)
    await pc.close()
    return sdp


def _mutate(sdp: str, drops: list[int], junk: list[str]) -> str:
    lines = sdp.strip().split("\r\n")
    keep = [line for i, line in enumerate(lines) if i == 0 or i % max(len(lines), 1) not in drops]
    for j, text in enumerate(junk):
        keep.insert(1 + (j * 7) % len(keep), text)
    return "\r\n".join(keep) + "\r\n"


def _without_candidates(sdp: str) -> str:
    return "\r\n".join(x for x in sdp.split("\r\n") if not x.startswith("a=candidate:"))


def _no_opus(sdp: str) -> str:
    """The same offer, audio offering only PCMU/PCMA (the API speaks Opus only)."""
    out = []
    for line in sdp.split("\r\n"):
        if line.startswith("m=audio "):
            parts = line.split(" ")
            line = " ".join([*parts[:3], "0", "8"])
        elif re.match(r"a=(rtpmap|fmtp|rtcp-fb):(\d+)", line):
            pt = int(re.match(r"a=\w[\w-]*:(\d+)", line).group(1))  # type: ignore[union-attr]
            if pt not in (0, 8):
                continue
        out.append(line)
    return "\r\n".join(out)


async def _post_sdp(emu: Emulator, sdp: str | bytes) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{emu.base_url}/realtime/calls",
            data=sdp,
            headers={"Authorization": "Bearer sk-test", "Content-Type": "application/sdp"},
        ) as r,
    ):
        return r.status, await r.text()


def _assert_emulator_error(status: int, text: str, codes: set[int]) -> str:
    assert status in codes, (status, text[:300])
    err = json.loads(text)["error"]
    assert set(err) == {"message", "type", "code", "param"} and err["message"]
    assert err["message"].split(":", 1)[-1].strip(" ."), err  # says what is wrong, not just "Invalid SDP offer:"
    return str(err["message"])


async def test_named_bad_offers_are_refused_in_the_api_shape(emu: Emulator) -> None:
    good = await _good_offer()
    cases = {
        "empty": ("", {400}),
        "not sdp": ("hello", {400}),
        "no audio": (good.replace("m=audio", "m=video"), {400}),
        "data channel only": ("\r\n".join(x for x in good.split("\r\n") if "audio" not in x), {400}),
        "no opus": (_no_opus(good), {400}),
        "end of candidates, none listed": (_without_candidates(good), {400}),
        "huge": ("v=0\r\n" + "a=x\r\n" * (MAX_BODY_BYTES // 4), {413}),
        "binary": (bytes(range(256)) * 10, {400}),
    }
    for name, (sdp, codes) in cases.items():
        status, text = await _post_sdp(emu, sdp)
        _assert_emulator_error(status, text, codes)
        assert not emu.sessions, name
    # DTLS needs the offerer's fingerprint: the real API cannot answer an offer without one, nor can the emulator.
    no_fingerprint = "\r\n".join(x for x in good.split("\r\n") if not x.startswith("a=fingerprint:"))
    message = _assert_emulator_error(*await _post_sdp(emu, no_fingerprint), {400})
    assert "a=fingerprint" in message and "audio" in message
    for line, why in [("m=audio x UDP/TLS/RTP/SAVPF 111", "port 'x'"), ("m=audio 70000 UDP/TLS/RTP/SAVPF 111", "70000"),
                      ("m=audio 9", "m=<media> <port> <proto> <formats>")]:  # fmt: skip
        bad_port = re.sub(r"m=audio [^\r\n]*", line, good, count=1)
        message = _assert_emulator_error(*await _post_sdp(emu, bad_port), {400})
        assert why in message and "Invalid SDP offer" in message, message
    assert not emu.sessions
    status, text = await _post_sdp(emu, good)
    assert status == 201 and text.startswith("v=0")  # and it still answers a good offer
    # A browser that sends its offer before gathering lists no candidates and no end: that is a good offer (the
    # answerer learns the browser's address from its first check), answered with the emulator's candidates.
    early = "\r\n".join(x for x in good.split("\r\n") if not x.startswith(("a=candidate:", "a=end-of-candidates")))
    status, text = await _post_sdp(emu, early)
    assert status == 201 and "a=candidate:" in text, text


@FAST
@given(
    drops=st.lists(st.integers(0, 40), max_size=6),
    junk=st.lists(st.text(max_size=40).filter(lambda t: "\r" not in t and "\n" not in t), max_size=3),
)
async def test_mangled_offers_are_answered_or_refused_never_a_5xx(
    emu: Emulator, drops: list[int], junk: list[str]
) -> None:
    status, text = await _post_sdp(emu, _mutate(await _good_offer(), drops, junk))
    if status == 201:
        assert text.startswith("v=0")
        for sess in list(emu.sessions.values()):
            await sess.close("test")
    else:
        _assert_emulator_error(status, text, {400})
        assert not emu.sessions


# ---- data-channel messages to an emulator session --------------------------------------------------------


@pytest.fixture
async def session() -> AsyncIterator[tuple[Session, list[dict[str, Any]]]]:
    sent: list[dict[str, Any]] = []
    e = Emulator(load_builtin=False)
    sess = Session(ev.new_id("rtc"), default_session("gpt-realtime"), e.personas, e.voice, lambda s: None)
    sess.sinks.append(lambda text: sent.append(json.loads(text)))
    try:
        yield sess, sent
    finally:
        await sess.close("test over")


client_types = st.sampled_from(
    ["session.update", "conversation.item.create", "conversation.item.delete", "conversation.item.truncate",
     "input_audio_buffer.append", "input_audio_buffer.commit", "response.cancel", "output_audio_buffer.clear",
     "made.up", ""]
)  # fmt: skip
messages = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200),
    json_values.map(json.dumps),
    st.builds(
        lambda t, extra: json.dumps({"type": t, **extra}),
        client_types,
        st.dictionaries(st.sampled_from(["session", "item", "item_id", "audio", "event_id", "x"]), json_values),
    ),
)


@FAST
@given(message=messages)
async def test_random_channel_messages_get_error_events_and_the_session_lives(
    session: tuple[Session, list[dict[str, Any]]], message: str | bytes
) -> None:
    sess, sent = session
    before = len(sent)
    handle(sess, message)
    for event in sent[before:]:
        if event["type"] == "error":
            err = event["error"]
            assert err["message"] and err["type"] == "invalid_request_error"
    assert not sess.closed.is_set()
    handle(sess, json.dumps({"type": "session.update", "session": {"type": "realtime", "instructions": "Hi."}}))
    assert sent[-1]["type"] == "session.updated"  # still answering properly


async def test_hostile_json_in_a_channel_message_is_an_invalid_json_error_event(
    session: tuple[Session, list[dict[str, Any]]],
) -> None:
    sess, sent = session
    for message, why in [("[" * 16_000, "levels deep"), ('{"type": "response.create", "x": ' + "7" * 5_000 + "}",
                          "5000 digits")]:  # fmt: skip
        handle(sess, message)
        assert sent[-1]["type"] == "error" and sent[-1]["error"]["code"] == "invalid_json", sent[-1]
        assert why in sent[-1]["error"]["message"]


async def test_an_oversized_channel_message_is_an_error_event(
    session: tuple[Session, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    sess, sent = session
    monkeypatch.setattr("voicebridge.emulator.handlers.MAX_EVENT_BYTES", 1000)
    handle(sess, json.dumps({"type": "session.update", "session": {"instructions": "x" * 2000}}))
    assert sent[-1]["type"] == "error" and sent[-1]["error"]["code"] == "event_too_large"

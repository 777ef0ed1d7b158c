"""Fixtures for browser tests that make WebRTC calls from Chromium to the server (listen, take over).

Chromium only offers loopback candidates with `--allow-loopback-in-peer-connection`, and on a machine with other
interfaces it would also try those (tests must never send traffic there). So these tests run only inside the
loopback-only network namespace that `make test` sets up (scripts/loopback-netns, as root); anywhere else the
`webrtc_browser` fixture fails at once with a message saying so, instead of hanging on ICE.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import shutil
import socket
import wave
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import StartEmulator
from voicebridge.config import EMULATOR_KEY, Settings
from voicebridge.emulator.server import Emulator
from voicebridge.emulator.voice import parse_wav, resample_to_48k_stereo, synthesize_wav
from voicebridge.signaling.app import create_app

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
BASE_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WEBRTC_ARGS = [
    "--allow-loopback-in-peer-connection",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    # Host candidates as plain 127.0.0.1, not mDNS names nobody here can resolve.
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]
LEADING_SILENCE_S = 6.0  # the CS agent greets first; the human answers after the greeting (~3.5 s)
TRAILING_SILENCE_S = 25.0


def outside_loopback_namespace() -> list[str]:
    """Network interfaces other than loopback (empty inside scripts/loopback-netns). The multi-host test's links
    (tests/hosts.py: a private bridge with no route out, made inside that same namespace) do not count: a parallel
    test may be running it."""
    from tests.hosts import LINK_PREFIX

    return [name for _, name in socket.if_nameindex() if name != "lo" and not name.startswith(LINK_PREFIX)]


@dataclasses.dataclass
class JoinServer:
    url: str
    app: web.Application
    emulator: Emulator


@pytest.fixture
async def join_server(tmp_path: Path, start_emulator: StartEmulator) -> AsyncIterator[JoinServer]:
    emulator = await start_emulator()
    base = emulator.base_url
    settings = dataclasses.replace(Settings(), base_url=base, api_key=EMULATOR_KEY, artifacts_dir=tmp_path)
    app = await create_app(settings)
    srv = TestServer(app, host="127.0.0.1")
    await srv.start_server()
    try:
        yield JoinServer(str(srv.make_url("/")), app, emulator)
    finally:
        await srv.close()


async def spoken_wav(text: str, voice: str, speed: int, path: Path) -> Path:
    """espeak-ng speaking `text`, with silence before (the greeting) and ~25 s after, as 48 kHz stereo WAV."""
    mono, rate = parse_wav(await synthesize_wav(text, voice, speed))
    speech = resample_to_48k_stereo(mono, rate).reshape(-1, 2)
    lead = np.zeros((int(48000 * LEADING_SILENCE_S), 2), np.int16)
    tail = np.zeros((int(48000 * TRAILING_SILENCE_S), 2), np.int16)
    pcm = np.concatenate([lead, speech, tail])
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes(pcm.astype("<i2").tobytes())
    await asyncio.to_thread(path.write_bytes, buf.getvalue())
    return path


Launch = Callable[..., Awaitable[Any]]


@pytest.fixture
async def webrtc_browser(join_server: JoinServer) -> AsyncIterator[Launch]:
    """launch(mic_wav=None) -> a Playwright page on the console, in a Chromium that can do WebRTC on loopback."""
    others = outside_loopback_namespace()
    if others:
        pytest.fail(
            f"WebRTC browser tests need the loopback-only network namespace (this one also has {others}): "
            "run them with `make test` (as root), or `scripts/loopback-netns .venv/bin/python -m pytest tests/browser`",
            pytrace=False,
        )
    playwright_api = pytest.importorskip("playwright.async_api")
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    ARTIFACTS.mkdir(exist_ok=True)
    errors: list[str] = []
    async with playwright_api.async_playwright() as p:
        browsers: list[Any] = []

        async def launch(mic_wav: Path | None = None) -> Any:
            args = BASE_ARGS + WEBRTC_ARGS
            if mic_wav is not None:
                args.append(f"--use-file-for-fake-audio-capture={mic_wav}%noloop")
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=args)
            browsers.append(browser)
            page = await browser.new_page(viewport={"width": 1440, "height": 900})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            await page.goto(join_server.url)
            return page

        try:
            yield launch
        finally:
            for b in browsers:
                await b.close()
    assert errors == [], f"the page logged errors: {errors}"

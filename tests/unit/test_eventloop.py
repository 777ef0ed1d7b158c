"""voicebridge/eventloop.py: which event loop the bridge's commands run on (VOICEBRIDGE_LOOP), and the silent but
logged fallback to asyncio's loop when uvloop cannot be imported."""

from __future__ import annotations

import asyncio
import builtins
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from voicebridge import eventloop

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


async def _which() -> str:
    return eventloop.loop_name()


def test_uvloop_is_the_default_and_asyncio_stays_available(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(eventloop.ENV, raising=False)
    assert eventloop.requested() == "uvloop" and eventloop.effective() == "uvloop"
    assert eventloop.run(_which()) == "uvloop"
    monkeypatch.setenv(eventloop.ENV, "asyncio")
    assert eventloop.requested() == "asyncio" and eventloop.loop_factory() is None
    assert eventloop.run(_which()) == "asyncio"
    assert eventloop.run(_which(), "uvloop") == "uvloop"  # a name given wins over the environment


def test_an_unknown_loop_is_a_clear_error_and_the_coroutine_is_not_left_unawaited(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(eventloop.ENV, "trio")
    with pytest.raises(eventloop.EventLoopChoiceError, match="VOICEBRIDGE_LOOP must be uvloop or asyncio, not 'trio'"):
        eventloop.requested()
    coro = _which()
    with pytest.raises(eventloop.EventLoopChoiceError):
        eventloop.run(coro)
    assert coro.cr_frame is None  # closed, not dangling


def test_without_uvloop_the_bridge_runs_on_asyncio_and_logs_it_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_import = builtins.__import__

    def no_uvloop(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "uvloop":
            raise ImportError("No module named 'uvloop'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_uvloop)
    monkeypatch.setattr(eventloop, "_fallback_logged", False)
    monkeypatch.delenv(eventloop.ENV, raising=False)
    with caplog.at_level(logging.INFO, logger="voicebridge.eventloop"):
        assert eventloop.run(_which()) == "asyncio"
        assert eventloop.effective() == "asyncio"
    records = [r for r in caplog.records if r.name == "voicebridge.eventloop"]
    assert len(records) == 1 and records[0].levelno == logging.INFO  # only the default: no warning
    assert "uvloop cannot be imported" in records[0].getMessage()
    monkeypatch.setattr(eventloop, "_fallback_logged", False)
    monkeypatch.setenv(eventloop.ENV, "uvloop")  # asked for by name: the same fallback, as a warning
    with caplog.at_level(logging.INFO, logger="voicebridge.eventloop"):
        assert eventloop.loop_factory() is None
    assert caplog.records[-1].levelno == logging.WARNING


def test_the_suite_runs_on_the_bridge_s_loop() -> None:
    """tests/conftest.py hands pytest-asyncio the same loop factory: what is tested is what ships."""
    assert asyncio.run(_which()) == "asyncio"  # asyncio.run itself is untouched (no global policy)


async def test_an_async_test_runs_on_the_configured_loop() -> None:
    assert eventloop.loop_name() == eventloop.effective()


def test_a_command_refuses_an_unknown_loop_in_one_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "voicebridge.cli", "call", "--scenario", "late_order"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "VOICEBRIDGE_LOOP": "gevent"},
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last == "voicebridge call: VOICEBRIDGE_LOOP must be uvloop or asyncio, not 'gevent'"


def test_aiortcs_unawaited_data_channel_sends_to_a_lost_peer_log_one_debug_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A real RTCSctpTransport whose DTLS transport is not connected: its send fails with ConnectionError, as the
    tasks aiortc starts and never awaits do when the peer is gone; collected unretrieved, it is one DEBUG line. Any
    other task's unretrieved exception is still reported as asyncio does."""
    import gc

    from aiortc import RTCPeerConnection
    from aiortc.rtcsctptransport import AbortChunk

    async def main() -> None:
        pc = RTCPeerConnection()
        pc.createDataChannel("events")
        await pc.setLocalDescription(await pc.createOffer())
        assert pc.sctp is not None
        pc.sctp._remote_port = 5000  # what start() sets from the far end's SDP; its DTLS is not connected
        lost = asyncio.ensure_future(pc.sctp._send_chunk(AbortChunk()))

        async def ours() -> None:
            raise ConnectionError("not aiortc's")

        other = asyncio.ensure_future(ours())
        await asyncio.wait([lost, other])
        del lost, other
        gc.collect()
        await pc.close()

    caplog.set_level(logging.DEBUG)
    eventloop.run(main())
    unretrieved = [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert len(unretrieved) == 1 and "not aiortc's" in str(unretrieved[0].exc_info)
    assert any(
        r.levelno == logging.DEBUG and "RTCSctpTransport._send_chunk: the peer is gone" in r.getMessage()
        for r in caplog.records
    )


def test_a_command_s_start_up_objects_are_frozen_before_its_coroutine_runs() -> None:
    """In a process of its own (freezing is per process): what was imported is out of the collector's reach."""
    code = (
        "import gc, voicebridge.eventloop as e\n"
        "async def main():\n"
        "    return gc.get_freeze_count()\n"
        "print(gc.get_freeze_count(), e.run(main()) > 1000)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "server")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split() == ["0", "True"]

"""Recording: real libopus packets muxed as they are into WebM, read by PyAV and ffprobe, exported to WAV."""

from __future__ import annotations

import asyncio
import math
import shutil
import subprocess
import wave
from pathlib import Path

import av
import numpy as np
import pytest

from voicebridge.media.passthrough import RtpAudio
from voicebridge.media.recording import Recorder, export_wav

pytestmark = pytest.mark.unit
T0 = 1000.0


def opus_packets(freq: float, count: int) -> list[bytes]:
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate, enc.layout, enc.format = 48000, "stereo", "s16"
    out: list[bytes] = []
    n = 0
    while len(out) < count:
        t = (np.arange(960) + n * 960) / 48000.0
        mono = (12000 * np.sin(2 * math.pi * freq * t)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.repeat(mono, 2).reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate, frame.pts = 48000, n * 960
        out.extend(bytes(p) for p in enc.encode(frame))
        n += 1
    return out[:count]


def talk(start_s: float, payloads: list[bytes], ts0: int, seq0: int = 0) -> list[RtpAudio]:
    """Packets as if they arrived every 20 ms from start_s (seconds after T0), RTP timestamps from ts0."""
    return [
        RtpAudio(p, (ts0 + i * 960) & 0xFFFFFFFF, (seq0 + i) & 0xFFFF, i == 0, T0 + start_s + i * 0.02)
        for i, p in enumerate(payloads)
    ]


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))


async def test_recording_keeps_timing_and_exports_aligned_stereo(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "rec", t0=T0, flush_interval=0.05)
    caller_tone, cs_tone = opus_packets(440, 50), opus_packets(700, 50)
    # caller speaks 0.0-1.0 s; CS 1.5-2.5 s; the caller again at 3.0 s with an RTP clock that did not advance
    # over its silence (arrival time must win there); a near-wrapping RTP timestamp on the CS side.
    events = [("caller", p) for p in talk(0.0, caller_tone, 4_000_000)]
    events += [("cs", p) for p in talk(1.5, cs_tone, 0xFFFFFFFF - 5 * 960)]
    events += [("caller", p) for p in talk(3.0, caller_tone[:25], 4_000_000 + 50 * 960)]
    flushed = asyncio.Event()
    for party, pkt in events:
        rec.feed(party, pkt)
    asyncio.get_running_loop().call_later(0.1, flushed.set)
    await asyncio.wait_for(flushed.wait(), 2)
    paths = rec.close()
    assert set(paths) == {"caller", "cs"}

    for party, path in paths.items():
        probe = await asyncio.to_thread(
            subprocess.run,
            ["ffprobe", "-v", "error", "-show_entries", "stream=codec_name,channels", "-of", "csv=p=0", path],
            capture_output=True,
            text=True,
            check=True,
        )
        assert probe.stdout.strip() == "opus,2", party
    with av.open(str(paths["caller"])) as c:
        pts_ms = [p.pts for p in c.demux(audio=0) if p.pts is not None]
    assert len(pts_ms) == 75 and pts_ms[0] == 0 and pts_ms[49] == 980 and pts_ms[50] == 3000

    wav_path = export_wav(paths, tmp_path / "call.wav")
    with wave.open(str(wav_path)) as w:
        assert (w.getnchannels(), w.getframerate(), w.getsampwidth()) == (2, 48000, 2)
        audio = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2) / 32768.0
    left, right = audio[:, 0], audio[:, 1]

    def window(ch: np.ndarray, a: float, b: float) -> float:
        return rms(ch[int(a * 48000) : int(b * 48000)])

    assert window(left, 0.1, 0.9) > 0.1 and window(right, 0.1, 0.9) < 0.01  # caller talks
    assert window(right, 1.6, 2.4) > 0.1 and window(left, 1.6, 2.4) < 0.01  # CS talks
    assert window(left, 3.1, 3.4) > 0.1 and window(left, 2.6, 2.9) < 0.01  # the caller again, gap kept
    assert window(right, 2.6, 3.5) < 0.01


def test_a_recording_cut_off_mid_call_is_still_readable(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, t0=T0)  # no event loop: every packet is muxed at once
    for pkt in talk(0.0, opus_packets(440, 100), 123):
        rec.feed("cs", pkt)
    # The process "dies" here: copy the file as it is on disk, without closing the muxer.
    crashed = tmp_path / "crashed.webm"
    shutil.copy(rec.paths["cs"], crashed)
    rec.close()
    with av.open(str(crashed), format="webm") as c:
        packets = [p for p in c.demux(audio=0) if p.size]
    assert len(packets) >= 100 - 500 // 20 - 1  # everything but at most the last open cluster
    frames = export_wav({"cs": crashed}, tmp_path / "crashed.wav")
    assert frames.stat().st_size > 44


def test_export_rejects_unknown_parties_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown parties"):
        export_wav({"listener": tmp_path / "x.webm"}, tmp_path / "out.wav")
    with pytest.raises(FileNotFoundError, match=r"x\.webm"):
        export_wav({"caller": tmp_path / "x.webm"}, tmp_path / "out.wav")
    rec = Recorder(tmp_path / "rec")
    rec.feed("../evil", RtpAudio(b"\xf8\xff\xfe", 0, 0, False, 0.0))  # feed never raises: counted instead
    assert rec.errors == 1 and rec.close() == {} and not (tmp_path / "evil.webm").exists()

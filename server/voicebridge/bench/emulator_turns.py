"""Turn timing in the emulator bench: one turn's parts, and the summary of a phase's turns."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from .emulator_phases import NEW_TURNS, NEW_TURNS_ASKED


@dataclass
class Turn:
    """One line of the peer and the emulator's answer, as perf_counter() seconds in this process."""

    end: float | None = None  # the line's last packet sent
    vad: float | None = None  # input_audio_buffer.speech_stopped received
    recognized: float | None = None  # ...input_audio_transcription.completed received
    created: float | None = None  # response.created received
    audio: float | None = None  # the answer's first packet that may hold speech arrived
    transcript: str = ""

    def parts_ms(self) -> dict[str, float] | None:
        if None in (self.end, self.vad, self.recognized, self.created, self.audio):
            return None
        assert self.end is not None and self.vad is not None and self.recognized is not None
        assert self.created is not None and self.audio is not None
        return {
            "gap": (self.audio - self.end) * 1000,
            "vad": (self.vad - self.end) * 1000,
            "recognition": (self.recognized - self.vad) * 1000,
            "response_start": (self.created - self.recognized) * 1000,
            "first_audio": (self.audio - self.created) * 1000,
        }


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def turns_asked(phase: str, args: argparse.Namespace) -> int:
    """Turns per session the phase asks for: --turns, and at most NEW_TURNS_ASKED with the memory off."""
    turns: int = args.turns
    return min(turns, NEW_TURNS_ASKED) if phase == NEW_TURNS else turns


def turn_summary(turns: list[Turn], expected: str, cut: int = 0) -> dict[str, Any]:
    """Counts, the gap's p50/p90 and each part's p50/p90 (ms) of the turns that completed."""
    parts = [p for p in (t.parts_ms() for t in turns) if p is not None]
    summary: dict[str, Any] = {
        "turns": len(turns),
        "cut": cut,
        "understood": sum(t.transcript == expected for t in turns),
        "timed": len(parts),
    }
    for name in ("gap", "vad", "recognition", "response_start", "first_audio"):
        values = [p[name] for p in parts]
        summary[name] = {"p50": _pct(values, 0.5), "p90": _pct(values, 0.9)}
    return summary

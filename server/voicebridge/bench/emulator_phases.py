"""The emulator bench's phases, levels and settings (bench/emulator.py), and its log line."""

from __future__ import annotations

import sys
import time

FRAME_S = 0.020
NEW_AUDIO = "hearing, new audio"  # hearing with the `now` emulator's turn memory off (recognition.py)
NEW_TURNS = "turns, new audio"  # turns with the `now` emulator's turn memory off: every turn recognised
PHASES = ("idle", "silence", "hearing", NEW_AUDIO, "speaking", "turns", NEW_TURNS)
PHASE_FLAGS = {"hearing-new": NEW_AUDIO, "turns-new": NEW_TURNS}  # --phases names of the phases with spaces
TURN_PHASES = ("turns", NEW_TURNS)
MEMORY_OFF = (NEW_AUDIO, NEW_TURNS)  # the phases measured with each emulator's remembered turns off
# Where NEW_AUDIO is measured by default: at 1 session a session's share of the process's fixed costs hides what a
# turn costs, and at 50 hearing at once is past this 2-core machine already (docs/bench.md); two levels cost the
# default run about 20 s.
NEW_AUDIO_LEVELS = (12, 24)
# Turns per session in NEW_TURNS (fewer if --turns asks fewer): a turn takes about 7 s, so two keep the default
# run's extra time to about 35 s over the two levels, and give 24 / 48 turns timed.
NEW_TURNS_ASKED = 2
KINDS = ("baseline", "now")  # the emulator as it was before issue 17 / as shipped
SCENARIO = "late_order"
# The agent's greeting, as the late_order CS persona says it: the caller persona hears it and answers.
LINE = "Thank you for calling the help desk, how can I help you today?"
LINE_SPEED = 215
API_KEY = "sk-bench-emulator"
PAUSE_S = 0.4  # the peer's pause after the emulator's answer ends, before its next line
STAGGER_S = 2.0  # the peers' first lines start spread over this, as calls in a batch do
TURN_CAP_S = 20.0  # a turn that takes longer than this (per turn asked) ends the phase: something is wrong
CONNECT_BATCH = 10  # peers connecting at once


def say(text: str) -> None:
    print(f"[bench emulator {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

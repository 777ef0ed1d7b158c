"""What the emulator hears of every built-in line, and what it refuses: the check behind hearing.py's settings.

    PYTHONPATH=server .venv/bin/python scripts/hearing-check.py ['{"topn": 3}']

Every phrase a persona of a built-in scenario listens for (its grammar), said in the OTHER persona's espeak voice and
speed, encoded by the emulator's mouth and heard through its ear (Listener -> VAD turn), clean and over 12 patterns
of the lab's `lossy` impairment (seeds 0-11): 377 turns, each must be recognised exactly. Then what must be refused:
the first half of each phrase, each phrase reversed, and six sentences outside every grammar, per grammar. Prints
the counts, the misses and the CPU seconds pocketsphinx spent per second of audio. The optional JSON argument
overrides pocketsphinx Decoder settings (e.g. {"ds": 3}) of the emulator's own Recognizer, whose whole-phrase rule
and unexplained-audio cut-off apply either way.
Takes ~1 minute (the turns are cached in /tmp/hearing-check-turns.pkl; delete it after changing the ear).
"""

from __future__ import annotations

import asyncio
import json
import pickle
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.unit.test_hearing's helpers

from tests.unit.test_hearing import VOICE, Turns, lossy, silence

from voicebridge.emulator import hearing
from voicebridge.emulator.listening import Listener
from voicebridge.emulator.persona import Script
from voicebridge.emulator.voice import (
    encode_pcm48k_stereo,
    parse_wav,
    resample_to_48k_stereo,
    synthesize_wav,
)
from voicebridge.scenarios import builtin_names, load_scenario, normalize_phrase

CACHE = Path("/tmp/hearing-check-turns.pkl")
OUTSIDE = (
    "The weather is lovely in Paris this time of year.", "I would like a refund please",
    "Can you tell me where the nearest train station is?", "My name is John and I live in London.",
    "Please hold the line while I transfer you.", "It has been raining all week long.",
)  # fmt: skip


def _turns(arrivals: list[tuple[int, bytes]]) -> list[Any]:
    turns = Turns()
    hear = Listener(turns.ear())
    for seq, payload in arrivals:
        hear.push(payload, seq)
    return [pcm for _, pcm in turns.stopped]


async def collect() -> list[tuple[tuple[str, ...], str, str, str, list[Any]]]:
    """(grammar, kind, phrase, path, the turns' PCM) for every case."""
    out = []
    for name in builtin_names():
        scenario = load_scenario(name)
        for listener, speaker in ((scenario.caller, scenario.cs), (scenario.cs, scenario.caller)):
            grammar = tuple(Script(listener).phrases)
            if not grammar:
                continue
            for phrase in grammar:
                line = await VOICE.speak(phrase, speaker.espeak_voice, speaker.espeak_speed)
                stream = silence(1000) + list(line.packets) + silence(1500)
                out.append((grammar, "line", phrase, "clean", _turns(list(enumerate(stream)))))
                for seed in range(12):
                    out.append((grammar, "line", phrase, f"lossy {seed}", _turns(lossy(stream, seed))))
                half = silence(1000) + list(line.packets[: len(line.packets) // 2]) + silence(1500)
                out.append((grammar, "half", phrase, "clean", _turns(list(enumerate(half)))))
                mono, rate = parse_wav(await synthesize_wav(phrase, speaker.espeak_voice, speaker.espeak_speed))
                backwards = encode_pcm48k_stereo(resample_to_48k_stereo(np.ascontiguousarray(mono[::-1]), rate))
                stream = silence(1000) + list(backwards) + silence(1500)
                out.append((grammar, "reversed", phrase, "clean", _turns(list(enumerate(stream)))))
            for text in OUTSIDE:
                line = await VOICE.speak(text, speaker.espeak_voice, speaker.espeak_speed)
                stream = silence(1000) + list(line.packets) + silence(1500)
                out.append((grammar, "outside", text, "clean", _turns(list(enumerate(stream)))))
    return out


def recognizer(key: tuple[str, ...], overrides: dict[str, Any]) -> Any:
    """The emulator's Recognizer for this grammar, with `overrides` on top of its Decoder settings (its
    whole-phrase rule and unexplained-audio cut-off as shipped)."""

    class Tried(hearing.Recognizer):
        def decoder_settings(self) -> dict[str, Any]:
            return super().decoder_settings() | overrides

    return Tried(key)


def main() -> None:
    overrides = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    if CACHE.exists():
        cases = pickle.loads(CACHE.read_bytes())
    else:
        cases = asyncio.run(collect())
        CACHE.write_bytes(pickle.dumps(cases))
    recognizers: dict[tuple[str, ...], Any] = {}
    counts: dict[str, list[int]] = {}
    wrong: list[str] = []
    cpu = audio = 0.0
    for grammar, kind, phrase, path, pcms in cases:
        key = hearing.phrase_key(grammar)
        if key not in recognizers:
            recognizers[key] = recognizer(key, overrides)
        heard = []
        for pcm in pcms:
            start = time.process_time()
            heard.append(recognizers[key].transcribe(pcm))
            cpu += time.process_time() - start
            audio += len(pcm) / 16000
        good = heard == [normalize_phrase(phrase)] if kind == "line" else all(h is None for h in heard)
        total = counts.setdefault(kind, [0, 0])
        total[0] += 1
        total[1] += good
        if not good:
            wrong.append(f"{kind} {phrase[:60]!r} ({path}): heard {heard!r}")
    print(f"settings {json.dumps(overrides) if overrides else 'as shipped'}: lines heard exactly "
          f"{counts['line'][1]} of {counts['line'][0]}; refused: "
          + ", ".join(f"{k} {v[1]} of {v[0]}" for k, v in counts.items() if k != "line")
          + f"; pocketsphinx {cpu / audio:.4f} CPU s per s of audio")  # fmt: skip
    for line in wrong:
        print("  ", line)


if __name__ == "__main__":
    main()

"""Turns and what each side heard, from both legs' events.

A turn ("said") is an agent's output transcript: it starts when its audio starts playing out
(`output_audio_buffer.started`, or the first transcript delta) and ends when the audio stops
(`output_audio_buffer.stopped`/`cleared`; the transcript's `done` until then). A "heard" entry is the
other leg's input transcription of that audio: proof that the relayed audio reached the other agent.

A turn cut off by a barge-in keeps its whole text (the transcript is generated ahead of the audio) and records how
much of its audio played (`played_ms`, from `conversation.item.truncated`): the Realtime API truncates the item to
what was heard, and a reader of the transcript must be able to tell the words said from the words only generated.
"""

from __future__ import annotations

from typing import Any

from .artifacts import TranscriptEntry

OTHER = {"caller": "cs", "cs": "caller"}


class Transcript:
    def __init__(self) -> None:
        self.entries: list[TranscriptEntry] = []
        self.speaking: dict[str, bool] = {"caller": False, "cs": False}
        # A leg spoke and the other leg has not transcribed anything since: its words may still be in flight.
        self.unheard: dict[str, bool] = {"caller": False, "cs": False}
        self._audio_start: dict[str, float | None] = {"caller": None, "cs": None}
        self._open_turns: dict[str, list[TranscriptEntry]] = {"caller": [], "cs": []}
        self._speech: dict[tuple[str, str], list[float]] = {}
        self._last_stop: dict[str, float | None] = {"caller": None, "cs": None}

    def observe(self, leg: str, t: float, event: dict[str, Any]) -> TranscriptEntry | None:
        """Update from one server event of `leg` at call time `t`; returns a new entry, if any."""
        kind = event.get("type")
        if kind == "output_audio_buffer.started":
            self.speaking[leg] = True
            self.unheard[leg] = True
            self._audio_start[leg] = t
        elif kind in ("output_audio_buffer.stopped", "output_audio_buffer.cleared"):
            self.speaking[leg] = False
            self._audio_start[leg] = None
            self._last_stop[leg] = t
            for turn in self._open_turns[leg]:
                turn.end = max(turn.end, t)
            self._open_turns[leg].clear()
        elif kind == "response.output_audio_transcript.delta":
            if self._audio_start[leg] is None:
                self._audio_start[leg] = t
        elif kind == "response.output_audio_transcript.done":
            text = str(event.get("transcript", "")).strip()
            began = self._audio_start[leg]
            start = began if began is not None else t
            entry = TranscriptEntry(
                speaker=leg,
                text=text,
                start=start,
                end=t,
                kind="said",
                leg=leg,
                item_id=str(event.get("item_id", "")),
            )
            other_stop = self._last_stop[OTHER.get(leg, leg)]
            if other_stop is not None and other_stop <= start:
                entry.gap_s = start - other_stop
            self.entries.append(entry)
            if self.speaking[leg]:
                self._open_turns[leg].append(entry)
            return entry
        elif kind == "conversation.item.truncated":
            item_id = str(event.get("item_id", ""))
            played = event.get("audio_end_ms")
            for entry in reversed(self.entries):
                if entry.kind == "said" and entry.leg == leg and entry.item_id == item_id:
                    if isinstance(played, (int, float)) and not isinstance(played, bool):
                        entry.played_ms = float(played)
                    break
        elif kind == "input_audio_buffer.speech_started":
            self._speech[(leg, str(event.get("item_id", "")))] = [t, t]
        elif kind == "input_audio_buffer.speech_stopped":
            span = self._speech.setdefault((leg, str(event.get("item_id", ""))), [t, t])
            span[1] = t
        elif kind in (
            "conversation.item.input_audio_transcription.completed",
            "conversation.item.input_audio_transcription.failed",
        ):
            self.unheard[OTHER.get(leg, leg)] = False
            if kind.endswith("completed"):
                item_id = str(event.get("item_id", ""))
                start, end = self._speech.get((leg, item_id), [t, t])
                entry = TranscriptEntry(
                    speaker=OTHER.get(leg, leg),
                    text=str(event.get("transcript", "")).strip(),
                    start=start,
                    end=end,
                    kind="heard",
                    leg=leg,
                    item_id=item_id,
                )
                self.entries.append(entry)
                return entry
        return None

    def said(self) -> list[TranscriptEntry]:
        return sorted((e for e in self.entries if e.kind == "said"), key=lambda e: e.start)

    def heard(self, by: str) -> list[TranscriptEntry]:
        return sorted((e for e in self.entries if e.kind == "heard" and e.leg == by), key=lambda e: e.start)

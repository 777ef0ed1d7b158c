"""The network impairment spec: what `impair = "..."` in a scenario and `voicebridge call --impair` say.

Parsed here, with the scenario file's other fields; applied on the relay path by media/impair.py (ImpairStage).

Grammar (comma separated, any order, each key at most once)::

    loss=5%            independent random loss
    burst=3%/4         Gilbert-Elliott bursty loss: 3 % of packets lost on average, in bursts of 4 on average
    delay=80ms         one-way delay added to every packet
    jitter=30ms        each packet's delay drawn uniformly in [delay - jitter, delay + jitter] (clamped at 0),
                       as netem's "delay 80ms 30ms" does
    dup=1%             duplicate a packet (the copy is sent right after the original)
    blackout=2s@30s    drop every packet for 2 s starting 30 s after the relay started

A bare profile name (`good`, `wifi`, `3g`, `satellite`, `lossy`) stands for its spec in PROFILES; a spec may
also start with a profile and override fields: `3g,loss=10%`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace


class ImpairSpecError(ValueError):
    """A bad impairment spec; the message names the field and what is wrong with it."""


@dataclass(frozen=True, slots=True)
class ImpairSpec:
    """What to apply to one direction. Probabilities are fractions (0.05 = 5 %), times are seconds."""

    loss: float = 0.0
    burst_loss: float = 0.0  # Gilbert-Elliott mean loss rate
    burst_len: float = 0.0  # Gilbert-Elliott mean burst length in packets (>= 1 when burst_loss > 0)
    delay: float = 0.0
    jitter: float = 0.0
    dup: float = 0.0
    blackout_len: float = 0.0
    blackout_at: float = 0.0

    @property
    def is_null(self) -> bool:
        return self == ImpairSpec()

    def describe(self) -> str:
        """The canonical spec string (parses back to an equal spec)."""
        parts: list[str] = []
        if self.loss:
            parts.append(f"loss={_pct(self.loss)}")
        if self.burst_loss:
            parts.append(f"burst={_pct(self.burst_loss)}/{self.burst_len:g}")
        if self.delay:
            parts.append(f"delay={_ms(self.delay)}")
        if self.jitter:
            parts.append(f"jitter={_ms(self.jitter)}")
        if self.dup:
            parts.append(f"dup={_pct(self.dup)}")
        if self.blackout_len:
            parts.append(f"blackout={self.blackout_len:g}s@{self.blackout_at:g}s")
        return ",".join(parts) or "none"


def _pct(x: float) -> str:
    return f"{x * 100:g}%"


def _ms(x: float) -> str:
    return f"{x * 1000:g}ms"


PROFILES: dict[str, str] = {
    "good": "none",
    "wifi": "loss=1%,delay=10ms,jitter=10ms",
    "3g": "burst=3%/3,delay=100ms,jitter=40ms",
    "satellite": "loss=1%,delay=300ms,jitter=20ms",
    "lossy": "loss=10%,burst=5%/4,delay=40ms,jitter=20ms,dup=1%",
}

_KEYS = ("loss", "burst", "delay", "jitter", "dup", "blackout")


def _parse_fraction(key: str, text: str) -> float:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(%?)\s*", text)
    if m is None:
        raise ImpairSpecError(f"impairment field {key!r}: {text!r} is not a percentage like 5% (or a fraction 0.05)")
    value = float(m.group(1)) / (100.0 if m.group(2) else 1.0)
    if not m.group(2) and value > 1.0:
        raise ImpairSpecError(
            f"impairment field {key!r}: {text!r} is a fraction above 1: write {text.strip()}% (a bare number is 0..1)"
        )
    if not 0.0 <= value <= 1.0:
        raise ImpairSpecError(f"impairment field {key!r}: {text!r} is outside 0..100%")
    return value


def _parse_time(key: str, text: str) -> float:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s)\s*", text)
    if m is None:
        raise ImpairSpecError(f"impairment field {key!r}: {text!r} is not a duration like 80ms or 2s")
    value = float(m.group(1)) / (1000.0 if m.group(2) == "ms" else 1.0)
    if value > 3600:
        raise ImpairSpecError(f"impairment field {key!r}: {text!r} is longer than an hour")
    return value


def parse_impairment(text: str) -> ImpairSpec:
    """A profile name or a spec string (see the module doc) -> ImpairSpec; ImpairSpecError names the bad field."""
    spec = ImpairSpec()
    seen: set[str] = set()
    items = [p.strip() for p in text.split(",")]
    if not text.strip():
        raise ImpairSpecError("impairment spec is empty: give a profile (" + ", ".join(PROFILES) + ") or key=value")
    for i, item in enumerate(items):
        if not item:
            raise ImpairSpecError(f"impairment spec {text!r}: empty field at position {i + 1}")
        if "=" not in item:
            name = item.lower()
            if name == "none":
                continue
            if i == 0 and name in PROFILES:
                spec = parse_impairment(PROFILES[name])
                continue
            raise ImpairSpecError(
                f"impairment field {item!r}: not key=value and not a profile (profiles: {', '.join(PROFILES)};"
                f" keys: {', '.join(_KEYS)})"
            )
        key, _, value = item.partition("=")
        key = key.strip().lower()
        if key not in _KEYS:
            raise ImpairSpecError(f"impairment field {key!r}: unknown key (known: {', '.join(_KEYS)})")
        if key in seen:
            raise ImpairSpecError(f"impairment field {key!r}: given twice")
        seen.add(key)
        if key == "loss":
            spec = replace(spec, loss=_parse_fraction(key, value))
        elif key == "dup":
            spec = replace(spec, dup=_parse_fraction(key, value))
        elif key == "delay":
            spec = replace(spec, delay=_parse_time(key, value))
        elif key == "jitter":
            spec = replace(spec, jitter=_parse_time(key, value))
        elif key == "burst":
            rate, sep, length = value.partition("/")
            if not sep:
                raise ImpairSpecError(f"impairment field 'burst': {value!r} is not RATE/LENGTH like 3%/4")
            bl = _parse_fraction(key, rate)
            try:
                ln = float(length)
            except ValueError:
                raise ImpairSpecError(f"impairment field 'burst': length {length!r} is not a number") from None
            if ln < 1:
                raise ImpairSpecError(f"impairment field 'burst': mean burst length {length!r} must be >= 1 packet")
            if bl >= 1:
                raise ImpairSpecError(f"impairment field 'burst': rate {rate!r} must be below 100%")
            spec = replace(spec, burst_loss=bl, burst_len=ln if bl else 0.0)
        else:  # blackout
            length_s, sep, at = value.partition("@")
            if not sep:
                raise ImpairSpecError(f"impairment field 'blackout': {value!r} is not LENGTH@START like 2s@30s")
            spec = replace(spec, blackout_len=_parse_time(key, length_s), blackout_at=_parse_time(key, at))
    return spec


DIRECTIONS = {"caller>cs": "caller_to_cs", "cs>caller": "cs_to_caller"}


@dataclass(frozen=True, slots=True)
class Impairment:
    """One spec per direction of the call's audio."""

    caller_to_cs: ImpairSpec
    cs_to_caller: ImpairSpec

    @property
    def is_null(self) -> bool:
        return self.caller_to_cs.is_null and self.cs_to_caller.is_null


def parse_directions(text: str) -> Impairment:
    """`impair` as a scenario or --impair gives it: one spec for both directions (`3g`), or per direction,
    `caller>cs: 3g; cs>caller: loss=5%` (a direction left out is unimpaired). ImpairSpecError names what is wrong."""
    if ";" not in text and ":" not in text:
        spec = parse_impairment(text)
        return Impairment(spec, spec)
    specs = _per_direction(text, DIRECTIONS)
    return Impairment(specs.get("caller_to_cs", ImpairSpec()), specs.get("cs_to_caller", ImpairSpec()))


BROWSER_DIRECTIONS = {"bridge>browser": "downlink", "browser>bridge": "uplink"}


@dataclass(frozen=True, slots=True)
class BrowserImpairment:
    """A browser participant's own path (bridge/participants.py): `downlink` what it receives (each party's
    stream), `uplink` a human's microphone on its way to the bridge (take-over only)."""

    downlink: ImpairSpec
    uplink: ImpairSpec

    @property
    def is_null(self) -> bool:
        return self.downlink.is_null and self.uplink.is_null


def parse_browser(text: str) -> BrowserImpairment:
    """A join's `impair`: one spec for both ways (`3g`), or `bridge>browser: SPEC; browser>bridge: SPEC` (a
    direction left out is unimpaired). ImpairSpecError names what is wrong."""
    if ";" not in text and ":" not in text:
        spec = parse_impairment(text)
        return BrowserImpairment(spec, spec)
    specs = _per_direction(text, BROWSER_DIRECTIONS)
    return BrowserImpairment(specs.get("downlink", ImpairSpec()), specs.get("uplink", ImpairSpec()))


def _per_direction(text: str, names: dict[str, str]) -> dict[str, ImpairSpec]:
    """`NAME: SPEC; NAME: SPEC` with NAME from `names` (-> its key), each at most once, at least one."""
    specs: dict[str, ImpairSpec] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        direction, sep, spec_text = part.partition(":")
        key = names.get(direction.strip().lower().replace(" ", ""))
        if not sep or key is None:
            a, b = names
            raise ImpairSpecError(
                f"impairment direction {direction.strip()!r}: write {a}: SPEC and/or {b}: SPEC, separated by ;"
            )
        if key in specs:
            raise ImpairSpecError(f"impairment direction {direction.strip()!r}: given twice")
        specs[key] = parse_impairment(spec_text)
    if not specs:
        raise ImpairSpecError("impairment spec is empty: give a profile (" + ", ".join(PROFILES) + ") or key=value")
    return specs

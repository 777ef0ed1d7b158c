"""The impairment stage (media/impair.py) driven by an injected clock and scheduler: exact, no waiting."""

from __future__ import annotations

import heapq
import itertools
import statistics
from collections.abc import Callable
from pathlib import Path

import pytest

from voicebridge.commands.call import with_impairment
from voicebridge.media.impair import ImpairedSink, ImpairedTap, ImpairStage
from voicebridge.media.passthrough import RtpAudio
from voicebridge.scenarios.impairment import (
    PROFILES,
    Impairment,
    ImpairSpec,
    ImpairSpecError,
    parse_browser,
    parse_directions,
    parse_impairment,
)
from voicebridge.scenarios.model import ScenarioError, load_scenario

FRAME = 0.020


class FakeLoop:
    """A virtual clock with call_later: run(n) pushes n packets 20 ms apart and fires what falls due."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._ids = itertools.count()

    def clock(self) -> float:
        return self.now

    def schedule(self, delay: float, fn: Callable[[], None]) -> object:
        heapq.heappush(self._heap, (self.now + delay, next(self._ids), fn))
        return None

    def advance(self, to: float) -> None:
        while self._heap and self._heap[0][0] <= to:
            at, _, fn = heapq.heappop(self._heap)
            self.now = at
            fn()
        self.now = to


def run(spec: ImpairSpec | str, n: int = 2000, seed: int = 7) -> tuple[ImpairStage, list[tuple[float, RtpAudio]]]:
    loop = FakeLoop()
    out: list[tuple[float, RtpAudio]] = []
    stage = ImpairStage(
        parse_impairment(spec) if isinstance(spec, str) else spec,
        lambda p, _source: out.append((loop.now, p)),
        seed=seed,
        clock=loop.clock,
        schedule=loop.schedule,
    )
    stage.start()
    for i in range(n):
        loop.advance(i * FRAME)
        stage.push(RtpAudio(bytes([i % 256]), i * 960, i & 0xFFFF, False, loop.now))
    loop.advance(n * FRAME + 3600)
    return stage, out


@pytest.mark.parametrize("loss", [0.01, 0.05, 0.10, 0.30])
def test_random_loss_within_one_point(loss: float) -> None:
    stage, out = run(ImpairSpec(loss=loss), n=4000)
    applied = stage.lost_random / stage.packets_in
    assert abs(applied - loss) < 0.01
    assert len(out) == 4000 - stage.lost_random
    # What reached the far end has gaps exactly where packets were dropped: the sequence numbers tell the loss.
    seqs = [p.sequence for _, p in out]
    assert seqs == sorted(seqs)
    assert 4000 - len(set(seqs)) == stage.stats()["dropped"]


def test_same_seed_same_fate_other_seed_differs() -> None:
    a = [p.sequence for _, p in run("lossy", seed=3)[1]]
    b = [p.sequence for _, p in run("lossy", seed=3)[1]]
    c = [p.sequence for _, p in run("lossy", seed=4)[1]]
    assert a == b
    assert a != c


def test_gilbert_elliott_bursts() -> None:
    stage, out = run("burst=5%/4", n=20000)
    assert abs(stage.lost_burst / 20000 - 0.05) < 0.01
    received = {p.sequence for _, p in out}
    bursts: list[int] = []
    length = 0
    for seq in range(20000):
        if seq in received:
            if length:
                bursts.append(length)
            length = 0
        else:
            length += 1
    mean = statistics.mean(bursts)
    assert 3.4 < mean < 4.6  # geometric with mean 4
    assert max(bursts) >= 10
    # Random loss of the same rate almost never loses 4 in a row: the bursts are what the model adds.
    _, rout = run("loss=5%", n=20000)
    rrecv = {p.sequence for _, p in rout}
    rlen = [0]
    for seq in range(20000):
        rlen.append(rlen[-1] + 1 if seq not in rrecv else 0)
    assert max(bursts) > max(rlen)


def test_delay_and_jitter_within_a_frame() -> None:
    stage, out = run("delay=80ms,jitter=30ms", n=2000)
    delays = [at - p.sequence * FRAME for at, p in out]  # packet i arrived at i * FRAME
    assert len(delays) == 2000
    assert abs(statistics.median(delays) - 0.080) < FRAME
    assert abs((max(delays) - min(delays)) / 2 - 0.030) < FRAME
    assert min(delays) >= 0.050 - 1e-9 and max(delays) <= 0.110 + 1e-9
    summary = stage.stats()["delay_ms"]
    assert abs(summary["p50"] - 80) < 20 and summary["count"] == 2000
    # Jitter beyond a frame reorders: the far end sees some packets after a later one.
    seqs = [p.sequence for _, p in out]
    late = sum(1 for a, b in itertools.pairwise(seqs) if b < a)
    assert late > 0 and stage.reordered > 0
    assert sorted(seqs) == list(range(2000))


def test_delay_without_jitter_keeps_order() -> None:
    stage, out = run("delay=200ms", n=500)
    assert [p.sequence for _, p in out] == list(range(500))
    assert all(abs(at - p.sequence * FRAME - 0.2) < 1e-9 for at, p in out)
    # The arrival the relay's latency figure starts from moves with the delay: it measures the bridge, not the net.
    assert all(abs(at - p.received_at) < 1e-9 for at, p in out)
    assert stage.reordered == 0


def test_duplication() -> None:
    stage, out = run("dup=5%", n=4000)
    assert abs(stage.duplicated / 4000 - 0.05) < 0.01
    assert len(out) == 4000 + stage.duplicated
    seqs = [p.sequence for _, p in out]
    assert len(seqs) - len(set(seqs)) == stage.duplicated
    # A duplicate carries the very payload bytes object (the original packet), not a copy or a re-encode.
    firsts: dict[int, RtpAudio] = {}
    for _, p in out:
        assert firsts.setdefault(p.sequence, p).payload is p.payload


def test_blackout_window() -> None:
    stage, out = run("blackout=2s@30s", n=2000)  # 40 s of packets
    got = {p.sequence for _, p in out}
    lost = [s for s in range(2000) if s not in got]
    assert lost == list(range(1500, 1600))  # 30.00 s .. 31.98 s
    assert stage.lost_blackout == 100 and stage.stats()["dropped"] == 100
    # On the caller's clock: the stage started 5 s into the call.
    assert stage.stats(origin_s=5.0)["blackout"] == {"start": 35.0, "end": 37.0}
    assert run("loss=1%", n=10)[0].stats()["blackout"] is None


def test_stats_shape() -> None:
    stage, _ = run("loss=10%,dup=1%,delay=40ms,jitter=20ms", n=2000)
    s = stage.stats()
    assert s["spec"] == "loss=10%,delay=40ms,jitter=20ms,dup=1%"
    assert s["packets_in"] == 2000
    assert s["forwarded"] == 2000 - s["dropped"] + s["duplicated"]
    assert s["applied_loss"] == round(s["dropped"] / 2000, 4)


def test_close_cancels_pending() -> None:
    loop = FakeLoop()
    out: list[RtpAudio] = []
    stage = ImpairStage(
        parse_impairment("delay=100ms"), lambda p, _s: out.append(p), clock=loop.clock, schedule=loop.schedule
    )
    stage.push(RtpAudio(b"x", 0, 0, False, 0.0))
    stage.close()
    loop.advance(1.0)
    stage.push(RtpAudio(b"y", 960, 1, False, 1.0))
    assert out == []


@pytest.mark.parametrize("name", list(PROFILES))
def test_profiles_parse_and_roundtrip(name: str) -> None:
    spec = parse_impairment(name)
    assert parse_impairment(spec.describe()) == spec


def test_spec_parse() -> None:
    spec = parse_impairment("loss=5%,jitter=30ms,delay=80ms,burst=2%/3,dup=0.5%,blackout=2s@30s")
    assert spec == ImpairSpec(
        loss=0.05, burst_loss=0.02, burst_len=3, delay=0.08, jitter=0.03, dup=0.005, blackout_len=2, blackout_at=30
    )
    assert parse_impairment("3g,loss=10%").loss == 0.10
    assert parse_impairment("3g,loss=10%").delay == parse_impairment("3g").delay
    assert parse_impairment("good").is_null


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("", "empty"),
        ("loss=5", "'loss'"),
        ("loss=150%", "'loss'"),
        ("loss=abc", "'loss'"),
        ("delay=80", "'delay'"),
        ("jitter=fast", "'jitter'"),
        ("burst=5%", "'burst'"),
        ("burst=5%/0.5", "'burst'"),
        ("burst=5%/x", "'burst'"),
        ("blackout=2s", "'blackout'"),
        ("blackout=2s@soon", "'blackout'"),
        ("latency=80ms", "'latency'"),
        ("loss=1%,loss=2%", "given twice"),
        ("wifi2", "'wifi2'"),
        ("loss=1%,,dup=1%", "empty field"),
    ],
)
def test_spec_errors_name_the_field(text: str, names: str) -> None:
    with pytest.raises(ImpairSpecError, match=names):
        parse_impairment(text)


def test_scenario_impair_key(tmp_path: Path) -> None:
    from tests.unit.test_scenario_file import GOOD, error_of, write

    path = write(tmp_path, GOOD.replace('max_duration_s = 90', 'max_duration_s = 90\nimpair = "3g"\nimpair_seed = 9'))
    scenario = load_scenario(path)
    assert (scenario.impair, scenario.impair_seed) == ("3g", 9)
    bad = write(tmp_path, GOOD.replace('max_duration_s = 90', 'max_duration_s = 90\nimpair = "loss=5,delay=80ms"'))
    message = error_of(bad)
    assert "impair" in message and "'loss'" in message and "write 5%" in message
    # --impair / --impair-seed override the file; a bad --impair is a scenario error naming the option and field.
    over = with_impairment(scenario, "loss=10%", 3)
    assert (over.impair, over.impair_seed) == ("loss=10%", 3)
    assert with_impairment(scenario, None, None) is scenario
    with pytest.raises(ScenarioError, match="--impair: impairment field 'jitter'"):
        with_impairment(scenario, "jitter=lots", None)


def test_per_direction_specs() -> None:
    both = parse_directions("3g")
    assert both == Impairment(parse_impairment("3g"), parse_impairment("3g"))
    split = parse_directions("caller>cs: loss=5%; cs>caller: satellite")
    assert split == Impairment(ImpairSpec(loss=0.05), parse_impairment("satellite"))
    assert parse_directions("cs>caller: loss=5%") == Impairment(ImpairSpec(), ImpairSpec(loss=0.05))
    assert parse_directions("caller>cs: good").is_null
    with pytest.raises(ImpairSpecError, match="direction 'agent>cs'"):
        parse_directions("agent>cs: loss=5%")
    with pytest.raises(ImpairSpecError, match="given twice"):
        parse_directions("caller>cs: loss=5%; caller>cs: loss=1%")
    with pytest.raises(ImpairSpecError, match="impairment field 'delay'"):
        parse_directions("caller>cs: delay=slow")


def test_a_delayed_packet_keeps_the_source_it_was_pushed_with() -> None:
    loop = FakeLoop()
    out: list[tuple[int, str]] = []
    stage = ImpairStage(
        parse_impairment("delay=100ms"), lambda p, s: out.append((p.sequence, s)), clock=loop.clock,
        schedule=loop.schedule,
    )
    stage.push(RtpAudio(b"x", 0, 0, False, 0.0), "caller")
    stage.push(RtpAudio(b"y", 0, 7, False, 0.0), "human1")  # the source changed while packet 0 waits
    loop.advance(1.0)
    assert out == [(0, "caller"), (7, "human1")]


class FakeOut:
    """OutboundAudio's send side: drops (and counts) the first `unconnected` packets, then 'sends' them."""

    def __init__(self, unconnected: int) -> None:
        self.unconnected = unconnected
        self.packets_sent = self.dropped = 0
        self.sent: list[tuple[int, str]] = []

    def send(self, pkt: RtpAudio, source: str = "") -> None:
        if self.unconnected:
            self.unconnected -= 1
            self.dropped += 1
            return
        self.packets_sent += 1
        self.sent.append((pkt.sequence, source))


def test_sink_knows_the_loss_a_receiver_of_its_first_packets_counts() -> None:
    out = FakeOut(unconnected=25)
    sink = ImpairedSink(out, parse_impairment("loss=10%"), seed=3)  # type: ignore[arg-type]
    for i in range(3000):
        sink.send(RtpAudio(b"x", i * 960, i & 0xFFFF, False, 0.0), "cs")
    assert out.packets_sent + out.dropped == sink.stage.stats()["forwarded"] == 3000 - sink.stage.dropped
    assert all(source == "cs" for _, source in out.sent)
    # A receiver holding the first n packets sent counts expected - received, expected from its sequence span.
    for n in (1, 2, 10, 500, out.packets_sent):
        seqs = [s for s, _ in out.sent[:n]]
        lost = (seqs[-1] - seqs[0] + 1) - n
        assert sink.visible_loss(n) == lost
    assert 0 < sink.visible_loss(out.packets_sent) <= sink.stage.dropped


def test_tap_hands_on_only_what_survives() -> None:
    class FakeTap:
        packets = bytes = 0

        def __init__(self) -> None:
            self.subs: list[Callable[[RtpAudio], None]] = []

        def subscribe(self, fn: Callable[[RtpAudio], None]) -> Callable[[], None]:
            self.subs.append(fn)
            return lambda: self.subs.remove(fn)

    tap = FakeTap()
    impaired = ImpairedTap(tap, parse_impairment("loss=20%"), seed=5)  # type: ignore[arg-type]
    got: list[int] = []
    impaired.subscribe(lambda p: got.append(p.sequence))
    for i in range(1000):
        for fn in list(tap.subs):
            fn(RtpAudio(b"x", i * 960, i, False, 0.0))
    s = impaired.stage.stats()
    assert len(got) == 1000 - s["dropped"] == s["forwarded"] and s["dropped"] == s["lost_random"] > 0
    impaired.close()
    assert tap.subs == []


def test_browser_spec_both_ways_or_per_direction() -> None:
    both = parse_browser("wifi")
    assert both.downlink == both.uplink == parse_impairment("wifi")
    one = parse_browser("bridge>browser: loss=5%")
    assert (one.downlink.describe(), one.uplink.describe()) == ("loss=5%", "none")
    two = parse_browser("browser>bridge: delay=80ms; bridge>browser: 3g")
    assert (two.downlink, two.uplink) == (parse_impairment("3g"), parse_impairment("delay=80ms"))
    with pytest.raises(ImpairSpecError, match=r"'caller>cs'.*bridge>browser: SPEC and/or browser>bridge: SPEC"):
        parse_browser("caller>cs: loss=5%")
    with pytest.raises(ImpairSpecError, match="'loss'"):
        parse_browser("bridge>browser: loss=150%")

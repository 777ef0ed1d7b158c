"""What a call produces, as typed records: its summary (summary.json, `voicebridge call --json`, the REST API), the
records it is built from (tool calls, transcript lines, per-turn latency, legs, relay stats) and the rule that
says whether a call succeeded.

Everything here is a frozen pydantic model (a relay's stats are a TypedDict that keeps its relay's own keys). The
code works on these objects and turns them into JSON only at the edges, with `model_dump(mode="json")`; any of
them comes back from that JSON with `model_validate` / `model_validate_json` equal to what it was (a call record
crossing a process boundary, a summary.json read back). The JSON keeps the shapes the files and the API have
always had, key for key.

Units: times on the call's clock are seconds since the call started (`t`, `start`, `end`, `speech_end`); wall
clock times are Unix seconds (`started_at`); a field ending in `_ms` is milliseconds, in `_s` seconds.

At the bottom of the import graph: it imports nothing from voicebridge, so any module may import it.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    SerializerFunctionWrapHandler,
    model_serializer,
    with_config,
)
from typing_extensions import TypedDict

CallState = Literal["connecting", "live", "ending", "ended"]
EndReason = Literal[
    "caller_hangup", "human_hangup", "operator_hangup", "leg_failed", "max_duration", "idle_timeout", "error",
    "shutdown", "worker_lost",
]
# The one rule for "this call succeeded": it ended because someone hung up on purpose, the caller agent (it said
# goodbye and called hangup()) or the operator (the console's or the CLI's hang-up). Everything else (a failed
# leg, a timeout, an error, a human who took over and hung up, a server shutdown) is a failure. A call whose
# scenario has pass criteria must also pass them (CallSummary.succeeded).
SUCCESS_END_REASONS: frozenset[str] = frozenset({"caller_hangup", "operator_hangup"})


def succeeded(end_reason: str | None) -> bool:
    """Whether a call that ended with this `end_reason` succeeded (see SUCCESS_END_REASONS)."""
    return end_reason in SUCCESS_END_REASONS


class EventRecord(TypedDict):
    """One line of events.jsonl and the Call's "event" emission: an event of either leg, as it came or went."""

    t: float
    """Seconds since the call started (4 decimals)."""
    leg: str
    """"caller" or "cs"; "bridge" for a note."""
    direction: Literal["in", "out", "note"]
    """"in": a server event the leg received; "out": a client event the bridge sent; "note": something the
    bridge itself records in the call's stream (a participant joined, a take-over...)."""
    event: dict[str, Any]
    """The Realtime event itself, as JSON (arbitrary: the API's own shapes)."""


class Record(BaseModel):
    """A frozen record: no field can be reassigned, unknown keys are refused when read back."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class ToolCallRecord(Record):
    """One function call an agent made and what the bridge answered (summary.json `tool_calls`, the "tool_call"
    event). Refused and failed calls are records too, with `ok` false."""

    leg: str
    """The leg whose model made the call: "cs" (its tools) or "caller" (only hangup() is allowed)."""
    call_id: str
    """The Realtime API's id of the function call."""
    name: str
    arguments: JsonValue
    """The arguments as parsed JSON; the text as sent (cut to 200 characters) when it was not valid JSON."""
    output: str
    """What was sent back as the function_call_output: the tool's JSON result, or a JSON error."""
    ok: bool
    """The tool ran and returned; false for unknown tools, bad arguments, exceptions, timeouts, refusals."""
    error: str | None
    """Why it is not ok (the same text as the error in `output`)."""
    duration_ms: float
    """Tool execution time, milliseconds (2 decimals)."""
    sent: bool
    """The output reached the leg; false when the call had ended before the tool finished."""
    t: float
    """When the result was recorded, seconds since the call started (3 decimals)."""


class TranscriptLine(Record):
    """One line of the transcript (transcript.json, summary.json `turns` and `heard`, the "turn" event).

    `kind` "said": an agent's words, from its own output transcript, timed by its audio playing out. "heard": the
    other leg's transcription of those words, proof that the relayed audio reached it."""

    gap_s: float | None
    """For a "said" line: seconds from the other agent's audio stopping to this line's audio starting (the
    response gap a listener hears); None for the first line and for "heard" lines."""
    speaker: str
    """Who spoke: "caller" or "cs"."""
    text: str
    start: float
    """Seconds since the call started (3 decimals): audio started ("said"), speech detected ("heard")."""
    end: float
    """Seconds since the call started (3 decimals): audio stopped ("said"), speech ended ("heard")."""
    kind: Literal["said", "heard"]
    leg: str
    """The leg whose events this line comes from: the speaker's for "said", the listener's for "heard"."""
    item_id: str
    """The conversation item on that leg."""
    played_ms: float | None = None
    """For a "said" line cut off by a barge-in: the milliseconds of its audio that played before the leg truncated
    it (`conversation.item.truncated`'s `audio_end_ms`); the listener heard only about that much of `text`, which
    is the whole response as generated. None when the line played whole."""


class TurnRecord(Record):
    """One turn's latency as seen at the bridge (bridge/turns.py): from the last speech packet of one party to the
    first speech packet of the other's reply, with the bridge's own share separated out. All in milliseconds
    except the two instants."""

    model_config = ConfigDict(serialize_by_alias=True)

    # `from` in JSON; `from_` in Python, where `from` is a keyword (read back from either).
    from_: str = Field(validation_alias=AliasChoices("from", "from_"), serialization_alias="from")
    """The party that stopped speaking ("caller" or "cs"; a human who took over counts as "caller")."""
    to: str
    """The party that replied."""
    speech_end: float
    """Arrival of `from`'s last speech packet, seconds since the call started (4 decimals)."""
    reply_start: float
    """Arrival of `to`'s first speech packet, seconds since the call started (4 decimals)."""
    total_ms: float
    """reply_start - speech_end, milliseconds."""
    bridge_ms: float
    """The bridge's share, milliseconds: relay_ms + tools_ms + gating_ms."""
    relay_ms: float
    """The relay's forwarding time of the two packets around the gap, milliseconds."""
    tools_ms: float
    """Tool execution on the replying leg inside the gap, milliseconds."""
    gating_ms: float
    """The bridge holding the replying leg's next response.create until the leg was idle, milliseconds."""
    other_ms: float
    """total_ms - bridge_ms: the agents' and the API's part (end-of-speech detection, generation)."""


class P50Max(Record):
    """Median and maximum of a figure over a call's turns."""

    p50: float
    max: float


class TurnLatencySummary(Record):
    """Per-turn latency of a call (summary.json `turn_latency`); the aggregates are None when no turn was
    measured (a relay without packet hooks, or one party only ever spoke)."""

    turns: list[TurnRecord]
    count: int
    total_ms: P50Max | None
    bridge_ms: P50Max | None
    relay_ms: P50Max | None


class SpeechInterval(Record):
    """A stretch of one party's speech on the call's clock (bridge/turns.py): from its first speech packet's
    arrival to its last one's plus one frame; pauses shorter than turns.py's QUIET_S stay inside it."""

    start: float
    """Seconds since the call started (4 decimals)."""
    end: float


class Overlap(Record):
    """Both parties talking at once (lab/timing.py)."""

    start: float
    end: float
    duration_s: float
    by: str | None
    """Who came in on the other (whose speech started later); None when both started at the same instant."""


class Interruption(Record):
    """One party cut in on the other, who then stopped (lab/timing.py): `by` started while `of` was talking,
    `of` stopped within the yield window after that and `by` was still talking when it did."""

    by: str
    of: str
    at: float
    """When `by` started talking, seconds since the call started."""
    yielded_at: float
    """When `of` stopped talking."""
    time_to_yield_ms: float
    """yielded_at - at, milliseconds: how long the interrupted party kept talking."""


class Silence(Record):
    """Nobody talking, between two stretches of speech (lab/timing.py)."""

    start: float
    end: float
    duration_s: float


class TurnTiming(Record):
    """The gap before one reply (from the turn records of bridge/turns.py)."""

    model_config = ConfigDict(serialize_by_alias=True)

    from_: str = Field(validation_alias=AliasChoices("from", "from_"), serialization_alias="from")
    to: str
    at: float
    """When the reply started (TurnRecord.reply_start)."""
    gap_ms: float
    """TurnRecord.total_ms."""


class GapPercentiles(Record):
    """Nearest-rank p50 and p95, milliseconds."""

    p50: float
    p95: float


class CallTiming(Record):
    """The call's timing and talk-over analysis (summary.json `timing`; lab/timing.py, definitions in
    docs/lab.md). Names follow LiveKit's simulation metrics where one exists (overlap_ratio, time_to_yield_ms)."""

    speech: dict[str, list[SpeechInterval]]
    """Per party ("caller", "cs"), its speech intervals in order."""
    speech_s: float
    """Seconds during which at least one party was talking."""
    overlaps: list[Overlap]
    overlap_s: float
    """Total seconds during which both were talking."""
    overlap_ratio: float | None
    """overlap_s / speech_s (4 decimals); None when nobody spoke."""
    interruptions: list[Interruption]
    time_to_yield_ms: float | None
    """Median of the interruptions' time_to_yield_ms; None without interruptions."""
    yield_window_s: float
    """How soon after being cut in on a party must stop for it to count as an interruption."""
    silences: list[Silence]
    """Silences of at least `silence_threshold_s` between the first and the last speech."""
    silence_threshold_s: float
    max_silence_s: float
    """The longest silence between the first and the last speech (0.0 with fewer than two stretches)."""
    turns: list[TurnTiming]
    turn_gap_ms: GapPercentiles | None
    """Over `turns`; None without turns."""


class CriterionVerdict(Record):
    """What one pass criterion of the scenario (an `[[expect]]` entry) found when the call ended (summary.json
    `criteria`; voicebridge/lab/criteria.py)."""

    name: str
    """The entry's `name`."""
    kind: str
    """What it checks: tool, no_tool, query, check, said, heard, end_reason, max_duration_s, max_turn_gap_ms,
    max_overlap_s, max_silence_s, max_interruptions, judge."""
    passed: bool
    """It ran and held. False when it failed or was skipped."""
    skipped: bool
    """It did not run (a judge without a model): neither passed nor failed, and not counted against the call."""
    detail: str
    """One line for people: what was found, or why it failed or was skipped."""
    evidence: JsonValue
    """What the verdict rests on: the matching (or offending) tool call record, the query's value, the
    transcript line, the measured figure; None when there is nothing to show (no such call, no such line)."""


def criteria_passed(verdicts: list[CriterionVerdict]) -> bool | None:
    """The call's verdict over its criteria: every criterion that ran passed (skipped ones do not count); None
    for a call without criteria."""
    if not verdicts:
        return None
    return all(v.passed for v in verdicts if not v.skipped)


class LegSummary(Record):
    """One agent leg of a call (summary.json `legs`)."""

    role: str
    """"caller" or "cs"."""
    call_id: str | None
    """The Realtime session's id, once created."""
    state: str
    """The leg's state when the summary was taken (realtime/leg.py LegState)."""
    failure: str | None
    """Why the leg failed, when it did."""
    stats: dict[str, JsonValue]
    """The leg's last stats() taken before it closed (realtime/leg.py LegStats and its transport's keys) plus
    `final_state` once hung up; `{"error"}` when they could not be taken; empty while the leg is open."""


@with_config(ConfigDict(extra="allow"))
class RelayStats(TypedDict):
    """What every relay's `stats()` holds (media/relay.py): its `kind`, then that relay's own counters, which
    each relay declares as a TypedDict extending this one (bridge/audio.py PassthroughStats, realtime/transports.py
    PcmRelayStats, bench/transcode.py TranscodeStats) and which a summary keeps as they are."""

    kind: str
    """The relay's `kind`: "passthrough", "pcm" or "transcode"."""


class DelaySummary(TypedDict):
    count: int
    p50: float
    p95: float
    max: float


class BlackoutWindow(TypedDict):
    """When a direction's blackout dropped every packet, seconds since the call started."""

    start: float
    end: float


class ImpairStats(TypedDict):
    """What one direction's network impairment stage applied (media/impair.py), delays in milliseconds."""

    spec: str
    seed: int
    packets_in: int
    dropped: int  # all causes: lost_random + lost_burst + lost_blackout
    lost_random: int
    lost_burst: int
    lost_blackout: int
    duplicated: int
    reordered: int  # forwarded with a lower sequence number than one forwarded before it
    forwarded: int  # handed to the relay, duplicates included
    applied_loss: float  # dropped / packets_in
    delay_ms: DelaySummary
    blackout: NotRequired[BlackoutWindow | None]  # the spec's blackout on the call's clock (absent in older files)


class BrowserImpairStats(TypedDict):
    """What one browser participant's own path applied (a join's `impair`; bridge/participants.py)."""

    participant_id: str
    role: str  # "listen" or "takeover"
    downlink: dict[str, ImpairStats]  # per party stream the browser receives: "caller", "cs" (a human: "cs")
    uplink: ImpairStats | None  # a human's microphone -> the bridge; None for a listener


class RelayStatsError(TypedDict):
    """In place of the relay's stats when taking them failed."""

    error: str


class CallSummary(Record):
    """Everything about one call (summary.json, `voicebridge call --json`, GET /api/calls/{id}, the "ended"
    event). Taken at any time; final once `state` is "ended"."""

    call_id: str
    scenario: str
    """The scenario's name."""
    title: str
    """The scenario's title."""
    state: CallState
    end_reason: EndReason | None
    """Why the call ended (None until it is ending); `succeeded` says what counts as a success."""
    ended_by: str | None
    """Who ended it: "caller", "cs", "human", "operator", "bridge", "server", "batch"..."""
    error: str | None
    """What went wrong, for end reasons such as `error` and `leg_failed`."""
    started_at: float
    """When the call was created, Unix seconds."""
    duration_s: float
    """Seconds from creation to the end, its legs hung up (so far, while it runs; 3 decimals). The recording.wav
    export that follows is not part of it."""
    turns: list[TranscriptLine]
    """What the agents said, in order ("said" lines)."""
    heard: dict[str, list[TranscriptLine]]
    """Per listening leg ("caller", "cs"), what it transcribed of the other ("heard" lines)."""
    tool_calls: list[ToolCallRecord]
    legs: list[LegSummary]
    relay: RelayStats | RelayStatsError | None
    """The relay's stats (None when the call never got as far as relaying)."""
    impairment: dict[str, ImpairStats] | None = None
    """What network impairment applied per direction ("caller_to_cs", "cs_to_caller"; media/impair.py), None
    when the call ran unimpaired (scenario `impair`, `voicebridge call --impair`)."""
    browser_impairment: list[BrowserImpairStats] = []
    """Per browser participant that joined with an `impair` of its own, what its path applied (docs/impairment.md)."""
    turn_latency: TurnLatencySummary
    artifacts: dict[str, str]
    """Artifact name -> file name in the call's folder: events, transcript, transcript_txt, summary, and once
    recorded recording_<party> (WebM) and recording_wav."""
    events: int
    """Events written to events.jsonl."""
    out_dir: str
    """The call's folder."""
    criteria: list[CriterionVerdict] = []
    """The verdict of each of the scenario's pass criteria (`[[expect]]`), in the file's order, once the call
    has ended; empty before that and for a scenario without criteria."""
    passed: bool | None = None
    """Every criterion that ran passed (criteria_passed); None while there are no verdicts."""
    timing: CallTiming | None = None
    """The timing and talk-over analysis off the relay's packets (lab/timing.py); None for a relay without
    packet hooks (two WebSocket legs)."""

    @property
    def succeeded(self) -> bool:
        """The call succeeded: it ended as SUCCESS_END_REASONS says and, when it has criteria, they passed."""
        return succeeded(self.end_reason) and self.passed is not False


# -- batches ---------------------------------------------------------------------------------------------------


class BatchCall(Record):
    """One call of a batch as the batch runner saw it (batch/runner.py)."""

    summary: CallSummary
    """The call's own summary; for a call that crashed before it had one, a summary the runner made up with
    end_reason "error" and the reason in `error`."""
    setup_s: float | None
    """Seconds from creating the call to it going live (both legs up, context synced); None if it never did."""
    worker: str | None = None
    """The bridge worker that ran the call (`voicebridge batch --redis`); None when the batch ran it itself."""
    attempt: int = 1
    """1, or 2 when the call was run again after its first worker was lost."""
    lost_worker: str | None = None
    """For attempt 2: the worker the first attempt was lost on (killed or cut off mid-call)."""
    refusals: int = 0
    """Times the Realtime server refused to create its sessions (429/503: at capacity) before it ran; each
    was retried after a back-off (batch/runner.py RetryPolicy)."""
    retry_wait_s: float = 0.0
    """Seconds spent backing off after those refusals."""
    gave_up: bool = False
    """Refused on every attempt: it never started (a failure; `summary.error` says so)."""


_MEASURED = ("mean", "p50", "p90", "p99", "max")


class Percentiles(Record):
    """A figure over many values (nearest-rank percentiles). With no values only `count` (0) is written."""

    count: int
    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    max: float | None = None

    @model_serializer(mode="wrap")
    def _written(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # {"count": 0} rather than five nulls: the shape report.json has always had.
        data: dict[str, Any] = handler(self)
        for key in _MEASURED:
            if data.get(key, 0) is None:
                del data[key]
        return data


class TurnGap(Record):
    """One turn's latency in a batch report and in the metrics (observability/metrics.py `turn_latencies`)."""

    responder: str
    """Who replied: "caller" or "cs"."""
    after: str | None = None
    """Whom it replied to; given for "transcript" rows only (a "bridge" row is always the other party)."""
    latency_s: float
    """The gap, seconds: last speech packet -> first reply packet ("bridge"), or the end of the previous
    transcript line -> the start of the reply's ("transcript", at least 0: a barge-in counts as 0)."""
    source: Literal["bridge", "transcript"]
    """"bridge": measured on the audio packets by the bridge (bridge/turns.py); "transcript": the gap between
    transcribed turns, when the call has no such measurement."""
    bridge_ms: float | None = None
    """For a "bridge" row: the bridge's own share of the gap, milliseconds."""

    @model_serializer(mode="wrap")
    def _written(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for key in ("after", "bridge_ms"):
            if data.get(key, 0) is None:
                del data[key]
        return data


class TurnLatencyStats(Percentiles):
    """Turn latency over a batch's calls, seconds (report.json `turn_latency_s`)."""

    source: str | None
    """Where the rows come from: "bridge", "transcript" or both ("bridge+transcript"); None with no rows."""
    by_responder: dict[str, Percentiles]
    """The same, per party that replied."""
    bridge_share_ms: Percentiles
    """The bridge's share of each turn (relay, tools, response gating), milliseconds; "bridge" rows only."""


class ToolStats(Record):
    """One tool over a batch (report.json `tool_calls.by_tool["<leg>.<name>"]`)."""

    count: int
    errors: int
    error_messages: list[str]
    """The first few distinct errors, 300 characters at most each."""
    duration_ms: Percentiles
    """Execution time, milliseconds."""


class ToolCallStats(Record):
    """report.json `tool_calls`."""

    total: int
    errors: int
    by_tool: dict[str, ToolStats]
    """Keyed "<leg>.<name>", sorted."""


class CallError(Record):
    """A call that did not succeed, in one line (report.json `errors`, the soak's `failures`)."""

    call_id: str
    end_reason: str | None
    error: str | None


class SpokenTurn(Record):
    """A "said" transcript line as a batch report shows it."""

    speaker: str
    text: str
    start: float
    """Seconds since the call started."""
    end: float


class ToolCallBrief(Record):
    """A tool call as a batch report shows it (the output is in the call's summary.json)."""

    leg: str
    name: str
    arguments: JsonValue
    ok: bool
    error: str | None
    duration_ms: float


class TurnGapFigures(Record):
    """Nearest-rank p50 / p95 of turn gaps, milliseconds; null without turns."""

    p50: float | None
    p95: float | None


class RunTiming(Record):
    """The headline figures of a call's timing analysis (CallTiming, docs/lab.md), as reports show them
    (`voicebridge test`'s runs, a batch report's `calls[].timing`; lab/report.py run_timing)."""

    overlap_s: float
    overlap_ratio: float | None
    interruptions: int
    time_to_yield_ms: float | None
    turn_gap_ms: TurnGapFigures
    max_silence_s: float


class BatchTiming(Record):
    """Timing and talk-over over a batch's calls (report.json `timing`), from the calls that have a timeline."""

    calls: int
    """Calls with a timing analysis (a call between two WebSocket legs has none)."""
    overlap_s: Percentiles
    """Per call, seconds."""
    overlap_ratio: Percentiles
    """Per call (those where somebody spoke)."""
    interruptions: int
    """All calls' interruptions."""
    calls_with_interruptions: int
    time_to_yield_ms: Percentiles
    """Over every interruption of every call, milliseconds."""
    turn_gap_ms: TurnGapFigures
    """Nearest-rank p50 / p95 over every turn of every call (the rule of `max_turn_gap_ms`)."""
    max_silence_s: Percentiles
    """Per call, its longest silence."""


class CallRow(Record):
    """One call of a batch report (report.json `calls`)."""

    call_id: str
    ok: bool
    """The call succeeded (CallSummary.succeeded)."""
    end_reason: str | None
    ended_by: str | None
    error: str | None
    duration_s: float
    setup_s: float | None
    """Seconds from creation to live; None if it never went live."""
    refusals: int = 0
    """Times its creation was refused (429/503) and retried (BatchCall.refusals)."""
    turns: list[SpokenTurn]
    turn_latency: list[TurnGap]
    tool_calls: list[ToolCallBrief]
    links: dict[str, str]
    """File name -> path relative to the report's folder, for each of the call's artifacts that exists."""
    worker: str | None = None
    """The bridge worker that ran the call (`voicebridge batch --redis`); None when the batch ran it itself."""
    attempt: int = 1
    """2 when the call ran again after its first worker was lost."""
    lost_worker: str | None = None
    """For attempt 2: the worker the first attempt was lost on."""
    timing: RunTiming | None = None
    """Its timing figures; None when the call has no timing analysis."""


class BatchReport(Record):
    """A batch's report (report.json; its headline, without `calls`, is `voicebridge batch --json`)."""

    version: int
    batch_id: str
    scenario: str
    title: str
    backend: Literal["openai", "emulator"]
    base_url: str
    model: str
    started_at: float
    """Unix seconds."""
    wall_s: float
    """Seconds the whole batch took."""
    concurrency: int
    interrupted: bool
    """Stopped early (Ctrl-C): the report covers the calls that ran."""
    total: int
    succeeded: int
    failed: int
    success_rate: float
    """succeeded / total (0.0 for no calls), 4 decimals."""
    end_reasons: dict[str, int]
    """end_reason -> calls, most common first."""
    errors: list[CallError]
    """The first 20 calls that did not succeed."""
    duration_s: Percentiles
    setup_s: Percentiles
    tool_calls: ToolCallStats
    turn_latency_s: TurnLatencyStats
    timing: BatchTiming | None = None
    """Timing and talk-over over the calls (None in reports written before it existed)."""
    workers: dict[str, int] = {}
    """Worker id -> calls it ran (`voicebridge batch --redis`); empty when the batch ran its calls itself."""
    calls: list[CallRow]
    refusals: int = 0
    """Creations the Realtime server refused (429/503: at capacity), each retried after a back-off."""
    retried: int = 0
    """Calls refused at least once (and then retried)."""
    gave_up: int = 0
    """Calls refused on every attempt: failed without ever starting (their error says so)."""
    peak_live: int = 0
    """The most calls live at once (set up and not yet ended): whether `concurrency` calls really ran together."""

    def headline(self) -> dict[str, Any]:
        """The report without its per-call rows, as JSON (for --json and the console)."""
        return self.model_dump(mode="json", exclude={"calls"})

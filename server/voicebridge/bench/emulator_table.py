"""The emulator bench's markdown tables, from its result."""

from __future__ import annotations

from typing import Any

from .emulator_phases import NEW_AUDIO, NEW_TURNS, TURN_PHASES


def p99(side: dict[str, Any]) -> Any:
    p99 = side["loop_lag_ms"].get("p99")
    return "-" if p99 is None else round(p99, 1)


def _share(value: Any) -> str:
    return "-" if value is None else f"{value} %"


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:g}"


def table(result: dict[str, Any]) -> str:
    lines = [
        f"Emulator CPU per session (% of one core), {result['window_s']:g} s windows after {result['settle_s']:g} s "
        "of settling, both emulators measured in the same windows; before = the emulator before issue 17, "
        f"now = as shipped (`{NEW_AUDIO}`: hearing with its remembered turns off, every turn recognised):",
        "",
        "| sessions | phase | before | now | of which recognition workers | decoded now | "
        "turns recognised / remembered now | loop lag p99 before / now | machine busy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for sessions, level in result["levels"].items():
        for phase, row in level["phases"].items():
            if phase in TURN_PHASES:
                continue
            lines.append(
                f"| {sessions} | {phase} | {row['baseline']['cpu_pct_per_session']} % | "
                f"{row['now']['cpu_pct_per_session']} % | "
                f"{_share(row['now'].get('recognition_cpu_pct_per_session'))} | "
                f"{row['now']['decoded_pct']} % of {row['now']['packets_in']} packets | "
                f"{row['now'].get('turns_recognised', '-')} / {row['now'].get('turns_remembered', '-')} | "
                f"{p99(row['baseline'])} / {p99(row['now'])} ms | "
                f"{row['machine_busy_cores']} cores (load {row['loadavg_1m']}) |"
            )
    lines += [
        "",
        f"Turn gap (the peer's line ends -> the emulator's answer's first audio), ms, p50 / p90, "
        f"{result['turns_per_session']} turn(s) per session asked (`now, new audio`: "
        f"{result.get('new_audio_turns_per_session', '-')}, with its remembered turns off, every turn recognised, "
        "measured after the others in the same connections); parts p50; late starts: responses whose output "
        "started after the think time was over (the work before it did not fit in it, so the gap grew); loop "
        "lag p99 (the emulator's, and the process where its peers run):",
        "",
        "| sessions | emulator | turns timed (understood; answers cut off) | recognised / remembered | gap | "
        "VAD decision | recognition | response start | first audio | late starts | CPU/session | "
        "emulator loop lag | bench loop lag | machine busy |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for sessions, level in result["levels"].items():
        rows = [
            (level["phases"].get(phase), kind, label)
            for phase, kind, label in (
                ("turns", "baseline", "before"), ("turns", "now", "now"), (NEW_TURNS, "now", "now, new audio")
            )
        ]
        for row, kind, label in rows:
            if row is None:
                continue
            t = row[kind]["turn"]
            lines.append(
                f"| {sessions} | {label} | {t['timed']} ({t['understood']}; {t['cut']}) | "
                f"{row[kind].get('turns_recognised', '-')} / {row[kind].get('turns_remembered', '-')} | "
                f"{_ms(t['gap']['p50'])} / {_ms(t['gap']['p90'])} | {_ms(t['vad']['p50'])} | "
                f"{_ms(t['recognition']['p50'])} | {_ms(t['response_start']['p50'])} | "
                f"{_ms(t['first_audio']['p50'])} | {row[kind].get('late_starts', '-')} | "
                f"{row[kind]['cpu_pct_per_session']} % | {p99(row[kind])} ms | "
                f"{p99({'loop_lag_ms': row['bench_loop_lag_ms'][kind]})} ms | {row['machine_busy_cores']} cores "
                f"(load {row['loadavg_1m']}) |"
            )
    return "\n".join(lines)

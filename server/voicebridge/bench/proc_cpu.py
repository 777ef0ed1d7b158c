"""CPU seconds so far, read from /proc: a process with its descendants, and the whole machine."""

from __future__ import annotations

import os
from pathlib import Path


def proc_table(argv: bool = False) -> dict[int, tuple[int, float, list[str]]]:
    """pid -> (parent pid, user + system CPU seconds so far, argv: [] unless asked) of every process."""
    table: dict[int, tuple[int, float, list[str]]] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            args = (entry / "cmdline").read_bytes().split(b"\0") if argv else []
        except OSError:  # gone meanwhile
            continue
        cpu = (int(fields[11]) + int(fields[12])) / tick
        table[int(entry.name)] = (int(fields[1]), cpu, [a.decode(errors="replace") for a in args])
    return table


def process_cpu_s(pid: int) -> tuple[float, float]:
    """User + system CPU seconds so far of a process and its live descendants (the emulator's recognition
    workers do its work too), and of the process alone."""
    stats = proc_table()
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += stats.get(current, (0, 0.0, []))[1]
        todo.extend(child for child, (parent, _, _) in stats.items() if parent == current)
    return total, stats.get(pid, (0, 0.0, []))[1]


def machine_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores."""
    parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = parts[3] + parts[4]
    return (sum(parts) - idle) / tick, sum(parts) / tick

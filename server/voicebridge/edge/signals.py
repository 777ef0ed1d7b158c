"""How a server process is told to stop: SIGINT (Ctrl-C) or SIGTERM (a supervisor), the same way for `serve`, the
front door, a worker and the emulator."""

from __future__ import annotations

import asyncio
import signal


def stop_on_signals() -> asyncio.Event:
    """An event set on SIGINT or SIGTERM, for the running loop: the process awaits it, then shuts down in order
    (something else may set it too, e.g. a worker whose parent is gone)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop

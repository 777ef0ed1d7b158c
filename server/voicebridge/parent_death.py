"""Worker processes that do not outlive the process that started them.

ProcessPoolExecutor stops its workers only on an orderly exit: a parent that is SIGTERMed or killed leaves them
running (each holds the queue's both ends, so it never sees an end of file), holding the parent's stdout and stderr
open (whoever waits for the parent's output to end waits forever) and their memory. ``die_with_parent`` is a
worker's initializer that prevents it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent dies
PARENT_POLL_S = 1.0  # where prctl is not available: how often a worker checks that its parent is alive


def die_with_parent(parent: int) -> None:
    """Exit when the process `parent` (the one that started this worker) is gone, however it ended.

    Linux delivers SIGKILL on the parent's death (prctl PR_SET_PDEATHSIG; it fires when the thread that spawned the
    worker ends: start workers from the thread that lives as long as the process, e.g. its event loop's). Elsewhere,
    and for a parent that died before the prctl took effect, a daemon thread checks the parent's pid."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(0)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()

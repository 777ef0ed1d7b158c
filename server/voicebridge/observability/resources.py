"""What a process holds, measured the same way each time: file descriptors, asyncio tasks, Python and OS
threads, RSS (after a full garbage collection and malloc_trim, so it is memory in use) and live
RTCPeerConnection objects. Used by the soak to compare before and after many calls."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import threading
from dataclasses import dataclass

# The event loop's default executor names its workers after the loop: "asyncio_N" on asyncio's, "uvloop_N" on
# uvloop's (the bridge's default loop); both are the bounded pool, not threads a call leaked.
POOL_THREAD_PREFIXES = ("asyncio_", "uvloop_")


def is_pool_thread(thread: threading.Thread) -> bool:
    return thread.name.startswith(POOL_THREAD_PREFIXES)


@dataclass(frozen=True)
class Resources:
    fds: int
    tasks: int
    threads: int  # Python threads, not counting the event loop's default executor (idle workers stay)
    pool_threads: int  # that executor's workers (asyncio.to_thread): bounded by its max_workers
    os_threads: int  # every thread of the process, native ones (codecs, OpenSSL) included
    rss_mb: float
    peer_connections: int

    @classmethod
    def now(cls) -> Resources:
        gc.collect()
        malloc_trim()
        return cls(
            fds=count_fds(),
            tasks=len(asyncio.all_tasks()),
            threads=sum(1 for t in threading.enumerate() if not is_pool_thread(t)),
            pool_threads=sum(1 for t in threading.enumerate() if is_pool_thread(t)),
            os_threads=os_threads(),
            rss_mb=round(rss_kb() / 1024.0, 1),
            peer_connections=peer_connections(),
        )


def count_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # not Linux: count what the process can still stat
        import resource

        limit = min(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 65536)
        n = 0
        for fd in range(limit):
            try:
                os.fstat(fd)
                n += 1
            except OSError:
                pass
        return n


def malloc_trim() -> None:
    """Hand memory that is free but still held by glibc's malloc back to the OS, so RSS measures what is in
    use. Without it RSS creeps up ~0.5 MB per call for a while (arena fragmentation from OpenSSL, SRTP and
    Opus buffers) and then plateaus, which looks like a leak but is not: with it, RSS stays flat."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: RSS then includes retained free memory
        pass


def os_threads() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return threading.active_count()


def rss_kb() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # peak, not current: the best left


def peer_connections() -> int:
    from aiortc import RTCPeerConnection

    return sum(1 for o in gc.get_objects() if isinstance(o, RTCPeerConnection))

"""glibc malloc settings for the long-running daemon, so its memory stays flat under load.

Measured with bench/soak.py and bench/soak_trace.py (8 clients on loopback, SQLite): Python's own
memory (tracemalloc, the gc's objects, pymalloc's arenas) and SQLite's were flat while the daemon's RSS
grew about 1 MiB/min; what grew was the memory glibc's malloc held *free* in its heaps. Two defaults of
glibc cause it in a process of ~50 threads: one heap (arena) per thread up to 8 per core, each keeping
its own high-water mark, and a threshold for serving large blocks with mmap that rises each time such a
block is freed (up to 32 MiB), after which large transient blocks (JSON documents, query results) are
carved out of the heaps and fragment them. ``tune()`` caps the arenas and fixes the threshold, through
``mallopt`` at start (before the threads exist); a MALLOC_* variable set in the environment wins.
"""

from __future__ import annotations

import contextlib
import ctypes
import os

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameters (malloc.h)
M_ARENA_MAX = -8
ARENA_MAX = 2
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's initial value, kept fixed (setting it turns the rising off)


def tune() -> dict[str, int]:
    """Apply the settings glibc takes (none on another C library); what was set."""
    done: dict[str, int] = {}
    with contextlib.suppress(OSError, AttributeError):
        mallopt = ctypes.CDLL("libc.so.6").mallopt
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        if "MALLOC_ARENA_MAX" not in os.environ and mallopt(M_ARENA_MAX, ARENA_MAX) == 1:
            done["arena_max"] = ARENA_MAX
        if "MALLOC_MMAP_THRESHOLD_" not in os.environ and mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1:
            done["mmap_threshold_bytes"] = MMAP_THRESHOLD_BYTES
    return done

"""Where a daemon's memory goes: `hetagent` run with a thread that dumps what it holds every N seconds.

    HETAGENT_TRACEMALLOC_DIR=/tmp/tm python -m bench.soak_trace serve --port ...

runs the `hetagent` command line (orchestrator.cli) after starting a thread that, ``HETAGENT_TRACEMALLOC_START_S``
seconds in (default 60: past the imports and the warm-up, which tracing slows several times), starts
tracemalloc (``HETAGENT_TRACEMALLOC_FRAMES`` frames, default 10; 0: no tracing) and then writes, every
``HETAGENT_TRACEMALLOC_EVERY_S`` seconds (default 60), ``snap-<s>.tracemalloc`` (a ``tracemalloc.Snapshot``
of what was allocated since tracing started and is still alive) and ``gc-<s>.json``: live objects per
type, the RSS, glibc malloc's totals (in use, free in its heaps, mmapped) and SQLite's
(``sqlite3_memory_used``). ``HETAGENT_TRACEMALLOC_PYMALLOC=1`` also prints ``sys._debugmallocstats()``
(pymalloc's arenas) to the daemon's log; ``HETAGENT_TRACEMALLOC_TRIM=1`` calls ``malloc_trim(0)`` after
each dump and records the RSS after it. tracemalloc's own tables are malloc'd: under tracing, malloc's
"in use" grows with what is traced (compare native figures from runs with FRAMES=0).

The product reads none of this: only ``bench/soak.py --tracemalloc DIR`` starts the daemon through here.
``python bench/soak_trace.py compare DIR`` prints the sites and types that grew between the second
dump and the last.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path

ENV_DIR = "HETAGENT_TRACEMALLOC_DIR"
ENV_EVERY = "HETAGENT_TRACEMALLOC_EVERY_S"
ENV_START = "HETAGENT_TRACEMALLOC_START_S"
ENV_FRAMES = "HETAGENT_TRACEMALLOC_FRAMES"  # 0: no tracing (it slows the daemon several times), dumps only
ENV_PYMALLOC = "HETAGENT_TRACEMALLOC_PYMALLOC"  # 1: sys._debugmallocstats() to the log at each dump
ENV_TRIM = "HETAGENT_TRACEMALLOC_TRIM"  # 1: malloc_trim(0) after each dump, RSS after it recorded


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
        + ("keepcost",)
    ]


def native_memory() -> dict[str, int]:
    """glibc malloc's totals over all arenas (in use, free inside the heaps, mmapped) and SQLite's own
    allocations (``sqlite3_memory_used``: page caches, statements), bytes; {} where not available."""
    import _sqlite3

    out: dict[str, int] = {}
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _Mallinfo2
        m = libc.mallinfo2()
        out |= {"malloc_in_use": m.uordblks, "malloc_free": m.fordblks, "malloc_mmapped": m.hblkhd, "heap": m.arena}
    for lib in (_sqlite3.__file__, "libsqlite3.so.0"):
        with contextlib.suppress(OSError, AttributeError):
            used = ctypes.CDLL(lib).sqlite3_memory_used
            used.restype = ctypes.c_int64
            out["sqlite_used"] = int(used())
            break
    return out


def dump(out: Path, t0: float) -> None:
    """One snapshot, the live objects per type and the RSS, named by the seconds since start."""
    import tracemalloc

    s = int(time.monotonic() - t0)
    if tracemalloc.is_tracing():
        snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        snap.dump(str(out / f"snap-{s:05d}.tracemalloc"))
    types = Counter(type(o).__qualname__ for o in gc.get_objects())
    traced = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0
    doc = {
        "s": s,
        "rss_kib": rss_kib(),
        "traced_bytes": traced,
        "native": native_memory(),
        "types": dict(types.most_common(300)),
    }
    if os.environ.get(ENV_PYMALLOC) == "1":  # Python's small-object allocator: arenas, pools, free blocks
        print(f"soak_trace: _debugmallocstats at {s} s", file=sys.stderr, flush=True)
        sys._debugmallocstats()  # to stderr: the daemon's log
    if os.environ.get(ENV_TRIM) == "1":  # how much of the RSS is memory malloc holds free
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            doc["rss_after_trim_kib"] = rss_kib()
    (out / f"gc-{s:05d}.json").write_text(json.dumps(doc))


def start(out: Path, every_s: float, start_s: float, frames: int = 10) -> None:
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()

    def loop() -> None:
        import tracemalloc

        time.sleep(start_s)
        if frames:
            tracemalloc.start(frames)
        dump(out, t0)
        while True:
            time.sleep(every_s)
            try:
                dump(out, t0)
            except Exception as exc:  # a failed dump must not stop the daemon
                print(f"soak_trace: dump failed: {exc!r}", file=sys.stderr)

    threading.Thread(target=loop, name="soak-trace", daemon=True).start()


def compare(folder: Path, top: int = 25) -> None:
    """The sites (by traceback) and object types that grew most between the second dump and the last."""
    import tracemalloc

    snaps = sorted(folder.glob("snap-*.tracemalloc"))
    gcs = sorted(folder.glob("gc-*.json"))
    if len(gcs) < 2:
        raise SystemExit(f"{folder}: fewer than two dumps")
    a, b = (json.loads(p.read_text()) for p in (gcs[1 if len(gcs) > 2 else 0], gcs[-1]))
    print(
        f"dumps {a['s']} s -> {b['s']} s: RSS {a['rss_kib'] / 1024:.1f} -> {b['rss_kib'] / 1024:.1f} MiB, "
        f"traced {a['traced_bytes'] / 2**20:.1f} -> {b['traced_bytes'] / 2**20:.1f} MiB"
    )
    grew = Counter({k: b["types"].get(k, 0) - a["types"].get(k, 0) for k in b["types"]})
    print("live objects grown, by type:")
    for name, n in grew.most_common(15):
        print(f"  {n:+8d}  {name} ({b['types'][name]})")
    if len(snaps) >= 2:
        first = tracemalloc.Snapshot.load(str(snaps[1 if len(snaps) > 2 else 0]))
        last = tracemalloc.Snapshot.load(str(snaps[-1]))
        for key in ("lineno", "traceback"):
            print(f"\ntop {top} growth by {key}:")
            for stat in last.compare_to(first, key)[:top]:
                print(f"  {stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks")
                for line in stat.traceback.format()[-(8 if key == "traceback" else 2) :]:
                    print("     " + line)


def main() -> None:
    if sys.argv[1:2] == ["compare"]:
        compare(Path(sys.argv[2]))
        return
    folder = os.environ.get(ENV_DIR)
    if folder:
        every_s, start_s = float(os.environ.get(ENV_EVERY, "60")), float(os.environ.get(ENV_START, "60"))
        start(Path(folder), every_s, start_s, int(os.environ.get(ENV_FRAMES, "10")))
    from orchestrator.cli import app

    sys.argv[0] = "hetagent"
    app()


if __name__ == "__main__":
    main()

"""Callables the runtime tests reference by import path (tests.support.callables:NAME)."""

import os
import time
from pathlib import Path


def join(**parts):
    return " | ".join(str(parts[k]) for k in sorted(parts))


def boom(**_):
    raise ValueError("transform exploded on purpose")


def crash_once(marker: str, **_):
    """Kill the worker process the first time (a dead actor), succeed after the restart."""
    path = Path(marker)
    if not path.exists():
        path.write_text("crashed")
        os._exit(1)
    return "recovered"


def slow(seconds: str = "0.3", **_):
    time.sleep(float(seconds))
    return "slept"


def flaky_once(marker: str, **_):
    """Raise the first time (a transient error), succeed after."""
    path = Path(marker)
    if not path.exists():
        path.write_text("failed")
        raise ConnectionError("transient failure on purpose")
    return "second try"


def hash_vector(text: str, dimension: str = "64", **_):
    """A cheap deterministic embedding (hashed character trigrams, L2-normalised) for vector_search
    graphs that must not load a model (bench/soak.py)."""
    import hashlib
    import math

    dim = int(dimension)
    vec = [0.0] * dim
    padded = f"  {text.lower()}  "
    for i in range(len(padded) - 2):
        h = int.from_bytes(hashlib.blake2b(padded[i : i + 3].encode(), digest_size=4).digest(), "little")
        vec[h % dim] += 1.0 if h & (1 << 31) else -1.0
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


def slow_telling_pid(pid_file: str, seconds: str = "30", **_):
    """Write this worker's pid to ``pid_file``, then sleep: a test kills the worker mid-op by that pid.
    The call after a restart finds the file there and returns after 0.2 s (a short second try)."""
    path = Path(pid_file)
    first = not path.exists()
    path.write_text(str(os.getpid()))
    time.sleep(float(seconds) if first else 0.2)
    return f"done by {os.getpid()}"


def crash_times(counter: str, times: str = "1", **_):
    """Kill this worker process on each of the first ``times`` calls (counted in the file ``counter``), then
    say how many deaths came before."""
    path = Path(counter)
    deaths = int(path.read_text()) if path.exists() else 0
    if deaths < int(times):
        path.write_text(str(deaths + 1))
        os._exit(1)
    return f"survived {deaths} deaths"

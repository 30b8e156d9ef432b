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

"""Where a stage's time goes: named phases, appended as one JSON line to $MNIST_TIMINGS when it is set.

The pipeline benchmark sets it to split each stage's wall time into start-up,
loads, arithmetic and writes. Unset (the default), phases are still summed in
memory (a few clock reads each) and nothing is written.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

# A file to append this process's phases to (one JSON line per stage run).
TIMINGS_ENV = "MNIST_TIMINGS"

_seconds: dict[str, float] = {}
_counts: dict[str, int] = {}
# Time spent in the phases nested in each open phase, innermost last.
_nested: list[float] = []


def add(name: str, seconds: float) -> None:
    """Count `seconds` more of phase `name`."""
    _seconds[name] = _seconds.get(name, 0.0) + seconds
    _counts[name] = _counts.get(name, 0) + 1


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Time the block as (one more occurrence of) phase `name`, less the phases nested in it.

    Each second counts in one phase only, so a stage's phases add up to at most its wall time.
    """
    start = time.perf_counter()
    _nested.append(0.0)
    try:
        yield
    finally:
        elapsed = time.perf_counter() - start
        add(name, elapsed - _nested.pop())
        if _nested:
            _nested[-1] += elapsed


def phases() -> dict[str, dict[str, float]]:
    """Seconds and count of each phase so far, in the order each first ended."""
    return {name: {"seconds": round(s, 4), "count": _counts[name]} for name, s in _seconds.items()}


def process_start_epoch() -> float | None:
    """When this process started, in seconds since the epoch (Linux): Python's own start-up counts too."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return time.time() - uptime + start_ticks / os.sysconf("SC_CLK_TCK")


def write(stage: str) -> None:
    """Append this process's phases to $MNIST_TIMINGS, if it is set."""
    target = os.environ.get(TIMINGS_ENV)
    if not target:
        return
    record = {
        "stage": stage,
        "pid": os.getpid(),
        "started": process_start_epoch(),
        "ended": time.time(),
        "phases": phases(),
    }
    # One write of one line in append mode: records of processes running at once do not interleave.
    try:
        with open(target, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as e:  # a measurement aid: never the reason a stage fails
        print(f"{stage}: could not append timings to ${TIMINGS_ENV} ({target}): {e.strerror}",
              file=sys.stderr)

"""Run every collected test alone, each in its own fresh `python -m pytest <id>` process.

A test that passes in the suite but fails here depends on what another test
left behind. Usage, from anywhere:

    python tests/each_alone.py                     # every test, two at a time
    python tests/each_alone.py -m "not slow" -j 2  # a marker expression
    python tests/each_alone.py tests/test_pipeline.py -m slow --durations 5

Prints each failure's id and the tail of its output as it comes, then one
summary line; exits 1 if any test failed (2 if nothing could be collected).
Not collected by pytest: its name does not match test_*.py.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# No .pytest_cache: parallel runs would race on it, and a run must not see another's.
PYTEST = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]


@dataclass
class Outcome:
    test_id: str
    status: str  # "passed", "skipped" or "failed"
    seconds: float
    output: str


def collect(marker: str | None, paths: list[str]) -> list[str]:
    """The ids pytest collects for these paths and marker expression, in its order."""
    args = [*PYTEST, "--collect-only", "-q", *(["-m", marker] if marker else []), *paths]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    ids = [line for line in done.stdout.splitlines() if "::" in line and not line.startswith(" ")]
    if done.returncode not in (0, 5) or (done.returncode == 0 and not ids):
        sys.exit(f"collection failed ({done.returncode}):\n{done.stdout[-4000:]}{done.stderr[-4000:]}")
    return ids


def text(output: bytes | None) -> str:
    return (output or b"").decode(errors="replace")


def run_alone(test_id: str, timeout: float) -> Outcome:
    """One test in a fresh pytest process."""
    started = time.monotonic()
    try:
        done = subprocess.run([*PYTEST, "-q", test_id], cwd=ROOT, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        output = text(expired.stdout) + text(expired.stderr) + f"\ntimed out after {timeout:.0f} s"
        return Outcome(test_id, "failed", time.monotonic() - started, output)
    output = text(done.stdout) + text(done.stderr)
    summary = output.strip().splitlines()[-1] if output.strip() else ""
    if done.returncode != 0:
        status = "failed"
    elif re.search(r"\bskipped\b", summary) and not re.search(r"\bpassed\b", summary):
        status = "skipped"
    else:
        status = "passed"
    return Outcome(test_id, status, time.monotonic() - started, output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", help="test files or ids (default: pytest's testpaths)")
    parser.add_argument("-m", dest="marker", help='marker expression, e.g. "not slow"')
    parser.add_argument("-j", "--jobs", type=int, default=2, help="tests run at once (default 2)")
    parser.add_argument("--tail", type=int, default=40, help="lines of a failure's output shown (default 40)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds a test may take (default 1800)")
    parser.add_argument("--durations", type=int, default=0, help="list the N slowest tests")
    args = parser.parse_args(argv)

    started = time.monotonic()
    ids = collect(args.marker, args.paths)
    if not ids:
        print("no tests collected")
        return 2
    print(f"{len(ids)} tests, each alone, {args.jobs} at a time", flush=True)
    outcomes: list[Outcome] = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_alone, test_id, args.timeout) for test_id in ids]
        for future in as_completed(futures):
            outcome = future.result()
            outcomes.append(outcome)
            if outcome.status == "failed":
                tail = "\n".join(outcome.output.rstrip().splitlines()[-args.tail:])
                print(f"\nFAILED alone: {outcome.test_id} ({outcome.seconds:.1f} s)\n{tail}\n", flush=True)

    if args.durations:
        print(f"slowest {args.durations}:")
        for outcome in sorted(outcomes, key=lambda o: -o.seconds)[: args.durations]:
            print(f"  {outcome.seconds:7.1f} s  {outcome.test_id}")
    failed = sorted(o.test_id for o in outcomes if o.status == "failed")
    for test_id in failed:
        print(f"FAILED {test_id}")
    counts = {status: sum(o.status == status for o in outcomes) for status in ("passed", "failed", "skipped")}
    print(f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped, each alone, "
          f"in {time.monotonic() - started:.1f} s (-j {args.jobs})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Pipeline benchmark: `dvc repro` in a fresh copy of the project, timed stage by stage.

Run in the project's virtual environment, with a local copy of the four MNIST .gz files:

    python bench/pipeline.py --mirror ../shared/mnist
    MNIST_MIRROR=../shared/mnist python bench/pipeline.py --precision mixed_bfloat16
    python bench/pipeline.py --mirror ../shared/mnist --set train.max_iterations=2000 --keep

It copies stages/, mnist_early_stopping/, params.yaml and dvc.yaml into a temporary directory (a
new git repo, DVC cache and outputs), runs `dvc repro`, times each stage from DVC's output, polls
each stage's peak memory, and times a no-op `dvc repro`. A relative mirror (and $MNIST_DIGESTS) is
taken relative to the project root, as the stages do.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from common import ROOT, add_project_option, child_env, copy_project, header, table, verdict

sys.path.insert(0, str(ROOT))

from mnist_early_stopping.layout import PARAMS_FILE, TEST_METRICS, TRAIN_METRICS  # noqa: E402

# Targets of the README's performance section.
TARGET_OTHER_STAGES_SHARE = 0.25
TARGET_NOOP_SECONDS = 3.0
NOOP_REPEATS = 3


@dataclasses.dataclass
class Repro:
    """What one `dvc repro` took: per stage, before the first stage, in all; peak RSS per stage."""

    stage_seconds: dict[str, float]
    startup_seconds: float
    total_seconds: float
    peak_rss_kib: dict[str, int]


def set_params(path: Path, overrides: list[str]) -> None:
    """Apply SECTION.KEY=VALUE overrides (VALUE in YAML) to a params.yaml."""
    raw = yaml.safe_load(path.read_text())
    for item in overrides:
        key, _, value = item.partition("=")
        section, _, field = key.partition(".")
        if field not in raw.get(section, {}):
            raise SystemExit(f"bench: --set {item}: params.yaml has no key {key}")
        raw[section][field] = yaml.safe_load(value)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def init_repo(project: Path, env: dict[str, str]) -> None:
    """Make `project` a fresh git repo with DVC initialised and everything committed."""
    # DVCLive, in the train stage, needs a commit to start from.
    who = ["-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    commit = ["git", *who, "commit", "-q", "-m", "bench"]
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"], commit):
        subprocess.run(cmd, cwd=project, check=True, env=env)


class PeakRss:
    """Polls /proc for the descendants of a process; keeps each stage's peak RSS (VmHWM) by stage name."""

    def __init__(self, root_pid: int, interval: float = 0.2) -> None:
        self.root_pid, self.interval = root_pid, interval
        self.peaks_kib: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, int]:
        """Stop polling; return the peaks."""
        self._stop.set()
        self._thread.join()
        return self.peaks_kib

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for pid in self._descendants():
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue  # it has just ended
                stage = re.search(r"-m stages\.(\w+)", cmdline)
                hwm = re.search(r"VmHWM:\s+(\d+) kB", status)
                if stage and hwm:
                    name = stage.group(1)
                    self.peaks_kib[name] = max(self.peaks_kib.get(name, 0), int(hwm.group(1)))

    def _descendants(self) -> set[int]:
        parents: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
        found, frontier = set(), {self.root_pid}
        while frontier:
            frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
            found |= frontier
        return found


def repro(project: Path, env: dict[str, str]) -> Repro:
    """Run `dvc repro`, timing each stage from its 'Running stage' line to the next one."""
    marks: list[tuple[float, str]] = []
    start = time.perf_counter()
    proc = subprocess.Popen(
        ["dvc", "repro"], cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    rss = PeakRss(proc.pid)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if found := re.match(r"Running stage '([^']+)'", line.strip()):
            marks.append((time.perf_counter() - start, found.group(1)))
    code = proc.wait()
    total = time.perf_counter() - start
    peaks = rss.stop()
    if code != 0:
        raise SystemExit(f"bench: `dvc repro` failed ({code}) in {project}:\n{''.join(lines)[-3000:]}")
    ends = [t for t, _ in marks[1:]] + [total]
    seconds = {name: end - t for (t, name), end in zip(marks, ends, strict=True)}
    return Repro(seconds, marks[0][0] if marks else total, total, peaks)


def noop_seconds(project: Path, env: dict[str, str]) -> float:
    """Median wall time of `dvc repro` runs that find nothing to do."""
    times = []
    for _ in range(NOOP_REPEATS):
        start = time.perf_counter()
        done = subprocess.run(["dvc", "repro"], cwd=project, env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if done.returncode != 0 or "Running stage" in done.stdout:
            raise SystemExit(f"bench: the no-op `dvc repro` failed or did work:\n{done.stdout}{done.stderr}")
    return statistics.median(times)


def absolute(value: str, source: Path) -> str:
    """A path relative to the project root made absolute (URLs unchanged): the copy runs elsewhere."""
    if "://" in value:
        return value
    path = (source / Path(value).expanduser()).resolve()
    if not path.exists():
        raise SystemExit(f"bench: {value} does not exist (relative to {source})")
    return str(path)


def stage_env(mirror: str | None, source: Path) -> dict[str, str]:
    """Child environment: the mirror (and $MNIST_DIGESTS) made absolute, the library from the copy."""
    if not mirror:
        raise SystemExit(
            "bench: needs --mirror or MNIST_MIRROR, a directory or URL holding the four MNIST "
            ".gz files (e.g. ../shared/mnist, relative to the project root)"
        )
    extra = {"MNIST_MIRROR": absolute(mirror, source), "PYTHONPATH": ""}  # the stages run the copy's code
    if digests := os.environ.get("MNIST_DIGESTS"):
        extra["MNIST_DIGESTS"] = absolute(digests, source)
    return child_env(**extra)


def stages_table(result: Repro) -> str:
    """Wall time and peak RSS per stage."""
    rows = [
        (name, f"{t:.1f}", f"{result.peak_rss_kib.get(name, 0) / 1024:.0f}")
        for name, t in result.stage_seconds.items()
    ]
    rows.append(("dvc start-up, before the first stage", f"{result.startup_seconds:.1f}", ""))
    rows.append(("total `dvc repro`", f"{result.total_seconds:.1f}", ""))
    head = ("stage (from its start to the next's, DVC's caching included)", "wall s", "peak RSS MiB")
    return table(rows, head)


def checks_table(result: Repro, noop: float) -> str:
    """Everything-but-train share and the no-op time against their targets."""
    train = result.stage_seconds.get("train", math.nan)
    others = (result.total_seconds - train) / train
    rows = [
        (
            "everything but train (other stages, DVC) / train",
            f"{others:.0%}",
            f"<= {TARGET_OTHER_STAGES_SHARE:.0%}",
            verdict(others, TARGET_OTHER_STAGES_SHARE, at_least=False),
        ),
        (
            f"no-op `dvc repro` (median of {NOOP_REPEATS})",
            f"{noop:.2f} s",
            f"<= {TARGET_NOOP_SECONDS:g} s",
            verdict(noop, TARGET_NOOP_SECONDS, at_least=False),
        ),
    ]
    return table(rows, ("check", "value", "target", "result"))


def run_metrics(project: Path) -> str:
    """Best validation accuracy, stop point and speed of the run, and its test accuracies."""
    lines = []
    if (project / TRAIN_METRICS).is_file():
        m = json.loads((project / TRAIN_METRICS).read_text())
        lines.append(
            f"train:    best validation accuracy {m['best_validation_accuracy']:.2%} at iteration "
            f"{m['best_iteration']}, stopped at {m['stopped_iteration']} ({m['stop_reason']}), "
            f"{m['iterations_per_second']} it/s over the stage's loop (validation and saves included)"
        )
    if (project / TEST_METRICS).is_file():
        flat = flatten(json.loads((project / TEST_METRICS).read_text()))
        accuracies = {k: v for k, v in flat.items() if k.endswith("accuracy") and isinstance(v, float)}
        shown = ", ".join(f"{k} {v:.2%}" for k, v in accuracies.items()) or json.dumps(flat)
        lines.append(f"test:     {shown}")
    return "\n".join(lines)


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested JSON as {'a.b': value}."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def bench(args: argparse.Namespace) -> None:
    """Run the whole pipeline in a temporary copy of the project and print its costs."""
    env = stage_env(args.mirror, args.project)
    overrides = list(args.set or []) + ([f"train.precision={args.precision}"] if args.precision else [])
    copy = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    try:
        copy_project(args.project, copy)
        set_params(copy / PARAMS_FILE, overrides)
        init_repo(copy, env)
        lines = header("Pipeline benchmark: `dvc repro` in a fresh copy (new git repo, DVC cache, outputs)")
        lines.append(f"project:  {args.project}")
        lines.append(f"params:   params.yaml{' with ' + ', '.join(overrides) if overrides else ''}")
        print("\n".join(lines), flush=True)
        result = repro(copy, env)
        noop = noop_seconds(copy, env)
        print()
        print(stages_table(result))
        print()
        print(checks_table(result, noop))
        print()
        print("peak RSS: VmHWM of each stage's python process, polled every 0.2 s")
        print(run_metrics(copy))
    finally:
        if args.keep:
            print(f"kept:     {copy}")
        else:
            shutil.rmtree(copy, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_project_option(parser)
    parser.add_argument(
        "--mirror",
        default=os.environ.get("MNIST_MIRROR", "").strip() or None,
        metavar="DIR_OR_URL",
        help="where the stages download MNIST from, relative to the project root (default: $MNIST_MIRROR)",
    )
    parser.add_argument(
        "--precision",
        choices=("float32", "mixed_bfloat16", "mixed_float16"),
        help="train.precision for the run",
    )
    parser.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="override a params.yaml key in the copy (repeatable)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary project copy")
    return parser.parse_args(argv)


def main() -> None:
    """Entry point."""
    bench(parse_args())


if __name__ == "__main__":
    main()

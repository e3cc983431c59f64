"""Pipeline benchmark: where a cold `dvc repro` spends its time, against the code before a change.

Run in the project's virtual environment, with a local copy of the four MNIST .gz files:

    python bench/pipeline.py --mirror ../shared/mnist
    git worktree add ../before <commit>                  # the code to compare with
    python bench/pipeline.py --mirror ../shared/mnist --baseline ../before --repeats 3 --queue
    python bench/pipeline.py --mirror ../shared/mnist --set train.max_iterations=2000 --keep

Each run copies stages/, mnist_early_stopping/, params.yaml and dvc.yaml into a temporary
directory (a new git repo, DVC cache and outputs) and runs `dvc repro` there, timing each stage
from DVC's output and, through $MNIST_TIMINGS, each phase inside the stages. With --baseline the
two code versions run alternately, --repeats times, and the tables give medians. Each repeat also
times the training step and one validation pass alone (bench/step.py's `ours`, in a fresh
process on the same data), which gives the arithmetic of the run: the budget counts everything
else as start-up, loads, writes and DVC. --queue then times two experiments run one after the
other against the same two queued and run by `dvc queue start -j 2`, with one thread each.
A relative mirror is taken relative to the project root, as the stages do; the data set is the
one params.yaml's download.files names.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from common import ROOT, add_project_option, child_env, copy_project, header, overridden, table, verdict
from step import run_contender

sys.path.insert(0, str(ROOT))

from mnist_early_stopping.pipeline.layout import PARAMS_FILE, TEST_METRICS, TRAIN_METRICS  # noqa: E402
from mnist_early_stopping.pipeline.timings import TIMINGS_ENV  # noqa: E402

# Targets of docs/performance.md; the rest is printed as information.
TARGET_RATE_VS_IDEAL = 0.95
TARGET_QUEUE_VS_SERIAL = 1.05
NOOP_REPEATS = 3
STEP_SECONDS = 8.0
# Threads per experiment under `dvc queue start -j 2` on this project's machines: one each, so
# two trainings share the cores instead of each asking for all of them.
QUEUE_THREADS = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}
QUEUE_SEEDS = (1, 2)
# Each queued experiment trains exactly this long (the reference run's length; patience = max_iterations):
# the thread count changes the rounding and with it where early stopping would stop, not the work timed.
QUEUE_ITERATIONS = 6600


def experiment_args(seed: int, iterations: int) -> list[str]:
    """`dvc exp run` options of one of the two timed experiments."""
    return [
        "-S",
        f"train.seed={seed}",
        "-S",
        f"train.max_iterations={iterations}",
        "-S",
        f"train.patience={iterations}",
    ]


@dataclasses.dataclass
class Repro:
    """One cold `dvc repro`: DVC's stage times, the stages' own phases and what the run produced."""

    stage_seconds: dict[str, float]
    startup_seconds: float
    total_seconds: float
    peak_rss_kib: dict[str, int]
    process_seconds: dict[str, float]  # each stage's process, start to exit (from $MNIST_TIMINGS)
    phases: dict[str, dict[str, float]]  # stage -> phase -> seconds
    train: dict[str, Any]
    test: dict[str, Any]


def set_params(path: Path, overrides: list[str]) -> None:
    """Apply SECTION.KEY=VALUE overrides to a params.yaml."""
    path.write_text(yaml.safe_dump(overridden(path, overrides), sort_keys=False))


def git(project: Path, env: dict[str, str], *args: str) -> None:
    """Run a git command in the project as the bench's own author."""
    who = ["-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    subprocess.run(["git", *who, *args], cwd=project, check=True, env=env, stdout=subprocess.DEVNULL)


def init_repo(project: Path, env: dict[str, str]) -> None:
    """Make `project` a fresh git repo with DVC initialised and everything committed."""
    # DVCLive, in the train stage, needs a commit to start from.
    git(project, env, "init", "-q")
    subprocess.run(["dvc", "init", "-q"], cwd=project, check=True, env=env)
    git(project, env, "add", "-A")
    git(project, env, "commit", "-q", "-m", "bench")


def fresh_copy(source: Path, overrides: list[str], env: dict[str, str]) -> Path:
    """A new temporary git + DVC project holding `source`'s code and params (with the overrides)."""
    copy = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    copy_project(source, copy)
    set_params(copy / PARAMS_FILE, overrides)
    init_repo(copy, env)
    return copy


class PeakRss:
    """Polls /proc for the descendants of a process; keeps each stage's peak RSS (VmHWM) by stage name."""

    def __init__(self, root_pid: int, interval: float = 0.5) -> None:
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


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file's content, or {} if it is not there."""
    return json.loads(path.read_text()) if path.is_file() else {}


def repro(project: Path, env: dict[str, str]) -> Repro:
    """Run `dvc repro`, timing each stage from its 'Running stage' line to the next one."""
    timings_file = project.parent / f"{project.name}.timings.jsonl"  # outside the project
    marks: list[tuple[float, str]] = []
    start = time.perf_counter()
    proc = subprocess.Popen(
        ["dvc", "repro"],
        cwd=project,
        env={**env, TIMINGS_ENV: str(timings_file)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
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
    process, phases = {}, {}
    if timings_file.is_file():  # code from before $MNIST_TIMINGS writes none
        for record in map(json.loads, timings_file.read_text().splitlines()):
            if record.get("started") is not None:
                process[record["stage"]] = record["ended"] - record["started"]
            phases[record["stage"]] = {k: v["seconds"] for k, v in record["phases"].items()}
        timings_file.unlink()
    return Repro(
        seconds,
        marks[0][0] if marks else total,
        total,
        peaks,
        process,
        phases,
        read_json(project / TRAIN_METRICS),
        read_json(project / TEST_METRICS),
    )


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


def step_alone(project: Path, seconds: float) -> dict[str, Any]:
    """bench/step.py's `ours` in a fresh process on the project's data: it/s and one validation's time."""
    result = run_contender("ours", seconds, project)
    if "its" not in result:
        raise SystemExit(f"bench: timing the step alone {result['error']}")
    return result


# --------------------------------------------------------------------------- the budget


@dataclasses.dataclass(frozen=True)
class Arithmetic:
    """The run's training and validation arithmetic at the speed of the step and of validation alone."""

    iterations: int
    evaluations: int
    step_seconds: float  # one iteration, alone
    validation_seconds: float  # one validation pass, alone
    validation_share: float  # validation's share of the arithmetic, from the FLOPs (ideal-rate definition)

    @property
    def steps(self) -> float:
        """Seconds of step compute: iterations x step time."""
        return self.iterations * self.step_seconds

    @property
    def validation(self) -> float:
        """Seconds of validation compute: passes x one pass's time."""
        return self.evaluations * self.validation_seconds

    @property
    def ideal_rate(self) -> float:
        """Iterations/s of a loop that did nothing but its arithmetic, validation at the step's efficiency."""
        return 1 / self.step_seconds / (1 + self.validation_share)


def arithmetic(run: Repro, alone: dict[str, Any], cfg: dict[str, Any]) -> Arithmetic:
    """The arithmetic of a run, from its iteration count and the step and validation timed alone."""
    iterations = int(run.train["iterations"]) - int(run.train.get("resumed_from_iteration", 0))
    images_per_step = cfg["batch_size"] * 3  # forward + backward ~ 3 forwards per image
    share = alone["validation_images"] / (cfg["eval_every"] * images_per_step)
    return Arithmetic(
        iterations, iterations // cfg["eval_every"], 1 / alone["its"], alone["validate_s"], share
    )


def fixed_seconds(run: Repro, work: Arithmetic) -> float:
    """Everything in the run but the training and validation arithmetic and the export stage."""
    return run.total_seconds - run.stage_seconds.get("export", 0.0) - work.steps - work.validation


def outside_loop_seconds(run: Repro, work: Arithmetic) -> float:
    """Everything in the run but the training loop (metrics/train.json's wall_seconds) and the export stage.

    This CPU's speed drifts by up to 20% over minutes, which moves the loop's
    100 s by more than all the fixed costs: measured this way, the loop (the
    same code in both versions) drops out, and the comparison holds under
    drift. The saves, checkpoints and log lines inside the loop drop out too;
    the graph tracing this code does before the loop stays in (against it).
    """
    return run.total_seconds - run.stage_seconds.get("export", 0.0) - float(run.train["wall_seconds"])


def rate_vs_ideal(run: Repro, work: Arithmetic) -> float:
    """The train stage's loop rate (metrics/train.json) over the ideal rate."""
    return float(run.train["iterations_per_second"]) / work.ideal_rate


def in_stage_rate_vs_ideal(run: Repro, work: Arithmetic) -> float:
    """The loop rate over the ideal rate of a step as fast as the stage's own steps (drift-free)."""
    steps = run.phases.get("train", {}).get("train steps")
    if not steps:
        return math.nan
    return float(run.train["iterations_per_second"]) / (work.iterations / steps / (1 + work.validation_share))


def in_stage_validation_efficiency(
    run: Repro, work: Arithmetic, alone: dict[str, Any], cfg: dict[str, Any]
) -> float:
    """Validation images per second over training images (x3) per second, both inside the train stage."""
    phases = run.phases.get("train", {})
    if not phases.get("train steps") or not phases.get("validation"):
        return math.nan
    step_rate = work.iterations * cfg["batch_size"] * 3 / phases["train steps"]
    return work.evaluations * alone["validation_images"] / phases["validation"] / step_rate


# Budget rows: (stage, label, how to get the seconds from a run, its arithmetic and the stage's process).
Row = tuple[str, str, Callable[[Repro, Arithmetic], float]]


def phase(stage: str, *names: str) -> Callable[[Repro, Arithmetic], float]:
    """Seconds of the named phases of a stage (nan without $MNIST_TIMINGS records)."""
    return lambda run, work: (
        sum(run.phases[stage].get(n, 0.0) for n in names) if stage in run.phases else math.nan
    )


def untimed(stage: str) -> Callable[[Repro, Arithmetic], float]:
    """Seconds of the stage's process outside every phase: the interpreter and the imports before them."""

    def seconds(run: Repro, work: Arithmetic) -> float:
        if stage not in run.process_seconds:
            return math.nan
        return run.process_seconds[stage] - sum(run.phases.get(stage, {}).values())

    return seconds


def dvc_part(stage: str) -> Callable[[Repro, Arithmetic], float]:
    """DVC's time around a stage: its stage time less its process (hashing, cache, lock, next check)."""

    def seconds(run: Repro, work: Arithmetic) -> float:
        if stage not in run.process_seconds:
            return math.nan
        return run.stage_seconds.get(stage, math.nan) - run.process_seconds[stage]

    return seconds


def stage_total(stage: str) -> Callable[[Repro, Arithmetic], float]:
    """The stage's time from DVC's 'Running stage' line to the next stage's."""
    return lambda run, work: run.stage_seconds.get(stage, math.nan)


# Each stage's phases in the budget, in order: (label, the $MNIST_TIMINGS phase names it sums).
PHASE_ROWS: dict[str, tuple[tuple[str, ...], ...]] = {
    "train": (
        ("import TensorFlow", "import tensorflow"),
        ("set up: data, network, checkpoints, DVCLive", "set up"),
        ("trace the graphs", "trace graphs"),
        # the step and validation arithmetic go here (budget_rows)
        ("save the best network (atomic, each improvement)", "save best"),
        ("checkpoints", "checkpoint"),
        ("loop: log line, live curves, Python", "loop: other work"),
        ("write networks (3 SavedModels, 3 .keras)", "write networks"),
    ),
    "evaluate": (
        ("import TensorFlow", "import tensorflow"),
        ("load the 3 SavedModels", "load networks"),
        ("predict: 5000 validation + 3 x 10000 test images", "predict"),
    ),
    "plots": (("read inputs", "read inputs"), ("draw and write the figures", "draw figures")),
    "export": (
        ("import TensorFlow", "import tensorflow"),
        ("SavedModel: load, predict the test set", "SavedModel: load and predict"),
        ("convert to TFLite", "convert"),
        ("TFLite: load, predict the test set", "TFLite: load and predict"),
    ),
}


def arithmetic_rows() -> list[Row]:
    """The train stage's step and validation compute, and how far its own steps and passes took longer."""
    steps, validation = phase("train", "train steps"), phase("train", "validation")
    return [
        ("train", "  step compute: iterations x step time alone", lambda run, work: work.steps),
        ("train", "  steps beyond the step time alone", lambda run, work: steps(run, work) - work.steps),
        ("train", "  validation compute: passes x pass time alone", lambda run, work: work.validation),
        (
            "train",
            "  validation beyond the pass time alone",
            lambda run, work: validation(run, work) - work.validation,
        ),
    ]


def budget_rows(stages: list[str]) -> list[Row]:
    """Every line of the budget, stage by stage, in the order the stages ran."""
    rows: list[Row] = [("dvc", "start-up, before the first stage", lambda run, work: run.startup_seconds)]
    for stage in stages:
        rows.append((stage, "stage in all (DVC's time for it included)", stage_total(stage)))
        rows.append((stage, "  Python start-up and imports (TensorFlow apart)", untimed(stage)))
        phase_rows = [
            (stage, f"  {label}", phase(stage, *names)) for label, *names in PHASE_ROWS.get(stage, ())
        ]
        if stage == "train":  # after tracing, before the saves
            phase_rows[3:3] = arithmetic_rows()
        rows += phase_rows
        rows.append((stage, "  DVC: hashing, cache, lock, run-cache", dvc_part(stage)))
    return rows


def median_or_nan(values: list[float]) -> float:
    """Median of the finite values (nan if none)."""
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else math.nan


def seconds_cell(value: float) -> str:
    """Seconds to one decimal, blank when not measured."""
    return "" if math.isnan(value) else f"{value:.1f}"


def budget_table(runs: dict[str, list[tuple[Repro, Arithmetic]]]) -> str:
    """Median seconds of each budget line, one column per code version."""
    labels = list(runs)
    first = runs[labels[0]][0][0]
    rows = []
    for stage, label, get in budget_rows(list(first.stage_seconds)):
        cells = [median_or_nan([get(run, work) for run, work in runs[name]]) for name in labels]
        if not all(math.isnan(c) for c in cells):
            rows.append((label if label.startswith("  ") else f"{stage}: {label}", *map(seconds_cell, cells)))
    totals = [median_or_nan([run.total_seconds for run, _ in runs[name]]) for name in labels]
    rows.append(("total `dvc repro`", *map(seconds_cell, totals)))
    return table(rows, ("budget (medians, seconds)", *labels))


def paired(
    runs: dict[str, list[tuple[Repro, Arithmetic]]], key: Callable[[Repro, Arithmetic], float]
) -> float:
    """Median over repeats of this code's value over the baseline's, each ratio within one repeat."""
    ours, base = runs.get("this code", []), runs.get("baseline", [])
    ratios = [key(*a) / key(*b) for a, b in zip(ours, base, strict=False) if key(*b) > 0]
    return statistics.median(ratios) if ratios else math.nan


def ratios_table(
    runs: dict[str, list[tuple[Repro, Arithmetic]]],
    alone: list[dict[str, Any]],
    cfg: dict[str, Any],
    queue: dict[str, Any] | None,
    noop: float,
) -> str:
    """The two targets (train rate, queue), then fixed costs, validation and the no-op repro as information."""
    ours = runs["this code"]
    rate = median_or_nan([rate_vs_ideal(run, work) for run, work in ours])
    rate_in_stage = median_or_nan([in_stage_rate_vs_ideal(run, work) for run, work in ours])
    fixed = paired(runs, outside_loop_seconds)
    fixed_issue = paired(runs, fixed_seconds)
    validation = median_or_nan(
        [a["validation_images"] / a["validate_s"] / (a["its"] * cfg["batch_size"] * 3) for a in alone]
    )
    in_stage = median_or_nan(
        [in_stage_validation_efficiency(run, work, a, cfg) for (run, work), a in zip(ours, alone)]
    )
    rows = [
        (
            "train stage rate / ideal rate",
            f"{rate:.3f}",
            f">= {TARGET_RATE_VS_IDEAL}",
            verdict(rate, TARGET_RATE_VS_IDEAL, at_least=True),
        ),
        ("  the same, the step rate taken inside the stage", f"{rate_in_stage:.3f}", "", "info"),
        (
            "fixed costs (outside the training loop): this code / baseline",
            f"{fixed:.2f}",
            "",
            "info",
        ),
        ("  the same, total less arithmetic at the speeds timed alone", f"{fixed_issue:.2f}", "", "info"),
        (
            "validation GFLOP/s / step GFLOP/s, in the train stage",
            f"{in_stage:.2f}",
            "",
            "info",
        ),
        ("  the same, each timed alone", f"{validation:.2f}", "", "info"),
    ]
    if queue:
        q = queue["ratio"]
        rows.append(
            (
                f"`dvc queue start -j 2` / one after the other ({queue['repeats']} x 2 experiments)",
                f"{q:.2f}",
                f"<= {TARGET_QUEUE_VS_SERIAL}",
                verdict(q, TARGET_QUEUE_VS_SERIAL, at_least=False),
            )
        )
    rows.append(
        (
            f"no-op `dvc repro` (median of {NOOP_REPEATS})",
            f"{noop:.2f} s",
            "",
            "info",
        )
    )
    rows = [r for r in rows if not r[1].startswith("nan")]
    return table(
        rows, ("check (medians; fixed costs: of the per-repeat ratios)", "value", "target", "result")
    )


def explanations(runs: dict[str, list[tuple[Repro, Arithmetic]]], alone: list[dict[str, Any]]) -> str:
    """How the ratios were computed, with their inputs."""
    work = [w for _, w in runs["this code"]]
    its = median_or_nan([a["its"] for a in alone])
    lines = [
        f"step alone:   {its:.1f} it/s; one validation pass alone "
        f"{median_or_nan([a['validate_s'] for a in alone]):.3f} s "
        "(bench/step.py's `ours`, each repeat, fresh process)",
        "ideal rate:   step rate / (1 + validation share of the arithmetic, "
        f"{work[0].validation_share:.1%} by FLOPs) = "
        f"{median_or_nan([w.ideal_rate for w in work]):.1f} it/s",
    ]
    for name, pairs in runs.items():
        rates = median_or_nan([float(r.train["iterations_per_second"]) for r, _ in pairs])
        fixed = median_or_nan([fixed_seconds(r, w) for r, w in pairs])
        outside = median_or_nan([outside_loop_seconds(r, w) for r, w in pairs])
        lines.append(
            f"{name + ':':<13} train loop {rates:.1f} it/s; fixed costs {outside:.1f} s outside the loop "
            f"(total - export stage - loop); {fixed:.1f} s as total - export stage - step and validation "
            "compute at the speeds alone"
        )
    return "\n".join(lines)


def results_line(runs: dict[str, list[tuple[Repro, Arithmetic]]]) -> str:
    """Whether every run (both code versions, all repeats) gave the same results."""
    keys = ("best_iteration", "stopped_iteration", "best_validation_accuracy", "best_validation_loss")

    def outcome(run: Repro) -> tuple[Any, ...]:
        test = [run.test.get(n, {}).get("correct") for n in ("best", "final", "untrained")]
        return (*(run.train.get(k) for k in keys), *test)

    seen = {outcome(run) for pairs in runs.values() for run, _ in pairs}
    first = next(iter(seen))
    described = (
        f"best {first[0]}, stopped {first[1]}, validation {first[2]:.2%}, "
        f"test correct best/final/untrained {first[4]}/{first[5]}/{first[6]}"
    )
    if len(seen) == 1:
        return f"results:  identical in every run ({described}; validation loss {first[3]!r})"
    return "results:  DIFFER between runs: " + "; ".join(map(str, sorted(seen, key=str)))


# --------------------------------------------------------------------------- queued experiments


def exp_results(project: Path, env: dict[str, str]) -> dict[int, tuple[Any, ...]]:
    """(best iteration, stop, best test correct) of each experiment in the project, by train.seed."""
    shown = json.loads(
        subprocess.run(
            ["dvc", "exp", "show", "--json"], cwd=project, env=env, capture_output=True, text=True, check=True
        ).stdout
    )
    found = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for rev in exp["revs"]:
                data = rev.get("data") or {}
                seed = (
                    data.get("params", {})
                    .get(str(PARAMS_FILE), {})
                    .get("data", {})
                    .get("train", {})
                    .get("seed")
                )
                metrics = data.get("metrics") or {}
                train = metrics.get(str(TRAIN_METRICS), {}).get("data", {})
                test = metrics.get(str(TEST_METRICS), {}).get("data", {})
                if seed in QUEUE_SEEDS and train:
                    found[seed] = (
                        train["best_iteration"],
                        train["stopped_iteration"],
                        test["best"]["correct"],
                    )
    return found


def exp_refs(project: Path, env: dict[str, str]) -> int:
    """How many experiment refs the repo holds (one per finished experiment)."""
    out = subprocess.run(
        ["git", "for-each-ref", "refs/exps/"], cwd=project, env=env, capture_output=True, text=True
    )
    return len(out.stdout.splitlines())


def prepared_copy(source: Path, overrides: list[str], env: dict[str, str]) -> Path:
    """A fresh project copy with the data downloaded and split, committed: experiments start at train."""
    copy = fresh_copy(source, overrides, env)
    subprocess.run(["dvc", "repro", "split"], cwd=copy, env=env, check=True, capture_output=True)
    git(copy, env, "add", "-A")
    git(copy, env, "commit", "-q", "-m", "data")
    return copy


def serial_seconds(project: Path, env: dict[str, str], iterations: int) -> float:
    """Two experiments (train.seed 1 and 2), one after the other, with the default threads."""
    start = time.perf_counter()
    for seed in QUEUE_SEEDS:
        subprocess.run(
            ["dvc", "exp", "run", *experiment_args(seed, iterations)],
            cwd=project,
            env=env,
            check=True,
            capture_output=True,
        )
    return time.perf_counter() - start


def queued_seconds(project: Path, env: dict[str, str], iterations: int, timeout: float = 7200) -> float:
    """The same two experiments queued, then `dvc queue start -j 2` with one thread each, until both end."""
    for seed in QUEUE_SEEDS:
        subprocess.run(
            ["dvc", "exp", "run", "--queue", *experiment_args(seed, iterations)],
            cwd=project,
            env=env,
            check=True,
            capture_output=True,
        )
    threaded = {**env, **QUEUE_THREADS}
    start = time.perf_counter()
    subprocess.run(
        ["dvc", "queue", "start", "-j", "2"], cwd=project, env=threaded, check=True, capture_output=True
    )
    checked = start
    # Polled with git (milliseconds), not `dvc queue status` (a second of CPU each: it would slow the runs).
    while exp_refs(project, env) < len(QUEUE_SEEDS):
        time.sleep(0.5)
        now = time.perf_counter()
        if now - start > timeout:
            raise SystemExit(f"bench: the queued experiments did not finish in {timeout:.0f} s")
        if now - checked > 60:  # rarely: did one fail?
            checked = now
            status = subprocess.run(
                ["dvc", "queue", "status"], cwd=project, env=env, capture_output=True, text=True
            )
            if "Failed" in status.stdout:
                raise SystemExit(f"bench: a queued experiment failed:\n{status.stdout}")
    elapsed = time.perf_counter() - start
    subprocess.run(["dvc", "queue", "stop"], cwd=project, env=env, capture_output=True)
    return elapsed


def queue_bench(
    source: Path, overrides: list[str], env: dict[str, str], repeats: int, iterations: int
) -> dict[str, Any]:
    """Serial against `dvc queue start -j 2`, alternating which goes first; medians of the paired ratios."""
    ratios, serial_times, queued_times, results = [], [], [], {}
    for repeat in range(repeats):
        order = ("serial", "queued") if repeat % 2 == 0 else ("queued", "serial")
        times = {}
        for mode in order:
            copy = prepared_copy(source, overrides, env)
            try:
                times[mode] = (serial_seconds if mode == "serial" else queued_seconds)(copy, env, iterations)
                results[mode] = exp_results(copy, env)
            finally:
                shutil.rmtree(copy, ignore_errors=True)
            print(f"  queue repeat {repeat + 1}/{repeats}  {mode:<7} {times[mode]:.1f} s", flush=True)
        ratios.append(times["queued"] / times["serial"])
        serial_times.append(times["serial"])
        queued_times.append(times["queued"])
    return {
        "ratio": statistics.median(ratios),
        "repeats": repeats,
        "serial": statistics.median(serial_times),
        "queued": statistics.median(queued_times),
        "results": results,
        "iterations": iterations,
    }


def queue_lines(queue: dict[str, Any]) -> str:
    """The queue comparison's times and whether one thread per experiment changed the results."""
    threads = " ".join(f"{k}={v}" for k, v in QUEUE_THREADS.items())
    lines = [
        f"queue:    two experiments (train.seed={' and '.join(map(str, QUEUE_SEEDS))}, "
        f"exactly {queue['iterations']} "
        f"iterations each): one after the other "
        f"{queue['serial']:.1f} s (default threads); `{threads} dvc queue start -j 2` "
        f"{queue['queued']:.1f} s",
    ]
    serial, queued = queue["results"].get("serial", {}), queue["results"].get("queued", {})
    for seed in QUEUE_SEEDS:
        a, b = serial.get(seed), queued.get(seed)
        same = "the same" if a == b else "DIFFERENT"
        lines.append(
            f"          seed {seed}: best/stop/test-correct {a} serial, {b} queued with 1 thread: {same}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def absolute(value: str, source: Path) -> str:
    """A path relative to the project root made absolute (URLs unchanged): the copy runs elsewhere."""
    if "://" in value:
        return value
    path = (source / Path(value).expanduser()).resolve()
    if not path.exists():
        raise SystemExit(f"bench: {value} does not exist (relative to {source})")
    return str(path)


def stage_env(mirror: str | None, source: Path) -> dict[str, str]:
    """Child environment: the mirror made absolute, the library from the copy."""
    if not mirror:
        raise SystemExit(
            "bench: needs --mirror or MNIST_MIRROR, a directory or URL holding the four MNIST "
            ".gz files (e.g. ../shared/mnist, relative to the project root)"
        )
    # The stages run the copy's code.
    env = child_env(MNIST_MIRROR=absolute(mirror, source), PYTHONPATH="")
    env.pop(TIMINGS_ENV, None)  # set per run
    return env


def stages_table(run: Repro) -> str:
    """Wall time and peak RSS per stage, of one run."""
    rows = [
        (name, f"{t:.1f}", f"{run.peak_rss_kib.get(name, 0) / 1024:.0f}")
        for name, t in run.stage_seconds.items()
    ]
    return table(rows, ("stage (last run of this code)", "wall s", "peak RSS MiB"))


def run_metrics(run: Repro) -> str:
    """Best validation accuracy, stop point and speed of a run, and its test accuracies."""
    m, t = run.train, run.test
    return (
        f"train:    best validation accuracy {m['best_validation_accuracy']:.2%} at iteration "
        f"{m['best_iteration']}, stopped at {m['stopped_iteration']} ({m['stop_reason']}), "
        f"{m['iterations_per_second']} it/s over the stage's loop (validation and saves included)\n"
        f"test:     "
        + ", ".join(f"{k} {t[k]['accuracy']:.2%}" for k in ("best", "final", "untrained") if k in t)
    )


def bench(args: argparse.Namespace) -> None:
    """Run the pipeline (alternating with the baseline), print the budget and the ratios."""
    env = stage_env(args.mirror, args.project)
    overrides = list(args.set or []) + ([f"train.precision={args.precision}"] if args.precision else [])
    versions = {"this code": args.project, **({"baseline": args.baseline} if args.baseline else {})}
    lines = header("Pipeline benchmark: cold `dvc repro` in fresh copies (new git repo, DVC cache, outputs)")
    lines += [f"{name + ':':<9} {path}" for name, path in versions.items()]
    lines.append(
        f"params:   params.yaml{' with ' + ', '.join(overrides) if overrides else ''}; "
        f"{args.repeats} repeat(s), versions alternating"
    )
    print("\n".join(lines), flush=True)

    cfg = overridden(args.project / PARAMS_FILE, overrides)["train"]
    runs: dict[str, list[tuple[Repro, Arithmetic]]] = {name: [] for name in versions}
    alone: list[dict[str, Any]] = []
    noop, last = math.nan, None
    for repeat in range(args.repeats):
        order = list(versions) if repeat % 2 == 0 else list(reversed(versions))
        done: dict[str, Repro] = {}
        for name in order:
            copy = fresh_copy(versions[name], overrides, env)
            try:
                if name == "this code":
                    before = step_alone(copy, args.step_seconds)  # no data yet: images of MNIST's size
                done[name] = repro(copy, env)
                if name == "this code":
                    # Timed before and after, averaged: the CPU's speed drifts during the run.
                    after = step_alone(copy, args.step_seconds)
                    alone.append(
                        {k: (before[k] + after[k]) / 2 for k in ("its", "validate_s")}
                        | {"validation_images": after["validation_images"]}
                    )
                    if repeat == args.repeats - 1:
                        noop, last = noop_seconds(copy, env), done[name]
            finally:
                if args.keep and repeat == args.repeats - 1:
                    print(f"kept:     {copy}")
                else:
                    shutil.rmtree(copy, ignore_errors=True)
            print(
                f"  repeat {repeat + 1}/{args.repeats}  {name:<10} "
                f"dvc repro {done[name].total_seconds:.1f} s, "
                f"train loop {done[name].train.get('iterations_per_second')} it/s",
                flush=True,
            )
        for name, run in done.items():
            runs[name].append((run, arithmetic(run, alone[-1], cfg)))
    queue = (
        queue_bench(args.project, overrides, env, args.queue, args.queue_iterations) if args.queue else None
    )

    assert last is not None
    print()
    print(budget_table(runs))
    print()
    print(ratios_table(runs, alone, cfg, queue, noop))
    print()
    print(explanations(runs, alone))
    if queue:
        print(queue_lines(queue))
    print(results_line(runs))
    print(run_metrics(last))
    print(stages_table(last))


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
        "--baseline",
        type=lambda s: Path(s).resolve(),
        metavar="DIR",
        help="another checkout of the project (e.g. `git worktree add ../before <commit>`) to compare with",
    )
    parser.add_argument("--repeats", type=int, default=1, help="cold runs of each version (default 1)")
    parser.add_argument(
        "--step-seconds",
        type=float,
        default=STEP_SECONDS,
        help=f"how long to time the step alone after each repeat (default {STEP_SECONDS:g})",
    )
    parser.add_argument(
        "--queue",
        type=int,
        nargs="?",
        const=1,
        default=0,
        metavar="REPEATS",
        help="also time two experiments run one after the other against `dvc queue start -j 2` (1 repeat)",
    )
    parser.add_argument(
        "--queue-iterations",
        type=int,
        default=QUEUE_ITERATIONS,
        help=f"iterations of each timed experiment (default {QUEUE_ITERATIONS})",
    )
    parser.add_argument(
        "--precision",
        choices=("float32", "mixed_bfloat16", "mixed_float16"),
        help="train.precision for the runs",
    )
    parser.add_argument(
        "--set", action="append", metavar="SECTION.KEY=VALUE", help="override a params.yaml key (repeatable)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the last run's temporary project copy")
    return parser.parse_args(argv)


def main() -> None:
    """Entry point."""
    bench(parse_args())


if __name__ == "__main__":
    main()

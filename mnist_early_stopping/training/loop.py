"""The train stage's logic: the evaluation loop around the Trainer, its sinks, checkpoints and outputs.

Work in progress lives in the checkpoint store (checkpoints/train/ of the
main workspace, see checkpoints.py), outside DVC's outputs so it survives DVC
clearing them before a re-run, in an entry bound to the run's manifest; the
entry is removed once training has finished, every output is written and
the stage's inputs are checked unchanged.

With train.distribute: multi_worker, every worker runs this with its own
TF_CONFIG: the chief (worker 0) writes the outputs; the other workers write
nothing in the project.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from mnist_early_stopping.data.splits import load_split
from mnist_early_stopping.pipeline import params, timings
from mnist_early_stopping.pipeline.atomic import OutputError, write_atomic, write_json, writes_to
from mnist_early_stopping.pipeline.deps import ROOT, import_closure
from mnist_early_stopping.pipeline.digests import sha256_file, sha256_tree
from mnist_early_stopping.pipeline.kernels import write_kernels
from mnist_early_stopping.pipeline.layout import (
    BEST_KERAS,
    BEST_MODEL,
    CURVES,
    CURVES_TABLE,
    FINAL_KERAS,
    FINAL_MODEL,
    INITIAL_KERAS,
    INITIAL_MODEL,
    KERNELS,
    LIVE_CURVES_DIR,
    LIVE_DIR,
    LIVE_SUMMARY,
    MODEL_INFO,
    PREPROCESSING,
    TRAIN_METRICS,
    split_path,
)
from mnist_early_stopping.pipeline.stage import StageError, say, verify_inputs
from mnist_early_stopping.pipeline.tf_runtime import import_tensorflow
from mnist_early_stopping.training import checkpoints, distribute
from mnist_early_stopping.training.early_stopping import EarlyStopping, Plateau, evaluation_points

if TYPE_CHECKING:
    import tensorflow as tf

    from mnist_early_stopping.training.engine import Trainer

# The stage whose code shapes the result: a checkpoint is resumed only by the same code.
STAGE_MODULE = "stages.train"
Row = dict[str, Any]


def log_line(iteration: int, train_accuracy: float, validation_accuracy: float, improved: bool) -> str:
    """The tutorial's per-evaluation line; `*` marks an improvement (and a saved network)."""
    line = (
        f"Iter: {iteration:>6}, Train-Batch Accuracy: {train_accuracy:>6.1%}, "
        f"Validation Acc: {validation_accuracy:>6.1%}"
    )
    return line + " *" if improved else line


def run_manifest(model_cfg: params.ModelParams, cfg: params.TrainParams) -> dict[str, Any]:
    """Everything a checkpoint depends on: params, data and the stage's whole import closure."""
    manifest = {
        "model": dataclasses.asdict(model_cfg),
        "train": dataclasses.asdict(cfg),
        "data": {f"{n}.npz": split_digest(n) for n in ("train", "validation")},
        "code": {name: sha256_file(ROOT / name) for name in import_closure(STAGE_MODULE)},
    }
    return json.loads(json.dumps(manifest))  # tuples -> lists, as it reads back from disk


def split_digest(name: str) -> str:
    """The SHA-256 of one split's file, or a StageError saying how to make it."""
    try:
        return sha256_file(split_path(name))
    except OSError as e:
        raise StageError(f"cannot read {split_path(name)}: {e.strerror or e}; run the split stage first "
                         "(dvc repro split)") from None


def manifest_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable `key: old -> new` lines for every leaf that differs."""
    diffs = []
    for section in sorted(set(old) | set(new)):
        a, b = old.get(section, {}), new.get(section, {})
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                if section in ("data", "code"):
                    diffs.append(f"{key} changed")
                else:
                    diffs.append(f"{section}.{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return diffs


def open_entry(entry: checkpoints.Entry) -> bool:
    """Keep the entry if it belongs to this run (return True), else start it afresh, saying why."""
    if entry.is_ours():
        return True
    if entry.path.exists():
        say(f"{entry.path / checkpoints.MANIFEST} is damaged; starting fresh")
    elif (other := checkpoints.newest_other(entry.store, entry.path)) is not None:
        say(
            f"not resuming the unfinished training in {entry.store}: it was made with different inputs "
            f"({'; '.join(manifest_differences(other, entry.manifest))}); starting fresh (it is kept, with up to "
            f"{checkpoints.KEEP_UNFINISHED - 1} others)"
        )
    entry.start_fresh()
    for path in checkpoints.prune(entry.store, entry.path):
        say(f"removed the unfinished training {path}, the oldest beyond {checkpoints.KEEP_UNFINISHED}")
    return False


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag checked between chunks, so we stop at a checkpoint."""

    def __init__(self) -> None:
        self.signum: int | None = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum


@dataclass
class LoopState:
    """What a resumed run needs besides the Trainer's variables: stopping rule, curves, time so far."""

    stopper: EarlyStopping
    manifest_sha256: str
    schedule: Plateau | None = None
    history: list[Row] = field(default_factory=list)
    wall_before: float = 0.0

    @classmethod
    def fresh(cls, cfg: params.TrainParams, manifest_sha256: str) -> LoopState:
        """The state before the first iteration."""
        stopper = EarlyStopping(cfg.monitor, cfg.patience, cfg.min_delta, cfg.max_iterations, cfg.start_from,
                                cfg.baseline, cfg.stop_at, cfg.divergence)
        schedule = None
        if cfg.lr_schedule == "plateau":
            assert cfg.lr_factor is not None and cfg.lr_patience is not None  # checked by params
            schedule = Plateau(cfg.monitor, cfg.lr_factor, cfg.lr_patience, cfg.min_delta, cfg.lr_min or 0.0,
                               cfg.learning_rate)
        return cls(stopper, manifest_sha256, schedule)

    def snapshot(self, wall: float) -> dict[str, Any]:
        """JSON-able state for a checkpoint, at `wall` seconds of training in all, bound to the run's manifest."""
        state = {"early_stopping": self.stopper.state(), "history": self.history, "wall_seconds": wall,
                 "manifest_sha256": self.manifest_sha256}
        if self.schedule is not None:  # the default run's checkpoints stay as they were
            state["lr_schedule"] = self.schedule.state()
        return state

    @classmethod
    def from_snapshot(cls, state: dict[str, Any]) -> LoopState:
        """Rebuild from `snapshot()`."""
        schedule = Plateau.from_state(state["lr_schedule"]) if "lr_schedule" in state else None
        return cls(EarlyStopping.from_state(state["early_stopping"]), state["manifest_sha256"], schedule,
                   state["history"], state["wall_seconds"])


# A sink receives every evaluation row, in order; adding one touches only `sinks()`.
Sink = Callable[[Row], None]


def progress_note(iteration: int, best_iteration: int, clock_start: int, patience: int, max_iterations: int,
                  rate: float | None) -> str:
    """The bar's note: the best so far, the earliest the rule can stop (clock start + patience) and how soon."""
    earliest = min(clock_start + patience, max_iterations)
    eta = f"in {timedelta(seconds=round((earliest - iteration) / rate))}" if rate else "in ?"
    best = f"best at {best_iteration}" if best_iteration else "no best yet"
    return f"{best}; stops at {earliest} at the earliest, {eta}"


class ProgressSink:
    """The tutorial's log line per evaluation, under a progress bar on a terminal (under `dvc repro` too,
    which hands the stage its terminal); plain lines in a pipe or CI.

    The bar shows the iteration out of train.max_iterations with tqdm's ETA to it, and the earliest
    stop the rule allows (where its patience clock started + patience) with the ETA to that.
    """

    def __init__(self, start_iteration: int, stopper: EarlyStopping, cfg: params.TrainParams) -> None:
        self.last, self.stopper, self.cfg = start_iteration, stopper, cfg
        self.bar = None
        if sys.stdout.isatty():
            from tqdm import tqdm

            self.bar = tqdm(unit="it", leave=False, dynamic_ncols=True, initial=start_iteration,
                            total=cfg.max_iterations, desc="train")

    def __call__(self, row: Row) -> None:
        line = log_line(row["iteration"], row["train_batch_accuracy"], row["validation_accuracy"], row["improved"])
        if self.bar is None:
            print(line, flush=True)
            return
        self.bar.update(row["iteration"] - self.last)
        self.bar.write(line)
        rate = self.bar.format_dict.get("rate")
        self.bar.set_postfix_str(progress_note(row["iteration"], self.stopper.best_iteration,
                                               self.stopper.clock_start, self.cfg.patience,
                                               self.cfg.max_iterations, rate))
        self.last = row["iteration"]

    def close(self) -> None:
        """Remove the bar, if any."""
        if self.bar is not None:
            self.bar.close()


class LiveSink:
    """The curves through DVCLive and in CURVES_TABLE, written at every evaluation so `dvc exp show` and
    `dvc plots` follow the run."""

    def __init__(self, history: list[Row]) -> None:
        from dvclive import Live

        # No experiment commits and no dvc.yaml edits: the pipeline declares these files itself.
        with live_writes():
            self.live = Live(dir=str(LIVE_DIR), save_dvc_exp=False, dvcyaml=None)
        self.table: list[dict[str, float]] = []
        # DVC removed the previous files before this run: a resumed run writes
        # the checkpoint's rows again, so the curves have every step exactly once.
        for row in history:
            self(row)

    def __call__(self, row: Row) -> None:
        self.live.step = row["iteration"]
        # The learning rate only when the schedule is not constant.
        names = [*CURVES, "learning_rate"] if "learning_rate" in row else CURVES
        with live_writes():
            for name in names:
                self.live.log_metric(name, row[name])
            self.live.next_step()
        self.table.append({"iteration": int(row["iteration"]), **{name: float(row[name]) for name in names}})
        with write_atomic(CURVES_TABLE) as f:  # a failed write is the one line naming it, and nothing torn
            f.write(curves_table_bytes(self.table))


def curves_table_bytes(table: list[dict[str, float]]) -> bytes:
    """CURVES_TABLE's bytes: a JSON list with one row per line, so a run's diff reads by evaluation."""
    return ("[\n" + ",\n".join(json.dumps(row) for row in table) + "\n]\n").encode("utf-8")


@contextlib.contextmanager
def live_writes() -> Iterator[None]:
    """A failed write of the curves is one line; the torn curves go (DVCLive clears them at every start anyway)."""
    try:
        with writes_to(LIVE_DIR):
            yield
    except OutputError:
        shutil.rmtree(LIVE_CURVES_DIR, ignore_errors=True)
        LIVE_SUMMARY.unlink(missing_ok=True)
        raise


def sinks(runner: Trainer, state: LoopState, progress: ProgressSink | None) -> list[Sink]:
    """What happens to each evaluation: saving an improvement, the loop's history, live curves, the log line."""

    def save_best(row: Row) -> None:
        # Before training goes on: an improvement is on disk as soon as it is reported.
        if row["improved"]:
            with timings.phase("save best"), writes_to(runner.checkpoint_dir):
                runner.save_best()

    if progress is None:  # a worker other than the chief writes nothing
        return [state.history.append]
    return [save_best, state.history.append, LiveSink(state.history), progress]


def evaluation_step(runner: Trainer, state: LoopState, point: int) -> Row:
    """Train up to `point`, validate, apply the stopping rule and the schedule: one row of the history."""
    with timings.phase("train steps"):
        row: Row = {"iteration": point, **runner.train_until(point)}
    with timings.phase("validation"):
        row.update(runner.validate())
    monitored = {k: row[k] for k in ("train_batch_loss", "validation_loss", "validation_accuracy")}
    row["improved"] = state.stopper.update(point, monitored)
    if state.schedule is not None:
        row["learning_rate"] = state.schedule.learning_rate  # the rate of the iterations up to this evaluation
        runner.set_learning_rate(state.schedule.update(point, row[state.stopper.monitor]))
    elif runner.cfg.lr_schedule != "constant":  # a function of the iteration, in the optimiser
        row["learning_rate"] = runner.learning_rate()
    return row


def train(model_cfg: params.ModelParams, cfg: params.TrainParams) -> None:
    """Run (or resume) training; the chief writes every output of the stage."""
    task = distribute.task_from_tf_config(os.environ) if cfg.distribute == "multi_worker" else distribute.SINGLE_PROCESS
    manifest = run_manifest(model_cfg, cfg)
    if not task.is_chief:
        train_as(task, model_cfg, cfg, manifest, None)
        return
    store, note = checkpoints.store_dir(Path.cwd())
    if note:
        say(note)
    entry = checkpoints.Entry(store, manifest)
    with entry.held():
        train_as(task, model_cfg, cfg, manifest, entry)
        # Only a run whose inputs stayed what it started with is finished; else
        # its entry stays, and the same inputs again complete from it at once.
        verify_inputs()
        entry.remove()
    entry.remove_empty_store()


def train_as(
    task: distribute.Task, model_cfg: params.ModelParams, cfg: params.TrainParams, manifest: dict[str, Any],
    entry: checkpoints.Entry | None,
) -> None:
    """Set up the devices and the strategy, then run this process's part of training (the chief has `entry`)."""
    resuming = open_entry(entry) if entry is not None else False
    cpus = distribute.logical_cpus(os.environ)
    # TensorFlow is imported from here on, once params, TF_CONFIG and the lock are good.
    import_tensorflow()
    if cpus is not None:
        distribute.split_cpu(cpus)
    strategy, strategy_name = distribute.make_strategy(cfg.distribute)
    distribute.check_batch_size(cfg.batch_size, strategy.num_replicas_in_sync, strategy_name)
    if entry is not None:
        run(model_cfg, cfg, strategy, strategy_name, manifest, entry, resuming)
        return
    # The other workers take part in every collective step, saves included,
    # but keep their checkpoints in a private directory and write no outputs.
    private = Path(tempfile.mkdtemp(prefix="train-worker-"))
    try:
        run(model_cfg, cfg, strategy, strategy_name, manifest, None, False, private)
    finally:
        shutil.rmtree(private, ignore_errors=True)
    say(f"worker {task.index} of {task.count} finished; the chief (worker 0) wrote the outputs")


def start_or_resume(
    runner: Trainer, cfg: params.TrainParams, digest: str, entry: checkpoints.Entry | None, resuming: bool
) -> LoopState:
    """The loop's state: from the newest intact checkpoint of this run's entry, else fresh."""
    snapshot = runner.restore(digest) if resuming else None
    if resuming and snapshot is None and entry is not None:
        say(f"no intact checkpoint in {entry.path}; starting fresh")
        entry.start_fresh()
    snapshot = runner.share_state(snapshot)
    if snapshot is None:
        runner.save_initial()
        return LoopState.fresh(cfg, digest)
    state = LoopState.from_snapshot(snapshot)
    if state.schedule is not None:
        runner.set_learning_rate(state.schedule.learning_rate)
    if entry is not None:
        say(f"resuming from the checkpoint at iteration {runner.iteration} (best so far at "
              f"{state.stopper.best_iteration})")
    return state


def run(
    model_cfg: params.ModelParams,
    cfg: params.TrainParams,
    strategy: tf.distribute.Strategy,
    strategy_name: str,
    manifest: dict[str, Any],
    entry: checkpoints.Entry | None,
    resuming: bool,
    private_dir: Path | None = None,
) -> None:
    """The training loop; only the chief (with `entry`) reads checkpoints, prints progress and writes outputs."""
    chief = entry is not None
    checkpoint_dir = entry.path if entry is not None else private_dir
    assert checkpoint_dir is not None
    digest = checkpoints.manifest_digest(manifest)
    with timings.phase("set up"):  # Keras's import too
        from mnist_early_stopping.training import engine

        engine.configure(cfg)
        train_data, validation_data = load_split("train"), load_split("validation")
        runner = engine.Trainer(model_cfg, cfg, train_data, validation_data, checkpoint_dir, strategy)
        state = start_or_resume(runner, cfg, digest, entry, resuming)
    with timings.phase("trace graphs"):
        runner.trace()

    start_iteration = runner.iteration
    progress = ProgressSink(start_iteration, state.stopper, cfg) if chief else None
    with timings.phase("set up"):  # DVCLive's import and its first files
        row_sinks = sinks(runner, state, progress)
    stop = StopRequest()
    started = time.perf_counter()
    checkpoint_every = max(cfg.checkpoint_every, cfg.eval_every)
    last_checkpoint = start_iteration
    resumed_finished = state.stopper.stop_reason is not None  # stopped, but its outputs were never recorded
    try:
        with timings.phase("loop: other work"):  # the log, the live curves, Python: what the phases within leave
            for point in [] if resumed_finished else evaluation_points(cfg.eval_every, cfg.max_iterations,
                                                                       start_iteration):
                row = evaluation_step(runner, state, point)
                for sink in row_sinks:
                    sink(row)
                finished = state.stopper.stop_reason is not None
                signum = runner.agreed_signal(stop.signum)
                # The finished state is kept too: if the stage's inputs turn out to have
                # changed meanwhile, the same inputs again complete from it at once.
                if finished or point - last_checkpoint >= checkpoint_every or signum:
                    with timings.phase("checkpoint"), writes_to(checkpoint_dir):
                        runner.save_checkpoint(state.snapshot(state.wall_before + time.perf_counter() - started))
                    last_checkpoint = point
                if signum and not finished:
                    interrupted(point, signum, chief)
                if finished:
                    break
    finally:
        if progress is not None:
            progress.close()
    if chief:
        finish(runner, model_cfg, cfg, state, start_iteration,
               state.wall_before + time.perf_counter() - started, strategy_name, manifest)


def interrupted(point: int, signum: int, chief: bool) -> None:
    """Say where training stopped on a signal, and exit with the shell's status for it."""
    if chief:
        raise StageError(f"interrupted at iteration {point}; checkpoint saved, `dvc repro` resumes from it",
                         code=128 + signum)
    raise StageError(f"interrupted at iteration {point}; the chief saved a checkpoint, which the next run "
                     "resumes from", code=128 + signum)


def report_stop(stopper: EarlyStopping, iteration: int, max_iterations: int, wall: float) -> None:
    """Say why training stopped (the tutorial's lines) and how long it took."""
    if stopper.best_value is None:
        if stopper.start_from is not None and iteration < stopper.start_from:
            raise StageError(f"training stopped ({stopper.stop_reason}) at iteration {iteration}, before "
                             f"train.start_from ({stopper.start_from}), so no evaluation counted and there is no "
                             "best network to save. Lower train.start_from or train.learning_rate.")
        raise StageError("no evaluation gave a finite validation value, so there is no best "
                         "network to save. Try a lower train.learning_rate or train.precision: float32.")
    monitor = stopper.monitor.replace("_", " ")
    if stopper.stop_reason == "patience":
        print("No improvement found in a while, stopping optimization.")
    elif stopper.stop_reason == "baseline":
        print(f"No {monitor} beat train.baseline ({stopper.baseline}) in train.patience iterations, "
              "stopping optimization.")
    elif stopper.stop_reason == "threshold":
        print(f"The {monitor} reached train.stop_at ({stopper.stop_at}), stopping optimization.")
    elif stopper.stop_reason == "divergence":
        print(f"The {monitor} is worse than train.divergence ({stopper.divergence}), stopping optimization.")
    elif stopper.stop_reason == "non_finite":
        say(f"loss is not finite at iteration {iteration}; stopping. "
              "Try a lower train.learning_rate or train.precision: float32.")
    else:
        print(f"Reached train.max_iterations ({max_iterations}), stopping optimization.")
    print(f"Time usage: {timedelta(seconds=int(round(wall)))}")


def finish(
    runner: Trainer,
    model_cfg: params.ModelParams,
    cfg: params.TrainParams,
    state: LoopState,
    start_iteration: int,
    wall: float,
    strategy_name: str,
    manifest: dict[str, Any],
) -> None:
    """Report how training ended, write the models and metrics, and remove the checkpoints."""
    stopper, history = state.stopper, state.history
    report_stop(stopper, runner.iteration, cfg.max_iterations, wall)
    with timings.phase("write networks"):
        write_networks(runner, model_cfg, cfg.precision, provenance(manifest))
    best = best_row(history, stopper.best_iteration)
    metrics = {
        "best_iteration": stopper.best_iteration,
        "best_validation_accuracy": best["validation_accuracy"],
        "best_validation_loss": best["validation_loss"],
        "stopped_iteration": runner.iteration,
        "stop_reason": stopper.stop_reason,
        "iterations": runner.iteration,
        "resumed_from_iteration": start_iteration,
        "wall_seconds": round(wall, 2),
        "iterations_per_second": round(runner.iteration / wall, 2) if wall > 0 else 0.0,
        "replicas": runner.replicas,
        "strategy": strategy_name,
        "cpu": cpu_description(),
        # What evaluate checks before scoring: the best network it loads is this run's.
        "best_network_sha256": best_network_digests(),
    }
    if cfg.lr_schedule != "constant":  # the default run's train.json stays as it was
        metrics["final_learning_rate"] = state.schedule.learning_rate if state.schedule else runner.learning_rate()
    write_json(TRAIN_METRICS, metrics)


def best_network_digests() -> dict[str, str]:
    """SHA-256 of the best network as written: the SavedModel's variables and the .keras file."""
    return {"savedmodel": sha256_tree(BEST_MODEL / "variables"), "keras": sha256_file(BEST_KERAS)}


# The tracked files that define a training: the code, the params, the pipeline, the pinned versions.
DEFINING_FILES = ("stages", "mnist_early_stopping", "params.yaml", "dvc.yaml", "pyproject.toml", "constraints.txt")


def git_commit() -> dict[str, Any]:
    """The commit the code comes from, and whether its code or params differ from it (None outside git)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    # Only what defines a run: DVC rewrites dvc.lock, and removes the git-tracked metrics and
    # plots, before a stage runs, so the whole work tree is always "changed" under dvc repro.
    status = git("status", "--porcelain", "--untracked-files=no", "--", *DEFINING_FILES) if commit else None
    return {"commit": commit, "uncommitted_changes": bool(status) if status is not None else None}


def provenance(manifest: dict[str, Any]) -> dict[str, Any]:
    """What made the networks: params, data digests, code, machine, and the input they expect."""
    code = hashlib.sha256(json.dumps(manifest["code"], sort_keys=True).encode()).hexdigest()
    return {
        "made_by": "the train stage of mnist-early-stopping (dvc repro train)",
        "params": {"model": manifest["model"], "train": manifest["train"]},
        "data_sha256": manifest["data"],
        **git_commit(),
        "code_sha256": code,
        "cpu": cpu_description(),
        "input": PREPROCESSING,
        "output": "float32 class probabilities (N, 10), digits 0-9",
    }


def write_networks(runner: Trainer, model_cfg: params.ModelParams, precision: str, made_by: dict[str, Any]) -> None:
    """The final (weights at the stop), best (restored) and initial networks, kernels, model.json."""
    kernels = {}
    for which, saved_model, keras_file in (
        ("final", FINAL_MODEL, FINAL_KERAS), ("best", BEST_MODEL, BEST_KERAS), ("initial", INITIAL_MODEL, INITIAL_KERAS),
    ):
        if which != "final":  # the final network is the one in memory
            runner.load_saved(which)
        record = {**made_by, "network": which}
        runner.export(saved_model, record)
        runner.save_keras(keras_file, record)
        kernels[which] = runner.conv_kernels()
    write_kernels(KERNELS, {v: kernels[v] for v in ("initial", "best", "final")})
    from mnist_early_stopping.training.model import describe

    write_json(MODEL_INFO, {**describe(model_cfg), "precision": precision})


def cpu_description() -> str:
    """The CPU, the widest vector ISA oneDNN may use on it and any thread limit: float32 results differ with each."""
    flags, model = set(), "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:  # not Linux: the model is unknown, the ISA is what oneDNN picks
        pass
    isa = next((name for name, flag in ISA_FLAGS if flag in flags), "unknown ISA")
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA")
    threads = os.environ.get("TF_NUM_INTRAOP_THREADS")  # results differ with the thread count too
    return (f"{model}, {isa}" + (f", oneDNN limited to {limit}" if limit else "")
            + (f", {threads} intra-op threads" if threads else ""))


# Widest first: the first flag the CPU has names the kernels oneDNN dispatches to.
ISA_FLAGS = (("AMX", "amx_tile"), ("AVX-512 BF16", "avx512_bf16"), ("AVX-512", "avx512f"), ("AVX2", "avx2"))


def best_row(history: list[Row], iteration: int) -> Row:
    """The history row of the given evaluation."""
    return next(r for r in history if r["iteration"] == iteration)

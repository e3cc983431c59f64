"""Train stage: early stopping on validation, best network saved on every improvement, resumable.

Reads data/split/{train,validation}.npz; writes models/best and models/final
(SavedModels), models/kernels.npz, models/model.json, metrics/train.json and
metrics/history.csv. Work in progress lives in checkpoints/train/, outside
DVC's outputs so it survives DVC clearing them before a re-run; it is
removed once training has finished and every output is written.

With train.distribute: multi_worker, run it on every worker with its own
TF_CONFIG: the chief (worker 0) writes all of the above; the other workers
write nothing in the project.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable


from stages import distribute, params
from stages.atomic import write_atomic, write_json
from stages.early_stopping import EarlyStopping, evaluation_points
from stages.split import SPLIT_DIR, load_split

if TYPE_CHECKING:
    import tensorflow as tf

    from stages.trainer import Trainer

CHECKPOINT_DIR = Path("checkpoints/train")
MODELS_DIR = Path("models")
TRAIN_METRICS = Path("metrics/train.json")
HISTORY = Path("metrics/history.csv")
HISTORY_FIELDS = (
    "iteration", "train_batch_accuracy", "train_batch_loss",
    "validation_accuracy", "validation_loss", "improved",
)
# Every project module whose code shapes the result: a checkpoint is resumed
# only by the same code.
CODE_FILES = (
    "train.py", "trainer.py", "distribute.py", "model.py", "early_stopping.py", "split.py", "idx.py", "params.py",
)


def log_line(iteration: int, train_accuracy: float, validation_accuracy: float, improved: bool) -> str:
    """The tutorial's per-evaluation line; `*` marks an improvement (and a saved network)."""
    line = (
        f"Iter: {iteration:>6}, Train-Batch Accuracy: {train_accuracy:>6.1%}, "
        f"Validation Acc: {validation_accuracy:>6.1%}"
    )
    return line + " *" if improved else line


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's content."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def run_manifest(model_cfg: params.ModelParams, cfg: params.TrainParams) -> dict[str, Any]:
    """Everything a checkpoint depends on: params, data and code."""
    code_dir = Path(__file__).parent
    manifest = {
        "model": dataclasses.asdict(model_cfg),
        "train": dataclasses.asdict(cfg),
        "data": {f"{n}.npz": sha256_file(SPLIT_DIR / f"{n}.npz") for n in ("train", "validation")},
        "code": {f"stages/{n}": sha256_file(code_dir / n) for n in CODE_FILES},
    }
    return json.loads(json.dumps(manifest))  # tuples -> lists, as it reads back from disk


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


def prepare_checkpoint_dir(manifest: dict[str, Any], fresh: bool = False) -> bool:
    """Keep the checkpoint dir if it belongs to this run (return True), else (or if `fresh`) start it afresh."""
    manifest_path = CHECKPOINT_DIR / "manifest.json"
    if not fresh and manifest_path.is_file():
        try:
            old = json.loads(manifest_path.read_text(encoding="utf-8"))
        except ValueError:
            old = {}
        diffs = manifest_differences(old, manifest)
        if not diffs:
            return True
        print(
            f"train: not resuming the checkpoint in {CHECKPOINT_DIR}: it was made with different "
            f"inputs ({'; '.join(diffs)}); starting fresh"
        )
    shutil.rmtree(CHECKPOINT_DIR, ignore_errors=True)
    write_json(manifest_path, manifest)
    return False


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag checked between chunks, so we stop at a checkpoint."""

    def __init__(self) -> None:
        self.signum: int | None = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum


def make_logger() -> tuple[Callable[[str], None], Callable[[int], None], Callable[[], None]]:
    """(log, advance, close): a tqdm bar on a terminal, plain lines in a pipe or under DVC."""
    if not sys.stdout.isatty():
        return (lambda s: print(s, flush=True)), (lambda n: None), (lambda: None)
    from tqdm import tqdm

    bar = tqdm(unit="it", leave=False, dynamic_ncols=True)
    return bar.write, bar.update, bar.close


def train(model_cfg: params.ModelParams, cfg: params.TrainParams) -> None:
    """Run (or resume) training; the chief writes every output of the stage."""
    task = distribute.task_from_tf_config(os.environ) if cfg.distribute == "multi_worker" else distribute.SINGLE_PROCESS
    cpus = distribute.logical_cpus(os.environ)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # TensorFlow is imported from here on, only once params are known good.
    if cpus is not None:
        distribute.split_cpu(cpus)
    strategy, strategy_name = distribute.make_strategy(cfg.distribute)
    distribute.check_batch_size(cfg.batch_size, strategy.num_replicas_in_sync, strategy_name)
    if task.is_chief:
        run(model_cfg, cfg, strategy, strategy_name, CHECKPOINT_DIR)
        return
    # The other workers take part in every collective step, saves included,
    # but keep their checkpoints in a private directory and write no outputs.
    private = Path(tempfile.mkdtemp(prefix="train-worker-"))
    try:
        run(model_cfg, cfg, strategy, strategy_name, private / "checkpoints", chief=False)
    finally:
        shutil.rmtree(private, ignore_errors=True)
    print(f"train: worker {task.index} of {task.count} finished; the chief (worker 0) wrote the outputs")


def run(
    model_cfg: params.ModelParams,
    cfg: params.TrainParams,
    strategy: tf.distribute.Strategy,
    strategy_name: str,
    checkpoint_dir: Path,
    chief: bool = True,
) -> None:
    """The training loop; only the chief reads checkpoints, prints progress and writes outputs."""
    from stages import trainer  # TensorFlow

    manifest = run_manifest(model_cfg, cfg)
    resuming = prepare_checkpoint_dir(manifest) if chief else False
    train_data, validation_data = load_split("train", "train"), load_split("validation", "train")
    runner = trainer.Trainer(model_cfg, cfg, train_data, validation_data, checkpoint_dir, strategy)

    state = runner.restore() if resuming else None
    if resuming and state is None:
        print(f"train: no usable checkpoint in {CHECKPOINT_DIR}; starting fresh")
        prepare_checkpoint_dir(manifest, fresh=True)
    state = runner.share_state(state)
    if state is None:
        stopper = EarlyStopping(cfg.monitor, cfg.patience, cfg.min_delta, cfg.max_iterations)
        history: list[dict[str, Any]] = []
        wall_before = 0.0
        if chief:
            runner.save_initial_kernels()
    else:
        stopper = EarlyStopping.from_state(state["early_stopping"])
        history, wall_before = state["history"], state["wall_seconds"]
        if chief:
            print(f"train: resuming from the checkpoint at iteration {runner.iteration} (best so far at "
                  f"{stopper.best_iteration})")

    log, advance, close = make_logger() if chief else ((lambda s: None), (lambda n: None), (lambda: None))
    stop = StopRequest()
    started = time.perf_counter()
    start_iteration = runner.iteration
    advance(start_iteration)
    checkpoint_every = max(cfg.checkpoint_every, cfg.eval_every)
    last_checkpoint = start_iteration
    try:
        for point in evaluation_points(cfg.eval_every, cfg.max_iterations, start_iteration):
            previous = runner.iteration
            batch_metrics = runner.train_until(point)
            advance(point - previous)
            row = {"iteration": point, **batch_metrics, **runner.validate()}
            improved = stopper.update(point, {k: row[k] for k in ("train_batch_loss", "validation_loss", "validation_accuracy")})
            row["improved"] = improved
            history.append(row)
            if improved and chief:
                runner.save_best()
            log(log_line(point, row["train_batch_accuracy"], row["validation_accuracy"], improved))
            wall = wall_before + time.perf_counter() - started
            finished = stopper.stop_reason is not None
            signum = runner.agreed_signal(stop.signum)
            if not finished and (point - last_checkpoint >= checkpoint_every or signum):
                runner.save_checkpoint({"early_stopping": stopper.state(), "history": history, "wall_seconds": wall})
                last_checkpoint = point
            if signum and not finished:
                close()
                if chief:
                    print(f"train: interrupted at iteration {point}; checkpoint saved, "
                          "`dvc repro` resumes from it", file=sys.stderr)
                else:
                    print(f"train: interrupted at iteration {point}; the chief saved a checkpoint, "
                          "which the next run resumes from", file=sys.stderr)
                raise SystemExit(128 + signum)
            if finished:
                break
    finally:
        close()
    if chief:
        finish(runner, model_cfg, cfg, stopper, history, start_iteration,
                      wall_before + time.perf_counter() - started, strategy_name)


def finish(
    runner: Trainer,
    model_cfg: params.ModelParams,
    cfg: params.TrainParams,
    stopper: EarlyStopping,
    history: list[dict[str, Any]],
    start_iteration: int,
    wall: float,
    strategy_name: str,
) -> None:
    """Report how training ended, write the models and metrics, and remove the checkpoints."""
    if stopper.best_value is None:
        raise SystemExit("train: no evaluation gave a finite validation value, so there is no best "
                         "network to save. Try a lower train.learning_rate or train.precision: float32.")
    if stopper.stop_reason == "patience":
        print("No improvement found in a while, stopping optimization.")
    elif stopper.stop_reason == "non_finite":
        print(f"train: loss is not finite at iteration {runner.iteration}; stopping. "
              "Try a lower train.learning_rate or train.precision: float32.")
    else:
        print(f"Reached train.max_iterations ({cfg.max_iterations}), stopping optimization.")
    print(f"Time usage: {timedelta(seconds=int(round(wall)))}")

    runner.write_outputs(MODELS_DIR, model_cfg)
    write_history(history)
    metrics = {
        "best_iteration": stopper.best_iteration,
        "best_validation_accuracy": best_row(history, stopper.best_iteration)["validation_accuracy"],
        "best_validation_loss": best_row(history, stopper.best_iteration)["validation_loss"],
        "stopped_iteration": runner.iteration,
        "stop_reason": stopper.stop_reason,
        "iterations": runner.iteration,
        "resumed_from_iteration": start_iteration,
        "wall_seconds": round(wall, 2),
        "iterations_per_second": round(runner.iteration / wall, 2) if wall > 0 else 0.0,
        "replicas": runner.replicas,
        "strategy": strategy_name,
    }
    write_json(TRAIN_METRICS, metrics)
    shutil.rmtree(CHECKPOINT_DIR, ignore_errors=True)


def best_row(history: list[dict[str, Any]], iteration: int) -> dict[str, Any]:
    """The history row of the given evaluation."""
    return next(r for r in history if r["iteration"] == iteration)


def write_history(history: list[dict[str, Any]]) -> None:
    """The per-evaluation curves as CSV, for `dvc plots` and the plots stage."""
    with write_atomic(HISTORY, "w") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in history:
            writer.writerow({**row, "improved": int(row["improved"])})


def main() -> None:
    """Entry point of the train stage."""
    model_cfg, cfg = params.load("model", "train")
    train(model_cfg, cfg)


if __name__ == "__main__":
    main()

"""Scoring networks on a data set, and the restore check (the evaluate stage's logic)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mnist_early_stopping.data.splits import load_split
from mnist_early_stopping.evaluation.scores import class_metrics, confusion
from mnist_early_stopping.evaluation.train_metrics import load_train_metrics
from mnist_early_stopping.pipeline import timings
from mnist_early_stopping.pipeline.atomic import json_bytes, prepare_file, write_files
from mnist_early_stopping.pipeline.digests import sha256_file, sha256_tree
from mnist_early_stopping.pipeline.layout import (
    BEST_KERAS,
    BEST_MODEL,
    FINAL_KERAS,
    FINAL_MODEL,
    INITIAL_KERAS,
    INITIAL_MODEL,
    PER_CLASS,
    PREDICTIONS,
    TEST_METRICS,
    TRAIN_METRICS,
)
from mnist_early_stopping.pipeline.stage import StageError
from mnist_early_stopping.serving.network import Network, NetworkError, load_any

# The networks the train stage writes, by how they are loaded.
NETWORK_FILES = {
    "savedmodel": {"best": BEST_MODEL, "final": FINAL_MODEL, "initial": INITIAL_MODEL},
    "keras": {"best": BEST_KERAS, "final": FINAL_KERAS, "initial": INITIAL_KERAS},
}

# What the stage writes: all three, or none of them.
OUTPUTS = (PREDICTIONS, PER_CLASS, TEST_METRICS)
# What the stage reads from metrics/train.json (besides best_network_sha256).
TRAIN_KEYS = ("best_validation_accuracy", "best_iteration", "stopped_iteration", "best_validation_loss")

# Accuracy is correct / total; anything beyond float rounding means a different network.
RESTORE_TOLERANCE = 1e-9
# Training sums float32 per-example losses (Keras takes the log in float32) in
# float64; the check takes the log in float64, with other batch sizes. Measured
# apart: 5.0e-9 (1.0e-7 of the loss) on the reference run (real MNIST, default
# params), 1.1e-8 (2.0e-7) on the tests' tiny run: float32 rounding of each
# example's loss. 1e-5 leaves a margin of 50 or more; the reference run's final
# network, 1400 iterations on, is 5% off.
LOSS_RELATIVE_TOLERANCE = 1e-5
# float32 rounding of log(p) near p = 1 is absolute, whatever the loss: the floor for a near-perfect network.
LOSS_ABSOLUTE_TOLERANCE = 1e-6
# Inside a compiled function Keras's cross-entropy of a softmax output takes
# the softmax's logits, unclipped (keras.backend's _get_logits): training's
# losses are -log p with no floor at Keras's epsilon (1e-7), which an
# overfitted network undercuts on its confident mistakes. The only floor here
# is float32's smallest positive number, where a probability underflows.
FLOOR = float(np.finfo(np.float32).smallest_subnormal)


def cross_entropy(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Per-example cross-entropy of integer labels under predicted probabilities (float64), as training's."""
    p = probabilities.astype(np.float64)
    p = p / p.sum(axis=1, keepdims=True)
    return -np.log(np.maximum(p[np.arange(labels.size), labels], FLOOR))


def summary(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, Any]:
    """Accuracy, mean cross-entropy and correct / total of one network on one data set."""
    correct = int(np.sum(probabilities.argmax(axis=1) == labels))
    return {
        "accuracy": correct / labels.size,
        "loss": round(float(cross_entropy(labels, probabilities).mean()), 6),
        "correct": correct,
        "total": int(labels.size),
    }


def network_results(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, Any]:
    """Everything metrics/test.json reports for a trained network."""
    return {**summary(labels, probabilities), **class_metrics(labels, probabilities.argmax(axis=1))}


def restore_error(correct: int, total: int, recorded_accuracy: float, best_iteration: int) -> str | None:
    """None if the restored best network reproduces the recorded validation accuracy, else the error."""
    accuracy = correct / total
    if abs(accuracy - recorded_accuracy) <= RESTORE_TOLERANCE:
        return None
    return (
        f"the restored network is not the one saved as best: its validation accuracy is "
        f"{accuracy!r} ({correct} / {total}), but {TRAIN_METRICS} records best_validation_accuracy "
        f"{recorded_accuracy!r} ({recorded_accuracy * total:g} / {total}) for the network saved at "
        f"iteration {best_iteration}. {BEST_MODEL} does not belong to this training run; "
        f"re-run training with `dvc repro -f train`, then `dvc repro`."
    )


def loss_error(loss: float, recorded_loss: float, best_iteration: int) -> str | None:
    """None if the restored best network reproduces the recorded validation loss to float rounding, else the error."""
    if abs(loss - recorded_loss) <= LOSS_RELATIVE_TOLERANCE * abs(recorded_loss) + LOSS_ABSOLUTE_TOLERANCE:
        return None
    return (
        f"the restored network is not the one saved as best: its validation loss is {loss!r}, but "
        f"{TRAIN_METRICS} records best_validation_loss {recorded_loss!r} for the network saved at iteration "
        f"{best_iteration}. {BEST_MODEL} does not belong to this training run; re-run training with "
        f"`dvc repro -f train`, then `dvc repro`."
    )


def best_network_error(recorded: Any) -> str | None:
    """None if models/best's variables and models/best.keras are the files training recorded, else the error."""
    redo = "re-run training with `dvc repro -f train`, then `dvc repro`"
    if not isinstance(recorded, dict):
        return f"{TRAIN_METRICS} records no best_network_sha256 (an older training); {redo}"
    for kind, path in (("savedmodel", BEST_MODEL), ("keras", BEST_KERAS)):
        if not (path / "variables" if kind == "savedmodel" else path).exists():
            return f"{path} not found; run the train stage first (dvc repro train)"
        try:
            digest = sha256_tree(path / "variables") if kind == "savedmodel" else sha256_file(path)
        except OSError as e:
            return f"cannot read {path}: {e.strerror or e}; {redo}"
        if digest != recorded.get(kind):
            return (
        f"{path} is not the best network that {TRAIN_METRICS} records (its SHA-256 differs: "
                f"replaced or modified); {redo}"
            )
    return None


def accuracy_line(label: str, correct: int, total: int) -> str:
    """The tutorial's test accuracy line, after a label naming the network."""
    return f"{label}: Accuracy on Test-Set: {correct / total:.1%} ({correct} / {total})"


def format_confusion(matrix: np.ndarray) -> str:
    """The confusion matrix as a text table with labelled rows (true) and columns (predicted)."""
    width = max(len(str(int(matrix.max()))), 4)
    header = " " * 9 + "".join(f"{c:>{width + 1}}" for c in range(matrix.shape[1]))
    lines = ["Confusion Matrix (rows: true class, columns: predicted class):", header + "   <- predicted"]
    for c, row in enumerate(matrix):
        lines.append(f"true {c:>2} |" + "".join(f"{int(v):>{width + 1}}" for v in row))
    return "\n".join(lines)


def predictions_csv(labels: np.ndarray, probabilities: np.ndarray) -> str:
    """CSV text: actual, predicted and its probability for each image, in order."""
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities[np.arange(labels.size), predicted]
    rows = (f"{a},{p},{c:.4f}" for a, p, c in zip(labels.tolist(), predicted.tolist(), confidence.tolist()))
    return "actual,predicted,confidence\n" + "\n".join(rows) + "\n"


def load_labelled(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8, N x 28 x 28) and labels (int64, for indexing) of one split."""
    images, labels = load_split(name)
    return images, labels.astype(np.int64)


def load_stage_network(path: Path, batch_size: int) -> Network:
    """A network the train stage wrote, or exit 1 with one line saying how to make it."""
    try:
        return load_any(path, batch_size)
    except NetworkError as e:
        raise StageError(f"{e}; run the train stage first (dvc repro train)") from None


def evaluate(batch_size: int, load_from: str = "savedmodel") -> None:
    """Check the restored best network, score all three networks on the test set, write the outputs."""
    for path in OUTPUTS:  # a directory in the way fails now, not after the scoring
        prepare_file(path)
    train_metrics = load_train_metrics(TRAIN_KEYS)
    validation_images, validation_labels = load_labelled("validation")
    test_images, test_labels = load_labelled("test")
    files = NETWORK_FILES[load_from]
    # Both files of the best network, whichever is loaded: hashing them costs milliseconds.
    with timings.phase("check digests"):
        error = best_network_error(train_metrics.get("best_network_sha256"))
    if error:
        raise StageError(error)

    with timings.phase("load networks"):
        best = load_stage_network(files["best"], batch_size)
    with timings.phase("predict"):
        validation_probabilities = best(validation_images)
    check = summary(validation_labels, validation_probabilities)
    loss = float(cross_entropy(validation_labels, validation_probabilities).mean())  # unrounded, for the check
    recorded, recorded_loss = train_metrics["best_validation_accuracy"], train_metrics["best_validation_loss"]
    iteration = train_metrics["best_iteration"]
    error = restore_error(check["correct"], check["total"], recorded, iteration) or loss_error(
        loss, recorded_loss, iteration
    )
    if error:
        raise StageError(error)
    print(
        f"Restore check passed: the restored best network's files, validation accuracy "
        f"{check['accuracy']:.2%} ({check['correct']} / {check['total']}) and loss {loss:.6f} are as "
        f"recorded at iteration {iteration}."
    )

    with timings.phase("load networks"):
        final, initial = (load_stage_network(files[name], batch_size) for name in ("final", "initial"))
    with timings.phase("predict"):
        best_probabilities, final_probabilities, initial_probabilities = (
            network(test_images) for network in (best, final, initial)
        )
    results = {
        "best": network_results(test_labels, best_probabilities),
        "final": network_results(test_labels, final_probabilities),
        "untrained": summary(test_labels, initial_probabilities),
        "restore_check": {
            "validation_accuracy": check["accuracy"], "recorded_validation_accuracy": recorded,
            "validation_loss": loss, "recorded_validation_loss": recorded_loss,
        },
    }
    labels = {
        "untrained": "Untrained network",
        "final": f"Final network (iteration {train_metrics['stopped_iteration']})",
        "best": f"Restored best network (iteration {train_metrics['best_iteration']})",
    }
    for key, label in labels.items():
        print(accuracy_line(label, results[key]["correct"], results[key]["total"]))
    print(format_confusion(confusion(test_labels, best_probabilities.argmax(axis=1))))

    per_class = {name: results[name].pop("per_class") for name in ("best", "final")}
    # Everything computed: the three files replace the old ones together, or none does.
    write_files({
        PREDICTIONS: predictions_csv(test_labels, best_probabilities).encode("utf-8"),
        PER_CLASS: json_bytes(per_class),
        TEST_METRICS: json_bytes(results),
    })

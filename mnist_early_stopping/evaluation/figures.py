"""The tutorial's figures, drawn from the files the earlier stages wrote (no TensorFlow)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from mnist_early_stopping.data.splits import NPZ_ERRORS, load_split
from mnist_early_stopping.evaluation.scores import confusion
from mnist_early_stopping.evaluation.train_metrics import load_train_metrics
from mnist_early_stopping.pipeline.atomic import writes_to
from mnist_early_stopping.pipeline.kernels import conv_layer_names, read_kernels
from mnist_early_stopping.pipeline.layout import (
    CURVES,
    KERNELS,
    NUM_CLASSES,
    PLOTS_DIR,
    PREDICTIONS,
    curve_path,
    split_path,
)
from mnist_early_stopping.pipeline.stage import StageError, first_line

# Figure sizes in inches are fixed, so pixel sizes depend on plots.dpi only.
GRID_SIZE = (6.0, 6.6)
CONFUSION_SIZE = (7.0, 6.0)
CURVES_SIZE = (11.0, 4.5)
FILTERS_SIZE = (10.0, 5.4)


def read_csv(path: Path, columns: tuple[str, ...], stage: str, delimiter: str = ",") -> dict[str, np.ndarray]:
    """Numeric columns of a CSV (or TSV) file written by an earlier stage, by name."""
    try:
        with path.open(encoding="utf-8") as f:
            header = f.readline().strip().split(delimiter)
            missing = [c for c in columns if c not in header]
            if missing:
                raise StageError(
                    f"{path} has no column {missing[0]} (columns: {', '.join(header)}); "
                    f"re-run `dvc repro {stage}`"
                )
            data = np.loadtxt(f, delimiter=delimiter, ndmin=2)
    except FileNotFoundError:
        raise StageError(f"{path} not found; run `dvc repro {stage}` first") from None
    except (OSError, ValueError) as e:
        raise StageError(
            f"{path} is not a table of numbers ({first_line(e, with_type=True)}); re-run `dvc repro {stage}`"
        ) from None
    return {c: data[:, header.index(c)] for c in columns}


def load_inputs() -> dict[str, Any]:
    """Everything the figures show, read from the earlier stages' outputs."""
    images, labels = load_split("test")
    labels = labels.astype(np.int64)
    train_metrics = load_train_metrics(("best_iteration", "stopped_iteration"))
    try:
        kernels = read_kernels(KERNELS)
    except FileNotFoundError:
        raise StageError(f"{KERNELS} not found; run the train stage first (dvc repro train)") from None
    except NPZ_ERRORS as e:
        raise StageError(
            f"{KERNELS} is truncated or corrupt ({first_line(e, with_type=True)}); "
            "re-run the train stage: dvc repro train"
        ) from None
    predictions = read_csv(PREDICTIONS, ("actual", "predicted", "confidence"), "evaluate")
    actual, predicted = predictions["actual"].astype(np.int64), predictions["predicted"].astype(np.int64)
    if not np.array_equal(actual, labels):
        raise StageError(
            f"{PREDICTIONS} does not match the test labels in {split_path('test')}; "
            "re-run `dvc repro evaluate`"
        )
    if predicted.size and not 0 <= predicted.min() <= predicted.max() < NUM_CLASSES:
        raise StageError(
            f"{PREDICTIONS} predicts a class outside 0-{NUM_CLASSES - 1}; re-run `dvc repro evaluate`"
        )
    history = read_curves()
    return {
        "images": images, "labels": labels, "predicted": predicted, "kernels": kernels,
        "history": history, "train_metrics": train_metrics,
    }


def read_curves() -> dict[str, np.ndarray]:
    """The training curves from DVCLive's files, on the iterations they share, as `iteration` and one array each."""
    curves = {name: read_csv(curve_path(name), ("step", name), "train", delimiter="\t") for name in CURVES}
    steps = curves[CURVES[0]]["step"]
    for name, curve in curves.items():
        if not np.array_equal(curve["step"], steps):
            raise StageError(f"{curve_path(name)} has other steps than {curve_path(CURVES[0])}; "
                             "re-run `dvc repro train`")
    history = {"iteration": steps, **{name: curve[name] for name, curve in curves.items()}}
    if curve_path("learning_rate").is_file():  # only when train.lr_schedule is not constant
        rate = read_csv(curve_path("learning_rate"), ("step", "learning_rate"), "train", delimiter="\t")
        if np.array_equal(rate["step"], steps):
            history["learning_rate"] = rate["learning_rate"]
    return history


def image_grid(images: np.ndarray, captions: list[str], title: str) -> Figure:
    """Up to 9 images in a 3x3 grid, each with a caption below it."""
    fig = Figure(figsize=GRID_SIZE, layout="constrained")
    axes = fig.subplots(3, 3)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i < len(images):
            ax.imshow(images[i], cmap="binary", vmin=0, vmax=255)
            ax.set_xlabel(captions[i], fontsize=11)
        else:
            ax.axis("off")
    fig.suptitle(title, fontsize=12)
    return fig


def test_images_figure(images: np.ndarray, labels: np.ndarray) -> Figure:
    """The first 9 test images with their true classes."""
    return image_grid(images[:9], [f"True: {c}" for c in labels[:9]], "The first 9 test images")


def misclassified_figure(images: np.ndarray, labels: np.ndarray, predicted: np.ndarray) -> Figure:
    """The first 9 test images the restored best network gets wrong."""
    wrong = np.flatnonzero(predicted != labels)
    if wrong.size == 0:
        fig = Figure(figsize=GRID_SIZE, layout="constrained")
        fig.text(
            0.5, 0.5, f"No misclassified test images:\nthe restored best network classifies\n"
            f"all {labels.size} test images correctly.", ha="center", va="center", fontsize=14,
        )
        return fig
    first = wrong[:9]
    title = (
        f"Test images misclassified by the restored best network\n"
        f"(the first {first.size} of {wrong.size} errors in {labels.size} images)"
    )
    captions = [f"True: {labels[i]}, Pred: {predicted[i]}" for i in first]
    return image_grid(images[first], captions, title)


def confusion_figure(labels: np.ndarray, predicted: np.ndarray) -> Figure:
    """Confusion matrix of the restored best network on the test set, with counts."""
    # Drawn here, not with scikit-learn's ConfusionMatrixDisplay: importing sklearn costs the stage 1.4 s.
    matrix = confusion(labels, predicted)
    fig = Figure(figsize=CONFUSION_SIZE, layout="constrained")
    ax = fig.subplots()
    cmap = matplotlib.colormaps["Blues"]
    image = ax.imshow(matrix, cmap=cmap, interpolation="nearest")
    fig.colorbar(image, ax=ax)
    middle = (matrix.max() + matrix.min()) / 2
    for (true, guess), count in np.ndenumerate(matrix):  # light text on dark cells, dark on light
        colour = cmap(0.0) if count > middle else cmap(1.0)
        ax.text(guess, true, str(count), ha="center", va="center", color=colour, fontsize=8)
    ticks = range(NUM_CLASSES)
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    accuracy = np.mean(labels == predicted)
    ax.set_title(f"Confusion matrix: restored best network on the test set (accuracy {accuracy:.1%})")
    return fig


def curves_figure(history: dict[str, np.ndarray], best_iteration: int, stopped_iteration: int) -> Figure:
    """Accuracy and loss on the last training batch and on the validation set, against iteration; and the
    learning rate, when the schedule is not constant."""
    scheduled = "learning_rate" in history
    width, height = CURVES_SIZE
    fig = Figure(figsize=(width * 1.5 if scheduled else width, height), layout="constrained")
    acc_ax, loss_ax, *rate_ax = fig.subplots(1, 3 if scheduled else 2)
    x = history["iteration"]
    for ax, metric in ((acc_ax, "accuracy"), (loss_ax, "loss")):
        ax.plot(x, history[f"train_batch_{metric}"], color="tab:blue", alpha=0.6, lw=1, label="train batch")
        ax.plot(x, history[f"validation_{metric}"], color="tab:orange", lw=1.8, label="validation")
        ax.axvline(best_iteration, color="tab:green", ls="--", label=f"best (iteration {best_iteration})")
        stopped = f"stopped (iteration {stopped_iteration})"
        ax.axvline(stopped_iteration, color="tab:red", ls=":", label=stopped)
        ax.set_xlabel("iteration")
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
    acc_ax.set_title("Accuracy")
    losses = np.concatenate([history["train_batch_loss"], history["validation_loss"]])
    # Losses span decades on the way down; a log scale keeps the late part readable.
    if np.all(losses > 0) and losses.max() / losses.min() > 20:
        loss_ax.set_yscale("log")
    loss_ax.set_title("Cross-entropy loss")
    for ax in rate_ax:
        ax.plot(x, history["learning_rate"], color="tab:purple", lw=1.5, drawstyle="steps-post")
        ax.axvline(best_iteration, color="tab:green", ls="--")
        ax.axvline(stopped_iteration, color="tab:red", ls=":")
        ax.set_xlabel("iteration")
        ax.set_ylabel("learning rate")
        ax.set_title("Learning rate")
        ax.grid(True, alpha=0.3)
    # One legend below both panels, where it hides no curve.
    fig.legend(*acc_ax.get_legend_handles_labels(), loc="outside lower center", ncols=4, frameon=False)
    return fig


def filter_mosaic(kernel: np.ndarray) -> np.ndarray:
    """The filters of input channel 0 tiled in a square-ish grid, NaN between them."""
    kh, kw, _, count = kernel.shape
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    mosaic = np.full((rows * (kh + 1) - 1, cols * (kw + 1) - 1), np.nan, dtype=np.float64)
    for i in range(count):
        r, c = divmod(i, cols)
        mosaic[r * (kh + 1) : r * (kh + 1) + kh, c * (kw + 1) : c * (kw + 1) + kw] = kernel[:, :, 0, i]
    return mosaic


def filters_figure(layer: str, before: np.ndarray, after: np.ndarray, best_iteration: int) -> Figure:
    """A conv layer's filters before and after training, on one shared, symmetric colour scale."""
    kh, kw, channels, count = before.shape
    limit = float(max(np.abs(before[:, :, 0]).max(), np.abs(after[:, :, 0]).max())) or 1.0
    # Grey gaps between filters: white already means a weight of zero.
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.75")
    fig = Figure(figsize=FILTERS_SIZE, layout="constrained")
    axes = fig.subplots(1, 2)
    panels = (("Before training", before), (f"After training (best, iteration {best_iteration})", after))
    for ax, (name, kernel) in zip(axes, panels):
        image = ax.imshow(filter_mosaic(kernel), cmap=cmap, vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set_title(f"{name}\n(mean {kernel.mean():.4f}, std {kernel.std():.4f})", fontsize=11)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=axes, shrink=0.8, label="weight")
    channel = "" if channels == 1 else f", input channel 1 of {channels}"
    fig.suptitle(
        f"{layer}: {count} filters of {kh}x{kw}{channel} (mean and std over all the layer's weights)",
        fontsize=12,
    )
    return fig


def save(fig: Figure, path: Path, dpi: int) -> None:
    """Write a figure as PNG (Agg) with no varying metadata, so equal inputs give equal bytes."""
    fig.savefig(path, dpi=dpi, metadata={"Software": None})


def draw(inputs: dict[str, Any], out_dir: Path, dpi: int) -> list[Path]:
    """Write every figure into out_dir; return their paths."""
    images, labels, predicted = inputs["images"], inputs["labels"], inputs["predicted"]
    train_metrics, kernels = inputs["train_metrics"], inputs["kernels"]
    best_iteration = int(train_metrics["best_iteration"])
    figures = {
        "test_images.png": test_images_figure(images, labels),
        "misclassified.png": misclassified_figure(images, labels, predicted),
        "confusion_matrix.png": confusion_figure(labels, predicted),
        # `dvc plots show` orders the images by path: the 0_ puts the curves first.
        "0_training_curves.png": curves_figure(
            inputs["history"], best_iteration, int(train_metrics["stopped_iteration"])
        ),
    }
    for layer in conv_layer_names(kernels):
        figures[f"{layer}_filters.png"] = filters_figure(
            layer, kernels[f"{layer}_initial"], kernels[f"{layer}_best"], best_iteration
        )
    paths = []
    for name, fig in figures.items():
        with writes_to(PLOTS_DIR / name):  # where the user looks, not the temporary directory
            save(fig, out_dir / name, dpi)
        paths.append(out_dir / name)
    return paths

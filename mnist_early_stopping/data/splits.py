"""The data splits: raw IDX files -> train / validation / test arrays; reading them and train.json back."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import NoReturn

import numpy as np

from mnist_early_stopping.data.idx import IdxError, read_idx
from mnist_early_stopping.pipeline import params
from mnist_early_stopping.pipeline.atomic import json_bytes, write_files
from mnist_early_stopping.pipeline.layout import (
    DATA_METRICS,
    IMAGE_SHAPE,
    MNIST_NAMES,
    NUM_CLASSES,
    RAW_DIR,
    split_path,
)
from mnist_early_stopping.pipeline.stage import EXIT_BAD_INPUT, StageError, first_line

# What np.load and reading an archive's members raise on a truncated or corrupt file.
NPZ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile)
# The first bytes of every .npz (a zip archive).
ZIP_MAGIC = b"PK\x03\x04"


class SplitSizeError(ValueError):
    """split.validation_size does not fit the data: bad input."""


def load_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an images file and its labels file and check they belong together."""
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if images.shape[0] != labels.shape[0]:
        raise IdxError(
            f"{images_path} has {images.shape[0]} images but {labels_path} has {labels.shape[0]} labels"
        )
    if images.shape[1:] != IMAGE_SHAPE:
        raise IdxError(f"{images_path}: images are {images.shape[1:]}, expected {IMAGE_SHAPE}")
    if labels.size and labels.max() >= NUM_CLASSES:
        raise IdxError(f"{labels_path}: label {labels.max()} is not a digit 0-9")
    return images, labels


def validation_indices(labels: np.ndarray, size: int, method: str, seed: int) -> np.ndarray:
    """Indices of the training images held out for validation, in ascending order."""
    n = labels.shape[0]
    if size >= n:
        raise SplitSizeError(
            f"split.validation_size {size} leaves no training images out of {n}; "
            f"set it below {n} in params.yaml"
        )
    if method == "head":
        return np.arange(size)
    rng = np.random.default_rng(seed)
    if method == "shuffle":
        return np.sort(rng.permutation(n)[:size])
    # Stratified: each class gets its share by largest remainder, so the sizes add up exactly.
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    quota = counts * size / n
    take = np.floor(quota).astype(int)
    order = np.argsort(-(quota - take), kind="stable")
    take[order[: size - take.sum()]] += 1
    chosen = [rng.permutation(np.flatnonzero(labels == c))[: take[c]] for c in range(NUM_CLASSES)]
    return np.sort(np.concatenate(chosen))


def split_train(
    images: np.ndarray, labels: np.ndarray, cfg: params.SplitParams
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Divide the training set into train and validation parts."""
    held_out = validation_indices(labels, cfg.validation_size, cfg.method, cfg.seed)
    keep = np.ones(labels.shape[0], dtype=bool)
    keep[held_out] = False
    train_images, train_labels = images[keep], labels[keep]
    if cfg.train_size is not None:
        if cfg.train_size > len(train_labels):
            raise SplitSizeError(
                f"split.train_size {cfg.train_size} is more than the {len(train_labels)} training images left "
                f"after split.validation_size {cfg.validation_size}; set it to at most {len(train_labels)} or null"
            )
        # Streams of their own: the subset does not depend on the method, nor the noise on the subset's draw.
        subset = np.sort(np.random.default_rng([cfg.seed, 1]).permutation(len(train_labels))[: cfg.train_size])
        train_images, train_labels = train_images[subset], train_labels[subset]
    train_labels, _ = noisy_labels(train_labels, cfg.label_noise, cfg.seed)
    return {
        "train": (train_images, train_labels),
        "validation": (images[held_out], labels[held_out]),
    }


def noisy_labels(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The labels with round(fraction * N) of them, drawn at random, each replaced by a different random
    class; and the indices changed, in ascending order."""
    count = round(fraction * len(labels))
    if count == 0:
        return labels, np.zeros(0, np.int64)
    rng = np.random.default_rng([seed, 2])
    changed = np.sort(rng.choice(len(labels), size=count, replace=False))
    noisy = labels.copy()
    # A shift of 1 to 9 classes: uniform over the nine other digits, never the true one.
    noisy[changed] = (labels[changed] + rng.integers(1, NUM_CLASSES, size=count)) % NUM_CLASSES
    return noisy, changed


def data_metrics(splits: dict[str, tuple[np.ndarray, np.ndarray]], cfg: params.SplitParams) -> dict[str, dict]:
    """Size and class counts of each split (counts keyed by digit: `dvc metrics show` drops lists), and the
    training regime: the subset's size, the label noise asked for and the labels it changed."""
    metrics: dict[str, dict] = {
        name: {
            "size": int(labels.shape[0]),
            "class_counts": {str(c): int(n) for c, n in enumerate(np.bincount(labels, minlength=NUM_CLASSES))},
        }
        for name, (_, labels) in splits.items()
    }
    if cfg.train_size is not None or cfg.label_noise:  # the default run's data.json stays as it was
        metrics["regime"] = {
            "train_size": cfg.train_size,
            "label_noise": cfg.label_noise,
            "changed_labels": round(cfg.label_noise * metrics["train"]["size"]),
        }
    return metrics


def npz_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    """One split as an uncompressed .npz (fast to load, DVC dedups it)."""
    buffer = io.BytesIO()
    np.savez(buffer, images=images, labels=labels)
    return buffer.getvalue()


def save_splits(splits: dict[str, tuple[np.ndarray, np.ndarray]], cfg: params.SplitParams) -> dict[str, dict]:
    """Write every split's .npz and metrics/data.json, all or none; return the metrics."""
    metrics = data_metrics(splits, cfg)
    files = {split_path(name): npz_bytes(images, labels) for name, (images, labels) in splits.items()}
    write_files({**files, DATA_METRICS: json_bytes(metrics)})
    return metrics


def _bad_split(path: Path, problem: str) -> NoReturn:
    raise StageError(f"{path} {problem}; re-run the split stage: dvc repro split")


def load_split(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8, N x 28 x 28) and labels (uint8) of one split; exit 1 with one line if it is missing or bad."""
    path = split_path(name)
    try:
        with path.open("rb") as f:
            magic = f.read(len(ZIP_MAGIC))
    except FileNotFoundError:
        raise StageError(f"{path} not found; run the split stage first (dvc repro split)") from None
    except OSError as e:
        _bad_split(path, f"cannot be read ({first_line(e, with_type=True)})")
    if magic != ZIP_MAGIC:  # else numpy would take it for a pickle and suggest allow_pickle
        _bad_split(path, "is not an .npz archive (empty, truncated or overwritten)")
    try:
        archive = np.load(path)
    except NPZ_ERRORS as e:
        _bad_split(path, f"is truncated or corrupt ({first_line(e, with_type=True)})")
    with archive:
        missing = [key for key in ("images", "labels") if key not in archive.files]
        if missing:
            _bad_split(path, f"has no array {missing[0]}")
        try:
            images, labels = archive["images"], archive["labels"]
        except NPZ_ERRORS as e:  # the members are read only now: a truncated file fails here
            _bad_split(path, f"is truncated or corrupt ({first_line(e, with_type=True)})")
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        _bad_split(path, f"holds images {images.dtype} {images.shape}, not uint8 (N, 28, 28)")
    if labels.dtype != np.uint8 or labels.shape != images.shape[:1]:
        _bad_split(path, f"holds labels {labels.dtype} {labels.shape} for {len(images)} images")
    if labels.size and labels.max() >= NUM_CLASSES:
        _bad_split(path, f"holds the label {labels.max()}, not a digit 0-9")
    return images, labels


def split_raw(cfg: params.SplitParams, raw_dir: Path = RAW_DIR) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The three splits from the raw files; exit 1 with one line if the files are bad, 2 if the params do not fit."""
    if raw_dir.exists() and not raw_dir.is_dir():
        raise StageError(
            f"{raw_dir} is a file, not the download stage's directory of MNIST files; "
            "move it elsewhere, then run `dvc repro download`"
        )
    try:
        train_images_file, train_labels_file, test_images_file, test_labels_file = MNIST_NAMES
        train_images, train_labels = load_pair(raw_dir / train_images_file, raw_dir / train_labels_file)
        test = load_pair(raw_dir / test_images_file, raw_dir / test_labels_file)
        splits = split_train(train_images, train_labels, cfg)
    except SplitSizeError as e:
        raise StageError(str(e), code=EXIT_BAD_INPUT) from None
    except (IdxError, ValueError) as e:
        raise StageError(str(e)) from None
    return {**splits, "test": test}


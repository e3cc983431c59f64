"""The data splits: raw IDX files -> train / validation / test arrays, and reading them back."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mnist_early_stopping import params
from mnist_early_stopping.atomic import write_atomic
from mnist_early_stopping.idx import IdxError, read_idx
from mnist_early_stopping.layout import IMAGE_SHAPE, NUM_CLASSES, RAW_DIR, split_path


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
        raise ValueError(f"split.validation_size {size} leaves no training images out of {n}")
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
    return {
        "train": (images[keep], labels[keep]),
        "validation": (images[held_out], labels[held_out]),
    }


def data_metrics(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, dict]:
    """Size and class counts of each split (counts keyed by digit: `dvc metrics show` drops lists)."""
    return {
        name: {
            "size": int(labels.shape[0]),
            "class_counts": {str(c): int(n) for c, n in enumerate(np.bincount(labels, minlength=NUM_CLASSES))},
        }
        for name, (_, labels) in splits.items()
    }


def save_split(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write one split as an uncompressed .npz (fast to load, DVC dedups it)."""
    with write_atomic(path) as f:
        np.savez(f, images=images, labels=labels)


def load_split(name: str, stage: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8, N x 28 x 28) and labels (uint8) of one split, for the later stages."""
    path = split_path(name)
    try:
        with np.load(path) as data:
            return data["images"], data["labels"]
    except FileNotFoundError:
        raise SystemExit(f"{stage}: {path} not found; run the split stage first (dvc repro split)") from None


def split_raw(cfg: params.SplitParams, raw_dir: Path = RAW_DIR) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The three splits from the raw files; exit 1 with one line if the files are bad."""
    try:
        train_images, train_labels = load_pair(
            raw_dir / "train-images-idx3-ubyte", raw_dir / "train-labels-idx1-ubyte"
        )
        test = load_pair(raw_dir / "t10k-images-idx3-ubyte", raw_dir / "t10k-labels-idx1-ubyte")
        splits = split_train(train_images, train_labels, cfg)
    except (IdxError, ValueError) as e:
        raise SystemExit(f"split: {e}") from None
    return {**splits, "test": test}

"""Small, learnable, MNIST-format data sets generated for tests (no network, no real MNIST)."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np

from mnist_early_stopping.data.idx import encode_idx
from mnist_early_stopping.pipeline.layout import MNIST_NAMES

FILE_NAMES = MNIST_NAMES


def digit_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """28x28 uint8 images whose class is a faint 4x4 block at a class-specific place, in heavy noise.

    Faint enough that a small network needs a few hundred iterations to learn it.
    """
    images = rng.integers(0, 160, size=(labels.size, 28, 28)).astype(np.int32)
    for i, label in enumerate(labels):
        row, col = 3 + 8 * (label // 4), 3 + 6 * (label % 4)
        images[i, row : row + 4, col : col + 4] += 90
    return np.clip(images, 0, 255).astype(np.uint8)


def make_arrays(n_train: int = 600, n_test: int = 200, seed: int = 0) -> dict[str, np.ndarray]:
    """The four MNIST arrays, keyed by file name, with every class present."""
    rng = np.random.default_rng(seed)
    train_labels = (np.arange(n_train) % 10).astype(np.uint8)
    rng.shuffle(train_labels)
    test_labels = (np.arange(n_test) % 10).astype(np.uint8)
    rng.shuffle(test_labels)
    return {
        "train-images-idx3-ubyte": digit_images(train_labels, rng),
        "train-labels-idx1-ubyte": train_labels,
        "t10k-images-idx3-ubyte": digit_images(test_labels, rng),
        "t10k-labels-idx1-ubyte": test_labels,
    }


def digest_table(files: dict[str, bytes]) -> dict[str, dict[str, int | str]]:
    """The `download.files` param of the files' decompressed content: {name: {size, sha256}}."""
    return {name: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for name, d in files.items()}


def write_mirror(directory: Path, gzipped: bool = True, **kwargs: int) -> dict[str, dict[str, int | str]]:
    """Write a mirror directory of the four files; return their digest table for `download.files`."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {name: encode_idx(array) for name, array in make_arrays(**kwargs).items()}
    for name, content in files.items():
        if gzipped:
            (directory / f"{name}.gz").write_bytes(gzip.compress(content, mtime=0))
        else:
            (directory / name).write_bytes(content)
    return digest_table(files)


def tiny_digests(**kwargs: int) -> dict[str, dict[str, int | str]]:
    """The digest table of the data set make_arrays(**kwargs) makes, as write_mirror writes it."""
    return digest_table({name: encode_idx(array) for name, array in make_arrays(**kwargs).items()})

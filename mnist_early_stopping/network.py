"""A trained network from a SavedModel as a batched predictor (none of the project's model code is used)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from mnist_early_stopping.layout import IMAGE_SHAPE, PIXEL_SCALE


class NetworkError(Exception):
    """A network file is missing or cannot be loaded."""


class Network:
    """Class probabilities for uint8 images, computed in batches by one compiled graph."""

    def __init__(self, forward: Callable[[Any], Any], batch_size: int) -> None:
        import tensorflow as tf

        # The graph captures the network's variables weakly: keep their owner alive through `forward`.
        self.forward, self.batch_size = forward, batch_size
        # One concrete function: every batch (the last, shorter one too) reuses the same graph.
        self.graph = tf.function(
            lambda images: forward(tf.cast(images, tf.float32) * PIXEL_SCALE),
            input_signature=[tf.TensorSpec([None, *IMAGE_SHAPE], tf.uint8)],
        ).get_concrete_function()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Probabilities (N, 10) for uint8 images (N, 28, 28)."""
        n, size = len(images), self.batch_size
        if n == 0:
            return np.zeros((0, 10), np.float32)
        return np.concatenate([self.graph(images[s : s + size]).numpy() for s in range(0, n, size)])


def load_network(path: Path, batch_size: int) -> Network:
    """The SavedModel at `path` (its `serve` endpoint) as a batched predictor; NetworkError if it cannot be."""
    path = Path(path)
    if not (path / "saved_model.pb").is_file():
        raise NetworkError(f"{path} is not a SavedModel (no saved_model.pb)")
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as e:  # a torn SavedModel fails in many ways: OSError, IndexError, OpError, ...
        raise NetworkError(f"{path} is a broken SavedModel ({_first_line(e)})") from None
    if not hasattr(loaded, "serve"):
        raise NetworkError(f"{path} is a SavedModel without a `serve` endpoint; export it with this project")
    return Network(lambda images: loaded.serve(images), batch_size)


def _first_line(error: Exception) -> str:
    """The first line of an error's message, at most 200 characters (TensorFlow's run to pages)."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]

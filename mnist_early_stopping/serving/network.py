"""A trained network from a SavedModel as a batched predictor (none of the project's model code is used)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mnist_early_stopping.pipeline.layout import IMAGE_SHAPE, PIXEL_SCALE, PROVENANCE_DIR, PROVENANCE_NAME
from mnist_early_stopping.pipeline.stage import first_line
from mnist_early_stopping.serving.keras_archive import JSON_CAP, NetworkError, read_capped, write_checked


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
    from mnist_early_stopping.pipeline.tf_runtime import import_tensorflow

    tf = import_tensorflow()  # without its start-up noise, and only once the file is there

    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as e:  # a torn SavedModel fails in many ways: OSError, IndexError, OpError, ...
        raise NetworkError(f"{path} is a broken SavedModel ({first_line(e)})") from None
    if not hasattr(loaded, "serve"):
        raise NetworkError(f"{path} is a SavedModel without a `serve` endpoint; export it with this project")
    takes = [f.structured_input_signature[0] for f in getattr(loaded.serve, "concrete_functions", [])]
    wanted = tf.TensorSpec([None, *IMAGE_SHAPE], tf.float32)
    if takes and not any(len(args) == 1 and args[0].is_compatible_with(wanted) for args in takes):
        shown = "; ".join(", ".join(f"{a.dtype.name} {tuple(a.shape)}" for a in args) for args in takes)
        raise NetworkError(f"{path}'s `serve` takes {shown}, not float32 images (N, 28, 28): it is not a network "
                           "of this project's kind")
    return checked_network(path, lambda images: loaded.serve(images), batch_size)


def checked_network(path: Path, forward: Callable[[Any], Any], batch_size: int) -> Network:
    """The predictor, or a NetworkError in one line if the network cannot take (N, 28, 28) images."""
    try:
        return Network(forward, batch_size)
    except (ValueError, TypeError) as e:  # TensorFlow's own words on a shape or dtype it cannot take
        raise NetworkError(f"{path} does not take float32 images (N, 28, 28) ({first_line(e)})") from None


def load_keras_network(path: Path, batch_size: int) -> Network:
    """A .keras file rebuilt in Keras safe mode, as a batched predictor; NetworkError if it cannot be.

    Safe mode rebuilds the network from its config with Keras's own layers
    and loads the weights: no graph and no code stored in the file runs, so
    this is the way to load a network from an untrusted source. The archive
    is checked first and Keras reads a copy of only its checked members, so
    a zip bomb fills neither the memory nor the disk.
    """
    path = Path(path)
    if not path.is_file():
        raise NetworkError(f"{path} is not a .keras file")
    # Keras's public loader takes a path, not a file object. With three
    # members it extracts nothing; should it extract the weights (low on
    # memory), it does so next to the copy: all removed with the directory.
    with tempfile.TemporaryDirectory(prefix="checked-keras-") as folder:
        copy = Path(folder, "network.keras")
        try:
            write_checked(path, copy)
        except OSError as e:  # writing the copy, not reading the file
            raise NetworkError(f"{path} could not be checked: no room for a copy in {folder} "
                               f"({first_line(e)})") from None
        from mnist_early_stopping.pipeline.tf_runtime import import_tensorflow

        import_tensorflow()  # Keras imports TensorFlow: without its start-up noise
        import keras

        try:
            model = keras.saving.load_model(copy, safe_mode=True, compile=False)
        except Exception as e:  # a bad archive fails in many ways: zipfile, JSON, h5py, a refused lambda...
            raise NetworkError(f"{path} is not a loadable .keras file ({first_line(e)})") from None
    return checked_network(path, lambda images: model(images, training=False), batch_size)


def load_any(path: Path, batch_size: int) -> Network:
    """A .keras file (safe mode) by its suffix, else a SavedModel directory."""
    if Path(path).suffix == ".keras":
        return load_keras_network(path, batch_size)
    return load_network(path, batch_size)


def read_provenance(path: Path) -> dict[str, Any] | None:
    """What made a network (written by the train stage), from a SavedModel's assets.extra or a .keras archive."""
    import json
    import zipfile

    path = Path(path)
    try:
        if path.suffix == ".keras":
            with zipfile.ZipFile(path) as archive:
                return json.loads(read_capped(archive, PROVENANCE_NAME, JSON_CAP, path))
        return json.loads((path / PROVENANCE_DIR / PROVENANCE_NAME).read_text(encoding="utf-8"))
    except (OSError, KeyError, ValueError, RecursionError, zipfile.BadZipFile, NetworkError):
        return None

"""The convolutional network, built from the `model` params section."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
from keras import layers

from mnist_early_stopping.pipeline.layout import IMAGE_SHAPE, NUM_CLASSES
from mnist_early_stopping.pipeline.params import ModelParams


def build_model(cfg: ModelParams, seed: int) -> keras.Model:
    """Conv(+ReLU, 2x2 max-pool) blocks, ReLU dense layers, softmax classifier.

    Input: float images (N, 28, 28) scaled to [0, 1]. Output: class probabilities (N, 10).
    """
    init_seeds = iter(range(seed, seed + 100))

    def kernel_init() -> keras.initializers.Initializer:
        # Explicit per-layer seeds make initialisation independent of global RNG state.
        return keras.initializers.GlorotUniform(seed=next(init_seeds))

    inputs = keras.Input(IMAGE_SHAPE, name="images")
    x = layers.Reshape((*IMAGE_SHAPE, 1))(inputs)
    for i, filters in enumerate(cfg.conv_filters, 1):
        x = layers.Conv2D(
            filters, cfg.conv_kernel_size, padding="same", activation="relu",
            kernel_initializer=kernel_init(), name=f"conv{i}",
        )(x)
        x = layers.MaxPooling2D(2, strides=2, padding="same", name=f"pool{i}")(x)
    x = layers.Flatten()(x)
    for i, units in enumerate(cfg.dense_units, 1):
        x = layers.Dense(units, activation="relu", kernel_initializer=kernel_init(), name=f"dense{i}")(x)
    # float32 probabilities even under a mixed-precision policy.
    outputs = layers.Dense(
        NUM_CLASSES, activation="softmax", kernel_initializer=kernel_init(),
        dtype="float32", name="classifier",
    )(x)
    return keras.Model(inputs, outputs, name="mnist_cnn")


def conv_kernels(model: keras.Model) -> dict[str, np.ndarray]:
    """The conv layers' kernels by layer name, as float32 numpy arrays (kh, kw, in, out)."""
    return {
        layer.name: keras.ops.convert_to_numpy(layer.kernel).astype("float32")
        for layer in model.layers
        if isinstance(layer, layers.Conv2D)
    }


def describe(cfg: ModelParams) -> dict[str, object]:
    """The network's defining arguments, stored with checkpoints and models."""
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}  # every key of the section
    return {
        **{name: list(value) if isinstance(value, tuple) else value for name, value in fields.items()},
        "input": f"float32 images (N, {IMAGE_SHAPE[0]}, {IMAGE_SHAPE[1]}) in [0, 1]",
        "output": f"float32 class probabilities (N, {NUM_CLASSES})",
    }

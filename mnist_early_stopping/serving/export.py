"""The best network as a TFLite model, checked against the SavedModel on the test set (export stage logic)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mnist_early_stopping.data.splits import load_split
from mnist_early_stopping.pipeline import timings
from mnist_early_stopping.pipeline.atomic import json_bytes, write_files
from mnist_early_stopping.pipeline.layout import (
    BEST_MODEL,
    EXPORT_METRICS,
    IMAGE_SHAPE,
    NUM_CLASSES,
    PIXEL_SCALE,
    TFLITE_MODEL,
    split_path,
)
from mnist_early_stopping.pipeline.stage import StageError, first_line
from mnist_early_stopping.pipeline.tf_runtime import XNNPACK_NOTICE, filtered_stderr
from mnist_early_stopping.serving.network import NetworkError, load_network

# A float32 conversion only reorders float operations, so the predicted class may
# change only where two classes tie to within rounding: a handful of 10000 images.
MIN_AGREEMENT = 0.999
# Images per interpreter call: 10000 images in seconds, with little memory.
BATCH_SIZE = 1000
SIGNATURE = "serving_default"


class ExportError(Exception):
    """The SavedModel cannot be converted, or the TFLite model cannot be run."""


def convert(saved_model: Path) -> bytes:
    """The SavedModel's serving_default signature as a float32 TFLite flatbuffer (no quantisation)."""
    import tensorflow as tf

    try:
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=[SIGNATURE])
        return bytes(converter.convert())
    except Exception as e:  # the converter raises many kinds, with messages pages long
        raise ExportError(f"{saved_model} does not convert to TFLite ({first_line(e)})") from None


def interpreter_class() -> tuple[type, str]:
    """LiteRT's interpreter if ai-edge-litert is installed, else TensorFlow's; with its name and version."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        # Deprecated in favour of LiteRT, but runs the same flatbuffer.
        return tf.lite.Interpreter, f"tensorflow.lite {tf.__version__}"
    from importlib.metadata import version

    return Interpreter, f"ai_edge_litert {version('ai-edge-litert')}"


def scale(images: np.ndarray) -> np.ndarray:
    """uint8 images as float32 in [0, 1], rounded as the SavedModel predictor rounds them."""
    return images.astype(np.float32) * np.float32(PIXEL_SCALE)


def tflite_probabilities(model: bytes, images: np.ndarray, batch_size: int, interpreter: type) -> np.ndarray:
    """Probabilities (N, 10) of a TFLite model for uint8 images (N, 28, 28), one call per batch."""
    with filtered_stderr(lambda line: not XNNPACK_NOTICE.match(line)):
        return _tflite_probabilities(model, images, batch_size, interpreter)


def _tflite_probabilities(model: bytes, images: np.ndarray, batch_size: int, interpreter: type) -> np.ndarray:
    runner = interpreter(model_content=model)
    (inp,), (out,) = runner.get_input_details(), runner.get_output_details()
    batches, allocated = [], None
    for start in range(0, len(images), batch_size):
        batch = scale(images[start : start + batch_size])
        # Resize only when the batch size changes: for the first and the last, shorter, batch.
        if allocated != len(batch):
            runner.resize_tensor_input(inp["index"], [len(batch), *IMAGE_SHAPE])
            runner.allocate_tensors()
            allocated = len(batch)
        runner.set_tensor(inp["index"], batch)
        runner.invoke()
        batches.append(runner.get_tensor(out["index"]))  # a copy: the next invoke leaves it alone
    if not batches:
        return np.zeros((0, NUM_CLASSES), np.float32)
    probabilities = np.concatenate(batches)
    if probabilities.shape != (len(images), NUM_CLASSES):
        shape = probabilities.shape[1:]
        raise ExportError(f"the TFLite model outputs {shape} per image, not ({NUM_CLASSES},)")
    return probabilities


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
    """Fraction of images with the same argmax, and the largest absolute probability difference."""
    if reference.shape != candidate.shape or not len(reference):
        raise ValueError(f"cannot compare probabilities {reference.shape} and {candidate.shape}")
    same = int(np.sum(reference.argmax(axis=1) == candidate.argmax(axis=1)))
    difference = np.abs(reference.astype(np.float64) - candidate.astype(np.float64)).max()
    return {
        "argmax_agreement": same / len(reference),
        "max_abs_probability_difference": float(difference),
        "images": len(reference),
    }


def agreement_error(figures: dict[str, Any]) -> str | None:
    """None if the TFLite model agrees with the SavedModel often enough, else the stage's one-line error."""
    agreement, images = figures["argmax_agreement"], figures["images"]
    if agreement >= MIN_AGREEMENT:
        return None
    return (
        f"the TFLite model predicts the same class as {BEST_MODEL} for only {agreement:.2%} "
        f"({round(agreement * images)} / {images}) of the test images, below {MIN_AGREEMENT:.1%}; largest "
        f"probability difference {figures['max_abs_probability_difference']:.3g}. The converted network "
        f"computes differently, so do not ship it: re-train with train.precision float32 if it is mixed, "
        f"or try another tensorflow version."
    )


def export(batch_size: int = BATCH_SIZE) -> None:
    """Convert models/best, check it on the test set, write models/best.tflite and metrics/export.json."""
    images, _ = load_split("test")
    if not len(images):
        raise StageError(f"{split_path('test')} is empty; re-run the split stage: dvc repro -f split")
    try:
        # Loaded first: a missing or broken SavedModel fails in one line, before TensorFlow is imported.
        with timings.phase("SavedModel: load and predict"):
            reference = load_network(BEST_MODEL, batch_size)(images)
        with timings.phase("convert"):
            model = convert(BEST_MODEL)
        with timings.phase("TFLite: load and predict"):
            interpreter, interpreter_name = interpreter_class()
            candidate = tflite_probabilities(model, images, batch_size, interpreter)
    except NetworkError as e:
        raise StageError(f"{e}; run the train stage first (dvc repro train)") from None
    except ExportError as e:
        raise StageError(f"{e}; re-run the train stage (dvc repro -f train)") from None

    figures = compare(reference, candidate)
    error = agreement_error(figures)
    if error:
        raise StageError(error)
    # Written only once checked: a models/best.tflite on disk has passed the check. Both files, or neither.
    write_files({
        TFLITE_MODEL: model,
        EXPORT_METRICS: json_bytes({"tflite": {**figures, "bytes": len(model), "interpreter": interpreter_name}}),
    })
    print(
        f"Exported {TFLITE_MODEL} ({len(model)} bytes): the same class as {BEST_MODEL} for "
        f"{figures['argmax_agreement']:.2%} of {figures['images']} test images, largest probability "
        f"difference {figures['max_abs_probability_difference']:.2g} ({interpreter_name})."
    )

"""Export stage: the comparison and the batching as plain functions, then the stage on a tiny network."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnist_early_stopping.pipeline.layout import BEST_MODEL, EXPORT_METRICS, TFLITE_MODEL, split_path
from mnist_early_stopping.pipeline.stage import StageError
from mnist_early_stopping.serving import export
from tests.conftest import copy_project, params_with, run_stage
from tests.tiny_mnist import digit_images


def one_hot(classes: list[int], top: float = 0.9) -> np.ndarray:
    """Probabilities with `top` on each given class and the rest spread evenly."""
    p = np.full((len(classes), 10), (1.0 - top) / 9, dtype=np.float32)
    p[np.arange(len(classes)), classes] = top
    return p


def test_compare_counts_same_argmax_and_largest_difference() -> None:
    reference = one_hot([0, 1, 2, 3])
    figures = export.compare(reference, one_hot([0, 1, 2, 4]))
    # Image 3: 0.9 on class 3 became 0.1 / 9, and the other way round for class 4.
    assert figures == {
        "argmax_agreement": 0.75, "max_abs_probability_difference": pytest.approx(0.9 - 0.1 / 9), "images": 4,
    }
    json.dumps(figures)  # plain Python types only

    candidate = reference.copy()
    candidate[1, 1] -= 0.3  # still class 1
    candidate[1, 5] += 0.3
    figures = export.compare(reference, candidate)
    assert figures["argmax_agreement"] == 1.0
    assert figures["max_abs_probability_difference"] == pytest.approx(0.3, abs=1e-6)
    assert export.compare(reference, reference.copy())["max_abs_probability_difference"] == 0.0


def test_compare_refuses_mismatched_or_empty_arrays() -> None:
    with pytest.raises(ValueError):
        export.compare(one_hot([0, 1]), one_hot([0]))
    with pytest.raises(ValueError):
        export.compare(np.zeros((0, 10)), np.zeros((0, 10)))


def test_agreement_threshold_is_99_9_percent() -> None:
    def figures(same: int) -> dict[str, Any]:
        return {"argmax_agreement": same / 10000, "max_abs_probability_difference": 0.51, "images": 10000}

    assert export.agreement_error(figures(10000)) is None
    assert export.agreement_error(figures(9990)) is None
    error = export.agreement_error(figures(9989))
    assert error is not None and "\n" not in error
    assert error.startswith("the TFLite model predicts the same class as models/best")
    assert "99.89% (9989 / 10000)" in error and "99.9%" in error and "0.51" in error


def test_scale_maps_uint8_to_unit_float32() -> None:
    scaled = export.scale(np.array([[0, 51, 255]], dtype=np.uint8))
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled, [[0.0, 0.2, 1.0]], rtol=1e-7)


class FakeInterpreter:
    """The TFLite interpreter calls tflite_probabilities makes; 'predicts' each image's first pixel % 10."""

    resizes: list[list[int]] = []

    def __init__(self, model_content: bytes) -> None:
        assert model_content == b"model"
        self.shape: list[int] | None = None
        self.allocated = False

    def get_input_details(self) -> list[dict[str, Any]]:
        return [{"index": 0}]

    def get_output_details(self) -> list[dict[str, Any]]:
        return [{"index": 7}]

    def resize_tensor_input(self, index: int, shape: list[int]) -> None:
        assert index == 0
        self.shape, self.allocated = list(shape), False
        FakeInterpreter.resizes.append(list(shape))

    def allocate_tensors(self) -> None:
        self.allocated = True

    def set_tensor(self, index: int, value: np.ndarray) -> None:
        assert index == 0 and self.allocated and list(value.shape) == self.shape and value.dtype == np.float32
        self.input = value

    def invoke(self) -> None:
        classes = np.rint(self.input[:, 0, 0] * 255).astype(int) % 10
        self.output = one_hot(classes.tolist())

    def get_tensor(self, index: int) -> np.ndarray:
        assert index == 7
        return self.output.copy()


def test_tflite_probabilities_batches_in_order_and_resizes_only_when_the_size_changes() -> None:
    images = np.zeros((20, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = np.arange(20)
    FakeInterpreter.resizes = []
    probabilities = export.tflite_probabilities(b"model", images, 7, FakeInterpreter)
    assert FakeInterpreter.resizes == [[7, 28, 28], [6, 28, 28]]
    np.testing.assert_array_equal(probabilities.argmax(axis=1), np.arange(20) % 10)
    FakeInterpreter.resizes = []
    assert export.tflite_probabilities(b"model", images[:0], 7, FakeInterpreter).shape == (0, 10)


# --- the stage on a tiny untrained network ---------------------------------------------------------

TEST_IMAGES = 300


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """(project with models/best and a test split, the Keras model that models/best was exported from)."""
    from mnist_early_stopping.training.model import build_model

    project = copy_project(tmp_path_factory.mktemp("export") / "project")
    model = build_model(params_with("model", conv_filters=[4, 8], conv_kernel_size=5, dense_units=[16]), seed=0)
    model.export(str(project / BEST_MODEL), format="tf_saved_model", verbose=False)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, TEST_IMAGES).astype(np.uint8)
    (project / split_path("test")).parent.mkdir(parents=True)
    np.savez(project / split_path("test"), images=digit_images(labels, rng), labels=labels)
    return project, model


def stage_env() -> dict[str, str]:
    """Environment for the stage: quiet TensorFlow, the project copy's code (the cwd)."""
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH="")


def load_test_images(project: Path) -> np.ndarray:
    """The tiny project's test images."""
    with np.load(project / split_path("test")) as data:
        return data["images"]


@pytest.mark.slow
def test_export_writes_a_tflite_model_that_matches_the_network(
    tiny: tuple[Path, Any], tmp_path: Path
) -> None:
    source, model = tiny
    project = tmp_path / "project"  # its own copy: the stage writes into it
    shutil.copytree(source, project)
    result = run_stage(project, "export", stage_env())
    tflite = (project / TFLITE_MODEL).read_bytes()
    assert tflite[4:8] == b"TFL3"  # the TFLite flatbuffer's file identifier
    metrics = json.loads((project / EXPORT_METRICS).read_text())["tflite"]
    assert metrics["argmax_agreement"] == 1.0
    assert 0.0 <= metrics["max_abs_probability_difference"] < 1e-5
    assert metrics["images"] == TEST_IMAGES and metrics["bytes"] == len(tflite)
    assert metrics["interpreter"].startswith(("ai_edge_litert ", "tensorflow.lite "))
    assert f"Exported {TFLITE_MODEL}" in result.stdout
    assert "XNNPACK" not in result.stdout + result.stderr, result.stderr  # the interpreter's start-up line

    # Independently of the stage: the written file computes the Keras model's probabilities.
    images = load_test_images(project)
    interpreter, _ = export.interpreter_class()
    written = export.tflite_probabilities(tflite, images, 128, interpreter)
    expected = model.predict(images.astype(np.float32) / 255.0, verbose=0)
    np.testing.assert_allclose(written, expected, atol=1e-5)
    assert written.argmax(axis=1).std() > 0  # not one class for every image: the check compares something


@pytest.mark.slow
def test_tflite_batches_give_the_same_probabilities_as_one_call(tiny: tuple[Path, Any]) -> None:
    project, _ = tiny
    model = export.convert(project / BEST_MODEL)
    images = load_test_images(project)
    interpreter, _ = export.interpreter_class()
    whole = export.tflite_probabilities(model, images, len(images), interpreter)
    np.testing.assert_allclose(export.tflite_probabilities(model, images, 7, interpreter), whole, atol=1e-6)


@pytest.mark.slow
def test_export_without_a_saved_model_fails_in_one_line(tiny: tuple[Path, Any], tmp_path: Path) -> None:
    source, _ = tiny
    project = copy_project(tmp_path / "project", ("stages", "mnist_early_stopping", "params.yaml"))
    (project / split_path("test")).parent.mkdir(parents=True)
    (project / split_path("test")).write_bytes((source / split_path("test")).read_bytes())

    result = run_stage(project, "export", stage_env(), check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"export: {BEST_MODEL} is not a SavedModel") and "dvc repro train" in lines[0]
    assert not (project / TFLITE_MODEL).exists() and not (project / EXPORT_METRICS).exists()


@pytest.mark.slow
def test_export_refuses_a_tflite_model_of_another_network(
    tiny: tuple[Path, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from mnist_early_stopping.training.model import build_model

    source, _ = tiny
    other = build_model(params_with("model", conv_filters=[4, 8], conv_kernel_size=5, dense_units=[16]), seed=1)
    other.export(str(tmp_path / "other"), format="tf_saved_model", verbose=False)
    other_tflite = export.convert(tmp_path / "other")
    # As if the converter had changed the network: the check must compare against models/best.
    monkeypatch.setattr(export, "convert", lambda saved_model: other_tflite)
    project = tmp_path / "project"
    shutil.copytree(source, project, ignore=shutil.ignore_patterns("best.tflite", "export.json"))
    monkeypatch.chdir(project)

    with pytest.raises(StageError) as failed:
        export.export()
    assert failed.value.code == 1
    lines = str(failed.value).splitlines()
    assert len(lines) == 1 and "the TFLite model predicts the same class as models/best for only" in lines[0]
    assert not (project / TFLITE_MODEL).exists() and not (project / EXPORT_METRICS).exists()

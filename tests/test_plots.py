"""Plots stage: figures from hand-made inputs (no TensorFlow), and `dvc plots show` on a tiny pipeline run."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mnist_early_stopping.evaluation import figures as plots
from mnist_early_stopping.pipeline.kernels import conv_layer_names
from mnist_early_stopping.pipeline.stage import StageError
from tests.conftest import ROOT, committed_params, write_params

DPI = 40
CONV_SHAPES = {"conv1": (5, 5, 1, 4), "conv2": (5, 5, 4, 8), "conv3": (3, 3, 8, 6)}
EXPECTED = {
    "test_images.png": plots.GRID_SIZE,
    "misclassified.png": plots.GRID_SIZE,
    "confusion_matrix.png": plots.CONFUSION_SIZE,
    "0_training_curves.png": plots.CURVES_SIZE,
    **{f"{layer}_filters.png": plots.FILTERS_SIZE for layer in CONV_SHAPES},
}
# Runs the stage in a fresh interpreter and proves it never loaded TensorFlow or Keras.
RUN_WITHOUT_TF = (
    "import sys; from stages import plots; plots.main(); "
    "loaded = [m for m in ('tensorflow', 'keras') if m in sys.modules]; "
    "assert not loaded, f'plots imported {loaded}'"
)


def write_inputs(project: Path, test_size: int = 30) -> None:
    """Small hand-made versions of every file the plots stage reads."""
    rng = np.random.default_rng(0)
    labels = np.arange(test_size) % 10
    predicted = labels.copy()
    predicted[[3, 7, 11]] = [5, 1, 2]
    (project / "data/split").mkdir(parents=True)
    images = rng.integers(0, 256, (test_size, 28, 28), dtype=np.uint8)
    np.savez(project / "data/split/test.npz", images=images, labels=labels.astype(np.uint8))
    (project / "metrics").mkdir()
    rows = [f"{a},{p},{c:.4f}" for a, p, c in zip(labels, predicted, rng.uniform(0.3, 1.0, test_size))]
    (project / "metrics/predictions.csv").write_text("actual,predicted,confidence\n" + "\n".join(rows) + "\n")
    curves = project / "metrics/live/plots/metrics"
    curves.mkdir(parents=True)
    values = {
        "train_batch_accuracy": lambda i: min(1.0, 0.1 * i + 0.05), "train_batch_loss": lambda i: 2.3 / i**2,
        "validation_accuracy": lambda i: 0.09 * i, "validation_loss": lambda i: 2.3 / i**1.5,
    }
    for name, value in values.items():
        rows = [f"step\t{name}"] + [f"{i * 10}\t{value(i)}" for i in range(1, 11)]
        (curves / f"{name}.tsv").write_text("\n".join(rows) + "\n")
    (project / "metrics/train.json").write_text(json.dumps({"best_iteration": 70, "stopped_iteration": 100}))
    (project / "models").mkdir()
    kernels = {}
    for layer, shape in CONV_SHAPES.items():
        kernels[f"{layer}_initial"] = rng.normal(0, 0.1, shape).astype(np.float32)
        kernels[f"{layer}_best"] = kernels[f"{layer}_initial"] + rng.normal(0, 0.02, shape).astype(np.float32)
        kernels[f"{layer}_final"] = kernels[f"{layer}_best"]
    np.savez(project / "models/kernels.npz", **kernels)


def plots_project_copy(project: Path) -> Path:
    """A project copy in `project` whose plots-stage inputs are small hand-made files."""
    project.mkdir(parents=True)
    for package in ("stages", "mnist_early_stopping"):
        shutil.copytree(ROOT / package, project / package, ignore=shutil.ignore_patterns("__pycache__"))
    (project / "params.yaml").write_text(committed_params())
    write_params(project, {"plots": {"dpi": DPI}})
    write_inputs(project)
    return project


@pytest.fixture
def plots_project(tmp_path: Path) -> Path:
    """A project copy whose plots-stage inputs are small hand-made files."""
    return plots_project_copy(tmp_path / "project")


def run_plots(project: Path) -> subprocess.CompletedProcess:
    """The plots stage in a fresh interpreter that fails if TensorFlow or Keras got imported."""
    env = dict(os.environ, PYTHONPATH="")  # stages come from the project copy (the cwd)
    result = subprocess.run(
        [sys.executable, "-c", RUN_WITHOUT_TF], cwd=project, env=env,
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's header."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.mark.slow
def test_plots_stage_writes_deterministic_pngs_without_tensorflow(plots_project: Path) -> None:
    (plots_project / "plots").mkdir()
    (plots_project / "plots/stale.png").write_bytes(b"left over from an older run")

    run_plots(plots_project)
    out = plots_project / "plots"
    assert sorted(p.name for p in out.iterdir()) == sorted(EXPECTED)
    first = {}
    for name, (width, height) in EXPECTED.items():
        assert png_size(out / name) == (round(width * DPI), round(height * DPI)), name
        first[name] = (out / name).read_bytes()
        assert len(first[name]) > 1000, name

    run_plots(plots_project)
    for name in EXPECTED:
        assert (out / name).read_bytes() == first[name], f"{name} differs between two runs on the same inputs"


def test_misclassified_figure_without_errors_says_so() -> None:
    labels = np.arange(12) % 10
    fig = plots.misclassified_figure(np.zeros((12, 28, 28), np.uint8), labels, labels)
    texts = " ".join(t.get_text() for t in fig.texts)
    assert "No misclassified test images" in texts and "all 12 test images" in texts


def test_conv_layers_are_found_in_numeric_order() -> None:
    kernels = {f"conv{i}_{kind}": np.zeros(1) for i in (10, 2, 1) for kind in ("initial", "best", "final")}
    assert conv_layer_names(kernels) == ["conv1", "conv2", "conv10"]


def test_filter_mosaic_tiles_the_first_input_channel() -> None:
    kernel = np.arange(3 * 3 * 2 * 5, dtype=np.float32).reshape(3, 3, 2, 5)
    mosaic = plots.filter_mosaic(kernel)
    assert mosaic.shape == (2 * 4 - 1, 3 * 4 - 1)  # 5 filters in 2 rows of 3, one-pixel gaps
    np.testing.assert_array_equal(mosaic[4:7, 4:7], kernel[:, :, 0, 4])
    assert np.isnan(mosaic[3]).all() and np.isnan(mosaic[4:, 8:]).all()


def test_predictions_that_do_not_match_the_test_split_are_an_error(plots_project: Path, monkeypatch) -> None:
    monkeypatch.chdir(plots_project)
    csv = plots_project / "metrics/predictions.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(StageError, match="does not match the test labels.*dvc repro evaluate"):
        plots.load_inputs()
    csv.write_text("label,predicted\n1,1\n")
    with pytest.raises(StageError, match="has no column actual.*dvc repro evaluate"):
        plots.load_inputs()

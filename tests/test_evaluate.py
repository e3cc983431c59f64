"""Evaluate stage: metrics and the restore check as pure functions, then the stage on a tiny pipeline run."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from mnist_early_stopping.evaluation import evaluate
from mnist_early_stopping.pipeline.stage import StageError
from tests.conftest import run_stage, staged_project, write_params

# Six images of classes 0-2; predicted 0, 1, 1, 1, 2, 0. Hand-computed below.
LABELS = np.array([0, 0, 1, 1, 2, 2])
PREDICTED = np.array([0, 1, 1, 1, 2, 0])
CONFUSION = np.zeros((10, 10), dtype=np.int64)
CONFUSION[0, 0] = CONFUSION[0, 1] = CONFUSION[2, 2] = CONFUSION[2, 0] = 1
CONFUSION[1, 1] = 2


def probabilities_for(predicted: np.ndarray, top: float = 0.8) -> np.ndarray:
    """Probabilities with `top` on the predicted class and the rest spread evenly."""
    p = np.full((predicted.size, 10), (1.0 - top) / 9, dtype=np.float32)
    p[np.arange(predicted.size), predicted] = top
    return p


def test_network_results_match_hand_computed_values() -> None:
    results = evaluate.network_results(LABELS, probabilities_for(PREDICTED))
    assert set(results) == {"accuracy", "loss", "correct", "total", "macro_f1", "per_class"}
    assert (results["correct"], results["total"]) == (4, 6)
    assert results["accuracy"] == pytest.approx(4 / 6)
    # Correct images cost -log 0.8; the two wrong ones -log(0.2 / 9).
    assert results["loss"] == pytest.approx((4 * -math.log(0.8) + 2 * -math.log(0.2 / 9)) / 6, abs=1e-5)
    per_class = results["per_class"]
    assert list(per_class) == [str(c) for c in range(10)]
    assert per_class["0"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5})
    assert per_class["1"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8}, abs=1e-6)
    assert per_class["2"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3}, abs=1e-6)
    assert per_class["9"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    # Macro average over all ten classes; the seven absent ones score 0.
    assert results["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 10, abs=1e-6)
    json.dumps(results)  # plain Python types only


def test_confusion_matrix_and_its_text_table() -> None:
    matrix = evaluate.confusion(LABELS, PREDICTED)
    np.testing.assert_array_equal(matrix, CONFUSION)
    lines = evaluate.format_confusion(matrix).splitlines()
    assert "rows: true class" in lines[0] and "predicted" in lines[1]
    rows = [line.split("|")[1].split() for line in lines[2:]]
    np.testing.assert_array_equal(np.array(rows, dtype=np.int64), CONFUSION)


@pytest.mark.parametrize("seed", range(5))
def test_class_metrics_and_confusion_equal_scikit_learns(seed: int) -> None:
    # The stage computes them with numpy (sklearn's import alone outlasts its scoring); scikit-learn is the reference.
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, 500)
    predicted = np.where(rng.random(500) < 0.7, labels, rng.integers(0, 10, 500))
    labels[labels == 3] = 4  # a class that never occurs
    predicted[predicted == 7] = 8  # a class never predicted
    classes = list(range(10))
    precision, recall, f1, _ = metrics.precision_recall_fscore_support(
        labels, predicted, labels=classes, zero_division=0
    )
    ours = evaluate.class_metrics(labels, predicted)
    for c in classes:
        assert ours["per_class"][str(c)] == {
            "precision": round(float(precision[c]), 6), "recall": round(float(recall[c]), 6),
            "f1": round(float(f1[c]), 6),
        }
    macro = metrics.f1_score(labels, predicted, labels=classes, average="macro", zero_division=0)
    assert ours["macro_f1"] == round(float(macro), 6)
    np.testing.assert_array_equal(
        evaluate.confusion(labels, predicted), metrics.confusion_matrix(labels, predicted, labels=classes)
    )


def test_cross_entropy_floors_only_an_underflowed_probability() -> None:
    p = np.zeros((1, 10), dtype=np.float32)
    p[0, 3] = 1.0
    assert evaluate.cross_entropy(np.array([3]), p)[0] == 0.0
    assert evaluate.cross_entropy(np.array([4]), p)[0] == pytest.approx(-math.log(evaluate.FLOOR))


def test_cross_entropy_is_training_s_on_confident_mistakes() -> None:
    """An overfitted network's confident mistakes (p far below Keras's epsilon 1e-7) cost what training
    computed: the validation loss the restore check compares is the same quantity on both sides."""
    tf = pytest.importorskip("tensorflow")
    import keras

    from mnist_early_stopping.training.engine import cross_entropy as training_cross_entropy

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (500, 10)).astype(np.float32)
    logits[:50, 0] += 40.0  # class 0 at p ~ 1, the labels elsewhere: p_true ~ 1e-17
    labels = np.where(np.arange(500) < 50, 1 + np.arange(500) % 9, rng.integers(0, 10, 500)).astype(np.int32)
    softmax = keras.layers.Activation("softmax")

    @tf.function
    def training_losses(z):  # as the train stage's validation: a softmax output, in a compiled function
        return training_cross_entropy(tf.constant(labels), softmax(z))

    expected = training_losses(tf.constant(logits)).numpy().astype(np.float64)
    assert expected[:50].min() > 20  # beyond -log(1e-7) = 16.1: no clipping
    ours = evaluate.cross_entropy(labels, tf.nn.softmax(logits).numpy())
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


def test_restore_check_accepts_float_noise_only() -> None:
    assert evaluate.restore_error(4933, 5000, 0.9866, 5600) is None
    assert evaluate.restore_error(4933, 5000, 0.9866 + 1e-12, 5600) is None
    error = evaluate.restore_error(4932, 5000, 0.9866, 5600)
    assert error is not None
    assert "not the one saved as best" in error
    assert "0.9864 (4932 / 5000)" in error and "0.9866 (4933 / 5000)" in error
    assert "iteration 5600" in error and "dvc repro -f train" in error


def test_loss_check_accepts_float_rounding_only() -> None:
    # 5e-9 apart on the reference run: the float32 rounding of training's per-example losses.
    assert evaluate.loss_error(0.051078151331, 0.051078146342, 4800) is None
    assert evaluate.loss_error(1e-7, 0.0, 4800) is None  # a near-perfect network: the absolute floor
    error = evaluate.loss_error(0.0512, 0.0511, 4800)
    assert error is not None and "\n" not in error
    assert "validation loss is 0.0512" in error and "best_validation_loss 0.0511" in error
    assert "iteration 4800" in error and "dvc repro -f train" in error


def test_the_network_check_names_a_replaced_or_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_reliability import write_fake_run

    monkeypatch.chdir(tmp_path)
    write_fake_run(tmp_path)
    recorded = json.loads((tmp_path / "metrics/train.json").read_text())["best_network_sha256"]
    assert evaluate.best_network_error(recorded) is None
    assert "records no best_network_sha256" in evaluate.best_network_error(None)
    (tmp_path / "models/best.keras").write_bytes(b"another archive")
    error = evaluate.best_network_error(recorded)
    assert error.startswith("models/best.keras is not the best network that metrics/train.json records")
    (tmp_path / "models/best/variables/variables.index").write_bytes(b"other weights")
    assert evaluate.best_network_error(recorded).startswith("models/best is not the best network")
    shutil.rmtree(tmp_path / "models/best")
    assert evaluate.best_network_error(recorded) == (
        "models/best not found; run the train stage first (dvc repro train)"
    )


def test_evaluate_refuses_a_network_whose_validation_loss_differs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_reliability import fake_network, write_fake_run

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(evaluate, "load_stage_network", fake_network)
    write_fake_run(tmp_path)
    evaluate.evaluate(16)
    check = json.loads((tmp_path / "metrics/test.json").read_text())["restore_check"]
    assert check["validation_loss"] == check["recorded_validation_loss"]
    train_json = tmp_path / "metrics/train.json"
    # The same accuracy and files, another loss: as if the network behind them were another one.
    metrics = json.loads(train_json.read_text())
    metrics["best_validation_loss"] *= 1.001
    train_json.write_text(json.dumps(metrics))
    (tmp_path / "metrics/test.json").unlink()
    with pytest.raises(StageError) as failed:
        evaluate.evaluate(16)
    assert failed.value.code == 1
    error = str(failed.value)
    assert "\n" not in error and "its validation loss is" in error and "models/best does not belong" in error
    assert not (tmp_path / "metrics/test.json").exists()


def test_accuracy_line_has_the_tutorial_format() -> None:
    line = evaluate.accuracy_line("Restored best network", 9842, 10000)
    assert line == "Restored best network: Accuracy on Test-Set: 98.4% (9842 / 10000)"


def test_predictions_csv_rows() -> None:
    p = probabilities_for(PREDICTED, top=0.91234)
    lines = evaluate.predictions_csv(LABELS, p).splitlines()
    assert lines[0] == "actual,predicted,confidence"
    assert lines[1:3] == ["0,0,0.9123", "0,1,0.9123"]
    assert len(lines) == 1 + LABELS.size


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], str]:
    """(project, env, evaluate's stdout) after download, split, train and evaluate on tiny data."""
    project, env = staged_project(tmp_path_factory.mktemp("evaluate"), ("download", "split", "train"))
    return project, env, run_stage(project, "evaluate", env).stdout


@pytest.mark.slow
def test_evaluate_writes_metrics_and_predictions(pipeline: tuple[Path, dict[str, str], str]) -> None:
    project, _, stdout = pipeline
    metrics = json.loads((project / "metrics/test.json").read_text())
    train_metrics = json.loads((project / "metrics/train.json").read_text())
    assert set(metrics) == {"best", "final", "untrained", "restore_check"}
    per_class = json.loads((project / "metrics/per_class.json").read_text())
    for key in ("best", "final"):
        assert set(metrics[key]) == {"accuracy", "loss", "correct", "total", "macro_f1"}
        assert list(per_class[key]) == [str(c) for c in range(10)]
    assert set(metrics["untrained"]) == {"accuracy", "loss", "correct", "total"}
    check = metrics["restore_check"]
    assert check["validation_accuracy"] == check["recorded_validation_accuracy"]
    assert check["recorded_validation_loss"] == train_metrics["best_validation_loss"]
    assert check["validation_loss"] == pytest.approx(check["recorded_validation_loss"], rel=1e-5)
    assert check["recorded_validation_accuracy"] == train_metrics["best_validation_accuracy"]

    with np.load(project / "data/split/test.npz") as test:
        labels = test["labels"]
    lines = (project / "metrics/predictions.csv").read_text().splitlines()
    assert lines[0] == "actual,predicted,confidence"
    rows = np.array([line.split(",") for line in lines[1:]], dtype=np.float64)
    np.testing.assert_array_equal(rows[:, 0], labels)
    assert int(np.sum(rows[:, 0] == rows[:, 1])) == metrics["best"]["correct"] == round(
        metrics["best"]["accuracy"] * labels.size
    )
    assert np.all((rows[:, 2] >= 0.1) & (rows[:, 2] <= 1.0))
    assert all(len(line.rsplit(".", 1)[1]) == 4 for line in lines[1:])

    assert "Restore check passed" in stdout
    assert stdout.count("Accuracy on Test-Set: ") == 3
    for label in ("Untrained network", f"Final network (iteration {train_metrics['stopped_iteration']})",
                  f"Restored best network (iteration {train_metrics['best_iteration']})"):
        assert f"{label}: Accuracy on Test-Set: " in stdout
    assert "Confusion Matrix" in stdout


@pytest.mark.slow
def test_evaluate_fails_when_best_model_does_not_match_train_metrics(
    pipeline: tuple[Path, dict[str, str], str], tmp_path: Path
) -> None:
    source, env, _ = pipeline
    project = tmp_path / "project"
    shutil.copytree(source, project)
    train_json = project / "metrics/train.json"
    train_metrics = json.loads(train_json.read_text())
    recorded = train_metrics["best_validation_accuracy"]
    # As if models/best were a network one validation image worse than the one recorded.
    train_metrics["best_validation_accuracy"] = recorded - 0.01 if recorded > 0.5 else recorded + 0.01
    train_json.write_text(json.dumps(train_metrics))
    for output in ("metrics/test.json", "metrics/predictions.csv"):
        (project / output).unlink()

    result = run_stage(project, "evaluate", env, check=False)
    assert result.returncode == 1
    error = result.stderr.strip().splitlines()[-1]
    assert "the restored network is not the one saved as best" in error
    assert repr(recorded) in error and repr(train_metrics["best_validation_accuracy"]) in error
    assert "dvc repro -f train" in error
    assert not (project / "metrics/test.json").exists()
    assert not (project / "metrics/predictions.csv").exists()


def evaluate_copy(source: Path, tmp_path: Path, load_from: str = "savedmodel") -> Path:
    """A copy of `source` without evaluate's outputs, with evaluate.load_from set."""
    project = tmp_path / "project"
    shutil.copytree(source, project)
    write_params(project, {"evaluate": {"load_from": load_from}})
    for output in ("metrics/test.json", "metrics/predictions.csv", "metrics/per_class.json"):
        (project / output).unlink()
    return project


def failed_evaluate(project: Path, env: dict[str, str]) -> str:
    """Run evaluate, which must fail with exit 1 and write nothing; return its one line."""
    result = run_stage(project, "evaluate", env, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert not any((project / f"metrics/{name}").exists() for name in ("test.json", "predictions.csv", "per_class.json"))
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("load_from", ["savedmodel", "keras"])
def test_evaluate_refuses_the_final_network_in_place_of_the_best(
    pipeline: tuple[Path, dict[str, str], str], tmp_path: Path, load_from: str
) -> None:
    source, env, _ = pipeline
    project = evaluate_copy(source, tmp_path, load_from)
    swapped = "models/best" if load_from == "savedmodel" else "models/best.keras"
    final = swapped.replace("best", "final")
    # Another network of the same shape, which may well score the same validation accuracy.
    shutil.rmtree(project / swapped) if load_from == "savedmodel" else (project / swapped).unlink()
    (shutil.copytree if load_from == "savedmodel" else shutil.copy2)(project / final, project / swapped)
    assert failed_evaluate(project, env) == (
        f"evaluate: {swapped} is not the best network that metrics/train.json records (its SHA-256 differs: "
        "replaced or modified); re-run training with `dvc repro -f train`, then `dvc repro`"
    )


@pytest.mark.slow
def test_evaluate_refuses_a_modified_byte_in_the_best_variables(
    pipeline: tuple[Path, dict[str, str], str], tmp_path: Path
) -> None:
    source, env, _ = pipeline
    project = evaluate_copy(source, tmp_path)
    data_file = next((project / "models/best/variables").glob("variables.data-*"))
    content = bytearray(data_file.read_bytes())
    content[len(content) // 2] ^= 0x01  # one bit of one weight
    data_file.write_bytes(bytes(content))
    assert failed_evaluate(project, env).startswith("evaluate: models/best is not the best network")


@pytest.mark.slow
def test_evaluate_from_the_keras_files_in_safe_mode_gives_the_same_results(
    pipeline: tuple[Path, dict[str, str], str], tmp_path: Path
) -> None:
    source, env, _ = pipeline
    project = tmp_path / "project"
    shutil.copytree(source, project)
    write_params(project, {"evaluate": {"load_from": "keras"}})
    stdout = run_stage(project, "evaluate", env).stdout
    assert "Restore check passed" in stdout
    assert json.loads((project / "metrics/test.json").read_text()) == json.loads(
        (source / "metrics/test.json").read_text()
    )
    assert (project / "metrics/predictions.csv").read_text() == (source / "metrics/predictions.csv").read_text()


SAFE_AND_SAVED = (
    "import sys, numpy as np\n"
    "from mnist_early_stopping.serving.network import load_keras_network, load_network\n"
    "images = np.load(sys.argv[3])['images']\n"
    "saved = load_network(sys.argv[1], 64)(images)\n"
    "safe = load_keras_network(sys.argv[2], 64)(images)\n"
    "assert np.array_equal(saved.argmax(1), safe.argmax(1)), 'argmax differs'\n"
    "print(float(np.abs(saved - safe).max()))\n"
)


@pytest.mark.slow
def test_the_safe_keras_way_and_the_savedmodel_agree(pipeline: tuple[Path, dict[str, str], str]) -> None:
    project, env, _ = pipeline
    for name in ("best", "final", "initial"):
        done = subprocess.run(
            [sys.executable, "-c", SAFE_AND_SAVED, f"models/{name}", f"models/{name}.keras", "data/split/test.npz"],
            cwd=project, env=env, capture_output=True, text=True, timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert float(done.stdout.strip().splitlines()[-1]) <= 1e-6, name


def test_a_keras_file_that_would_run_code_is_refused(tmp_path: Path) -> None:
    keras = pytest.importorskip("keras")
    from mnist_early_stopping.serving.network import NetworkError, load_keras_network

    inputs = keras.Input((28, 28))
    outputs = keras.layers.Lambda(lambda x: x * 2)(keras.layers.Flatten()(inputs))
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(NetworkError, match="not a loadable .keras file"):
        load_keras_network(path, 8)


@pytest.mark.slow
def test_every_network_carries_what_made_it(pipeline: tuple[Path, dict[str, str], str]) -> None:
    from mnist_early_stopping.serving.network import read_provenance

    project, _, _ = pipeline
    params = yaml.safe_load((project / "params.yaml").read_text())
    for name in ("best", "final", "initial"):
        for path in (project / f"models/{name}", project / f"models/{name}.keras"):
            record = read_provenance(path)
            assert record is not None, path
            assert record["network"] == name and record["params"]["train"] == params["train"]
            assert set(record["data_sha256"]) == {"train.npz", "validation.npz"}
            assert "[0, 1]" in record["input"] and "centre of mass" in record["input"]
            assert {"commit", "uncommitted_changes", "code_sha256", "cpu"} <= set(record)

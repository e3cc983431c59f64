"""The training engine in-process on tiny arrays: it learns, validates, and a checkpoint round-trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import params_with
from tests.tiny_mnist import make_arrays

pytestmark = pytest.mark.slow  # TensorFlow in-process: seconds per test
tf = pytest.importorskip("tensorflow")
from mnist_early_stopping.training import engine as trainer_module  # noqa: E402

MODEL = params_with("model", conv_filters=[4, 8], conv_kernel_size=5, dense_units=[16])
TRAIN = params_with(
    "train", learning_rate=0.002, batch_size=32, max_iterations=200, eval_every=20, patience=100, min_delta=0.0,
    monitor="validation_accuracy", seed=42, checkpoint_every=40, keep_checkpoints=2, precision="float32",
    distribute="none",
)


def tiny_data() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(train, validation) from the tests' learnable generated digits."""
    arrays = make_arrays(n_train=400, n_test=100)
    images, labels = arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"]
    return (images[100:], labels[100:]), (images[:100], labels[:100])


def make_trainer(checkpoint_dir: Path) -> trainer_module.Trainer:
    trainer_module.configure(TRAIN)
    train, validation = tiny_data()
    return trainer_module.Trainer(MODEL, TRAIN, train, validation, checkpoint_dir)


def test_a_few_steps_lower_the_validation_loss(tmp_path: Path) -> None:
    runner = make_trainer(tmp_path)
    before = runner.validate()
    batch = runner.train_until(60)
    after = runner.validate()
    assert runner.iteration == 60
    assert set(batch) == {"train_batch_accuracy", "train_batch_loss"} and np.isfinite(batch["train_batch_loss"])
    assert after["validation_loss"] < before["validation_loss"]
    assert 0.0 <= after["validation_accuracy"] <= 1.0


def test_a_checkpoint_round_trips_weights_optimizer_iteration_and_state(tmp_path: Path) -> None:
    runner = make_trainer(tmp_path)
    runner.save_initial()
    runner.train_until(40)
    runner.save_best()
    runner.save_checkpoint({"note": "state at 40", "manifest_sha256": "m"})
    expected = runner.validate()
    runner.train_until(80)  # move on, then restore into a fresh trainer

    restored = make_trainer(tmp_path)
    assert restored.restore("another run") is None
    assert restored.restore("m") == {"note": "state at 40", "manifest_sha256": "m"}
    assert restored.iteration == 40
    assert restored.validate() == expected
    # The same next steps from the restored optimiser state as from the original one.
    a, b = runner, make_trainer(tmp_path / "other")
    b.checkpoint.read(str(tmp_path / "ckpt-40")).assert_existing_objects_matched()
    restored.train_until(60)
    b.train_until(60)
    assert restored.validate() == b.validate()
    assert a.iteration == 80


def test_restore_finds_nothing_in_an_empty_directory(tmp_path: Path) -> None:
    runner = make_trainer(tmp_path)
    assert runner.restore("m") is None
    assert runner.iteration == 0

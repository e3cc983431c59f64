"""Split stage: sizes, methods, determinism, class proportions and metrics/data.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mnist_early_stopping.data.splits import data_metrics, split_train, validation_indices
from mnist_early_stopping.pipeline.params import SplitParams
from mnist_early_stopping.pipeline.stage import StageError
from stages import split as split_stage
from tests.conftest import TinyMirror, run_stage, stage_env
from tests.tiny_mnist import make_arrays, write_mirror

METHODS = ("head", "shuffle", "stratified")


def split_params(validation_size: int = 120, method: str = "head", seed: int = 3, train_size: int | None = None,
                 label_noise: float = 0.0) -> SplitParams:
    return SplitParams(validation_size, method, seed, train_size, label_noise)


def skewed_labels(seed: int = 0) -> np.ndarray:
    """Labels with very unequal classes (class c appears 10 * (c + 1) times), in random order."""
    labels = np.repeat(np.arange(10, dtype=np.uint8), 10 * np.arange(1, 11))
    np.random.default_rng(seed).shuffle(labels)
    return labels


def fake_images(labels: np.ndarray) -> np.ndarray:
    """Images that carry their own index, so the split can be traced back."""
    images = np.zeros((labels.size, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = np.arange(labels.size) % 256
    images[:, 0, 1] = np.arange(labels.size) // 256
    return images


def index_of(images: np.ndarray) -> np.ndarray:
    return images[:, 0, 0].astype(int) + 256 * images[:, 0, 1].astype(int)


@pytest.mark.parametrize("method", METHODS)
def test_sizes_and_partition(method: str) -> None:
    labels = skewed_labels()
    images = fake_images(labels)
    parts = split_train(images, labels, split_params(method=method))
    train_images, train_labels = parts["train"]
    val_images, val_labels = parts["validation"]
    assert train_images.shape == (430, 28, 28) and train_labels.shape == (430,)
    assert val_images.shape == (120, 28, 28) and val_labels.shape == (120,)
    train_idx, val_idx = index_of(train_images), index_of(val_images)
    # Every image lands in exactly one part, with its own label, in the original order.
    assert sorted(np.concatenate([train_idx, val_idx]).tolist()) == list(range(550))
    assert np.all(np.diff(train_idx) > 0) and np.all(np.diff(val_idx) > 0)
    np.testing.assert_array_equal(train_labels, labels[train_idx])
    np.testing.assert_array_equal(val_labels, labels[val_idx])


def test_head_is_the_first_images() -> None:
    labels = skewed_labels()
    np.testing.assert_array_equal(validation_indices(labels, 50, "head", seed=1), np.arange(50))
    np.testing.assert_array_equal(validation_indices(labels, 50, "head", seed=2), np.arange(50))


@pytest.mark.parametrize("method", ["shuffle", "stratified"])
def test_seeded_methods_are_deterministic(method: str) -> None:
    labels = skewed_labels()
    first = validation_indices(labels, 100, method, seed=7)
    np.testing.assert_array_equal(first, validation_indices(labels, 100, method, seed=7))
    assert not np.array_equal(first, validation_indices(labels, 100, method, seed=8))
    assert not np.array_equal(first, np.arange(100))
    assert len(set(first.tolist())) == 100 and first.min() >= 0 and first.max() < labels.size


def test_shuffle_is_spread_over_the_whole_set() -> None:
    chosen = validation_indices(skewed_labels(), 100, "shuffle", seed=0)
    assert chosen.max() > 275  # head would stop at 99


def test_stratified_largest_remainder_by_hand() -> None:
    labels = np.array([0] * 5 + [1] * 3 + [2] * 2, dtype=np.uint8)
    # Quotas 2.0, 1.2, 0.8: floors 2, 1, 0; the one left over goes to the largest remainder (class 2).
    chosen = validation_indices(labels, 4, "stratified", seed=0)
    assert np.bincount(labels[chosen], minlength=10).tolist() == [2, 1, 1, 0, 0, 0, 0, 0, 0, 0]


@pytest.mark.parametrize("size", [1, 7, 55, 100, 273, 549])
def test_stratified_keeps_class_proportions(size: int) -> None:
    labels = skewed_labels()
    counts = np.bincount(labels, minlength=10)
    chosen = validation_indices(labels, size, "stratified", seed=5)
    taken = np.bincount(labels[chosen], minlength=10)
    quota = counts * size / labels.size
    assert taken.sum() == size == len(set(chosen.tolist()))
    assert np.all(taken >= np.floor(quota)) and np.all(taken <= np.ceil(quota))
    # Largest remainder: a class rounded up never has a smaller remainder than one rounded down.
    remainder = quota - np.floor(quota)
    up = taken > np.floor(quota)
    if up.any() and (~up).any():
        assert remainder[up].min() >= remainder[~up].max()


def test_stratified_beats_shuffle_on_proportions() -> None:
    labels = skewed_labels()
    counts = np.bincount(labels, minlength=10)

    def worst_error(method: str) -> float:
        taken = np.bincount(labels[validation_indices(labels, 110, method, seed=0)], minlength=10)
        return float(np.abs(taken - counts * 110 / labels.size).max())

    assert worst_error("stratified") < 1 <= worst_error("shuffle")


@pytest.mark.parametrize("size", [550, 600])
def test_validation_must_leave_training_images(size: int) -> None:
    message = f"split.validation_size {size} leaves no training images out of 550"
    with pytest.raises(ValueError, match=message):
        validation_indices(skewed_labels(), size, "head", seed=0)


def test_data_metrics() -> None:
    labels = np.array([0, 0, 3, 9], dtype=np.uint8)
    splits = {"train": (fake_images(labels), labels), "test": (fake_images(labels[:1]), labels[:1])}
    metrics = data_metrics(splits, split_params())
    assert metrics == {
        "train": {"size": 4, "class_counts": {"0": 2, "1": 0, "2": 0, "3": 1, "4": 0, "5": 0, "6": 0, "7": 0, "8": 0, "9": 1}},
        "test": {"size": 1, "class_counts": {"0": 1, **{str(c): 0 for c in range(1, 10)}}},
    }


def test_data_metrics_record_the_regime_when_one_is_set() -> None:
    labels = skewed_labels()
    parts = split_train(fake_images(labels), labels, split_params(train_size=200, label_noise=0.25))
    regime = data_metrics(parts, split_params(train_size=200, label_noise=0.25))["regime"]
    assert regime == {"train_size": 200, "label_noise": 0.25, "changed_labels": 50}


@pytest.mark.parametrize("method", METHODS)
def test_train_size_is_a_seeded_subset_of_the_train_part_only(method: str) -> None:
    labels = skewed_labels()
    images = fake_images(labels)
    whole = split_train(images, labels, split_params(method=method))
    parts = split_train(images, labels, split_params(method=method, train_size=100))
    train_images, train_labels = parts["train"]
    assert train_images.shape == (100, 28, 28) and train_labels.shape == (100,)
    # Drawn from the train part, in its order, labels kept; validation exactly as without a subset.
    train_idx = index_of(train_images)
    assert set(train_idx) <= set(index_of(whole["train"][0])) and np.all(np.diff(train_idx) > 0)
    np.testing.assert_array_equal(train_labels, labels[train_idx])
    for a, b in zip(parts["validation"], whole["validation"]):
        np.testing.assert_array_equal(a, b)
    again = split_train(images, labels, split_params(method=method, train_size=100))
    np.testing.assert_array_equal(again["train"][0], train_images)
    other = split_train(images, labels, split_params(method=method, train_size=100, seed=4))
    assert not np.array_equal(index_of(other["train"][0]), train_idx)


def test_train_size_may_be_the_whole_train_part_and_no_more() -> None:
    labels = skewed_labels()
    images = fake_images(labels)
    whole = split_train(images, labels, split_params())
    np.testing.assert_array_equal(split_train(images, labels, split_params(train_size=430))["train"][0], whole["train"][0])
    with pytest.raises(ValueError, match="split.train_size 431 is more than the 430 training images left"):
        split_train(images, labels, split_params(train_size=431))


@pytest.mark.parametrize("fraction,count", [(0.0, 0), (0.001, 0), (0.1, 43), (0.4, 172), (0.99, 426)])
def test_label_noise_changes_exactly_that_fraction_of_training_labels_to_another_class(fraction, count) -> None:
    labels = skewed_labels()
    images = fake_images(labels)
    clean = split_train(images, labels, split_params())
    noisy = split_train(images, labels, split_params(label_noise=fraction))
    changed = clean["train"][1] != noisy["train"][1]
    # round(fraction * 430) labels, every one drawn really changed (never to its own class), digits only.
    assert changed.sum() == count == round(fraction * 430)
    assert noisy["train"][1].max() <= 9
    np.testing.assert_array_equal(noisy["train"][0], clean["train"][0])
    for a, b in zip(noisy["validation"], clean["validation"]):
        np.testing.assert_array_equal(a, b)
    again = split_train(images, labels, split_params(label_noise=fraction))
    np.testing.assert_array_equal(again["train"][1], noisy["train"][1])


def test_label_noise_spreads_over_the_other_classes_and_depends_on_the_seed() -> None:
    from mnist_early_stopping.data.splits import noisy_labels

    labels = np.zeros(9000, np.uint8)
    noisy, changed = noisy_labels(labels, 1.0, seed=5)
    assert changed.tolist() == list(range(9000)) and 0 not in noisy
    # Each of the nine other digits gets about a ninth (1000 +- 5 sigma).
    assert np.all(np.abs(np.bincount(noisy, minlength=10)[1:] - 1000) < 150)
    assert not np.array_equal(noisy_labels(labels, 0.5, seed=5)[1], noisy_labels(labels, 0.5, seed=6)[1])


def test_missing_raw_data_says_run_download(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)
    message = r"^data/raw/train-images-idx3-ubyte: not found; run the download stage first$"
    with pytest.raises(StageError, match=message):
        split_stage.main()


@pytest.mark.slow
def test_split_stage(project: Path, tiny_mirror: TinyMirror) -> None:
    write_mirror(project / "data" / "raw", gzipped=False)  # the download stage's output, decompressed
    result = run_stage(project, "split", stage_env(tiny_mirror))
    assert result.stdout.strip() == "split: train 500, validation 100, test 200"
    arrays = make_arrays()
    train_images, train_labels = arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"]
    expected = {
        "train": (train_images[100:], train_labels[100:]),
        "validation": (train_images[:100], train_labels[:100]),  # method head: the first 100
        "test": (arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"]),
    }
    for name, (images, labels) in expected.items():
        with np.load(project / "data" / "split" / f"{name}.npz") as npz:
            assert sorted(npz.files) == ["images", "labels"]
            assert npz["images"].dtype == np.uint8 and npz["labels"].dtype == np.uint8
            np.testing.assert_array_equal(npz["images"], images)
            np.testing.assert_array_equal(npz["labels"], labels)
    metrics = json.loads((project / "metrics" / "data.json").read_text())
    assert metrics == {
        name: {"size": int(labels.size), "class_counts": dict(zip(map(str, range(10)), np.bincount(labels, minlength=10).tolist()))}
        for name, (_, labels) in expected.items()
    }
    assert sum(metrics["validation"]["class_counts"].values()) == 100
    leftovers = [p.name for p in (project / "data" / "split").iterdir() if p.name.startswith(".")]
    assert leftovers == []

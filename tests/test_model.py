"""The network built from params: output shape and parameter count."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import params_with

keras = pytest.importorskip("keras")

from mnist_early_stopping.training.model import build_model, conv_kernels  # noqa: E402

TUTORIAL = params_with("model", conv_filters=[16, 36], conv_kernel_size=5, dense_units=[128])


def test_tutorial_network_shape_and_parameter_count():
    model = build_model(TUTORIAL, seed=1)
    assert model.count_params() == 242_062
    out = model(np.zeros((3, 28, 28), np.float32))
    assert tuple(out.shape) == (3, 10)
    np.testing.assert_allclose(np.sum(np.asarray(out), axis=1), 1.0, rtol=1e-5)


def test_configurable_layers():
    cfg = params_with("model", conv_filters=[8, 8, 8], conv_kernel_size=3, dense_units=[32, 16])
    model = build_model(cfg, seed=1)
    # 3x3 convs: 1*9*8+8, 8*9*8+8 (x2); flatten 4*4*8=128 -> 32 -> 16 -> 10
    expected = (80 + 584 * 2) + (128 * 32 + 32) + (32 * 16 + 16) + (16 * 10 + 10)
    assert model.count_params() == expected
    assert sorted(conv_kernels(model)) == ["conv1", "conv2", "conv3"]


def test_same_seed_same_weights_different_seed_different():
    a, b, c = (build_model(TUTORIAL, seed=s) for s in (7, 7, 8))
    ka, kb, kc = (conv_kernels(m)["conv1"] for m in (a, b, c))
    np.testing.assert_array_equal(ka, kb)
    assert not np.array_equal(ka, kc)

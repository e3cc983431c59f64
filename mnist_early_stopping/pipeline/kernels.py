"""The conv-kernel file the train stage writes and the plots stage reads (numpy only, no TensorFlow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mnist_early_stopping.pipeline.atomic import write_atomic

# When each set of kernels was taken: before training, the best network, the network at the stop.
VERSIONS = ("initial", "best", "final")


def kernel_key(layer: str, version: str) -> str:
    """The name of one layer's kernel of one version in the file, e.g. conv1_initial."""
    return f"{layer}_{version}"


def write_kernels(path: Path, kernels: dict[str, dict[str, np.ndarray]]) -> None:
    """Write {version: {layer: kernel (kh, kw, in, out)}} atomically as one .npz."""
    flat = {kernel_key(layer, version): k for version, layers in kernels.items() for layer, k in layers.items()}
    with write_atomic(path) as f:
        np.savez(f, **flat)


def read_kernels(path: Path) -> dict[str, np.ndarray]:
    """Every array in a kernel file, by its key."""
    with np.load(path) as npz:
        return {name: npz[name] for name in npz.files}


def conv_layer_names(kernels: dict[str, np.ndarray]) -> list[str]:
    """The conv layers in a kernel file (conv1, conv2, ..., conv10), in numeric order."""
    suffix = "_" + VERSIONS[0]
    names = [k[: -len(suffix)] for k in kernels if k.endswith(suffix)]
    return sorted(names, key=lambda n: int(n[len("conv"):]) if n[len("conv"):].isdigit() else -1)

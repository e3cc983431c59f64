"""Check mnist-predict on real digits as a user would have them; print the agreement, exit 1 below 99%.

Run from a project directory where the pipeline has run (models/best and
data/split/test.npz exist), with the project installed (mnist-predict on the
PATH). The first 500 test images are written as a user's files: 4x larger
(112x112), dark ink on white, RGB, pasted at a random place on a 160x160 white
canvas, JPEG quality 90. The real `mnist-predict --json` classifies the folder;
its digits are compared with the network's on the original 28x28 arrays.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

MODEL = Path("models/best")
TEST_SPLIT = Path("data/split/test.npz")
COUNT = 500
SCALE = 4
CANVAS = 160
JPEG_QUALITY = 90
SEED = 0
MIN_AGREEMENT = 0.99


def as_user_picture(image: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """One MNIST image as a user's file: enlarged, dark on white, RGB, off-centre on a bigger canvas."""
    side = image.shape[0] * SCALE
    big = Image.fromarray(255 - image).resize((side, side), Image.Resampling.BICUBIC).convert("RGB")
    canvas = Image.new("RGB", (CANVAS, CANVAS), "white")
    left, top = (int(v) for v in rng.integers(0, CANVAS - side + 1, size=2))
    canvas.paste(big, (left, top))
    return canvas


def write_pictures(images: np.ndarray, folder: Path) -> list[Path]:
    """Write every image as a JPEG named by its index (so the folder's sorted order is the index order)."""
    rng = np.random.default_rng(SEED)
    paths = [folder / f"{i:04d}.jpg" for i in range(len(images))]
    for image, path in zip(images, paths):
        as_user_picture(image, rng).save(path, quality=JPEG_QUALITY)
    return paths


def run_predict(folder: Path) -> list[dict]:
    """The installed mnist-predict's JSON results for the folder; exit 1 if it fails."""
    command = shutil.which("mnist-predict")
    if command is None:
        raise SystemExit(
            "check_predict: mnist-predict is not on the PATH; install the project (pip install -e .)"
        )
    result = subprocess.run(
        [command, str(folder), "--model", str(MODEL), "--json"], capture_output=True, text=True, timeout=1800
    )
    if result.returncode != 0:
        raise SystemExit(f"check_predict: mnist-predict exited {result.returncode}:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout)


def network_digits(images: np.ndarray) -> np.ndarray:
    """The network's digits for the original 28x28 test images."""
    from mnist_early_stopping.serving.network import load_network

    return load_network(MODEL, COUNT)(images).argmax(axis=1)


def main() -> int:
    """Write the pictures, classify them both ways, print the agreement; 1 if below MIN_AGREEMENT."""
    for path in (MODEL / "saved_model.pb", TEST_SPLIT):
        if not path.is_file():
            print(f"check_predict: {path} not found; run the pipeline first (dvc repro)", file=sys.stderr)
            return 1
    with np.load(TEST_SPLIT) as split:
        images, labels = split["images"][:COUNT], split["labels"][:COUNT]
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_pictures(images, Path(tmp))
        results = run_predict(Path(tmp))
    files = [Path(r["file"]).name for r in results]
    if files != [p.name for p in paths]:
        print("check_predict: mnist-predict did not return one result per picture, in order", file=sys.stderr)
        return 1
    from_files = np.array([r["digit"] for r in results])
    from_arrays = network_digits(images)
    agreement = float((from_files == from_arrays).mean())
    print(
        f"mnist-predict on {COUNT} test digits as users' JPEGs agrees with the network on the arrays: "
        f"{agreement:.1%} (accuracy against the labels: {(from_files == labels).mean():.1%} from the files, "
        f"{(from_arrays == labels).mean():.1%} from the arrays)"
    )
    differ = np.flatnonzero(from_files != from_arrays)
    for i in differ[:10]:
        print(f"  test image {i}, label {labels[i]}: file {from_files[i]}, array {from_arrays[i]}")
    if agreement < MIN_AGREEMENT:
        print(f"FAIL: agreement {agreement:.1%} < {MIN_AGREEMENT:.0%}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Every path the pipeline reads or writes (relative to the project root), and MNIST's constants.

One home for each: the stages and the library import these names, and a
test checks that `dvc.yaml` declares exactly these paths.
"""

from __future__ import annotations

from pathlib import Path

PARAMS_FILE = Path("params.yaml")

RAW_DIR = Path("data/raw")
# The four files of the download stage: the only names ever used as paths in
# RAW_DIR, whatever a digest table (download.files) says.
MNIST_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
SPLIT_DIR = Path("data/split")
SPLITS = ("train", "validation", "test")

MODELS_DIR = Path("models")
BEST_MODEL = MODELS_DIR / "best"
FINAL_MODEL = MODELS_DIR / "final"
INITIAL_MODEL = MODELS_DIR / "initial"
BEST_KERAS = MODELS_DIR / "best.keras"
FINAL_KERAS = MODELS_DIR / "final.keras"
TFLITE_MODEL = MODELS_DIR / "best.tflite"
INITIAL_KERAS = MODELS_DIR / "initial.keras"
KERNELS = MODELS_DIR / "kernels.npz"
MODEL_INFO = MODELS_DIR / "model.json"
# Where a network's provenance travels with it: TF Serving's place for extra
# files in a SavedModel directory, and a member of the same name in a .keras archive.
PROVENANCE_DIR = "assets.extra"
PROVENANCE_NAME = "provenance.json"
# What every network here expects, recorded with it.
PREPROCESSING = (
    "float32 images (N, 28, 28) in [0, 1] (uint8 pixels / 255), a white digit on black, "
    "centred as MNIST's: the longest side of the digit 20 px, its centre of mass at the centre "
    "(mnist-predict prepares any picture this way)"
)

# Work in progress of the train stage, outside DVC's outputs so that it
# survives DVC clearing them before a re-run: the store of checkpoints.py.
CHECKPOINT_DIR = Path("checkpoints/train")

DATA_METRICS = Path("metrics/data.json")
TRAIN_METRICS = Path("metrics/train.json")
# The training curves, written by DVCLive at every evaluation (step = iteration):
# one TSV per curve under LIVE_DIR/plots/metrics/, the latest values in LIVE_SUMMARY.
LIVE_DIR = Path("metrics/live")
LIVE_SUMMARY = LIVE_DIR / "metrics.json"
LIVE_CURVES_DIR = LIVE_DIR / "plots" / "metrics"
# The same curves in one git-tracked table, rewritten beside them at every
# evaluation: rows {"iteration": ..., curve: ...}, the data of dvc.yaml's
# top-level charts.
CURVES_TABLE = Path("metrics/curves.json")
TEST_METRICS = Path("metrics/test.json")
EXPORT_METRICS = Path("metrics/export.json")
PREDICTIONS = Path("metrics/predictions.csv")
# Per-class scores live beside the metrics, not in them: 30 more columns per
# network would drown the headline numbers in `dvc metrics show`.
PER_CLASS = Path("metrics/per_class.json")

PLOTS_DIR = Path("plots")

IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
# uint8 pixels -> [0, 1], the scale every network here is trained and served on.
PIXEL_SCALE = 1.0 / 255.0

# The curves logged at every evaluation; the same words in the log, the JSON and the plots.
CURVES = ("train_batch_accuracy", "train_batch_loss", "validation_accuracy", "validation_loss")


def split_path(name: str) -> Path:
    """The .npz file of one split (train, validation or test)."""
    return SPLIT_DIR / f"{name}.npz"


def curve_path(name: str) -> Path:
    """DVCLive's TSV of one curve (columns step and the curve's name)."""
    return LIVE_CURVES_DIR / f"{name}.tsv"

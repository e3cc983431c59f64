"""Every path the pipeline reads or writes (relative to the project root), and MNIST's constants.

One home for each: the stages and the library import these names, and a
test checks that `dvc.yaml` declares exactly these paths.
"""

from __future__ import annotations

from pathlib import Path

PARAMS_FILE = Path("params.yaml")

RAW_DIR = Path("data/raw")
SPLIT_DIR = Path("data/split")
SPLITS = ("train", "validation", "test")

MODELS_DIR = Path("models")
BEST_MODEL = MODELS_DIR / "best"
FINAL_MODEL = MODELS_DIR / "final"
INITIAL_MODEL = MODELS_DIR / "initial"
KERNELS = MODELS_DIR / "kernels.npz"
MODEL_INFO = MODELS_DIR / "model.json"

# Work in progress of the train stage, outside DVC's outputs so that it
# survives DVC clearing them before a re-run.
CHECKPOINT_DIR = Path("checkpoints/train")

DATA_METRICS = Path("metrics/data.json")
TRAIN_METRICS = Path("metrics/train.json")
HISTORY = Path("metrics/history.csv")
TEST_METRICS = Path("metrics/test.json")
PREDICTIONS = Path("metrics/predictions.csv")
# Per-class scores live beside the metrics, not in them: 30 more columns per
# network would drown the headline numbers in `dvc metrics show`.
PER_CLASS = Path("metrics/per_class.json")

PLOTS_DIR = Path("plots")

IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
# uint8 pixels -> [0, 1], the scale every network here is trained and served on.
PIXEL_SCALE = 1.0 / 255.0

HISTORY_FIELDS = (
    "iteration", "train_batch_accuracy", "train_batch_loss", "validation_accuracy", "validation_loss", "improved",
)


def split_path(name: str) -> Path:
    """The .npz file of one split (train, validation or test)."""
    return SPLIT_DIR / f"{name}.npz"

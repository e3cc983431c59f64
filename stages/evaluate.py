"""Evaluate stage: restore the best network in a fresh process, verify it, and score it on the test set.

Reads models/{best,final,initial} (SavedModels), metrics/train.json and the
validation and test splits; writes metrics/test.json, metrics/per_class.json
and metrics/predictions.csv. Imports neither the model code nor Keras.
"""

from __future__ import annotations

import os

from mnist_early_stopping import params
from mnist_early_stopping.cli import run_main
from mnist_early_stopping.evaluation import evaluate
from mnist_early_stopping.tf_runtime import import_tensorflow


def main() -> None:
    """Entry point of the evaluate stage."""
    (cfg,) = params.load("evaluate")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import_tensorflow()  # before the library's own import: drops TensorFlow's start-up noise
    evaluate(cfg.batch_size, cfg.load_from)


if __name__ == "__main__":
    raise SystemExit(run_main("evaluate", main))

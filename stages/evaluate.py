"""Evaluate stage: restore the best network in a fresh process, verify it, and score it on the test set.

Reads models/{best,final,initial} (SavedModels), metrics/train.json and the
validation and test splits; writes metrics/test.json, metrics/per_class.json
and metrics/predictions.csv. Imports neither the model code nor Keras.
"""

from __future__ import annotations

import os

from mnist_early_stopping import params
from mnist_early_stopping.evaluation import evaluate


def main() -> None:
    """Entry point of the evaluate stage."""
    (cfg,) = params.load("evaluate")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    evaluate(cfg.batch_size)


if __name__ == "__main__":
    main()

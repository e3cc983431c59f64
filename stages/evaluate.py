"""Evaluate stage: restore the best network in a fresh process, verify it, and score it on the test set.

The check, before scoring: the SHA-256 of models/best/variables and of
models/best.keras, then the validation accuracy and loss of the restored
network, against what metrics/train.json records for the best iteration.

Reads models/{best,final,initial} (SavedModels), metrics/train.json and the
validation and test splits; writes metrics/test.json, metrics/per_class.json
and metrics/predictions.csv. Never imports the model code (nor Keras, unless
evaluate.load_from is keras).
"""

from __future__ import annotations

from mnist_early_stopping.evaluation.evaluate import evaluate
from mnist_early_stopping.pipeline import params
from mnist_early_stopping.pipeline.stage import run_main


def main() -> None:
    """Entry point of the evaluate stage."""
    (cfg,) = params.load("evaluate")
    evaluate(cfg.batch_size, cfg.load_from)


if __name__ == "__main__":
    raise SystemExit(run_main("evaluate", main))

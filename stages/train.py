"""Train stage: early stopping on validation, the best network saved on every improvement, resumable.

Reads the train and validation splits; writes models/{best,final,initial}
(SavedModels, and .keras files), models/kernels.npz, models/model.json,
metrics/train.json and the curves in metrics/live/ (DVCLive) and in
metrics/curves.json, both at every evaluation. Run it on every worker of a
multi_worker cluster.
"""

from __future__ import annotations

from mnist_early_stopping.pipeline import params
from mnist_early_stopping.pipeline.stage import run_main
from mnist_early_stopping.training.loop import train


def main() -> None:
    """Entry point of the train stage."""
    model_cfg, cfg = params.load("model", "train")
    train(model_cfg, cfg)


if __name__ == "__main__":
    raise SystemExit(run_main("train", main))

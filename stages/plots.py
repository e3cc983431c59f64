"""Plots stage: the tutorial's figures as PNG files in plots/ (no TensorFlow).

Reads the test split, metrics/predictions.csv, the curves in metrics/live/,
metrics/train.json and models/kernels.npz.
"""

from __future__ import annotations

from mnist_early_stopping.evaluation.figures import draw, load_inputs
from mnist_early_stopping.pipeline import params, timings
from mnist_early_stopping.pipeline.atomic import replace_dir
from mnist_early_stopping.pipeline.layout import PLOTS_DIR
from mnist_early_stopping.pipeline.stage import run_main, say


def main() -> None:
    """Entry point of the plots stage."""
    (cfg,) = params.load("plots")
    with timings.phase("read inputs"):
        inputs = load_inputs()
    # A fresh directory: plots/ ends up holding exactly this run's figures.
    with timings.phase("draw figures"), replace_dir(PLOTS_DIR) as tmp:
        names = [p.name for p in draw(inputs, tmp, cfg.dpi)]
    say(f"wrote {', '.join(names)} to {PLOTS_DIR}/")


if __name__ == "__main__":
    raise SystemExit(run_main("plots", main))

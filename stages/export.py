"""Export stage: models/best as a float32 TFLite model, checked against the SavedModel on the test set.

Reads models/best (a SavedModel) and the test split; writes models/best.tflite
and metrics/export.json, or neither if fewer than 99.9% of the test images get
the same class from both. Reads no params.
"""

from __future__ import annotations

from mnist_early_stopping.pipeline.stage import run_main
from mnist_early_stopping.serving.export import export


def main() -> None:
    """Entry point of the export stage."""
    export()


if __name__ == "__main__":
    raise SystemExit(run_main("export", main))

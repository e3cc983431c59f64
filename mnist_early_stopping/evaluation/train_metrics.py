"""metrics/train.json as the stages after training read it."""

from __future__ import annotations

import json
from typing import Any

from mnist_early_stopping.pipeline.layout import TRAIN_METRICS
from mnist_early_stopping.pipeline.stage import StageError, first_line


def load_train_metrics(keys: tuple[str, ...]) -> dict[str, Any]:
    """metrics/train.json with the given keys checked to be numbers; exit 1 with one line if it is missing or bad."""
    redo = "re-run the train stage: dvc repro train"
    try:
        text = TRAIN_METRICS.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StageError(
            f"{TRAIN_METRICS} not found; run the train stage first (dvc repro train)"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise StageError(f"cannot read {TRAIN_METRICS} ({first_line(e, with_type=True)}); {redo}") from None
    try:
        metrics = json.loads(text)
    except ValueError as e:
        raise StageError(f"{TRAIN_METRICS} is not valid JSON ({e}); {redo}") from None
    if not isinstance(metrics, dict):
        raise StageError(f"{TRAIN_METRICS} is not a JSON object; {redo}")
    for key in keys:
        if key not in metrics:
            raise StageError(f"{TRAIN_METRICS} has no key {key}; {redo}")
        value = metrics[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise StageError(f"{TRAIN_METRICS}: {key} is {value!r}, not a number; {redo}")
    return metrics

"""Check the metrics of a full default pipeline run on the real MNIST; print the key figures."""

from __future__ import annotations

import json
import sys
from pathlib import Path

CLASS_COUNTS = {
    "train+validation": [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
    "test": [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
}


def main() -> int:
    data = json.loads(Path("metrics/data.json").read_text())
    train = json.loads(Path("metrics/train.json").read_text())
    test_path = Path("metrics/test.json")
    test = json.loads(test_path.read_text()) if test_path.exists() else {}
    failures = []
    sizes = {k: data[k]["size"] for k in ("train", "validation", "test")}
    if sizes != {"train": 55000, "validation": 5000, "test": 10000}:
        failures.append(f"split sizes {sizes}")
    counts = {k: [data[k]["class_counts"][str(c)] for c in range(10)] for k in ("train", "validation", "test")}
    together = [a + b for a, b in zip(counts["train"], counts["validation"])]
    if together != CLASS_COUNTS["train+validation"] or counts["test"] != CLASS_COUNTS["test"]:
        failures.append("class counts differ from the canonical MNIST counts")
    print(f"split: {sizes}")
    print(
        f"train: best_iteration {train['best_iteration']}, stopped_iteration {train['stopped_iteration']}, "
        f"stop_reason {train['stop_reason']}, best_validation_accuracy {train['best_validation_accuracy']:.4f}, "
        f"{train['iterations_per_second']} it/s, {train['wall_seconds']} s"
    )
    if train["stop_reason"] != "patience":
        failures.append(f"stop_reason is {train['stop_reason']}, expected patience")
    if not train["best_iteration"] < train["stopped_iteration"]:
        failures.append("best_iteration is not before stopped_iteration")
    if test:
        print(
            "test: best {:.4f}, final {:.4f}, untrained {:.4f}".format(
                test["best"]["accuracy"], test["final"]["accuracy"], test["untrained"]["accuracy"]
            )
        )
        if test["best"]["accuracy"] < 0.98:
            failures.append(f"best test accuracy {test['best']['accuracy']} < 0.98")
    else:
        failures.append("metrics/test.json is missing")
    export_path = Path("metrics/export.json")
    if export_path.exists():
        tflite = json.loads(export_path.read_text())["tflite"]
        print(f"export: TFLite vs SavedModel argmax agreement {tflite['argmax_agreement']:.4%} "
              f"of {tflite['images']} images, largest probability difference {tflite['max_abs_probability_difference']:.2e}")
        if tflite["argmax_agreement"] < 0.999:
            failures.append(f"TFLite agreement {tflite['argmax_agreement']} < 0.999")
    else:
        failures.append("metrics/export.json is missing")
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""Time to a good network: the tutorial's default run against the fast recipe, on the project's data.

Run in the project's virtual environment, in a project whose data/split/ holds the real splits
(`dvc repro split`):

    python bench/recipe.py                          # 3 repeats of each, alternating
    python bench/recipe.py --repeats 5 --accuracy 0.985
    python bench/recipe.py --seeds 1,2,3            # the recipe alone, once per train.seed

Each run is the train stage, then the evaluate stage, in a fresh copy of the project (data/split/
linked), with the committed params (default) or with RECIPE's overrides (the docs' `dvc exp run -S`
line). It prints, per contender, the medians of train.json's wall_seconds, the time from the train
stage's start to the first evaluation at or above --accuracy on the validation set, the best and stop
iterations and the restored best's test accuracy; then the recipe's time ratio against the target.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from common import (
    ROOT,
    add_project_option,
    child_env,
    copy_project,
    header,
    median_of,
    overridden,
    table,
    verdict,
)

# The fast recipe for the tutorial's network: float32, the same layers, split and stopping rule.
RECIPE = (
    "train.batch_size=128",
    "train.learning_rate=0.003",
    "train.lr_schedule=cosine",
    "train.lr_warmup=50",
    "train.max_iterations=800",
    "train.patience=800",
)
# Targets of docs/performance.md: a quarter of the default's training time, 99% on the test set.
TARGET_TIME_RATIO = 0.25
TARGET_TEST_ACCURACY = 0.99
LOG_LINE = re.compile(r"Iter:\s+(\d+), ")


def recipe_command() -> str:
    """The one line a user copies."""
    return "dvc exp run " + " ".join(f"-S {o}" for o in RECIPE)


def first_at(curve: list[tuple[int, float]], accuracy: float) -> int | None:
    """The first iteration whose validation accuracy is at least `accuracy`, or None."""
    return next((step for step, value in curve if value >= accuracy), None)


def read_curve(path: Path) -> list[tuple[int, float]]:
    """A DVCLive TSV (step, value) as pairs."""
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:] if line]
    return [(int(step), float(value)) for step, value in rows]


def run_stage(project: Path, stage: str, env: dict[str, str]) -> dict[int, float]:
    """Run one stage; return the seconds from its start at which each evaluation's line appeared."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", f"stages.{stage}"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    seen, lines = {}, []
    for line in proc.stdout:
        lines.append(line)
        if found := LOG_LINE.match(line):
            seen[int(found.group(1))] = time.perf_counter() - start
    if proc.wait() != 0:
        raise SystemExit(f"bench: the {stage} stage failed in {project}:\n{''.join(lines)[-3000:]}")
    return seen


def one_run(source: Path, overrides: tuple[str, ...], accuracy: float) -> dict[str, Any]:
    """Train and evaluate once in a fresh copy; the measurements of that run."""
    env = child_env()
    with tempfile.TemporaryDirectory(prefix="bench-recipe-") as tmp:
        project = Path(tmp)
        copy_project(source, project)
        (project / "params.yaml").write_text(
            yaml.safe_dump(overridden(source / "params.yaml", overrides), sort_keys=False)
        )
        (project / "data").mkdir()
        (project / "data/split").symlink_to((source / "data/split").resolve())
        seen = run_stage(project, "train", env)
        run_stage(project, "evaluate", env)
        train = json.loads((project / "metrics/train.json").read_text())
        test = json.loads((project / "metrics/test.json").read_text())
        reached = first_at(
            read_curve(project / "metrics/live/plots/metrics/validation_accuracy.tsv"), accuracy
        )
    result = {
        "wall_seconds": train["wall_seconds"],
        "best_iteration": train["best_iteration"],
        "stopped_iteration": train["stopped_iteration"],
        "test_accuracy": test["best"]["accuracy"],
        "final_test_accuracy": test["final"]["accuracy"],
    }
    if reached is not None:
        result["seconds_to_accuracy"] = seen[reached]
        result["iteration_to_accuracy"] = reached
    return result


def cell(value: float, fmt: str) -> str:
    return "-" if math.isnan(value) else format(value, fmt)


def report(results: dict[str, list[dict[str, Any]]], accuracy: float) -> list[str]:
    """The medians table and the recipe's verdicts."""
    rows = []
    for name, runs in results.items():
        rows.append(
            (
                name,
                cell(median_of(runs, "wall_seconds"), ".1f"),
                cell(median_of(runs, "seconds_to_accuracy"), ".1f"),
                cell(median_of(runs, "iteration_to_accuracy"), ".0f"),
                cell(median_of(runs, "best_iteration"), ".0f"),
                cell(median_of(runs, "stopped_iteration"), ".0f"),
                cell(100 * median_of(runs, "test_accuracy"), ".2f"),
                cell(100 * median_of(runs, "final_test_accuracy"), ".2f"),
            )
        )
    head = (
        "run",
        "train s",
        f"s to val>={accuracy:.1%}",
        "at it",
        "best it",
        "stop it",
        "best test %",
        "final test %",
    )
    lines = [table(rows, head)]
    if "default" in results and "recipe" in results:
        ratios = [
            r["wall_seconds"] / d["wall_seconds"] for r, d in zip(results["recipe"], results["default"])
        ]
        ratio, test_accuracy = statistics.median(ratios), median_of(results["recipe"], "test_accuracy")
        lines += [
            "",
            f"recipe / default training time, paired median: {ratio:.3f}  (target <= {TARGET_TIME_RATIO}) "
            f"{verdict(ratio, TARGET_TIME_RATIO, at_least=False)}",
            f"recipe's restored best on the test set, median: {test_accuracy:.2%}  (target >= "
            f"{TARGET_TEST_ACCURACY:.0%}) {verdict(test_accuracy, TARGET_TEST_ACCURACY, at_least=True)}",
        ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_project_option(parser)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each contender (default 3)")
    parser.add_argument(
        "--accuracy",
        type=float,
        default=0.985,
        help="validation accuracy whose first evaluation is timed (default 0.985)",
    )
    parser.add_argument("--seeds", help="comma-separated train.seed values: run the recipe once with each")
    args = parser.parse_args()
    if not (args.project / "data/split/train.npz").is_file():
        raise SystemExit(
            f"bench: {args.project}/data/split/ has no splits; run `dvc repro split` there first"
        )
    print("\n".join(header("Time to a good network: the default run against the fast recipe")))
    print(f"recipe:   {recipe_command()}\n")
    if args.seeds:
        results = {
            f"recipe, seed {s}": [one_run(args.project, (*RECIPE, f"train.seed={s}"), args.accuracy)]
            for s in args.seeds.split(",")
        }
    else:
        results: dict[str, list[dict[str, Any]]] = {"default": [], "recipe": []}
        for _ in range(args.repeats):  # alternating, so that background load hits both alike
            results["default"].append(one_run(args.project, (), args.accuracy))
            results["recipe"].append(one_run(args.project, RECIPE, args.accuracy))
    print("\n".join(report(results, args.accuracy)))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()

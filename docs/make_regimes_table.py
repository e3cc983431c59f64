"""Run docs/early_stopping.md's regimes on the real MNIST through `dvc exp run`, print their table and draw
docs/early_stopping_regimes.png.

Run from the project root: MNIST_MIRROR=<folder or URL with the four .gz files> python docs/make_regimes_table.py
Each regime runs twice in a clone of HEAD (a temporary folder): with the committed early stopping, and without it
(train.patience = train.max_iterations). About 25 minutes on 2 cores. The numbers go to
docs/early_stopping_regimes.json, from which `--draw` alone redraws the figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
RESULTS = DOCS / "early_stopping_regimes.json"
FIGURE = DOCS / "early_stopping_regimes.png"
REGIMES = {
    "tutorial defaults": [],
    "2000 images": ["split.train_size=2000"],
    "2000 images, 20% noisy labels": ["split.train_size=2000", "split.label_noise=0.2"],
    "2000 images, 40% noisy labels": ["split.train_size=2000", "split.label_noise=0.4"],
    "55000 images, 40% noisy labels": ["split.label_noise=0.4"],
}
NO_STOPPING = ["train.patience=10000"]  # = train.max_iterations: patience never runs out
CURVES = ("train_batch_accuracy", "validation_accuracy")


def command(overrides: list[str]) -> str:
    """The `dvc exp run` line a user copies."""
    return " ".join(["dvc exp run", *(f"-S {shlex.quote(o)}" for o in overrides)])


def run_experiment(clone: Path, overrides: list[str]) -> dict:
    """One `dvc exp run` from the committed params; its metrics and curves."""
    subprocess.run(["git", "checkout", "--", "params.yaml"], cwd=clone, check=True)
    args = [a for o in overrides for a in ("-S", o)]
    subprocess.run(["dvc", "exp", "run", *args], cwd=clone, check=True, stdout=subprocess.DEVNULL)
    read = lambda name: json.loads((clone / "metrics" / name).read_text())  # noqa: E731
    curves = {}
    for name in CURVES:
        rows = (clone / f"metrics/live/plots/metrics/{name}.tsv").read_text().split()[2:]
        curves[name] = [float(v) for v in rows[1::2]]
    curves["iteration"] = [int(s) for s in rows[0::2]]
    train, test = read("train.json"), read("test.json")
    return {
        "command": command(overrides),
        "best_iteration": train["best_iteration"],
        "stopped_iteration": train["stopped_iteration"],
        "stop_reason": train["stop_reason"],
        "best": {k: test["best"][k] for k in ("accuracy", "loss")},
        "final": {k: test["final"][k] for k in ("accuracy", "loss")},
        "changed_labels": read("data.json").get("regime", {}).get("changed_labels", 0),
        "curves": curves,
    }


def run_all() -> dict:
    """Every regime with and without early stopping, in a clone of HEAD."""
    if not os.environ.get("MNIST_MIRROR"):
        raise SystemExit("set MNIST_MIRROR to a folder or URL holding the four MNIST .gz files")
    results = {}
    with tempfile.TemporaryDirectory(prefix="regimes-") as tmp:
        clone = Path(tmp) / "repo"
        subprocess.run(["git", "clone", "-q", str(DOCS.parent), str(clone)], check=True)
        for name, overrides in REGIMES.items():
            stopped = run_experiment(clone, overrides)
            full = run_experiment(clone, overrides + NO_STOPPING)
            # The same seed gives the same batches: the stopped run is the full run's beginning.
            n = len(stopped["curves"]["iteration"])
            assert all(stopped["curves"][c] == full["curves"][c][:n] for c in stopped["curves"]), name
            del stopped["curves"]
            results[name] = {"early_stopping": stopped, "no_early_stopping": full}
            print(f"{name}: done", file=sys.stderr, flush=True)
    return results


def table(results: dict) -> str:
    """The markdown table: early stopping's restored best against the network a run without it ends with."""
    lines = [
        "| regime | best / stop | restored best: test acc, loss | at the stop | without early stopping: final at"
        " 10000 | gain |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        es, full = r["early_stopping"], r["no_early_stopping"]
        gain = 100 * (es["best"]["accuracy"] - full["final"]["accuracy"])
        lines.append(
            f"| {name} | {es['best_iteration']} / {es['stopped_iteration']} ({es['stop_reason']}) "
            f"| {es['best']['accuracy']:.2%}, {es['best']['loss']:.3f} "
            f"| {es['final']['accuracy']:.2%}, {es['final']['loss']:.3f} "
            f"| {full['final']['accuracy']:.2%}, {full['final']['loss']:.3f} | {gain:+.2f} points |"
        )
    return "\n".join(lines)


def draw(results: dict) -> None:
    """One panel per regime: the full run's curves, where early stopping found its best and where it stopped."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4 * len(results), 3.6), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(results), sharey=True)
    for ax, (name, r) in zip(axes, results.items()):
        es, curves = r["early_stopping"], r["no_early_stopping"]["curves"]
        ax.plot(curves["iteration"], curves["train_batch_accuracy"], color="tab:blue", alpha=0.35, lw=0.8,
                label="train batch")
        ax.plot(curves["iteration"], curves["validation_accuracy"], color="tab:orange", lw=1.4, label="validation")
        ax.axvline(es["best_iteration"], color="tab:green", ls="--", lw=1, label="best (restored)")
        ax.axvline(es["stopped_iteration"], color="tab:red", ls=":", lw=1.2, label="early stop")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("iteration")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="lower right", fontsize=8)
    fig.savefig(FIGURE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draw", action="store_true", help=f"only redraw the figure from {RESULTS.name}")
    args = parser.parse_args()
    if args.draw:
        results = json.loads(RESULTS.read_text())
    else:
        results = run_all()
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    draw(results)
    print(table(results))
    for name, r in results.items():
        print(f"{name}:\n    {r['early_stopping']['command']}\n    {r['no_early_stopping']['command']}")


if __name__ == "__main__":
    main()

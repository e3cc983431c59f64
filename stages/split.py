"""Split stage: data/raw/ -> data/split/{train,validation,test}.npz and metrics/data.json."""

from __future__ import annotations

from mnist_early_stopping.data.splits import save_splits, split_raw
from mnist_early_stopping.pipeline import params
from mnist_early_stopping.pipeline.stage import run_main, say


def main() -> None:
    """Entry point of the split stage."""
    (cfg,) = params.load("split")
    metrics = save_splits(split_raw(cfg), cfg)  # the three splits and data.json, all or none
    sizes = ", ".join(f"{name} {metrics[name]['size']}" for name in ("train", "validation", "test"))
    changed = metrics.get("regime", {}).get("changed_labels")
    say(sizes + (f"; {changed} training labels changed" if changed else ""))


if __name__ == "__main__":
    raise SystemExit(run_main("split", main))

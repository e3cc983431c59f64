"""Split stage: data/raw/ -> data/split/{train,validation,test}.npz and metrics/data.json."""

from __future__ import annotations

from mnist_early_stopping import params
from mnist_early_stopping.atomic import write_json
from mnist_early_stopping.data import data_metrics, save_split, split_raw
from mnist_early_stopping.layout import DATA_METRICS, split_path


def main() -> None:
    """Entry point of the split stage."""
    (cfg,) = params.load("split")
    splits = split_raw(cfg)
    for name, (images, labels) in splits.items():
        save_split(split_path(name), images, labels)
    metrics = data_metrics(splits)
    write_json(DATA_METRICS, metrics)
    print("split: " + ", ".join(f"{k} {v['size']}" for k, v in metrics.items()))


if __name__ == "__main__":
    main()

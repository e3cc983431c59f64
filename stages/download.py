"""Download stage: the four MNIST files into data/raw/, verified by the SHA-256 and size in `download.files`.

Mirrors are tried in order: $MNIST_MIRROR first (a directory, a file:// URL or
an http(s):// URL), then `download.mirrors` from params.yaml.

Exit status: 0 done, 1 failed (every mirror failed, the disk failed, or data/raw
holds files that are not the stage's), 2 bad input (params.yaml, $MNIST_MIRROR).
Every failure ends with one line saying what to do; never a traceback.
"""

from __future__ import annotations

from mnist_early_stopping.data.download import MIRROR_ENV, download_all, mirror_list
from mnist_early_stopping.pipeline import params
from mnist_early_stopping.pipeline.layout import RAW_DIR
from mnist_early_stopping.pipeline.stage import StageError, run_main


def main() -> None:
    """Entry point of the download stage."""
    (cfg,) = params.load("download")
    # Bad input, files not ours, a full disk: a StageError, which run_main reports in one line.
    errors = download_all(RAW_DIR, cfg.files, mirror_list(cfg.mirrors), cfg)
    if errors:
        raise StageError(
            "\n".join(errors) + f"\nevery mirror failed. On an offline machine set {MIRROR_ENV} to a "
            "directory or URL holding the four MNIST files (.gz or decompressed)."
        )


if __name__ == "__main__":
    raise SystemExit(run_main("download", main))

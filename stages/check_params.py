"""Params check stage: every section and key of params.yaml is known and valid.

DVC tracks each stage's params by section, so a key added to a section
re-runs the stage that reads it, which refuses it. This stage tracks the
whole file, so an unknown section (which no other stage reads) is refused
too, in well under a second: it imports no TensorFlow and writes nothing.
"""

from __future__ import annotations

from mnist_early_stopping.pipeline import params
from mnist_early_stopping.pipeline.stage import run_main, say


def main() -> None:
    """Entry point of the params check stage."""
    params.load()  # all sections, every key, and the checks across keys
    say(f"{params.PARAMS_FILE} is valid")


if __name__ == "__main__":
    raise SystemExit(run_main("check_params", main))

"""How long an input edit can still slip past a stage's own check: from its last check to DVC's record.

Each stage checks, as its last step, that its params, code and input files
are what it started with (mnist_early_stopping/pipeline/run_inputs.py); DVC hashes the
deps again only after the command has exited. An edit in between is recorded
as the run's. This runs `dvc repro --single-item STAGE` for each stage named
(all by default) in the current DVC project and prints, per stage, the time
from the end of the stage's process (after its check: $MNIST_TIMINGS'
`ended`) to the moment DVC wrote dvc.lock. That bounds the window from above:
DVC hashes the deps first, then the outputs, then writes the lock. It also
prints the stage's own cost of the check (phase `check inputs`, start and end
together).

    MNIST_MIRROR=../shared/mnist python bench/input_window.py            # every stage
    python bench/input_window.py train evaluate                           # some

Stages that are up to date do not run and are reported so; `-f` forces them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

STAGES = ("check_params", "download", "split", "train", "evaluate", "plots", "export")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stages", nargs="*", metavar="STAGE", help=f"of {', '.join(STAGES)} (default: all)")
    parser.add_argument("-f", "--force", action="store_true", help="run the stages even if up to date")
    args = parser.parse_args()
    unknown = [s for s in args.stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stage {unknown[0]!r}; the stages are {', '.join(STAGES)}")
    args.stages = args.stages or list(STAGES)
    if not Path("dvc.yaml").is_file():
        sys.exit("run this in the project's root (where dvc.yaml is)")
    print(f"{'stage':<13} {'check (s)':>9} {'exit -> dvc.lock (s)':>21}")
    with tempfile.TemporaryDirectory() as tmp:
        timings = Path(tmp) / "timings.jsonl"
        for stage in args.stages:
            timings.unlink(missing_ok=True)
            command = ["dvc", "repro", "--single-item", stage, *(["-f"] if args.force else [])]
            done = subprocess.run(
                command, env=dict(os.environ, MNIST_TIMINGS=str(timings)), capture_output=True, text=True
            )
            if done.returncode != 0:
                sys.exit(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
            if not timings.exists():
                print(f"{stage:<13} {'(up to date: not run)':>31}")
                continue
            record = json.loads(timings.read_text().splitlines()[-1])
            check = record["phases"].get("check inputs", {}).get("seconds", 0.0)
            window = Path("dvc.lock").stat().st_mtime - record["ended"]
            print(f"{stage:<13} {check:>9.3f} {window:>21.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

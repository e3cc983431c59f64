"""How every stage ends: one line on stderr and an exit status, never a traceback unless asked for."""

from __future__ import annotations

import errno
import os
import sys
import traceback
from typing import TYPE_CHECKING, Callable

from mnist_early_stopping.pipeline import timings

if TYPE_CHECKING:
    from mnist_early_stopping.pipeline.run_inputs import Inputs

# Set to 1 to get the full traceback of an unexpected error.
DEBUG_ENV = "MNIST_DEBUG"


def first_line(error: BaseException, with_type: bool = False) -> str:
    """The first line of an error's message, at most 300 characters (some libraries' run to pages)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    message = lines[0][:300] if lines else ""
    if with_type:
        return f"{type(error).__name__}: {message}" if message else type(error).__name__
    return message or type(error).__name__


# The reasons a write fails that the user can act on, as the OS words them; libraries (TensorFlow,
# HDF5) raise their own errors, with one of these words somewhere in the text.
WRITE_FAILURES = {errno.ENOSPC: "ENOSPC", errno.EDQUOT: "EDQUOT", errno.EACCES: "EACCES", errno.EROFS: "EROFS"}
# The ones only a write gives: the disk is full.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def write_failure(e: BaseException) -> str | None:
    """Why a write failed, in the OS's words, if `e` (an OSError or a library's error) says so; else None."""
    if isinstance(e, OSError) and e.errno:
        return os.strerror(e.errno) if e.errno in WRITE_FAILURES else None
    text = str(e).lower()
    for number, name in WRITE_FAILURES.items():
        if os.strerror(number).lower() in text or name.lower() in text:
            return os.strerror(number)
    return None


EXIT_FAILED, EXIT_BAD_INPUT = 1, 2


class StageError(Exception):
    """The one way a stage fails: one line (what is wrong, what to do) and the exit status `code`.

    1 when running failed, 2 for bad input (params, settings), 128 + N after signal N.
    The stage's name is put in front by run_main, never by the code that raises.
    """

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


# The stage run_main is running, for the lines it prints (say) and its errors.
_stage: str | None = None


def say(message: str, error: bool = False) -> None:
    """Print a line of the running stage, after its name (`train: ...`); on stderr if `error`."""
    print(f"{_stage}: {message}" if _stage else message, file=sys.stderr if error else sys.stdout, flush=True)


# The running stage's inputs as it started (run_inputs.take), for verify_inputs.
_started: Inputs | None = None


def verify_inputs() -> None:
    """Raise a StageError if the running stage's params, code or input files changed since it started."""
    from mnist_early_stopping.pipeline import run_inputs

    with timings.phase("check inputs"):
        run_inputs.verify(_started)


def usage(stage: str) -> str:
    """What `python -m stages.<stage> --help` prints: the stage's docstring, then its entry in dvc.yaml."""
    from mnist_early_stopping.pipeline import run_inputs

    doc = (getattr(sys.modules.get("__main__"), "__doc__", None) or "").strip()
    lines = [f"usage: python -m stages.{stage}   (or: dvc repro {stage}, which runs it when its inputs changed)", ""]
    lines += [doc, ""] if doc else []
    found = run_inputs.entry(stage)
    if found is None:
        return "\n".join(lines + ["(run it from the project root, where dvc.yaml is, to see its inputs and outputs)"])
    data = [d for d in found["deps"] if not d.startswith(("stages/", "mnist_early_stopping/"))]
    sections = ["all of params.yaml" if p == "params.yaml" else p for p in found["params"]]
    lines += [
        f"params:  {', '.join(sections) or 'none'}",
        f"reads:   {', '.join(data) or 'nothing but params.yaml'}",
        f"writes:  {', '.join(found['outputs']) or 'nothing'}",
        "It takes no arguments: every setting is in params.yaml.",
    ]
    return "\n".join(lines)


def run_main(stage: str, main: Callable[[], object]) -> int:
    """Run a stage's main; return its exit status, turning an error into one line on stderr.

    A StageError is printed after the stage's name and gives its exit status;
    KeyboardInterrupt passes through. A stage exits 0 only if its inputs (as dvc.yaml declares them) are still
    what it started with: else DVC would record the run with other inputs.
    With $MNIST_TIMINGS set, the stage's phases are appended to that file however it ends.
    """
    global _stage
    command = getattr(sys.modules.get("__main__"), "__spec__", None)
    # Only `python -m stages.<stage>` has arguments of its own (not a test calling run_main in process).
    arguments = sys.argv[1:] if command is not None and command.name == f"stages.{stage}" else []
    if arguments in (["--help"], ["-h"]):
        print(usage(stage))
        return 0
    if arguments:
        print(f"{stage}: unknown argument {arguments[0]!r}: a stage takes no arguments (its settings are in "
              f"params.yaml); see python -m stages.{stage} --help", file=sys.stderr)
        return EXIT_BAD_INPUT
    _stage = stage
    try:
        return _run(stage, main)
    finally:
        _stage = None
        timings.write(stage)


def _run(stage: str, main: Callable[[], object]) -> int:
    global _started
    from mnist_early_stopping.pipeline import run_inputs

    try:
        with timings.phase("check inputs"):
            _started = run_inputs.take(stage)
        main()
        verify_inputs()
    except StageError as e:
        # A message of several lines (the download's mirrors) has its details indented.
        lines = str(e).splitlines() or [""]
        print("\n".join(line if line[:1].isspace() else f"{stage}: {line}" for line in lines), file=sys.stderr)
        return e.code
    except Exception as e:  # anything unforeseen: still one line, unless the traceback is asked for
        reason = write_failure(e)
        if os.environ.get(DEBUG_ENV) == "1":
            traceback.print_exc()
        elif reason in [os.strerror(n) for n in DISK_FULL]:  # a write that no helper of atomic.py wraps
            where = f" {e.filename}" if isinstance(e, OSError) and e.filename else ""
            print(f"{stage}: cannot write{where}: {reason}; free some space, then run again", file=sys.stderr)
        else:
            print(
                f"{stage}: unexpected error: {first_line(e, with_type=True)} (set {DEBUG_ENV}=1 for the traceback)",
                file=sys.stderr,
            )
        return 1
    return 0

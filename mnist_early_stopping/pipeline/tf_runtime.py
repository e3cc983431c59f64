"""TensorFlow imported without its known-harmless start-up lines on stderr; every other line passes."""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType

from mnist_early_stopping.pipeline import timings

# TensorFlow's C++ code writes these through absl before absl::InitializeLog()
# has run, so TF_CPP_MIN_LOG_LEVEL does not reach them and no environment
# variable does. Matched: absl's preamble to them, two info lines, and cuInit's
# failure once no CUDA driver was found; every other warning and error passes.
_INFO = r"(?:I\d{4} \S+ +\d+ |\d{4}-\d\d-\d\d \S+: I )(?:\S*/)?"
_ERROR = r"(?:E\d{4} \S+ +\d+ |\d{4}-\d\d-\d\d \S+: E )(?:\S*/)?"
ABSL_PREAMBLE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"
)
ONEDNN_NOTICE = re.compile(_INFO + r"port\.cc:\d+\] oneDNN custom operations are on\. ")
NO_CUDA_DRIVER = re.compile(
    _INFO + r"cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine, GPU will not be used\.$"
)
CUINIT_FAILED = re.compile(_ERROR + r"cuda_platform\.cc:\d+\] failed call to cuInit: ")
# What the TFLite interpreter prints on every start on a CPU: it always uses XNNPACK there.
XNNPACK_NOTICE = re.compile(r"INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$")


class NoiseFilter:
    """Line by line, whether to pass a line on: drops the known start-up noise only."""

    def __init__(self) -> None:
        self.no_cuda_driver = False

    def keep(self, line: str) -> bool:
        """Whether `line` (without its line end) is to be passed on."""
        if NO_CUDA_DRIVER.match(line):
            self.no_cuda_driver = True
            return False
        if CUINIT_FAILED.match(line):
            # Expected without a driver; with one (a GPU machine) it is a real error.
            return not self.no_cuda_driver
        return not (ABSL_PREAMBLE.match(line) or ONEDNN_NOTICE.match(line))


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def _pump(read_end: int, out: int, keep: Callable[[str], bool]) -> None:
    with os.fdopen(read_end, "rb") as pipe:
        for line in pipe:
            if keep(line.decode(errors="replace").rstrip("\r\n")):
                _write_all(out, line)


@contextmanager
def filtered_stderr(keep: Callable[[str], bool]) -> Iterator[None]:
    """Pass every line written to file descriptor 2 (by C++ code too) through `keep` while the block runs."""
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    # A thread drains the pipe as lines come, so a full pipe never blocks the writer.
    pump = threading.Thread(target=_pump, args=(read_end, saved, keep), daemon=True)
    pump.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the pump reads to its end and stops
        pump.join()
        os.close(saved)


# TensorFlow imports Keras at once, and Keras imports these when they are
# installed, for its scikit-learn wrappers and image-gallery plots, which no
# stage uses: with them, TensorFlow's import takes 1.3 to 2 s longer here.
KERAS_OPTIONAL_IMPORTS = ("sklearn", "matplotlib")


@contextmanager
def hidden_modules(names: tuple[str, ...]) -> Iterator[None]:
    """Make the named top-level modules, if not yet imported, fail to import while the block runs.

    Keras imports each of them inside `try: ... except ImportError`, so it
    takes them as absent. Afterwards they import as usual.
    """
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # Python's documented "import fails" marker
    try:
        yield
    finally:
        for name in hidden:
            if sys.modules.get(name, ...) is None:
                del sys.modules[name]


_tensorflow: ModuleType | None = None


def import_tensorflow() -> ModuleType:
    """Import TensorFlow and load its device platforms (once a process), dropping only the start-up noise."""
    global _tensorflow
    if _tensorflow is not None:  # evaluate loads three networks: the filter and device listing run once
        return _tensorflow
    # TensorFlow's own info lines (after absl's start) go by its log level; warnings stay.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with timings.phase("import tensorflow"), filtered_stderr(NoiseFilter().keep), hidden_modules(
        KERAS_OPTIONAL_IMPORTS
    ):
        import tensorflow as tf

        # Listing the devices loads the CUDA platform now, inside the filter
        # (cuInit's failure is logged then); it does not start the runtime,
        # so logical devices can still be configured afterwards.
        tf.config.list_physical_devices("GPU")
    _tensorflow = tf
    return tf

"""TensorFlow's start-up noise is dropped; every other line on stderr passes."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from mnist_early_stopping.pipeline.tf_runtime import (
    ABSL_PREAMBLE,
    CUINIT_FAILED,
    NO_CUDA_DRIVER,
    ONEDNN_NOTICE,
    NoiseFilter,
    filtered_stderr,
)
from tests.conftest import run_stage, stage_env, write_params

PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
ONEDNN = (
    "I0000 00:00:1795930460.601885   23683 port.cc:153] oneDNN custom operations are on. You may see "
    "slightly different numerical results due to floating-point round-off errors from different "
    "computation orders. To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`."
)
NO_DRIVER = (
    "I0000 00:00:1795930460.602279   23683 cudart_stub.cc:31] Could not find cuda drivers on your machine, "
    "GPU will not be used."
)
NO_DRIVER_DATED = (
    "2025-09-17 14:44:05.157831: I external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] Could not find cuda "
    "drivers on your machine, GPU will not be used."
)
CUINIT = (
    "E0000 00:00:1795930468.998766   23691 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
    "Failed call to cuInit: UNKNOWN ERROR (303)"
)
REAL = [
    "W0000 00:00:1795930470.1   23691 cpu_allocator_impl.cc:83] Allocation of 3211264000 exceeds 10% of free "
    "system memory.",
    "E0000 00:00:1795930470.2   23691 op_kernel.cc:1840] OP_REQUIRES failed at conv_ops.cc:1056 : "
    "INVALID_ARGUMENT: input depth must be evenly divisible by filter depth",
    "2025-09-17 14:44:05.176998: E external/local_xla/xla/stream_executor/cuda/cuda_fft.cc:467] Unable to "
    "register cuFFT factory",
    # The notice's words at another severity are not the notice.
    "W0000 00:00:1795930470.3   23691 port.cc:153] oneDNN custom operations are on. (as a warning)",
    "I0000 00:00:1795930470.4   23691 device_compiler.h:188] Compiled cluster using XLA!",
    "Traceback (most recent call last):",
    "UserWarning: something real",
    "",
]
NOISE_PATTERNS = (ABSL_PREAMBLE, ONEDNN_NOTICE, NO_CUDA_DRIVER, CUINIT_FAILED)


def test_the_known_start_up_lines_are_dropped():
    keep = NoiseFilter().keep
    assert [line for line in (PREAMBLE, ONEDNN, NO_DRIVER, CUINIT, PREAMBLE, ONEDNN) if keep(line)] == []
    assert not NoiseFilter().keep(NO_DRIVER_DATED)


def test_warnings_errors_and_other_lines_pass():
    keep = NoiseFilter().keep
    assert keep(NO_DRIVER) is False
    assert [line for line in REAL if keep(line)] == REAL


def test_a_failed_cuinit_is_an_error_unless_no_cuda_driver_was_found():
    with_driver = NoiseFilter()
    assert with_driver.keep(CUINIT)
    without_driver = NoiseFilter()
    assert not without_driver.keep(NO_DRIVER) and not without_driver.keep(CUINIT)


def test_the_filter_sees_what_is_written_to_file_descriptor_2(capfd):
    with filtered_stderr(NoiseFilter().keep):
        # As C++ code writes: to the descriptor itself, bypassing sys.stderr.
        os.write(2, f"{PREAMBLE}\n{ONEDNN}\n{REAL[0]}\n{REAL[1]}\n".encode())
        os.write(2, f"{NO_DRIVER}\n{CUINIT}\nno line end".encode())
    os.write(2, b" and after\n")
    assert capfd.readouterr().err == f"{REAL[0]}\n{REAL[1]}\nno line end and after\n"


@pytest.mark.slow
def test_the_train_and_evaluate_stages_print_none_of_the_noise(project: Path, tiny_mirror):
    write_params(project, {"train": {"max_iterations": 20, "eval_every": 20}})
    env = stage_env(tiny_mirror)
    env.pop("TF_CONFIG", None)
    for stage in ("download", "split"):
        run_stage(project, stage, env)
    for stage in ("train", "evaluate"):
        result = run_stage(project, stage, env)
        lines = (result.stdout + result.stderr).splitlines()
        noise = [line for line in lines if any(p.match(line) for p in NOISE_PATTERNS)]
        assert noise == [], f"stage {stage}"
        # The same lines in any other format would still show these words.
        leftovers = [line for line in lines if re.search(r"cudart_stub|port\.cc:\d+\] oneDNN", line)]
        assert leftovers == [], f"stage {stage}"

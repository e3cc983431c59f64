"""Smoke tests of the benchmarks on tiny data: each runs, exits 0 and prints its tables."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_stage, stage_env

pytestmark = pytest.mark.slow


def run_bench(script: str, *args: str, env: dict[str, str] | None = None) -> str:
    """Run bench/<script> with args; return its output, failing the test if it exits non-zero."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        env=env or dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
    )
    assert result.returncode == 0, f"bench/{script} failed ({result.returncode}):\n{result.stdout}"
    return result.stdout


def test_step_bench_times_our_trainer_on_the_projects_data(project: Path, tiny_mirror) -> None:
    env = stage_env(tiny_mirror)
    run_stage(project, "download", env)
    run_stage(project, "split", env)
    out = run_bench(
        "step.py", "--project", str(project), "--contenders", "ours",
        "--seconds", "1", "--repeats", "1", "--tries", "1", "--max-other-load", "1",
    )
    assert "Training-step benchmark" in out
    assert "data:     data/split;" in out
    assert re.search(r"^ours: Trainer\.train_until, float32\s+\d+\.\d\s+\d", out, re.MULTILINE), out
    assert re.search(r"^validation share at eval every 20\s+\d+\.\d%", out, re.MULTILINE), out
    assert "efficiency:" in out and "failed" not in out


def test_pipeline_bench_times_every_stage(project: Path, tiny_mirror) -> None:
    mirror, digests = tiny_mirror
    env = dict(os.environ, MNIST_DIGESTS=str(digests))
    # Training to train.max_iterations only: the stages' start-up dominates anyway.
    out = run_bench(
        "pipeline.py", "--project", str(project), "--mirror", str(mirror),
        "--set", "train.max_iterations=40", env=env,
    )
    for stage in ("download", "split", "train", "evaluate", "plots"):
        assert re.search(rf"^{stage}\s+\d+\.\d\s+\d+$", out, re.MULTILINE), out
    assert re.search(r"^total `dvc repro`\s+\d+\.\d$", out, re.MULTILINE), out
    assert re.search(r"^no-op `dvc repro` \(median of 3\)\s+\d+\.\d\d s", out, re.MULTILINE), out
    assert "params:   params.yaml with train.max_iterations=40" in out
    assert re.search(r"^train: .* stopped at 40 \(max_iterations\)", out, re.MULTILINE), out

"""Smoke tests of the benchmarks on tiny data: each runs, exits 0 and prints its tables."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, copy_project, run_stage, stage_env

pytestmark = pytest.mark.slow


def run_bench(script: str, *args: str, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    """Run bench/<script> with args; return its output, failing the test if it exits non-zero."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        env=env or dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
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
    assert re.search(r"^validation share at eval every 20\s+\d+\.\d%\s+info$", out, re.MULTILINE), out
    for stale in (">= 1.6", ">= 2.5", "<= 15%"):
        assert stale not in out, (stale, out)
    assert "efficiency:" in out and "failed" not in out


def test_pipeline_bench_prints_the_budget_and_the_ratios(project: Path, tiny_mirror, tmp_path: Path) -> None:
    mirror, _ = tiny_mirror  # its digests are in the copies' download.files
    baseline = copy_project(tmp_path / "baseline")  # the same code, as a stand-in for an older checkout
    # Training to train.max_iterations only: the stages' start-up dominates anyway.
    out = run_bench(
        "pipeline.py", "--project", str(project), "--mirror", str(mirror), "--baseline", str(baseline),
        "--set", "train.max_iterations=40", "--step-seconds", "1", "--queue", "--queue-iterations", "40",
        timeout=900,
    )
    assert "params:   params.yaml with train.max_iterations=40; 1 repeat(s), versions alternating" in out
    number = r"-?\d+\.\d"
    for stage in ("download", "split", "train", "evaluate", "plots", "export"):
        # Both versions' stage times, and this code's phases and DVC's share.
        assert re.search(rf"^{stage}: stage in all \(DVC's time for it included\)\s+{number}\s+{number}$", out,
                         re.MULTILINE), out
    for line in ("import TensorFlow", "trace the graphs", "step compute: iterations x step time alone",
                 "validation compute: passes x pass time alone", "load the 3 SavedModels",
                 "draw and write the figures", "DVC: hashing, cache, lock, run-cache"):
        assert re.search(rf"^  {re.escape(line)}\s+{number}", out, re.MULTILINE), (line, out)
    assert re.search(rf"^total `dvc repro`\s+{number}\s+{number}$", out, re.MULTILINE), out
    # The two targets held, with their verdicts; the rest as information, with no target and no stale one.
    for check in ("train stage rate / ideal rate",
                  re.escape("`dvc queue start -j 2` / one after the other (1 x 2 experiments)")):
        assert re.search(rf"^{check}\s+\d+\.\d+\s+\S+ \S+\s+(PASS|MISS)$", out, re.MULTILINE), (check, out)
    for info in (re.escape("fixed costs (outside the training loop): this code / baseline"),
                 re.escape("validation GFLOP/s / step GFLOP/s, in the train stage")):
        assert re.search(rf"^{info}\s+\d+\.\d+\s+info$", out, re.MULTILINE), (info, out)
    assert re.search(r"^no-op `dvc repro` \(median of 3\)\s+\d+\.\d\d s\s+info$", out, re.MULTILINE), out
    for stale in (">= 1.6", ">= 2.5", "<= 15%", "<= 0.6", "<= 3 s"):
        assert stale not in out, (stale, out)
    # The same code twice: the same results; the queued experiments with one thread are compared too.
    assert "results:  identical in every run" in out
    assert re.search(r"^          seed 1: best/stop/test-correct \(\d+, 40, \d+\) serial", out, re.MULTILINE), out
    assert re.search(r"^train: .* stopped at 40 \(max_iterations\)", out, re.MULTILINE), out


def test_recipe_bench_times_the_default_and_the_recipe_and_prints_the_verdicts(project: Path, tiny_mirror) -> None:
    env = stage_env(tiny_mirror)
    run_stage(project, "download", env)
    run_stage(project, "split", env)
    out = run_bench("recipe.py", "--project", str(project), "--repeats", "1", "--accuracy", "0.3", timeout=900)
    assert "recipe:   dvc exp run -S train.batch_size=" in out
    for run in ("default", "recipe"):
        # train s, s to val >= 30%, at it, best it, stop it, best and final test %.
        assert re.search(rf"^{run}\s+\d+\.\d\s+\d+\.\d\s+\d+\s+\d+\s+\d+\s+\d+\.\d\d\s+\d+\.\d\d$", out, re.MULTILINE), out
    assert re.search(r"^recipe / default training time, paired median: \d\.\d{3}  \(target <= 0\.25\) (PASS|MISS)$",
                     out, re.MULTILINE), out
    assert re.search(r"^recipe's restored best on the test set, median: \d+\.\d\d%  \(target >= 99%\) (PASS|MISS)$",
                     out, re.MULTILINE), out

"""The further stopping rules and the plateau schedule through the real train stage, on tiny data."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mnist_early_stopping.pipeline.layout import curve_path
from tests.conftest import read_curves, run_stage, write_params


def train_metrics(project: Path) -> dict:
    return json.loads((project / "metrics/train.json").read_text())


# Tiny data: 500 training images, evaluations every 20 iterations, patience 100, at most 400.
STOPS = [
    ("baseline", {"baseline": 0.999, "patience": 60}, "No validation accuracy beat train.baseline (0.999) in"),
    ("threshold", {"stop_at": 0.2}, "The validation accuracy reached train.stop_at (0.2), stopping optimization."),
    ("divergence", {"divergence": 0.999}, "The validation accuracy is worse than train.divergence (0.999)"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("reason", "options", "line"), STOPS, ids=[s[0] for s in STOPS])
def test_each_new_stop_reason_ends_a_real_run_with_its_best_network(prepared, reason, options, line):
    project, env = prepared
    write_params(project, {"train": options})
    out = run_stage(project, "train", env).stdout
    assert line in out
    metrics = train_metrics(project)
    assert metrics["stop_reason"] == reason
    history = read_curves(project)
    assert int(history[-1]["iteration"]) == metrics["stopped_iteration"]
    accuracies = [float(r["validation_accuracy"]) for r in history]
    if reason == "baseline":  # improvements were saved though none beat the baseline; the clock ran from 0
        assert metrics["stopped_iteration"] == 60 and metrics["best_iteration"] > 0
    elif reason == "threshold":  # the first evaluation at 0.2 or more, judged first: a new best, saved
        assert all(a < 0.2 for a in accuracies[:-1]) and accuracies[-1] >= 0.2
        assert metrics["best_iteration"] == metrics["stopped_iteration"]
    else:  # the first evaluation is the first best, and it already undercuts the divergence threshold
        assert metrics["stopped_iteration"] == metrics["best_iteration"] == 20
    assert (project / "models/best/saved_model.pb").is_file()


@pytest.mark.slow
def test_start_from_logs_earlier_evaluations_but_counts_only_from_it(prepared):
    project, env = prepared
    write_params(project, {"train": {"start_from": 200, "patience": 40}})
    run_stage(project, "train", env)
    metrics = train_metrics(project)
    assert [int(r["iteration"]) for r in read_curves(project)][:2] == [20, 40]
    assert metrics["best_iteration"] >= 200 and metrics["stopped_iteration"] >= 240
    # The constant schedule logs no rate and records none: the default run's outputs are as they were.
    assert not (project / curve_path("learning_rate")).exists() and "final_learning_rate" not in metrics


def learning_rates(project: Path) -> list[tuple[int, float]]:
    lines = (project / curve_path("learning_rate")).read_text().splitlines()
    assert lines[0] == "step\tlearning_rate"
    return [(int(step), float(rate)) for step, rate in (line.split("\t") for line in lines[1:])]


def kill_after_checkpoint_beyond(project: Path, env: dict[str, str], iteration: int) -> None:
    """Start training and SIGKILL it as soon as a checkpoint after `iteration` is complete on disk."""
    proc = subprocess.Popen([sys.executable, "-m", "stages.train"], cwd=project, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120

    def newest() -> int:
        records = (project / "checkpoints/train").glob("*/ckpt-*.json")
        return max((int(m.group(1)) for p in records if (m := re.fullmatch(r"ckpt-(\d+)\.json", p.name))), default=0)

    while newest() <= iteration:
        assert proc.poll() is None, "training finished before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (project / "metrics/train.json").exists()


@pytest.mark.slow
def test_plateau_schedule_logs_its_rate_and_resumes_after_sigkill_to_the_uninterrupted_result(prepared):
    project, env = prepared
    # Evaluations every 20, a reduction after 40 iterations without improvement, a checkpoint every 20.
    write_params(project, {"train": {"lr_schedule": "plateau", "lr_factor": 0.5, "lr_patience": 40,
                                     "lr_min": 0.0001, "checkpoint_every": 20}})
    run_stage(project, "train", env)
    first, first_history, first_rates = train_metrics(project), read_curves(project), learning_rates(project)
    assert [step for step, _ in first_rates] == [int(r["iteration"]) for r in first_history]
    assert first_rates[0][1] == 0.002
    reduced = next((step for step, rate in first_rates if rate < 0.002), None)
    assert reduced is not None, f"the rate was never reduced: {first_rates}"
    assert first["final_learning_rate"] <= first_rates[-1][1]

    (project / "metrics/train.json").unlink()
    # A checkpoint taken after the first reduction (made at the evaluation before `reduced`).
    kill_after_checkpoint_beyond(project, env, reduced)
    resumed = run_stage(project, "train", env).stdout
    assert "train: resuming from the checkpoint at iteration" in resumed
    again = train_metrics(project)
    keys = ("best_iteration", "stopped_iteration", "best_validation_accuracy", "best_validation_loss",
            "stop_reason", "final_learning_rate")
    assert {k: again[k] for k in keys} == {k: first[k] for k in keys}
    assert read_curves(project) == first_history and learning_rates(project) == first_rates



@pytest.mark.slow
def test_cosine_schedule_warms_up_decays_to_its_floor_and_resumes_after_sigkill_exactly(prepared):
    project, env = prepared
    write_params(project, {"train": {"lr_schedule": "cosine", "lr_warmup": 40, "lr_min": 0.0001,
                                     "max_iterations": 200, "patience": 200, "checkpoint_every": 20}})
    run_stage(project, "train", env)
    first, first_history, first_rates = train_metrics(project), read_curves(project), learning_rates(project)
    rates = dict(first_rates)
    # The rate of the next iteration: halfway up the warm-up at 20, at its peak at 40, then down to the floor.
    assert rates[20] == pytest.approx(0.001) and rates[40] == pytest.approx(0.002)
    assert all(a > b for a, b in zip(list(rates.values())[1:], list(rates.values())[2:]))
    assert rates[200] == pytest.approx(0.0001) and first["final_learning_rate"] == pytest.approx(0.0001)

    (project / "metrics/train.json").unlink()
    kill_after_checkpoint_beyond(project, env, 60)
    assert "resuming from the checkpoint" in run_stage(project, "train", env).stdout
    again = train_metrics(project)
    for key in ("best_iteration", "stopped_iteration", "best_validation_accuracy", "final_learning_rate"):
        assert again[key] == first[key], key
    assert read_curves(project) == first_history and learning_rates(project) == first_rates

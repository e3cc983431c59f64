"""The early-stopping rule, as tables of evaluations and expected decisions."""

from __future__ import annotations

import math

import pytest

from mnist_early_stopping.training.early_stopping import EarlyStopping, evaluation_points

NAN = math.nan


def run(stopper: EarlyStopping, values: list[float], every: int = 100, loss: float = 0.5) -> list[tuple]:
    """Feed evaluations until a stop; return (iteration, improved, stop_reason) per evaluation."""
    seen = []
    for i, value in enumerate(values, 1):
        metrics = {"validation_accuracy": value, "validation_loss": value, "train_batch_loss": loss}
        improved = stopper.update(i * every, metrics)
        seen.append((i * every, improved, stopper.stop_reason))
        if stopper.stop_reason:
            break
    return seen


def accuracy_stopper(**kw) -> EarlyStopping:
    args = dict(monitor="validation_accuracy", patience=300, min_delta=0.0, max_iterations=10_000)
    return EarlyStopping(**{**args, **kw})


def test_first_evaluation_always_improves():
    assert run(accuracy_stopper(), [0.0])[0] == (100, True, None)


def test_ties_are_not_improvements():
    seen = run(accuracy_stopper(), [0.5, 0.5, 0.6, 0.6])
    assert [s[1] for s in seen] == [True, False, True, False]


def test_min_delta_needs_strictly_more():
    stopper = accuracy_stopper(min_delta=0.1)
    seen = run(stopper, [0.5, 0.6, 0.61, 0.75])
    # 0.6 is exactly best + min_delta: not an improvement; 0.61 is, and so is 0.75 (> 0.71).
    assert [s[1] for s in seen] == [True, False, True, True]


def test_min_mode_for_loss():
    stopper = EarlyStopping("validation_loss", patience=1000, min_delta=0.01, max_iterations=10_000)
    seen = run(stopper, [1.0, 0.995, 0.98, 0.99, 0.5])
    assert [s[1] for s in seen] == [True, False, True, False, True]
    assert stopper.best_value == 0.5 and stopper.best_iteration == 500


def test_patience_boundary_stops_exactly_at_patience():
    # Best at 100; with patience 300 the stop comes at 400 (400 - 100 >= 300), not before.
    seen = run(accuracy_stopper(patience=300), [0.9, 0.8, 0.8, 0.8, 0.8])
    assert seen[-1] == (400, False, "patience")
    assert [s[2] for s in seen[:-1]] == [None, None, None]


def test_improvement_resets_patience():
    stopper = accuracy_stopper(patience=200)
    seen = run(stopper, [0.5, 0.4, 0.6, 0.5, 0.5, 0.5])
    assert seen[-1] == (500, False, "patience")
    assert stopper.best_iteration == 300


def test_max_iterations():
    stopper = accuracy_stopper(max_iterations=300)
    seen = run(stopper, [0.1, 0.2, 0.3, 0.4])
    assert seen[-1] == (300, True, "max_iterations")


def test_patience_wins_when_both_apply():
    stopper = accuracy_stopper(patience=200, max_iterations=300)
    assert run(stopper, [0.5, 0.4, 0.4])[-1] == (300, False, "patience")


@pytest.mark.parametrize("values,loss", [([0.5, NAN], 0.5), ([0.5, 0.6], NAN), ([0.5, 0.6], math.inf)])
def test_non_finite_stops(values, loss):
    stopper = accuracy_stopper()
    seen = run(stopper, values, loss=loss)
    assert seen[-1][2] == "non_finite"
    assert stopper.best_value is None or math.isfinite(stopper.best_value)


def test_state_round_trip():
    stopper = accuracy_stopper()
    run(stopper, [0.3, 0.7, 0.6])
    again = EarlyStopping.from_state(stopper.state())
    assert again == stopper


@pytest.mark.parametrize(
    "every,maximum,start,expected",
    [
        (100, 500, 0, [100, 200, 300, 400, 500]),
        (100, 450, 0, [100, 200, 300, 400, 450]),
        (100, 500, 300, [400, 500]),
        (100, 500, 500, []),
        (20, 50, 10, [20, 40, 50]),
    ],
)
def test_evaluation_points(every, maximum, start, expected):
    assert evaluation_points(every, maximum, start) == expected

"""The early-stopping rule, as tables of evaluations and expected decisions."""

from __future__ import annotations

import math

import pytest

from mnist_early_stopping.training.early_stopping import EarlyStopping, Plateau, evaluation_points

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


def loss_stopper(**kw) -> EarlyStopping:
    args = dict(monitor="validation_loss", patience=300, min_delta=0.0, max_iterations=10_000)
    return EarlyStopping(**{**args, **kw})


def test_before_start_from_nothing_counts_and_the_clock_starts_there():
    stopper = accuracy_stopper(start_from=300, patience=200)
    seen = run(stopper, [0.9, 0.95, 0.5, 0.5, 0.6, 0.6, 0.6, 0.6])
    # 100 and 200 are only logged; 300 is the first that counts (the first best), though worse than them.
    assert [s[1] for s in seen[:3]] == [False, False, True]
    assert stopper.best_iteration == 500 and seen[-1] == (700, False, "patience")


def test_start_from_exactly_at_an_evaluation_and_no_improvement_after_it():
    stopper = accuracy_stopper(start_from=200, patience=200)
    seen = run(stopper, [0.1, 0.2, 0.2, 0.2, 0.2])
    assert seen[-1] == (400, False, "patience") and stopper.best_iteration == 200
    # Without any evaluation counted, the clock still starts at start_from: 0.1 at 100 is not a best.
    stopper = accuracy_stopper(start_from=150, patience=100)
    assert run(stopper, [0.1, NAN])[-1] == (200, False, "non_finite") and stopper.best_value is None


def test_start_from_survives_the_checkpoint_round_trip():
    stopper = accuracy_stopper(start_from=300)
    run(stopper, [0.5])
    again = EarlyStopping.from_state(stopper.state())
    assert again == stopper and again.clock_start == 300


def test_baseline_improvements_are_saved_but_only_beating_it_restarts_the_clock():
    stopper = accuracy_stopper(baseline=0.8, patience=300)
    seen = run(stopper, [0.5, 0.6, 0.7, 0.75])
    # Every value improved (saved as best) but none beat 0.8: the clock ran from 0 and stops at 300.
    assert [s[1] for s in seen] == [True, True, True]
    assert seen[-1] == (300, True, "baseline") and stopper.best_iteration == 300


def test_baseline_a_tie_does_not_beat_it_and_once_beaten_the_rule_is_patience():
    stopper = accuracy_stopper(baseline=0.8, patience=200)
    assert run(stopper, [0.8, 0.8])[-1] == (200, False, "baseline")
    stopper = accuracy_stopper(baseline=0.8, patience=200)
    seen = run(stopper, [0.81, 0.7, 0.7])
    assert seen[-1] == (300, False, "patience") and stopper.baseline_beaten


def test_baseline_for_a_loss_is_beaten_from_below():
    stopper = loss_stopper(baseline=0.3, patience=200)
    seen = run(stopper, [0.5, 0.29, 0.4, 0.4])
    assert seen[-1] == (400, False, "patience") and stopper.best_iteration == 200


@pytest.mark.parametrize("values,expected", [([0.5, 0.9, 0.95], (200, True, "threshold")),
                                             ([0.5, 0.89, 0.95], (300, True, "threshold"))])
def test_stop_at_is_judged_as_an_improvement_first_then_stops(values, expected):
    stopper = accuracy_stopper(stop_at=0.9)
    assert run(stopper, values)[-1] == expected
    assert stopper.best_iteration == expected[0]


def test_stop_at_a_value_reached_but_not_a_new_best_still_stops():
    stopper = accuracy_stopper(stop_at=0.9, start_from=300)
    # 0.95 at 100 is before start_from: it neither counts as best nor as reaching the threshold.
    assert run(stopper, [0.95, 0.5, 0.91])[-1] == (300, True, "threshold")
    stopper = loss_stopper(stop_at=0.2)
    assert run(stopper, [0.5, 0.2])[-1] == (200, True, "threshold")  # <= for a loss, exactly at it


def test_divergence_stops_at_the_first_value_worse_than_it():
    stopper = accuracy_stopper(divergence=0.2)
    seen = run(stopper, [0.5, 0.2, 0.19])
    assert [s[2] for s in seen] == [None, None, "divergence"]  # exactly at 0.2 is not worse
    stopper = loss_stopper(divergence=2.0)
    assert run(stopper, [0.5, 2.0, 2.5])[-1] == (300, False, "divergence")
    assert stopper.best_iteration == 100


def test_options_off_give_the_plain_rule():
    values = [0.5, 0.6, 0.55, 0.7, 0.6, 0.6, 0.6, 0.6]
    plain = run(accuracy_stopper(), values)
    assert run(accuracy_stopper(start_from=None, baseline=None, stop_at=None, divergence=None), values) == plain


def plateau(**kw) -> Plateau:
    args = dict(monitor="validation_accuracy", factor=0.5, patience=200, min_delta=0.0, floor=0.0,
                learning_rate=0.01)
    return Plateau(**{**args, **kw})


def rates(schedule: Plateau, values: list[float], every: int = 100) -> list[float]:
    return [schedule.update(i * every, v) for i, v in enumerate(values, 1)]


def test_plateau_reduces_after_its_patience_then_waits_again():
    # Best at 100; 200 iterations without improvement -> halved at 300; the wait restarts there.
    assert rates(plateau(), [0.5, 0.5, 0.5, 0.5, 0.5, 0.6, 0.6]) == [0.01, 0.01, 0.005, 0.005, 0.0025, 0.0025,
                                                                      0.0025]


def test_plateau_min_delta_and_the_floor():
    schedule = plateau(min_delta=0.05, floor=0.004)
    # 0.52 is not better than 0.5 by more than 0.05: still a plateau.
    assert rates(schedule, [0.5, 0.52, 0.53, 0.54, 0.55, 0.56, 0.57]) == [0.01, 0.01, 0.005, 0.005, 0.004, 0.004,
                                                                          0.004]


def test_plateau_for_a_loss_and_the_round_trip():
    schedule = plateau(monitor="validation_loss", patience=100)
    assert rates(schedule, [1.0, 0.9, 0.95]) == [0.01, 0.01, 0.005]
    assert Plateau.from_state(schedule.state()) == schedule

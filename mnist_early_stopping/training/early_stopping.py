"""The early-stopping rule and the learning-rate schedules: pure logic, no TensorFlow."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

MODES = {"validation_accuracy": "max", "validation_loss": "min"}
STOP_REASONS = ("patience", "baseline", "threshold", "divergence", "max_iterations", "non_finite")


def beats(monitor: str, value: float, reference: float, min_delta: float = 0.0) -> bool:
    """Whether `value` is better than `reference` by more than `min_delta` (strictly), in the monitor's direction."""
    if MODES[monitor] == "max":
        return value > reference + min_delta
    return value < reference - min_delta


def reaches(monitor: str, value: float, threshold: float) -> bool:
    """Whether `value` is at `threshold` or better (>= for accuracy, <= for loss)."""
    return value >= threshold if MODES[monitor] == "max" else value <= threshold


@dataclass
class EarlyStopping:
    """Tracks the best value of a monitored metric and decides when to stop.

    An evaluation improves when its value beats the best so far by more than
    `min_delta` (strictly). Training stops at the first evaluation where
    `iteration - clock_start >= patience`, at `max_iterations`, or as soon as
    a loss is not finite. The patience clock starts at `start_from` (0 when
    off) and restarts at every improvement that also beats `baseline` (every
    improvement when off). Evaluations before `start_from` are only logged.
    `stop_at` stops at the first evaluation at that value or better (after
    judging it as usual), `divergence` at the first one worse than it.
    """

    monitor: str
    patience: int
    min_delta: float
    max_iterations: int
    start_from: int | None = None
    baseline: float | None = None
    stop_at: float | None = None
    divergence: float | None = None
    best_value: float | None = None
    best_iteration: int = 0
    clock_start: int = 0
    baseline_beaten: bool = False
    stop_reason: str | None = field(default=None)

    def __post_init__(self) -> None:
        if self.start_from is not None:  # nothing counts before it, so the clock cannot have restarted earlier
            self.clock_start = max(self.clock_start, self.start_from)

    def improves(self, value: float) -> bool:
        """Whether `value` is an improvement on the best so far."""
        if not math.isfinite(value):
            return False
        return self.best_value is None or beats(self.monitor, value, self.best_value, self.min_delta)

    def update(self, iteration: int, metrics: dict[str, float]) -> bool:
        """Record one evaluation; return whether it improved. Sets `stop_reason` when training should stop."""
        value = metrics[self.monitor]
        counted = self.start_from is None or iteration >= self.start_from
        improved = counted and self.improves(value)
        if improved:
            self.best_value, self.best_iteration = value, iteration
            if self.baseline is None or beats(self.monitor, value, self.baseline, self.min_delta):
                self.clock_start, self.baseline_beaten = iteration, True
        if not all(math.isfinite(v) for v in metrics.values()):
            self.stop_reason = "non_finite"
        elif not counted:
            pass
        elif self.divergence is not None and beats(self.monitor, self.divergence, value):
            self.stop_reason = "divergence"
        elif self.stop_at is not None and reaches(self.monitor, value, self.stop_at):
            self.stop_reason = "threshold"
        elif iteration - self.clock_start >= self.patience:
            self.stop_reason = "patience" if self.baseline is None or self.baseline_beaten else "baseline"
        if self.stop_reason is None and iteration >= self.max_iterations:
            self.stop_reason = "max_iterations"
        return improved

    def state(self) -> dict[str, Any]:
        """A JSON-able snapshot, for checkpoints."""
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EarlyStopping:
        """Rebuild from `state()`."""
        return cls(**state)


@dataclass
class Plateau:
    """Keras's ReduceLROnPlateau in iterations: multiply the rate by `factor` once `patience` iterations
    have passed without an improvement of the monitored value (by more than `min_delta`), never below `floor`.

    Its best value is its own (every evaluation counts, as in Keras); after a
    reduction the wait starts again. Keras's `cooldown` is 0 here.
    """

    monitor: str
    factor: float
    patience: int
    min_delta: float
    floor: float
    learning_rate: float
    best_value: float | None = None
    wait_start: int = 0

    def update(self, iteration: int, value: float) -> float:
        """Record one evaluation; return the learning rate for the iterations after it."""
        if not math.isfinite(value):
            return self.learning_rate
        if self.best_value is None or beats(self.monitor, value, self.best_value, self.min_delta):
            self.best_value, self.wait_start = value, iteration
        elif iteration - self.wait_start >= self.patience:
            if self.learning_rate > self.floor:
                self.learning_rate = max(self.learning_rate * self.factor, self.floor)
            self.wait_start = iteration
        return self.learning_rate

    def state(self) -> dict[str, Any]:
        """A JSON-able snapshot, for checkpoints."""
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Plateau:
        """Rebuild from `state()`."""
        return cls(**state)


def evaluation_points(eval_every: int, max_iterations: int, start: int = 0) -> list[int]:
    """Iterations after `start` at which validation runs: every `eval_every`, and the last one."""
    points = list(range(start - start % eval_every + eval_every, max_iterations + 1, eval_every))
    if not points or points[-1] != max_iterations:
        points.append(max_iterations)
    return [p for p in points if p > start]

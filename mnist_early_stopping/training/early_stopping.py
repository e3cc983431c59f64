"""The early-stopping rule: pure logic, no TensorFlow."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

MODES = {"validation_accuracy": "max", "validation_loss": "min"}
STOP_REASONS = ("patience", "max_iterations", "non_finite")


@dataclass
class EarlyStopping:
    """Tracks the best value of a monitored metric and decides when to stop.

    An evaluation improves when its value beats the best so far by more than
    `min_delta` (strictly). Training stops at the first evaluation where
    `iteration - best_iteration >= patience`, at `max_iterations`, or as soon
    as a loss is not finite.
    """

    monitor: str
    patience: int
    min_delta: float
    max_iterations: int
    best_value: float | None = None
    best_iteration: int = 0
    stop_reason: str | None = field(default=None)

    def improves(self, value: float) -> bool:
        """Whether `value` is an improvement on the best so far."""
        if not math.isfinite(value):
            return False
        if self.best_value is None:
            return True
        if MODES[self.monitor] == "max":
            return value > self.best_value + self.min_delta
        return value < self.best_value - self.min_delta

    def update(self, iteration: int, metrics: dict[str, float]) -> bool:
        """Record one evaluation; return whether it improved. Sets `stop_reason` when training should stop."""
        value = metrics[self.monitor]
        improved = self.improves(value)
        if improved:
            self.best_value, self.best_iteration = value, iteration
        if not all(math.isfinite(v) for v in metrics.values()):
            self.stop_reason = "non_finite"
        elif iteration - self.best_iteration >= self.patience:
            self.stop_reason = "patience"
        elif iteration >= self.max_iterations:
            self.stop_reason = "max_iterations"
        return improved

    def state(self) -> dict[str, Any]:
        """A JSON-able snapshot, for checkpoints."""
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EarlyStopping:
        """Rebuild from `state()`."""
        return cls(**state)


def evaluation_points(eval_every: int, max_iterations: int, start: int = 0) -> list[int]:
    """Iterations after `start` at which validation runs: every `eval_every`, and the last one."""
    points = list(range(start - start % eval_every + eval_every, max_iterations + 1, eval_every))
    if not points or points[-1] != max_iterations:
        points.append(max_iterations)
    return [p for p in points if p > start]

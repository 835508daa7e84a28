"""The sinusoid task family: y = A sin(x - phase), amplitude and phase drawn per task (Finn et al., 2017)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SinusoidTask:
    """One sinusoid: ``y = amplitude * sin(x - phase)``."""

    amplitude: float
    phase: float


@dataclass(frozen=True)
class SinusoidFamily:
    """The MAML paper's sinusoid regression tasks (a :class:`~metalab.api.RegressionTaskFamily`).

    Args:
        amplitude_range: ``(low, high)`` of the uniform amplitude distribution (paper: 0.1 to 5).
        phase_range: ``(low, high)`` of the uniform phase distribution in radians (paper: 0 to pi).
        x_range: ``(low, high)`` of the uniform input distribution (paper: -5 to 5).
    """

    amplitude_range: tuple[float, float] = (0.1, 5.0)
    phase_range: tuple[float, float] = (0.0, float(np.pi))
    x_range: tuple[float, float] = (-5.0, 5.0)
    kind: str = "regression"
    input_shape: tuple[int, ...] = (1,)
    output_dim: int = 1

    def sample_task(self, rng: np.random.Generator) -> SinusoidTask:
        """Draws an amplitude and a phase."""
        amplitude = rng.uniform(*self.amplitude_range)
        phase = rng.uniform(*self.phase_range)
        return SinusoidTask(amplitude=float(amplitude), phase=float(phase))

    def sample_points(self, task: SinusoidTask, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Draws ``n`` inputs uniformly from ``x_range`` and returns them with their targets.

        Returns:
            ``(x [n, 1] float32, y [n, 1] float32)``.
        """
        x = rng.uniform(*self.x_range, size=(n, 1)).astype(np.float32)
        return x, self.evaluate(task, x)

    def evaluate(self, task: SinusoidTask, x: np.ndarray) -> np.ndarray:
        """The sinusoid at ``x`` (any shape), as ``float32`` of the same shape."""
        x = np.asarray(x, dtype=np.float64)
        return (task.amplitude * np.sin(x - task.phase)).astype(np.float32)

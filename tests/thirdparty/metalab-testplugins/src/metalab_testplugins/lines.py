"""A good third-party plugin: the family of regression tasks y = a * x + b (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import Field

from metalab.api import DatasetSpec, Params, hookimpl

METALAB_PLUGIN_API = "1.0"


class LinesParams(Params):
    noise_std: float = Field(0.0, ge=0, le=10, description="Standard deviation of Gaussian noise added to y.")


@dataclass(frozen=True)
class Line:
    """One task: the line y = slope * x + intercept."""

    slope: float
    intercept: float


class LinesTaskFamily:
    """Lines y = a * x + b with a in [-2, 2], b in [-1, 1], observed at x in [-3, 3].

    Args:
        noise_std: Standard deviation of the Gaussian noise added to sampled targets.
    """

    kind = "regression"
    input_shape = (1,)
    output_dim = 1
    slope_range = (-2.0, 2.0)
    intercept_range = (-1.0, 1.0)
    x_range = (-3.0, 3.0)

    def __init__(self, noise_std: float = 0.0):
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0. Received: noise_std={noise_std!r}")
        self.noise_std = float(noise_std)

    def sample_task(self, rng: np.random.Generator) -> Line:
        return Line(slope=float(rng.uniform(*self.slope_range)), intercept=float(rng.uniform(*self.intercept_range)))

    def sample_points(self, task: Line, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        x = rng.uniform(*self.x_range, size=(n, 1)).astype(np.float32)
        y = self.evaluate(task, x)
        if self.noise_std > 0:
            y = y + rng.normal(0.0, self.noise_std, size=y.shape).astype(np.float32)
        return x, y

    def evaluate(self, task: Line, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32).reshape(-1, 1)
        return (np.float32(task.slope) * x + np.float32(task.intercept)).astype(np.float32)


def make_lines(params: LinesParams, context) -> LinesTaskFamily:
    return LinesTaskFamily(noise_std=params.noise_std)


@hookimpl
def metalab_register_datasets():
    return [
        DatasetSpec(
            id="metalab_testplugins.lines",
            title="Lines",
            description="Regression tasks y = a*x + b, a in [-2, 2], b in [-1, 1], x in [-3, 3].",
            params=LinesParams,
            factory=make_lines,
            kind="regression",
            default_backbone="metalab.mlp",
            episode_defaults={"shots": 10, "queries": 10},
        )
    ]

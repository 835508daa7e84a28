"""Finite-difference checks of gradients in float64, shared by the gradient tests (1e-8 relative).

The directional derivative of ``f`` along ``d`` by fourth-order central differences (Richardson's combination of
steps ``h`` and ``2h``) against ``<grad, d>``. Directions are ``grad``'s own and ``grad``'s plus a random unit
vector: along a purely random direction the derivative can come out near zero, and its relative error then
measures only the float64 round-off of ``f`` (seen: 2e-8 on correct code), not the gradient. The step must stay
small enough to cross no ReLU or max-pool kink (second-order meta-losses even jump there); 1e-5 in parameter
norm does for the tiny models of the tests. ``benchmarks/check_gradients.py`` checks the full workloads the same
way.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def _norm(arrays: list[np.ndarray]) -> float:
    return float(np.sqrt(sum(float(np.sum(a * a)) for a in arrays)))


def directional_errors(f: Callable[[list[np.ndarray]], float], x0: list[np.ndarray], grad: list[np.ndarray],
                       directions: int = 3, step: float = 1e-5, seed: int = 1) -> list[float]:
    """Relative errors ``|D - <grad, d>| / |D|`` of ``grad`` along unit directions ``d``.

    Args:
        f: A scalar function of arrays shaped like ``x0`` (returns a Python float).
        x0: The point (float64 arrays).
        grad: The gradient of ``f`` at ``x0`` to check.
        directions: ``grad``'s direction first, then ``directions - 1`` of ``grad``'s plus a random unit vector.
        step: The step ``h`` in parameter norm.
        seed: Seed of the random vectors.
    """
    x0 = [np.asarray(x, dtype=np.float64) for x in x0]
    grad = [np.asarray(g, dtype=np.float64) for g in grad]
    unit = [g / _norm(grad) for g in grad]
    rng = np.random.default_rng(seed)
    errors = []
    for k in range(directions):
        d = unit
        if k:
            r = [rng.standard_normal(x.shape) for x in x0]
            r_norm = _norm(r)
            d = [u + v / r_norm for u, v in zip(unit, r)]
            d = [v / _norm(d) for v in d]

        def at(t: float) -> float:
            return float(f([x + t * v for x, v in zip(x0, d)]))

        h = step
        numeric = (8 * (at(h) - at(-h)) - (at(2 * h) - at(-2 * h))) / (12 * h)
        analytic = sum(float(np.sum(g * v)) for g, v in zip(grad, d))
        errors.append(abs(numeric - analytic) / abs(numeric))
    return errors

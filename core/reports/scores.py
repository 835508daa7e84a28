"""A run's scores, one per protocol, and which of them is its headline.

Every evaluation is stored with its split, episode count and episode seed (a benchmark's fixed tasks have no
seed). The headline is the canonical protocol's score: the ``test`` split on the run's own ``test_episodes``
(600 by default) fixed episodes of seed :data:`~metalab.core.engine.fixed_tasks.EVAL_SEED`, the protocol of
the end-of-training evaluation. A later ``metalab eval --episodes 200`` is kept and shown beside it, never in
its place. No TensorFlow, no plotting: the CLI, the reports and the dashboard read these.
"""

from __future__ import annotations

from typing import Any

#: The episode seed of every fixed evaluation (mirrors ``metalab.core.engine.fixed_tasks.EVAL_SEED``, which
#: imports numpy-heavy code; tests check that the two agree).
CANONICAL_SEED = 2017
#: ``RunConfig.test_episodes``' default: the canonical episode count when a run's config does not say.
CANONICAL_EPISODES = 600


def canonical_protocol(config: dict[str, Any] | None) -> dict[str, Any]:
    """The canonical protocol of a run: ``{"split": "test", "episodes": N, "seed": CANONICAL_SEED}``."""
    episodes = int((config or {}).get("test_episodes") or CANONICAL_EPISODES)
    return {"split": "test", "episodes": episodes, "seed": CANONICAL_SEED}


def is_canonical(evaluation: dict[str, Any], config: dict[str, Any] | None) -> bool:
    """Whether ``evaluation`` was scored under the run's canonical protocol."""
    protocol = canonical_protocol(config)
    return (evaluation.get("split") == protocol["split"] and int(evaluation.get("episodes") or 0) == protocol["episodes"]
            and evaluation.get("seed") == protocol["seed"])


def headline(evaluations: list[dict[str, Any]], config: dict[str, Any] | None) -> dict[str, Any] | None:
    """The newest evaluation under the canonical protocol (``evaluations`` newest first), or ``None``."""
    return next((e for e in evaluations if is_canonical(e, config)), None)


def protocol_label(evaluation: dict[str, Any]) -> str:
    """How an evaluation's protocol reads, e.g. ``"test · 600 episodes · seed 2017"``."""
    split = str(evaluation.get("split", ""))
    parts = [split, f"{int(evaluation.get('episodes') or 0)} {'tasks' if split.startswith('benchmark:') else 'episodes'}"]
    if evaluation.get("seed") is not None:
        parts.append(f"seed {evaluation['seed']}")
    return " · ".join(parts)


def score_of(evaluation: dict[str, Any]) -> tuple[str, float, float]:
    """Returns ``(metric name, value, 95% CI half-width)`` of an evaluation (accuracy in %, MSE, or average return)."""
    if "accuracy" in evaluation:
        return "accuracy (%)", 100.0 * float(evaluation["accuracy"]), 100.0 * float(evaluation.get("ci95", float("nan")))
    if "return" in evaluation:  # an environment run: the average episode return after adaptation
        return "average return", float(evaluation["return"]), float(evaluation.get("ci95", float("nan")))
    return "MSE", float(evaluation.get("mse", evaluation.get("loss", float("nan")))), float(
        evaluation.get("ci95", float("nan")))


def score_rows(evaluations: list[dict[str, Any]], config: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One row per stored evaluation, newest first: protocol, metric, value, 95% CI, when, and which is headline.

    Returns:
        ``[{"protocol", "split", "episodes", "seed", "metric", "value", "ci95", "created", "headline", "note"}]``;
        ``note`` says when an evaluation's leak check did not run.
    """
    top = headline(evaluations, config)
    rows = []
    for evaluation in evaluations:
        metric, value, ci = score_of(evaluation)
        note = str(evaluation.get("leak_check") or "")
        rows.append({
            "protocol": protocol_label(evaluation), "split": evaluation.get("split"),
            "episodes": evaluation.get("episodes"), "seed": evaluation.get("seed"), "metric": metric,
            "value": value, "ci95": ci, "created": evaluation.get("created"), "headline": evaluation is top,
            "note": note if note.startswith("not checked") else "",
        })
    return rows

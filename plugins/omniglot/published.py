"""Omniglot scores as the papers report them, for the report to set beside a run whose protocol matches.

The few-shot rows hold for the Vinyals et al. split with rotations as extra classes and 28x28 images, at 5- or
20-way, 1- or 5-shot (test accuracy in %, 95% CI where the paper gives one). Lake et al.'s 20 one-shot runs are a
protocol of their own, scored by ``metalab eval RUN --benchmark lake20``.
"""

from __future__ import annotations

from metalab.api import PublishedResult

_MAML = "Finn, Abbeel and Levine 2017, Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks (ICML), Table 1"
_PROTO = "Snell, Swersky and Zemel 2017, Prototypical Networks for Few-shot Learning (NeurIPS), Table 1"
_REPTILE = "Nichol, Achiam and Schulman 2018, On First-Order Meta-Learning Algorithms (arXiv:1803.02999), Table 1"
_LAKE = ("Lake, Salakhutdinov and Tenenbaum 2015, Human-level concept learning through probabilistic program "
         "induction (Science 350:1332), the 20 within-alphabet 20-way one-shot runs")

#: The dataset parameters of the papers' protocol (the dataset's defaults).
_PROTOCOL = {"split": "vinyals", "rotations": True, "image_size": 28}

# (method, algorithm id, the parameters making the variant, citation, {(ways, shots): (accuracy, ci95)})
_FEW_SHOT = [
    ("MAML", "metalab.maml", {"first_order": False}, _MAML,
     {(5, 1): (98.7, 0.4), (5, 5): (99.9, 0.1), (20, 1): (95.8, 0.3), (20, 5): (98.9, 0.2)}),
    ("first-order MAML", "metalab.maml", {"first_order": True}, _MAML,
     {(5, 1): (98.3, 0.5), (5, 5): (99.2, 0.2), (20, 1): (89.4, 0.5), (20, 5): (97.9, 0.1)}),
    ("Prototypical Networks", "metalab.protonet", {}, _PROTO,
     {(5, 1): (98.8, None), (5, 5): (99.7, None), (20, 1): (96.0, None), (20, 5): (98.9, None)}),
    ("Reptile", "metalab.reptile", {"transductive": False}, _REPTILE,
     {(5, 1): (95.39, 0.09), (5, 5): (98.90, 0.10), (20, 1): (88.14, 0.15), (20, 5): (96.65, 0.33)}),
    ("Reptile + transduction", "metalab.reptile", {"transductive": True}, _REPTILE,
     {(5, 1): (97.68, 0.04), (5, 5): (99.48, 0.06), (20, 1): (89.43, 0.14), (20, 5): (97.12, 0.32)}),
]

#: Every published Omniglot score the report knows, for ``DatasetSpec.published_results``.
PUBLISHED_RESULTS: tuple[PublishedResult, ...] = tuple(
    PublishedResult(method=method, citation=citation, value=accuracy, ci95=ci95, ways=ways, shots=shots,
                    dataset_params=dict(_PROTOCOL), algorithm=algorithm, algorithm_params=dict(variant))
    for method, algorithm, variant, citation, scores in _FEW_SHOT
    for (ways, shots), (accuracy, ci95) in scores.items()
) + (
    PublishedResult(method="people", citation=_LAKE, value=95.5, benchmark="lake20"),
    PublishedResult(method="Bayesian Program Learning", citation=_LAKE, value=96.7, benchmark="lake20"),
)

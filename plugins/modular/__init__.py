"""Modular meta-learning: a module library recombined per task by a searched structure (no TensorFlow import)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from metalab.api import AlgorithmSpec, Params, ReportPanel, hookimpl

METALAB_PLUGIN_API = "1.4"


class ModularParams(Params):
    """Modular meta-learning's parameters (Alet et al. 2018 search small libraries of small networks)."""

    num_modules: int = Field(4, ge=2, le=16, description="Modules in each slot's library.")
    num_slots: int = Field(2, ge=1, le=4, description="Slots composed in sequence; a structure picks one module each.")
    module_width: int = Field(40, ge=1, le=4096, description="Output units of every module (a dense ReLU block).")
    search: Literal["exhaustive", "greedy"] = Field(
        "exhaustive",
        description=(
            "How a task's structure is chosen on its support set: try all num_modules**num_slots structures, or "
            "coordinate descent (each slot in turn takes its best module); the paper uses simulated annealing."
        ),
    )
    greedy_sweeps: int = Field(2, ge=1, le=20, description="Greedy search only: sweeps over the slots.")
    max_structures: int = Field(
        256, ge=1, le=65_536, description="Largest structure space an exhaustive search may enumerate."
    )
    outer_lr: float = Field(1e-3, gt=0, le=1, description="Adam learning rate of the module weights.")
    meta_batch_size: int = Field(4, ge=1, le=1024, description="Tasks per update.")


SPEC = AlgorithmSpec(
    id="metalab.modular",
    title="Modular meta-learning",
    description=(
        "Splits the network into slots of interchangeable modules shared by all tasks. Each task searches the "
        "combination of modules (one per slot) that best fits its support set, and only the chosen modules learn "
        "from its query set; a new task is solved by recombining modules, without changing any weight. The "
        "report shows which modules the tasks chose."
    ),
    params=ModularParams,
    factory="metalab.plugins.modular.algorithm:ModularMetaLearner",
    paper=(
        "Alet, Lozano-Pérez and Kaelbling 2018, Modular meta-learning (CoRL), BounceGrad (Algorithm 1) with "
        "exhaustive or greedy structure search"
    ),
    task_kinds=("classification", "regression"),
)


@hookimpl
def metalab_register_algorithms() -> list[AlgorithmSpec]:
    return [SPEC]


@hookimpl
def metalab_report_panels(report_data: dict) -> list[ReportPanel]:
    """Heatmaps of the modules chosen per slot, in training and evaluation (modular runs only)."""
    if not report_data.get(SPEC.id):  # stored at the end of training: none when the run stopped early
        return []
    from .panels import module_usage_panel

    return [module_usage_panel(report_data[SPEC.id])]

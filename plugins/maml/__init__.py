"""MAML, Model-Agnostic Meta-Learning (registration only, no TensorFlow import)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from metalab.api import AlgorithmSpec, Params, hookimpl

METALAB_PLUGIN_API = "1.5"  # functional.mean (1.5): float64 losses stay float64 on JAX


class MAMLParams(Params):
    """MAML's parameters; defaults are those of Finn et al. 2017 for 5-way Omniglot."""

    inner_lr: float = Field(
        0.4, gt=0, le=100,
        description="Inner-loop step size alpha (0.4 on Omniglot; 0.01 on sinusoid and MiniImagenet).",
    )
    inner_steps: int = Field(1, ge=1, le=100, description="Inner gradient steps during meta-training.")
    eval_inner_steps: int = Field(3, ge=0, le=1000, title="Inner steps at meta-test",
                                  description="Inner gradient steps when adapting at test time.")
    meta_batch_size: int = Field(32, ge=1, le=1024, description="Tasks per meta-update.")
    outer_lr: float = Field(1e-3, gt=0, le=1, description="Meta step size beta (Adam).")
    first_order: bool = Field(
        False, description="First-order MAML: treat the inner gradients as constants (no second derivatives)."
    )
    transductive: bool = Field(
        True,
        description="Meta-test batch norm: true uses the statistics of the whole query batch (the MAML reference); "
        "false is inductive: each query is scored with the support set only, or with the per-step running "
        "statistics when per_step_bn is on.",
    )
    per_step_bn: bool = Field(
        False,
        title="Per-step batch norm (MAML++)",
        description="MAML++ per-step batch norm (Antoniou et al. 2019, BNWB + BNRS): every inner step has its own "
        "batch-norm scale, offset and running statistics (inner_steps + 1 sets; the last scores the adapted "
        "model, and test-time steps beyond it reuse it). Needs a backbone with MetaBatchNorm layers.",
    )
    vectorize_tasks: Literal["auto", "on", "off"] = Field(
        "auto",
        title="Vectorize tasks (JAX)",
        description="On Keras's JAX backend, meta-train the meta-batch's tasks as one batched program (jax.vmap: "
        "per-task fast weights as batched tensors, grouped convolutions) instead of one copy of the inner loop "
        "per task. Same meta-gradient; fewer, larger kernels: 6x faster on an H100 and far quicker to compile, "
        "but slower on CPUs. auto: on when the run's device is a GPU or TPU. on needs the JAX backend; "
        "TensorFlow never vectorizes (see task_loop). Not with per_step_bn, whose running statistics pass from task to task.",
    )
    task_loop: Literal["auto", "loop", "unroll"] = Field(
        "auto",
        title="Task loop (TensorFlow)",
        description="On TensorFlow, how the compiled step holds the meta-batch's tasks: loop traces one task and "
        "runs it in a loop (the step compiles in the time of one task, whatever the meta-batch size); unroll traces "
        "one copy of the inner loop per task (compile time grows with the meta-batch). Same meta-gradient. auto: "
        "loop from two tasks up. Not used with per_step_bn, whose running statistics pass from task to task, nor on JAX.",
    )
    task_window: int = Field(
        0, ge=0, le=1024,
        title="Tasks in flight (TensorFlow)",
        description="On TensorFlow, how many of the meta-batch's tasks may run at once: a task starts when the one "
        "this many places before it is over (its gradient added in), so the step holds the activations of this many tasks "
        "at most (its memory no longer depends on the executor's whim). 0: the process's inter-op threads (the "
        "training worker's cores); the meta-batch size or more: no limit. Same meta-gradient either way.",
    )


def _batch_norm_mode(params: MAMLParams) -> str:
    """How MAML normalises at meta-test time under ``params`` (the report prints it)."""
    if params.transductive:
        text = "transductive (query batch statistics)"
    elif params.per_step_bn:
        text = "inductive (per-step running statistics)"
    else:
        text = "inductive (no query's prediction depends on the other queries)"
    return text + ("; per-step batch norm (MAML++)" if params.per_step_bn else "")


SPEC = AlgorithmSpec(
    id="metalab.maml",
    title="MAML",
    description=(
        "Learns an initialisation from which a few gradient steps on a new task's support set fit it well. "
        "The meta-gradient differentiates through the inner steps (second order) unless first_order is set."
    ),
    params=MAMLParams,
    factory="metalab.plugins.maml.algorithm:MAML",
    paper="Finn, Abbeel and Levine 2017, Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks (ICML)",
    task_kinds=("classification", "regression"),
    batch_norm_mode=_batch_norm_mode,
    memory_model="maml",
)


@hookimpl
def metalab_register_algorithms() -> list[AlgorithmSpec]:
    return [SPEC]

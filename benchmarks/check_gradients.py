"""Checks that metalab and the PyTorch reference compute the same meta-gradients on the same weights and batch.

Run from the repository root::

    python benchmarks/check_gradients.py [--tasks 4] [--dtype float64] [--matmul exact|tf32] [--fd-directions 3]

Builds each speed workload's algorithm through metalab's plugins, copies its weights into
``benchmarks/reference_torch``'s Conv-4 (HWIO kernels to OIHW, Dense kernels transposed), computes one
meta-gradient (or Reptile update) on both sides from the same random batch (seed ``BATCH_SEED``), and prints the
relative difference ``|g_metalab - g_torch| / |g_torch|`` over all parameters and the worst single tensor. Exits
non-zero if the first exceeds ``--tolerance`` (the worst tensor: 10 times that): by default 1e-3 in float32 and
1e-8 in float64, for every workload. A float64 run is float64 throughout on both sides, constants and means
included (a float32 round trip of MAML's inner_lr alone shows as 1.3e-8, of Reptile's Adam beta2 as 5.7e-6; Keras's
JAX ``ops.mean``, which takes float64 in float32, as 1e-8 to 3e-6): measured 5e-15 to 6e-13 on the CPU, on both
backends.

In float64 it also checks metalab's gradient on its own, independently of torch, by central differences of the
function it is the gradient of (``finite_difference_target``: the meta-loss; for first-order MAML the query loss
at the adapted weights; for Reptile, whose update is no gradient, the support loss its inner loop descends) along
``--fd-directions`` directions (``finite_differences``: the gradient's own, then the gradient's plus a random unit
vector, seed ``DIRECTION_SEED``), with the same tolerance. ReLU and max-pool make these functions piecewise
smooth (a second-order MAML meta-loss even jumps), so the steps are tiny (1e-8 or 1e-7 in parameter norm) and the
float64 round-off of the loss sets the floor: measured 2e-14 to 6e-9 (the most for maml2_5steps, whose 5 inner
steps amplify round-off).

In float32 it also computes both sides in float64 on the same weights and prints each side's float32 error against
its own float64 result: an inner loop with a large step amplifies round-off (torch's float32 maml2_5steps
meta-gradient is 6.5e-3 from its float64 one), and a float32 difference above the tolerance passes when metalab's
error is no larger than torch's (on Keras's JAX backend only with ``JAX_ENABLE_X64=1``, without which float64 is
float32).
"""

from __future__ import annotations

import argparse
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from speed import IMAGE_SHAPE, WORKLOADS, _algorithm_params, parse_params, random_batches  # noqa: E402


#: Workloads whose meta-gradients are compared (omniglot_pipeline is maml2 on real data).
CHECKED = ("maml2", "maml1", "maml2_5steps", "reptile", "anil", "protonet", "protonet20")

#: Seed of the random batch both sides use, and of the finite-difference check's directions.
BATCH_SEED = 1
DIRECTION_SEED = 2

#: Finite-difference steps in parameter norm: for a second-order MAML meta-loss, which jumps, and for the other
#: functions checked, which have kinks only (see ``finite_difference_target``).
FD_STEP_JUMPS = 1e-8
FD_STEP = 1e-7


def to_torch_layout(name: str, value: np.ndarray) -> np.ndarray:
    if value.ndim == 4:  # conv kernel HWIO -> OIHW
        return value.transpose(3, 2, 0, 1)
    if value.ndim == 2:  # dense kernel (in, out) -> (out, in)
        return value.T
    return value


def metalab_algorithm(name: str, tasks: int, dtype: str, conv_bias: bool, params: dict | None = None,
                      theta: list[np.ndarray] | None = None) -> tuple[Any, Any]:
    """Workload ``name``'s metalab algorithm in ``dtype`` and its random batch: ``(algorithm, TaskBatch)``.

    The weights are the plugin's seeded initialisation, or ``theta`` (cast to ``dtype``) when given.
    """
    import keras

    from metalab.core.contract.specs import TaskBatch, TaskSpec
    from metalab.core.contract.manager import make_plugin_manager

    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)
    w = _workload(name, tasks)
    registry = make_plugin_manager(distributions={"metalab"})
    keras.utils.set_random_seed(0)
    backbone = registry.backbone("metalab.conv4")
    bparams = backbone.params(conv_bias=conv_bias)
    task = TaskSpec("classification", IMAGE_SHAPE, w["ways"], w["ways"], w["shots"], w["queries"], 1000,
                    lambda: backbone.factory(bparams, IMAGE_SHAPE))
    spec = registry.algorithm(f"metalab.{w['algorithm']}")
    algorithm = spec.factory(spec.params(**{**_algorithm_params(w), **(params or {})}), task)
    if theta is not None:
        for variable, value in zip(algorithm.trainable_variables, theta):
            variable.assign(value.astype(dtype))
    return algorithm, TaskBatch(*random_batches(w, count=1, seed=BATCH_SEED)[0])


def metalab_gradients(name: str, tasks: int, dtype: str, conv_bias: bool, params: dict | None = None,
                      theta: list[np.ndarray] | None = None) -> tuple[list[np.ndarray], list[np.ndarray], float]:
    """metalab's meta-gradient of workload ``name`` on its random batch: ``(gradients, weights, loss)``.

    The weights are the plugin's seeded initialisation, or ``theta`` (cast to ``dtype``) when given.
    """
    from metalab.core.engine import functional

    algorithm, batch = metalab_algorithm(name, tasks, dtype, conv_bias, params, theta)
    grads, metrics = algorithm.meta_gradients(batch)
    weights = [functional.to_numpy(v) for v in algorithm.trainable_variables]
    return [functional.to_numpy(g) for g in grads], weights, float(functional.to_numpy(metrics["loss"]))


def torch_gradients(name: str, tasks: int, dtype: str, conv_bias: bool,
                    theta: list[np.ndarray]) -> tuple[list[str], list[np.ndarray], float]:
    """The PyTorch reference's meta-gradient on weights ``theta`` (metalab's layout) and the same batch:
    ``(parameter names, gradients in torch's layout, loss)``."""
    import torch

    from reference_torch import Conv4
    from reference_torch.workloads import _tensors, anil_meta_loss, maml_meta_loss, protonet_loss, reptile_update

    w = _workload(name, tasks)
    tdtype = torch.float64 if dtype == "float64" else torch.float32
    net = Conv4(head=0 if w["algorithm"] == "protonet" else w["ways"], dtype=tdtype, conv_bias=conv_bias)
    if len(theta) != len(net.params):
        raise SystemExit(f"Parameter counts differ. Received: metalab={len(theta)}, torch={len(net.params)}")
    params = OrderedDict(
        (n, torch.tensor(to_torch_layout(n, t), dtype=tdtype, requires_grad=True)) for n, t in zip(net.params, theta)
    )
    batch = random_batches(w, count=1, seed=BATCH_SEED)[0]
    sx, sy, qx, qy = (a.to(tdtype) if a.is_floating_point() else a for a in _tensors(*batch))
    if w["algorithm"] in ("maml", "anil"):
        meta_loss = maml_meta_loss if w["algorithm"] == "maml" else anil_meta_loss
        loss, _ = meta_loss(net, params, sx, sy, qx, qy, inner_lr=w["inner_lr"], inner_steps=w["inner_steps"],
                            first_order=w["first_order"])
        theirs = torch.autograd.grad(loss, list(params.values()))
    elif w["algorithm"] == "protonet":
        loss, _ = protonet_loss(net, params, sx, sy, qx, qy, w["ways"])
        theirs = torch.autograd.grad(loss, list(params.values()))
    else:
        theirs, loss, _ = reptile_update(net, params, sx, sy, qx, qy, inner_lr=w["inner_lr"],
                                         inner_steps=w["inner_steps"])
    return list(net.params), [g.detach().numpy().astype(np.float64) for g in theirs], float(loss.detach())


def finite_difference_target(name: str, algorithm: Any, batch: Any) -> tuple[
        Callable[[list[np.ndarray]], float], list[np.ndarray], list[np.ndarray], str, float]:
    """What the finite-difference check differentiates for workload ``name``: ``(f, x0, gradient, what, step)``.

    ``gradient`` is metalab's, computed by autodiff, and should be the gradient of the scalar ``f`` at ``x0``:

    - second-order MAML, ANIL and ProtoNet: ``f`` is the meta-loss as a function of the weights (the loss that
      ``meta_gradients`` reports), and ``gradient`` the meta-gradient;
    - first-order MAML: its meta-gradient is the query loss's gradient at the adapted weights with the adaptation
      held fixed, so ``f`` is the mean query loss with every task's adapted weights shifted by the same ``x``
      (``x0`` = 0);
    - Reptile: its update is no gradient; ``f`` is the mean support loss, whose gradient (taken by
      ``functional.value_and_grad``, as its inner loop does) ``gradient`` is.

    ``step`` is the finite-difference step in parameter norm. ReLU and max-pool make every ``f`` here piecewise
    smooth, with kinks; a second-order MAML meta-loss even jumps, where a support-set activation changes sign
    (its inner gradient does: ANIL's inner loop sees fixed features and does not). Measured on these workloads:
    kinks show from steps of 1e-6, jumps from 1e-7 (2e-8 with 5 inner steps), while the float64 round-off of ``f``
    (1e-15 of its value, 2e-14 after 5 inner steps) costs 1e-9 to 6e-9 at a step of 1e-8. So the step is 1e-8 for a
    second-order MAML meta-loss and 1e-7 for the others.
    """
    from metalab.core.engine import functional
    from metalab.core.engine.episodic import batch_tensors

    variables = algorithm.trainable_variables
    theta = [functional.to_numpy(v) for v in variables]
    w = WORKLOADS[name]
    if w["algorithm"] == "reptile":
        sx, sy, _, _, tasks = batch_tensors(batch, "classification", algorithm.model.compute_dtype)

        def support_loss(weights: list[Any]) -> Any:
            return sum(algorithm.task_loss(weights, sx[t], sy[t])[0] for t in range(tasks)) / tasks

        _, grads = functional.value_and_grad(support_loss, algorithm.params())
        return (lambda x: float(functional.to_numpy(support_loss(x))), theta,
                [functional.to_numpy(g) for g in grads], "mean support loss", FD_STEP)
    grads = [functional.to_numpy(g) for g in algorithm.meta_gradients(batch)[0]]
    if w.get("first_order"):
        sx, sy, qx, qy, tasks = batch_tensors(batch, "classification", algorithm.model.compute_dtype)
        fast = [algorithm.adapt(algorithm.params(), sx[t], sy[t], w["inner_steps"], first_order=True)
                for t in range(tasks)]

        def shifted_query_loss(x: list[np.ndarray]) -> float:
            losses = [algorithm.task_loss([a + b for a, b in zip(fast[t], x)], qx[t], qy[t])[0] for t in range(tasks)]
            return float(functional.to_numpy(sum(losses) / tasks))

        return (shifted_query_loss, [np.zeros_like(t) for t in theta], grads, "query loss at the adapted weights",
                FD_STEP)

    def meta_loss(x: list[np.ndarray]) -> float:
        for variable, value in zip(variables, x):
            variable.assign(value)
        loss = float(functional.to_numpy(algorithm.meta_gradients(batch)[1]["loss"]))
        for variable, value in zip(variables, theta):
            variable.assign(value)
        return loss

    return meta_loss, theta, grads, "meta-loss", FD_STEP_JUMPS if w["algorithm"] == "maml" else FD_STEP


def finite_differences(f: Callable[[list[np.ndarray]], float], x0: list[np.ndarray], grad: list[np.ndarray],
                       directions: int, step: float, seed: int = DIRECTION_SEED) -> list[dict]:
    """Central differences of ``f`` at ``x0`` along unit directions ``d``, against ``<grad, d>``.

    The first direction is ``grad``'s own; each further one is ``grad``'s direction plus a random unit vector
    (seeded), normalised. Purely random directions cannot be resolved to 1e-8: a random unit direction's derivative
    is about ``|grad| / sqrt(parameters)`` (1/330 of ``|grad|`` for Conv-4), and the float64 round-off of ``f``
    then limits central differences to ~1e-6 at steps small enough to cross no kink.

    The derivative is ``D(h) = (f(h) - f(-h)) / 2h`` (``h = step``). ``D(2h)`` is computed too, as a diagnostic:
    where the two differ by more than round-off, a kink or jump lies within the step.

    Returns:
        Per direction: ``error`` ``|D(h) - <grad, d>| / |D(h)|``, ``smoothness`` ``|D(h) - D(2h)| / |D(h)|``,
        ``kind`` ("gradient" or "gradient+random").
    """
    rng = np.random.default_rng(seed)
    norm = lambda v: float(np.sqrt(sum(float(np.sum(a * a)) for a in v)))  # noqa: E731
    unit_grad = [g / norm(grad) for g in grad]
    results = []
    for k in range(directions):
        if k == 0:
            d = unit_grad
        else:
            r = [rng.standard_normal(x.shape) for x in x0]
            r_norm = norm(r)
            d = [u + v / r_norm for u, v in zip(unit_grad, r)]
            d = [v / norm(d) for v in d]
        analytic = sum(float(np.sum(g * v)) for g, v in zip(grad, d))
        h = step
        at = {t: f([x + t * v for x, v in zip(x0, d)]) for t in (h, -h, 2 * h, -2 * h)}
        d1 = (at[h] - at[-h]) / (2 * h)
        d2 = (at[2 * h] - at[-2 * h]) / (4 * h)
        results.append({"error": abs(d1 - analytic) / abs(d1), "smoothness": abs(d1 - d2) / abs(d1),
                        "kind": "gradient" if k == 0 else "gradient+random"})
    return results


def _workload(name: str, tasks: int) -> dict:
    w = dict(WORKLOADS[name], meta_batch=tasks)
    if w["algorithm"] == "anil":
        # A random head rather than the benchmark's zero head: every term of the head's second derivatives is
        # then non-zero, so the check covers more than the workload's first step needs.
        w["zero_head"] = False
    return w


def _float64_available() -> bool:
    """False on Keras's JAX backend without ``JAX_ENABLE_X64=1``, where float64 arrays silently become float32."""
    import keras

    if keras.backend.backend() != "jax":
        return True
    import jax

    return bool(jax.config.jax_enable_x64)


def relative_difference(names: list[str], ours: list[np.ndarray], theirs: list[np.ndarray]) -> tuple[float, float]:
    """``(|a - b| / |b| over all kept tensors, the worst single tensor's)``, both in torch's layout."""
    # Conv biases feed batch norm, which cancels any per-channel shift: their true gradient is 0 and both sides
    # give round-off (which Reptile's Adam, dividing by sqrt(v), even scales up to +-lr). They are left out.
    kept = [(a.astype(np.float64), b) for n, a, b in zip(names, ours, theirs)
            if not (n.startswith("conv") and n.endswith("bias"))]
    diff = np.sqrt(sum(float(np.sum((a - b) ** 2)) for a, b in kept))
    norm = np.sqrt(sum(float(np.sum(b**2)) for _, b in kept))
    worst = max(float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)) for a, b in kept)
    return diff / norm, worst


def check(name: str, tasks: int, dtype: str, conv_bias: bool = True,
          params: dict | None = None, fd_directions: int = 0) -> dict[str, Any]:
    """Both sides' meta-gradients on the same weights and batch: their relative difference (``total``, ``worst``)
    and that of the losses; in float32 also each side's distance from its own float64 meta-gradient on the same
    weights (``metalab_error``, ``torch_error``), which tells round-off that the two sides share from a real
    difference; in float64 with ``fd_directions``, metalab's gradient against central differences
    (``finite_differences``: a list, one entry per direction, and ``fd_of``: what was differenced)."""
    grads, theta, loss = metalab_gradients(name, tasks, dtype, conv_bias, params)
    names, theirs, their_loss = torch_gradients(name, tasks, dtype, conv_bias, theta)
    ours = [to_torch_layout(n, g) for n, g in zip(names, grads)]
    total, worst = relative_difference(names, ours, theirs)
    out = {"total": total, "worst": worst, "loss": abs(loss - their_loss) / abs(their_loss)}
    if dtype == "float32" and _float64_available():
        truth, _, _ = metalab_gradients(name, tasks, "float64", conv_bias, params, theta)
        _, their_truth, _ = torch_gradients(name, tasks, "float64", conv_bias, theta)
        out["metalab_error"] = relative_difference(names, ours, [to_torch_layout(n, g) for n, g in zip(names, truth)])[0]
        out["torch_error"] = relative_difference(names, theirs, their_truth)[0]
    if dtype == "float64" and fd_directions and _float64_available():
        algorithm, batch = metalab_algorithm(name, tasks, "float64", conv_bias, params, theta)
        f, x0, grad, out["fd_of"], out["fd_step"] = finite_difference_target(name, algorithm, batch)
        out["finite_differences"] = finite_differences(f, x0, grad, fd_directions, out["fd_step"])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="all", choices=["all", *CHECKED])
    parser.add_argument("--tasks", type=int, default=4, help="Tasks in the batch (fewer than the workload's 32).")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--conv-bias", default="off", choices=["on", "off"],
                        help="Both sides: convolutions with or without a bias (as speed.py --conv-bias; default off, "
                             "the conv4 plugin's default).")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="metalab: an algorithm parameter over the workload's, as speed.py's (e.g. "
                             "vectorize_tasks=on on the JAX backend).")
    parser.add_argument("--matmul", default="exact", choices=["exact", "tf32"],
                        help="metalab's float32 matrix products and convolutions: exact (a run's precision=float32, "
                             "the default) or TensorFloat-32 (precision=tf32; GPUs that have it, e.g. an H100).")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="Largest relative difference accepted, against torch and against finite differences "
                             "(default 1e-3 in float32, 1e-8 in float64).")
    parser.add_argument("--fd-directions", type=int, default=3,
                        help="float64: directions of the finite-difference check of metalab's gradient (the "
                             "gradient's own, then gradient+random ones; 0: no check).")
    args = parser.parse_args()
    params = parse_params(parser, args.param)
    from metalab.core.engine.devices import set_matmul_precision

    set_matmul_precision("tf32" if args.matmul == "tf32" else "float32")  # as build_session does for a run
    tolerance = args.tolerance or (1e-3 if args.dtype == "float32" else 1e-8)
    names = list(CHECKED) if args.workload == "all" else [args.workload]
    failed = False
    for name in names:
        tasks = 1 if WORKLOADS[name]["algorithm"] == "protonet" else args.tasks
        r = check(name, tasks, args.dtype, args.conv_bias == "on", params, args.fd_directions)
        ok = r["total"] < tolerance and r["worst"] < tolerance * 10
        verdict = "OK" if ok else "MISMATCH"
        extra = ""
        if "metalab_error" in r:
            # In float32 both sides drift from the exact meta-gradient by round-off that an inner loop can amplify;
            # where they differ by more than the tolerance, metalab passes if it is no further from its float64
            # meta-gradient (which the float64 check matches to torch's) than torch is from its own.
            ok = ok or r["metalab_error"] <= max(tolerance, r["torch_error"])
            verdict = "OK" if ok else "MISMATCH"
            extra = f"; against float64 on the same weights: metalab {r['metalab_error']:.2e}, torch {r['torch_error']:.2e}"
        if "finite_differences" in r:
            fd = r["finite_differences"]
            bad = [x for x in fd if x["error"] >= tolerance]
            if bad and ok:
                # Where D(h) and D(2h) disagree by more than the tolerance too, the function is not smooth at this
                # step (a kink or jump within it): the differences cannot tell, which is no pass either.
                smooth = any(x["smoothness"] < tolerance for x in bad)
                verdict = "MISMATCH" if smooth else "NOT SMOOTH (finite differences inconclusive)"
            ok = ok and not bad
            extra += (f"; finite differences of the {r['fd_of']} along {len(fd)} directions (seed {DIRECTION_SEED}): "
                      + ", ".join(f"{x['error']:.1e}" for x in fd)
                      + f" (step {r['fd_step']:.0e}; D(h) vs D(2h) within {max(x['smoothness'] for x in fd):.0e})")
        failed |= not ok
        import keras

        where = f"{keras.backend.backend()}, {args.matmul} matmul{' ' + str(params) if params else ''}"
        print(f"{name} ({args.dtype}, {tasks} tasks, batch seed {BATCH_SEED}, conv bias {args.conv_bias}, {where}): "
              f"relative difference of the "
              f"meta-gradient {r['total']:.2e} (worst tensor {r['worst']:.2e}); loss {r['loss']:.2e}{extra} "
              f"{verdict}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

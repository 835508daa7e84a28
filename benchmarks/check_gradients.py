"""Checks that metalab and the PyTorch reference compute the same meta-gradients on the same weights and batch.

Run from the repository root::

    python benchmarks/check_gradients.py [--tasks 4] [--dtype float64] [--matmul exact|tf32]

Builds each speed workload's algorithm through metalab's plugins, copies its weights into
``benchmarks/reference_torch``'s Conv-4 (HWIO kernels to OIHW, Dense kernels transposed), computes one
meta-gradient (or Reptile update) on both sides from the same random batch, and prints the relative difference
``|g_metalab - g_torch| / |g_torch|`` over all parameters and the worst single tensor. Exits non-zero if any
exceeds ``--tolerance``. In float32 it also computes both sides in float64 on the same weights and prints each
side's float32 error against its own float64 result: an inner loop with a large step amplifies round-off (torch's
float32 maml2_5steps meta-gradient is 6.5e-3 from its float64 one), and a float32 difference above the tolerance
passes when metalab's error is no larger than torch's (on Keras's JAX backend only with ``JAX_ENABLE_X64=1``,
without which float64 is float32).
"""

from __future__ import annotations

import argparse
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from speed import IMAGE_SHAPE, WORKLOADS, _algorithm_params, parse_params, random_batches  # noqa: E402


#: Workloads whose meta-gradients are compared (omniglot_pipeline is maml2 on real data).
CHECKED = ("maml2", "maml1", "maml2_5steps", "reptile", "anil", "protonet", "protonet20")


def to_torch_layout(name: str, value: np.ndarray) -> np.ndarray:
    if value.ndim == 4:  # conv kernel HWIO -> OIHW
        return value.transpose(3, 2, 0, 1)
    if value.ndim == 2:  # dense kernel (in, out) -> (out, in)
        return value.T
    return value


def metalab_gradients(name: str, tasks: int, dtype: str, conv_bias: bool, params: dict | None = None,
                      theta: list[np.ndarray] | None = None) -> tuple[list[np.ndarray], list[np.ndarray], float]:
    """metalab's meta-gradient of workload ``name`` on its random batch: ``(gradients, weights, loss)``.

    The weights are the plugin's seeded initialisation, or ``theta`` (cast to ``dtype``) when given.
    """
    import keras

    from metalab.core.engine import functional
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
    batch = random_batches(w, count=1, seed=1)[0]
    grads, metrics = algorithm.meta_gradients(TaskBatch(*batch))
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
    batch = random_batches(w, count=1, seed=1)[0]
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
          params: dict | None = None) -> dict[str, float]:
    """Both sides' meta-gradients on the same weights and batch: their relative difference (``total``, ``worst``)
    and that of the losses; in float32 also each side's distance from its own float64 meta-gradient on the same
    weights (``metalab_error``, ``torch_error``), which tells round-off that the two sides share from a real
    difference."""
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
                        help="Largest relative difference accepted (default 1e-3 in float32, 1e-5 in float64).")
    args = parser.parse_args()
    params = parse_params(parser, args.param)
    from metalab.core.engine.devices import set_matmul_precision

    set_matmul_precision("tf32" if args.matmul == "tf32" else "float32")  # as build_session does for a run
    tolerance = args.tolerance or (1e-3 if args.dtype == "float32" else 1e-5)
    names = list(CHECKED) if args.workload == "all" else [args.workload]
    failed = False
    for name in names:
        tasks = 1 if WORKLOADS[name]["algorithm"] == "protonet" else args.tasks
        r = check(name, tasks, args.dtype, args.conv_bias == "on", params)
        ok = r["total"] < tolerance and r["worst"] < tolerance * 10
        extra = ""
        if "metalab_error" in r:
            # In float32 both sides drift from the exact meta-gradient by round-off that an inner loop can amplify;
            # where they differ by more than the tolerance, metalab passes if it is no further from its float64
            # meta-gradient (which the float64 check matches to torch's) than torch is from its own.
            ok = ok or r["metalab_error"] <= max(tolerance, r["torch_error"])
            extra = f"; against float64 on the same weights: metalab {r['metalab_error']:.2e}, torch {r['torch_error']:.2e}"
        failed |= not ok
        import keras

        where = f"{keras.backend.backend()}, {args.matmul} matmul{' ' + str(params) if params else ''}"
        print(f"{name} ({args.dtype}, {tasks} tasks, conv bias {args.conv_bias}, {where}): relative difference of the "
              f"meta-gradient {r['total']:.2e} (worst tensor {r['worst']:.2e}); loss {r['loss']:.2e}{extra} "
              f"{'OK' if ok else 'MISMATCH'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Conv-4 and the meta-learning steps of the speed workloads, written as a PyTorch user would write them.

Parameters are an ordered dict of tensors; the network is a pure function of them (``Conv4.forward``), so MAML's
fast weights are plain tensors and ``torch.autograd.grad(..., create_graph=True)`` gives exact second-order
meta-gradients. Batch norm always uses the statistics of the batch (transductive, as metalab and the MAML
reference code) with ``eps=1e-3`` (metalab's ``MetaBatchNorm`` default).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

BN_EPS = 1e-3


class Conv4:
    """Conv-4 (64 filters, 3x3 same conv, batch norm, ReLU, 2x2 max-pool) plus an optional linear head.

    Args:
        in_channels: Channels of the NCHW inputs.
        filters: Filters of every convolution.
        blocks: Conv blocks.
        features: Flattened embedding size (``filters`` for 28x28 inputs and 4 blocks).
        head: Outputs of the linear head; 0 for none (ProtoNet's embedding).
        seed: Seed of the initial weights.
        dtype: Parameter dtype.
        conv_bias: Give each convolution a bias (as metalab's ``conv_bias``; batch norm cancels it either way).
    """

    def __init__(self, in_channels=1, filters=64, blocks=4, features=64, head=5, seed=0, dtype=torch.float32,
                 conv_bias=True, device=None):
        g = torch.Generator().manual_seed(seed)
        params = OrderedDict()
        c = in_channels
        for i in range(blocks):
            bound = (6.0 / (9 * c + 9 * filters)) ** 0.5  # Glorot uniform, as Keras's default
            params[f"conv{i}.weight"] = (torch.rand(filters, c, 3, 3, generator=g, dtype=dtype) * 2 - 1) * bound
            if conv_bias:
                params[f"conv{i}.bias"] = torch.zeros(filters, dtype=dtype)
            params[f"bn{i}.weight"] = torch.ones(filters, dtype=dtype)
            params[f"bn{i}.bias"] = torch.zeros(filters, dtype=dtype)
            c = filters
        self.blocks = blocks
        self.head = head
        if head:
            bound = (6.0 / (features + head)) ** 0.5
            params["head.weight"] = (torch.rand(head, features, generator=g, dtype=dtype) * 2 - 1) * bound
            params["head.bias"] = torch.zeros(head, dtype=dtype)
        self.device = torch.device(device or "cpu")
        params = OrderedDict((name, p.to(self.device)) for name, p in params.items())  # drawn on the CPU: same weights
        for p in params.values():
            p.requires_grad_(True)
        self.params = params
        # Batch norm's running moments (used by inference-mode calls only; the training steps never move them).
        self.running = [(torch.zeros(filters, dtype=dtype, device=self.device),
                         torch.ones(filters, dtype=dtype, device=self.device)) for _ in range(blocks)]

    def features(self, params: "OrderedDict[str, torch.Tensor]", x: torch.Tensor, training: bool = True) -> torch.Tensor:
        """Returns the flattened conv-4 embedding of NCHW ``x`` under ``params`` (the head is not applied).

        ``training``: batch norm on the batch's statistics (as every training step); else on the running moments.
        """
        for i in range(self.blocks):
            x = F.conv2d(x, params[f"conv{i}.weight"], params.get(f"conv{i}.bias"), padding=1)
            mean, var = self.running[i] if not training else (None, None)
            x = F.batch_norm(x, mean, var, params[f"bn{i}.weight"], params[f"bn{i}.bias"], training=training,
                             eps=BN_EPS)
            x = F.max_pool2d(F.relu(x), 2)
        return x.flatten(1)

    def forward(self, params: "OrderedDict[str, torch.Tensor]", x: torch.Tensor, training: bool = True) -> torch.Tensor:
        """Returns logits (or embeddings without a head) for NCHW ``x`` under ``params``."""
        x = self.features(params, x, training)
        if self.head:
            x = F.linear(x, params["head.weight"], params["head.bias"])
        return x


def maml_meta_loss(net: Conv4, params, sx, sy, qx, qy, *, inner_lr: float, inner_steps: int, first_order: bool):
    """Returns the mean query loss and accuracy after adapting to each task (a Python loop over tasks).

    ``sx`` is ``[T, N, C, H, W]``; the result is differentiable in ``params`` to second order unless
    ``first_order``.
    """
    names = list(params)
    losses, accs = [], []
    for t in range(sx.shape[0]):
        fast = params
        for _ in range(inner_steps):
            loss = F.cross_entropy(net.forward(fast, sx[t]), sy[t])
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
            fast = OrderedDict((n, w - inner_lr * g) for n, w, g in zip(names, fast.values(), grads))
        logits = net.forward(fast, qx[t])
        losses.append(F.cross_entropy(logits, qy[t]))
        accs.append((logits.argmax(-1) == qy[t]).float().mean())
    return torch.stack(losses).mean(), torch.stack(accs).mean()


def anil_meta_loss(net: Conv4, params, sx, sy, qx, qy, *, inner_lr: float, inner_steps: int, first_order: bool):
    """Returns ANIL's mean query loss and accuracy: only the head adapts, on features computed once per set.

    As Raghu et al. 2019 (and learn2learn's ANIL example): each task's support and query sets go through the
    backbone once; the head's fast weights take ``inner_steps`` gradient steps on the support features with
    ``create_graph=True`` (second order through the head; the backbone reaches the loss through the features).
    """
    head = [params["head.weight"], params["head.bias"]]
    losses, accs = [], []
    for t in range(sx.shape[0]):
        fs, fq = net.features(params, sx[t]), net.features(params, qx[t])
        weight, bias = head
        for _ in range(inner_steps):
            loss = F.cross_entropy(F.linear(fs, weight, bias), sy[t])
            gw, gb = torch.autograd.grad(loss, [weight, bias], create_graph=not first_order)
            weight, bias = weight - inner_lr * gw, bias - inner_lr * gb
        logits = F.linear(fq, weight, bias)
        losses.append(F.cross_entropy(logits, qy[t]))
        accs.append((logits.argmax(-1) == qy[t]).float().mean())
    return torch.stack(losses).mean(), torch.stack(accs).mean()


def protonet_loss(net: Conv4, params, sx, sy, qx, qy, ways: int):
    """Returns the mean query cross-entropy and accuracy of Prototypical Networks over the episodes."""
    losses, accs = [], []
    for t in range(sx.shape[0]):
        n = sx.shape[1]
        emb = net.forward(params, torch.cat([sx[t], qx[t]]))
        onehot = F.one_hot(sy[t], ways).to(emb.dtype)
        protos = onehot.t() @ emb[:n] / onehot.sum(0, keepdim=True).t()
        logits = -((emb[n:, None] - protos[None]) ** 2).sum(-1)
        losses.append(F.cross_entropy(logits, qy[t]))
        accs.append((logits.argmax(-1) == qy[t]).float().mean())
    return torch.stack(losses).mean(), torch.stack(accs).mean()


def reptile_update(net: Conv4, params, sx, sy, qx, qy, *, inner_lr: float, inner_steps: int):
    """Returns ``theta - mean_i phi_i`` (Reptile's update direction), query loss and accuracy after adaptation.

    The inner optimizer is Adam with beta1 = 0 (as metalab's Reptile and the paper), fresh per task.
    """
    beta2, eps = 0.999, 1e-8
    names = list(params)
    theta = [p.detach() for p in params.values()]
    sums = [torch.zeros_like(p) for p in theta]
    losses, accs = [], []
    for t in range(sx.shape[0]):
        w = [p.clone().requires_grad_(True) for p in theta]
        v = [torch.zeros_like(p) for p in theta]
        for step in range(1, inner_steps + 1):
            fast = OrderedDict(zip(names, w))
            loss = F.cross_entropy(net.forward(fast, sx[t]), sy[t])
            grads = torch.autograd.grad(loss, w)
            with torch.no_grad():
                lr = inner_lr * (1 - beta2**step) ** 0.5
                new = []
                for wi, gi, vi in zip(w, grads, v):
                    vi.mul_(beta2).addcmul_(gi, gi, value=1 - beta2)
                    new.append((wi - lr * gi / (vi.sqrt() + eps)).requires_grad_(True))
                w = new
        with torch.no_grad():
            logits = net.forward(OrderedDict(zip(names, w)), qx[t])
            losses.append(F.cross_entropy(logits, qy[t]))
            accs.append((logits.argmax(-1) == qy[t]).float().mean())
            for s, wi in zip(sums, w):
                s.add_(wi)
    n = sx.shape[0]
    return [p - s / n for p, s in zip(theta, sums)], torch.stack(losses).mean(), torch.stack(accs).mean()


def make_step(workload: dict, net: Conv4) -> Callable[..., dict]:
    """Returns ``step(sx, sy, qx, qy) -> metrics`` doing one meta-update of ``workload`` on ``net.params``.

    Inputs are NumPy arrays as metalab's sampler gives them (``[T, N, H, W, C]`` float32, int labels); they are
    converted to NCHW tensors inside the step, as a user's training loop would.
    """
    algo = workload["algorithm"]
    params = net.params
    if algo == "reptile":
        lr = torch.tensor(1.0, device=net.device)  # the outer step size (epsilon); its schedule costs nothing

        def step(sx, sy, qx, qy):
            sx, sy, qx, qy = _tensors(sx, sy, qx, qy, net.device)
            update, loss, acc = reptile_update(net, params, sx, sy, qx, qy, inner_lr=workload["inner_lr"],
                                               inner_steps=workload["inner_steps"])
            with torch.no_grad():
                for p, u in zip(params.values(), update):
                    p.sub_(lr * u)
            return {"loss": loss.item(), "accuracy": acc.item()}

        return step

    optimizer = torch.optim.Adam(params.values(), lr=workload["outer_lr"])

    def step(sx, sy, qx, qy):
        sx, sy, qx, qy = _tensors(sx, sy, qx, qy, net.device)
        if algo in ("maml", "anil"):
            meta_loss = maml_meta_loss if algo == "maml" else anil_meta_loss
            loss, acc = meta_loss(net, params, sx, sy, qx, qy, inner_lr=workload["inner_lr"],
                                  inner_steps=workload["inner_steps"], first_order=workload["first_order"])
        else:
            loss, acc = protonet_loss(net, params, sx, sy, qx, qy, workload["ways"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"loss": loss.item(), "accuracy": acc.item()}

    return step


def make_evaluate(workload: dict, net: Conv4) -> Callable[..., np.ndarray]:
    """Returns ``evaluate(sx, sy, qx, qy) -> accuracies [T]``: meta-testing, one episode after another.

    MAML adapts a copy of the weights with ``eval_inner_steps`` first-order steps on the support set and scores the
    query set after each step (the adaptation curve metalab reports), with batch statistics (transductive).
    ProtoNet embeds support and query together with batch norm on its running moments (inductive) under
    ``torch.no_grad``. Inputs are NumPy arrays, as for :func:`make_step`.
    """
    algo = workload["algorithm"]
    names = list(net.params)

    def maml_episode(sx, sy, qx, qy):
        steps, lr = workload["eval_inner_steps"], workload["inner_lr"]
        fast = [p.detach().requires_grad_(True) for p in net.params.values()]
        curve = []
        for step in range(steps + 1):
            with torch.no_grad():
                logits = net.forward(OrderedDict(zip(names, fast)), qx)
                curve.append((logits.argmax(-1) == qy).float().mean())
            if step == steps:
                return curve[-1]
            loss = F.cross_entropy(net.forward(OrderedDict(zip(names, fast)), sx), sy)
            grads = torch.autograd.grad(loss, fast)
            fast = [(w - lr * g).detach().requires_grad_(True) for w, g in zip(fast, grads)]

    def protonet_episode(sx, sy, qx, qy):
        ways, n = workload["ways"], sx.shape[0]
        with torch.no_grad():
            emb = net.forward(net.params, torch.cat([sx, qx]), training=False)
            onehot = F.one_hot(sy, ways).to(emb.dtype)
            protos = onehot.t() @ emb[:n] / onehot.sum(0, keepdim=True).t()
            logits = -((emb[n:, None] - protos[None]) ** 2).sum(-1)
            return (logits.argmax(-1) == qy).float().mean()

    episode = maml_episode if algo == "maml" else protonet_episode

    def evaluate(sx, sy, qx, qy):
        sx, sy, qx, qy = _tensors(sx, sy, qx, qy, net.device)
        return torch.stack([episode(sx[t], sy[t], qx[t], qy[t]) for t in range(sx.shape[0])]).cpu().numpy()

    return evaluate


def _tensors(sx, sy, qx, qy, device=None):
    def images(a):
        return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(a, np.float32), -1, 2))).to(device)

    def labels(a):
        return torch.from_numpy(np.asarray(a, np.int64)).to(device)

    return images(sx), labels(sy), images(qx), labels(qy)

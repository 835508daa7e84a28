"""MAML for reinforcement learning (Finn, Abbeel and Levine 2017, section 5.3) and its pretrained-policy baseline.

For each task ``T_i`` of a meta-batch, ``shots`` episodes of the policy ``pi_theta`` give the inner loop's data:

    theta'_i = theta - alpha * grad_theta L_PG(theta; episodes of pi_theta in T_i)        (one or more steps)
    L_PG(w) = - mean over steps of log pi_w(a_t | s_t) * A_t

with ``A_t`` the advantages against a linear baseline fitted to the task's own episodes (Duan et al. 2016), as in
the paper. ``queries`` episodes of each adapted policy ``pi_theta'_i`` then give the outer objective, a
likelihood-ratio surrogate of the adapted policies' returns differentiated through the inner step (second order,
unless ``first_order``):

    L_out(theta) = - mean_i mean_t min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t),
    r_t = pi_theta'_i(theta)(a_t | s_t) / pi_theta'_i,old(a_t | s_t)

The paper takes the outer step with TRPO; here it is PPO's clipped surrogate (Schulman et al. 2017) with Adam,
``ppo_epochs`` updates per gathered batch (with one, the clip is inactive and the step is the plain policy gradient
through the adaptation). The policy is the run's backbone with a linear head: a Gaussian with a learned,
state-independent log standard deviation for continuous actions (meta-learned and adapted like the weights), or a
softmax over discrete actions.

The baseline (``metalab.pretrained_policy``) trains one policy on the episodes of all training tasks with the same
surrogate and no inner step (the paper's "pretrained" comparison); at meta-test time it adapts with the same
policy-gradient steps as MAML.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from keras import ops

from metalab.api import TaskBatch, TaskSpec, functional
from metalab.api.algorithms import MetaAlgorithm
from metalab.api.episodic import build_model
from metalab.api.rl import Rollouts, Trajectories, linear_baseline_advantages


class MAMLRL(MetaAlgorithm):
    """MAML with a policy-gradient inner loop and a clipped-surrogate outer step.

    Args:
        params: A validated ``MAMLRLParams``.
        task: An environment task (``task.kind == "environment"``): observations of ``task.input_shape``,
            ``task.output_dim`` actions of ``task.action_kind``.
    """

    #: Whether training adapts (MAML) or trains one policy on every task's episodes (the pretrained baseline).
    meta = True

    def __init__(self, params: Any, task: TaskSpec):
        super().__init__(params, task)
        self.discrete = task.action_kind == "discrete"
        self.model = build_model(task, "policy")
        self.fmodel = functional.FunctionalModel(self.model)
        dtype = keras.backend.standardize_dtype(self.model.trainable_variables[0].dtype)  # float64 runs: float64
        self.log_std = keras.Variable(np.full((task.output_dim,), math.log(params.init_std)), dtype=dtype,
                                      name="log_std", trainable=True)
        self.track(self.model, [] if self.discrete else [self.log_std])
        self.updates_per_batch = int(params.ppo_epochs)
        self.eval_steps = int(params.eval_steps)
        self._forward = _per_task_count(self._one_output, self.variables)
        self._adapt = _per_task_count(self._one_adapt, self.variables)
        self._logp = _per_task_count(self._one_logp, self.variables)

    # -- the policy ------------------------------------------------------------------------------------------

    def _weights(self) -> list[Any]:
        return self.fmodel.params() + ([] if self.discrete else [ops.convert_to_tensor(self.log_std)])

    def _split(self, weights: list[Any]) -> tuple[list[Any], Any]:
        return (weights, None) if self.discrete else (weights[:-1], weights[-1])

    def log_prob(self, weights: list[Any], obs: Any, actions: Any) -> Any:
        """``log pi_w(a | s)`` of each row of ``obs`` ``[N, *obs]`` and ``actions``, ``[N]``."""
        net, log_std = self._split(weights)
        out = self.fmodel(net, obs, training=True)
        if self.discrete:
            logp = out - ops.logsumexp(out, axis=-1, keepdims=True)
            return ops.sum(logp * ops.one_hot(ops.cast(actions, "int32"), self.task.output_dim), axis=-1)
        z = (ops.cast(actions, out.dtype) - out) / ops.exp(log_std)
        return -0.5 * ops.sum(z * z + 2.0 * log_std + math.log(2.0 * math.pi), axis=-1)

    def inner_loss(self, weights: list[Any], obs: Any, actions: Any, adv: Any, mask: Any) -> Any:
        """The policy-gradient loss ``-sum(mask * log pi * A) / sum(mask)`` of one task's episodes."""
        logp = self.log_prob(weights, obs, actions)
        return -ops.sum(logp * adv * mask) / ops.maximum(ops.sum(mask), 1.0)

    def inner_step(self, weights: list[Any], obs: Any, actions: Any, adv: Any, mask: Any, *,
                   first_order: bool) -> list[Any]:
        """One policy-gradient step of size ``inner_lr``; differentiable in ``weights`` unless ``first_order``."""
        _, grads = functional.value_and_grad(lambda w: self.inner_loss(w, obs, actions, adv, mask), weights)
        if first_order:
            grads = functional.stop_gradient(grads)
        lr = self.config.inner_lr
        return [w - ops.convert_to_tensor(lr, dtype=w.dtype) * g for w, g in zip(weights, grads)]

    def _one_output(self, weights: list[Any], obs: Any) -> Any:
        """One task's policy output (means or logits) on its observations."""
        return self.fmodel(self._split(weights)[0], obs, training=True)

    def _one_adapt(self, weights: list[Any], obs: Any, actions: Any, adv: Any, mask: Any) -> list[Any]:
        """One task's weights after one inner step on its episodes (flattened over episodes and steps)."""
        adv, mask = ops.cast(adv, weights[0].dtype), ops.cast(mask, weights[0].dtype)
        return self.inner_step(weights, obs, actions, adv, mask, first_order=True)

    def _one_logp(self, weights: list[Any], obs: Any, actions: Any) -> Any:
        return self.log_prob(weights, obs, actions)

    def _tile(self, num_tasks: int) -> list[np.ndarray]:
        return [np.repeat(functional.to_numpy(w)[None], num_tasks, axis=0) for w in self._weights()]

    def policy(self, stacked: list[Any], rng: np.random.Generator):
        """The rollout policy of per-task weights ``stacked``: observations ``[T, E, *obs]`` to sampled actions."""
        log_std = None if self.discrete else np.asarray(functional.to_numpy(stacked[-1]))

        def act(observations: np.ndarray) -> np.ndarray:
            out = np.asarray(functional.to_numpy(self._forward(stacked, observations.astype(np.float32))))
            if self.discrete:
                gumbel = -np.log(-np.log(rng.uniform(1e-12, 1.0, size=out.shape)))
                return np.argmax(out + gumbel, axis=-1).astype(np.int32)
            return (out + np.exp(log_std)[:, None, :] * rng.normal(size=out.shape)).astype(np.float32)

        return act

    # -- data ------------------------------------------------------------------------------------------------

    def _flat(self, traj: Trajectories) -> tuple[np.ndarray, ...]:
        num_tasks = traj.rewards.shape[0]
        adv = linear_baseline_advantages(traj, float(self.config.gamma), gae_lambda=float(self.config.gae_lambda))
        obs = traj.observations.reshape(num_tasks, -1, *traj.observations.shape[3:])
        actions = traj.actions.reshape(num_tasks, -1, *traj.actions.shape[3:])
        return obs, actions, adv.reshape(num_tasks, -1), traj.mask.reshape(num_tasks, -1)

    @property
    def train_steps(self) -> int:
        """Inner steps during meta-training: ``inner_steps`` for MAML, none for the pretrained baseline."""
        return int(self.config.inner_steps) if self.meta else 0

    def _adapt_steps(self, stacked: list[Any], tasks: list[Any], rollouts: Rollouts,
                     steps: int) -> tuple[list[Any], list[Trajectories], tuple[np.ndarray, ...] | None]:
        """Adapts ``stacked`` for ``steps`` steps, each on ``shots`` fresh episodes of the policy so far.

        Returns:
            The adapted weights, the episodes each policy ran, and the arrays of the last step's.
        """
        runs, data = [], None
        for _ in range(steps):
            traj = rollouts.run(tasks, self.policy(stacked, rollouts.rng), int(self.task.shots))
            runs.append(traj)
            data = self._flat(traj)
            stacked = self._adapt(stacked, *data)
        return stacked, runs, data

    def _adapted_runs(self, tasks: list[Any], rollouts: Rollouts, steps: int) -> list[Trajectories]:
        """The meta-test protocol: ``steps`` adaptation steps from the meta-learned weights, then ``queries`` fresh
        episodes of the adapted policy; the episodes of policies 0..``steps``."""
        stacked, runs, _ = self._adapt_steps(self._tile(len(tasks)), tasks, rollouts, steps)
        return [*runs, rollouts.run(tasks, self.policy(stacked, rollouts.rng), int(self.task.queries))]

    def gather(self, tasks: list[Any], rollouts: Rollouts) -> TaskBatch:
        """Runs the support episodes, adapts (first order, for acting), runs the query episodes of the adapted
        policies; the arrays of both, with advantages, masks and the query actions' log-probabilities."""
        theta = self._tile(len(tasks))
        steps = self.train_steps
        if steps:
            adapted, runs, support = self._adapt_steps(theta, tasks, rollouts, 1)
            before = runs[0].returns()
            for _ in range(steps - 1):  # further steps adapt on the same support episodes, as training will
                adapted = self._adapt(adapted, *support)
        else:
            adapted, support = theta, None
        traj = rollouts.run(tasks, self.policy(adapted, rollouts.rng), int(self.task.queries))
        query = self._flat(traj)
        after = traj.returns()
        if support is None:  # the baseline: no inner loop; its data is the query episodes twice, for one shape
            support, before = query, after
        old_logp = np.asarray(functional.to_numpy(self._logp(adapted, query[0], query[1])), np.float32)
        extras = {"support_adv": support[2], "support_mask": support[3], "query_adv": query[2],
                  "query_mask": query[3], "query_logp": old_logp,
                  "returns": np.stack([before, after], axis=1).astype(np.float32)}
        return TaskBatch(support[0], support[1], query[0], query[1], extras)

    # -- training --------------------------------------------------------------------------------------------

    def meta_gradients(self, batch: TaskBatch) -> tuple[list[Any], dict[str, Any]]:
        """The gradient of the clipped surrogate of the adapted policies, through the inner steps."""
        steps = self.train_steps
        eps = float(self.config.clip)
        ex = batch.extras

        def task_loss(theta, sx, sy, sadv, smask, qx, qy, qadv, qmask, qlogp):
            fast = list(theta)
            for _ in range(steps):
                fast = self.inner_step(fast, sx, sy, sadv, smask, first_order=self.config.first_order)
            ratio = ops.exp(self.log_prob(fast, qx, qy) - qlogp)
            surrogate = ops.minimum(ratio * qadv, ops.clip(ratio, 1.0 - eps, 1.0 + eps) * qadv)
            loss = -ops.sum(surrogate * qmask) / ops.maximum(ops.sum(qmask), 1.0)
            return loss, ops.sum(ops.abs(ratio - 1.0) * qmask) / ops.maximum(ops.sum(qmask), 1.0)

        # Advantages, masks and log-probabilities in the weights' dtype (float64 runs stay float64).
        dtype = keras.backend.standardize_dtype(self.trainable_variables[0].dtype)
        tensors = [ops.convert_to_tensor(batch.support_x), ops.convert_to_tensor(batch.support_y),
                   *(ops.cast(a, dtype) for a in (ex["support_adv"], ex["support_mask"])),
                   ops.convert_to_tensor(batch.query_x), ops.convert_to_tensor(batch.query_y),
                   *(ops.cast(a, dtype) for a in (ex["query_adv"], ex["query_mask"], ex["query_logp"]))]
        (loss, drift), grads = functional.mean_task_gradients(task_loss, self._weights(), *tensors)
        returns = ops.convert_to_tensor(ex["returns"])
        return grads, {"loss": loss, "ratio_drift": drift, "return_before": ops.mean(returns[:, 0]),
                       "return_after": ops.mean(returns[:, 1])}

    # -- meta-test -------------------------------------------------------------------------------------------

    def adaptation_returns(self, tasks: list[Any], rollouts: Rollouts, steps: int) -> np.ndarray:
        """Each task's average return after 0..``steps`` policy-gradient steps (``shots`` fresh episodes each).

        The return of policy ``k < steps`` is that of the episodes it adapts on; the last policy runs ``queries``
        fresh episodes.
        """
        return np.stack([traj.returns() for traj in self._adapted_runs(tasks, rollouts, steps)], axis=1)

    def adapted_trajectories(self, task: Any, rollouts: Rollouts, steps: int) -> list[Trajectories]:
        """One task's episodes after 0..``steps`` adaptation steps, as the meta-test runs them (the report's
        trajectory plot; RL Predict)."""
        return self._adapted_runs([task], rollouts, steps)


class PretrainedPolicy(MAMLRL):
    """One policy trained on every training task's episodes, adapted at meta-test time like MAML's."""

    meta = False


def _per_task_count(fn: Any, variables: list[Any]) -> Any:
    """``fn(weights, *arrays)`` of one task, compiled over stacked per-task weights and arrays (one graph per count).

    The task loop is unrolled with the count known when tracing: compiled graphs may generalise the leading axis.
    """
    graphs: dict[int, Any] = {}

    def call(stacked: list[Any], *arrays: Any) -> Any:
        n = int(np.shape(arrays[0])[0])
        if n not in graphs:
            def run(stacked, *arrays):
                outs = [fn([w[i] for w in stacked], *(a[i] for a in arrays)) for i in range(n)]
                return keras.tree.map_structure(lambda *xs: ops.stack(xs), *outs)

            graphs[n] = functional.compile(run, variables=variables)
        return graphs[n](list(stacked), *arrays)

    return call

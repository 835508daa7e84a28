"""One sweep trial, inside its Ray worker: an ordinary metalab run trained by the ordinary runner against a
scratch run store on the worker's own disk, every logged metric reported back through ``tune.report`` and every
checkpoint handed to Ray Tune's storage, so a trial on another node never needs the driver's SQLite file."""

from __future__ import annotations

import json
import math
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

from metalab.core.store import RunStore

#: Files of a scratch run folder that travel with a checkpoint (the runner's and the report's files; not logs).
_SKIPPED_FILES = ("worker.log",)


def trial_assignments(spec: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """The ``--set`` values of the trial Ray Tune started with ``config``: the sweep's fixed values, the grid point
    of its slot, the values Tune sampled, and (for a trial resumed from an earlier attempt) the values it had."""
    slot = int(config["slot"])
    points = spec["points"] or [{}]
    return {**spec["assignments"], **points[slot % len(points)], **dict(config.get("params") or {}),
            **dict(spec.get("fixed", {}).get(str(slot)) or {})}


class ReportingStore(RunStore):
    """A scratch run store that also reports to Ray Tune what the runner writes into it.

    Metrics are gathered as they are logged and reported together whenever the objective is among them (Ray Tune
    wants the objective in every report); a checkpoint the runner saved since the last report goes with it. At the
    run's last step (``final_step``) nothing is reported until the outcome: the meta-test still has to run, and an
    early-stopping scheduler whose rung falls on the last step (ASHA puts one at ``max_t``) would otherwise stop
    the trial there and lose it.
    """

    def __init__(self, path: Path, runs_dir: Path, *, objective: str, tune_metric: str,
                 final_step: int | None = None):
        super().__init__(path, runs_dir)
        self.objective, self.tune_metric, self.final_step = objective, tune_metric, final_step
        self.pending: list[tuple[int, dict[str, float]]] = []
        self.last_objective = math.nan
        self.checkpoint_step: int | None = None
        self.seq = 0
        self.step = 0

    def log_metrics(self, run_id: str, step: int, values: dict[str, float]) -> None:
        super().log_metrics(run_id, step, values)
        self.pending.append((int(step), {k: float(v) for k, v in values.items()}))
        self.step = max(self.step, int(step))
        if self.objective in values:
            self.last_objective = float(values[self.objective])
            if self.final_step is None or int(step) < self.final_step:
                self.report(run_id)

    def add_artifact(self, run_id: str, name: str, kind: str, path: Any, step: int | None = None) -> None:
        super().add_artifact(run_id, name, kind, path, step=step)
        if name == "checkpoint":
            self.checkpoint_step = step

    def report(self, run_id: str, outcome: dict[str, Any] | None = None) -> None:
        """Reports the gathered metrics (and the outcome, at the end) with the newest checkpoint, if any is new."""
        from ray import tune

        self.seq += 1
        metrics = {self.tune_metric: self.last_objective, "step": self.step, "metalab_seq": self.seq,
                   "metalab_metrics": json.dumps(self.pending)}
        if outcome is not None:
            metrics["metalab_outcome"] = json.dumps(outcome, default=str)
        self.pending = []
        folder = None
        if self.checkpoint_step is not None or outcome is not None:
            folder = Path(tempfile.mkdtemp(prefix="metalab-ckpt-"))
            for item in self.run_dir(run_id).iterdir():
                if item.is_file() and item.name not in _SKIPPED_FILES and not item.name.startswith("."):
                    shutil.copy2(item, folder / item.name)
            self.checkpoint_step = None
        try:
            checkpoint = tune.Checkpoint.from_directory(str(folder)) if folder is not None else None
            tune.report(metrics, checkpoint=checkpoint)
        finally:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)


def train_trial(config: dict[str, Any], spec: dict[str, Any]) -> None:
    """Ray Tune's trainable: resolves the trial's config, trains it and reports its outcome.

    Args:
        config: What Tune chose: ``slot`` (the trial's place in the budget) and ``params`` (sampled values).
        spec: The sweep's plan (``raw``, ``assignments``, ``points``, ``objective``, ``tune_metric``, ``fixed`` and
            ``resume``: checkpoint files, by slot, of runs an earlier attempt left unfinished).
    """
    from metalab.core.engine.devices import configure_cpu_kernels

    configure_cpu_kernels()  # a trial's process loads TensorFlow below, as a worker's does
    from ray import tune

    from metalab.core.contract.manager import make_plugin_manager
    from metalab.core.engine.config import resolve_config
    from metalab.core.engine.runner import train_run
    from metalab.core.settings import load_settings

    slot = str(int(config["slot"]))
    scratch = Path(tempfile.mkdtemp(prefix="metalab-trial-"))
    try:
        settings = load_settings(home=scratch)
        registry = make_plugin_manager(settings=settings)
        run_config = resolve_config(registry, spec["raw"], trial_assignments(spec, config), recommended=True)
        store = ReportingStore(settings.store_path, settings.runs_dir, objective=spec["objective"],
                               tune_metric=spec["tune_metric"], final_step=run_config.steps)
        run_id = store.create_run(run_config.model_dump(), run_id=spec.get("run_ids", {}).get(slot))
        run_dir = store.run_dir(run_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:  # Tune restarting this trial: continue from its own last checkpoint
            with checkpoint.as_directory() as folder:
                for item in Path(folder).iterdir():
                    if item.name.startswith("checkpoint"):
                        shutil.copy2(item, run_dir / item.name)
        else:
            for name, data in (spec.get("resume", {}).get(slot) or {}).items():
                (run_dir / Path(name).name).write_bytes(data)
        status = train_run(store, run_id, registry, settings=settings)
        run = store.get_run(run_id)
        outcome = {
            "status": status, "error": run.error, "traceback": run.traceback, "step": run.step,
            "versions": run.versions, "device": run.device, "node": socket.gethostname(),
            "evaluations": store.evaluations(run_id), "phases": store.phases(run_id),
            "artifacts": [{"name": a["name"], "kind": a["kind"], "file": Path(a["path"]).name, "step": a["step"]}
                          for a in store.artifacts(run_id)],
        }
        store.report(run_id, outcome)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

"""Shared pieces of the Omniglot benchmark scripts: environment, machine note, training through the runner.

The benchmarks go through metalab's product path: a run config validated by ``Services.resolve``, a run in the
SQLite store, ``Services.train`` (the one runner) and the run's checkpoint, restored into a fresh session with
``build_session``/``load_checkpoint`` for evaluation under another episode shape.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def default_data_dir() -> Path:
    """``METALAB_DATA_DIR`` when set, else ``<repo>/../shared/data`` (where tests and benchmarks find Omniglot)."""
    env = os.environ.get("METALAB_DATA_DIR")
    return Path(env) if env else (REPO.parent / "shared" / "data")


def add_common_args(parser: argparse.ArgumentParser, *, train_minutes: bool = True) -> None:
    """Adds ``--data-dir``, ``--home``, ``--seed`` and (unless ``train_minutes`` is false) ``--train-minutes``."""
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(),
                        help="Folder holding omniglot/ (default: METALAB_DATA_DIR or <repo>/../shared/data).")
    parser.add_argument("--home", type=Path, default=None,
                        help="METALAB_HOME for the benchmark's runs (default: a temporary folder, removed at exit).")
    parser.add_argument("--seed", type=int, default=0, help="Run seed (weights and task sampling).")
    if not train_minutes:
        return
    parser.add_argument("--train-minutes", type=float, default=None,
                        help="Stop each training run after this many minutes (the runner's cancel, which "
                             "checkpoints), even if --steps is not reached. Default: no time limit.")


class Environment:
    """Points metalab at the benchmark's data and run folders; removes a temporary home on close."""

    def __init__(self, data_dir: Path, home: Path | None):
        data_dir = Path(data_dir).resolve()
        if not (data_dir / "omniglot").is_dir():
            raise SystemExit(
                f"Expected the Omniglot files in {data_dir / 'omniglot'} (see README: Where things live). "
                f"Received: --data-dir={str(data_dir)!r}"
            )
        self._temporary = home is None
        self.home = Path(tempfile.mkdtemp(prefix="metalab-bench-")) if home is None else Path(home).resolve()
        self.data_dir = data_dir
        os.environ["METALAB_HOME"] = str(self.home)
        os.environ["METALAB_DATA_DIR"] = str(data_dir)

    def close(self) -> None:
        if self._temporary:
            shutil.rmtree(self.home, ignore_errors=True)


def machine_note() -> dict[str, Any]:
    """What the figures were measured on; the load average shows how much other work shared the CPU."""
    import tensorflow as tf

    from metalab.core.engine.devices import installed_versions

    note: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }
    note.update(installed_versions(("tensorflow", "tensorflow-cpu", "keras")))
    return note


def print_machine_note(label: str) -> dict[str, Any]:
    note = machine_note()
    gpus = f"{note['gpus']} GPU(s) visible" if note["gpus"] else "no GPU"
    print(f"[machine {label}] {note['cpus']} CPUs, {gpus}; load average (1/5/15 min) "
          f"{note['load_avg_1_5_15']}; other processes share this CPU, so wall times are upper bounds "
          f"of what the code needs alone.", flush=True)
    print(f"[machine {label}] {note['platform']}, Python {note['python']}, TensorFlow "
          f"{note.get('tensorflow-cpu') or note.get('tensorflow')}, Keras {note.get('keras')}", flush=True)
    return note


def make_services() -> Any:
    """The service facade over the built-in plugins and the run store under ``METALAB_HOME``."""
    from metalab.core.contract.manager import make_plugin_manager
    from metalab.core.services import Services
    from metalab.core.settings import load_settings

    settings = load_settings()
    return Services(settings=settings, registry=make_plugin_manager(settings=settings, distributions={"metalab"}))


def train(services: Any, raw: dict[str, Any], *, label: str, train_minutes: float | None = None,
          print_every: int = 100) -> dict[str, Any]:
    """Creates a run from ``raw`` (a run config), trains it with the runner and returns what happened.

    A ``train_minutes`` limit is applied through the run store's cancel request, so the runner checkpoints at the
    step it stopped at, exactly as when a user cancels a run.

    Returns:
        ``{"run_id", "status", "steps", "train_s", "config", "last_train_loss", "last_train_accuracy",
        "val_accuracy"}``.

    Raises:
        SystemExit: The run failed (its traceback is printed).
    """
    config = services.resolve(raw)
    run_id = services.create_run(config, name=label)
    limit_s = None if train_minutes is None else 60.0 * train_minutes
    state = {"t0": time.perf_counter(), "cancelled": False}

    def progress(step: int, total: int, logged: dict[str, float]) -> None:
        elapsed = time.perf_counter() - state["t0"]
        if step % print_every == 0 or step == total:
            loss = logged.get("train/loss")
            acc = logged.get("train/accuracy")
            rate = logged.get("train/steps_per_s")
            parts = [f"[{label}] step {step}/{total}", f"{elapsed:7.1f} s"]
            if loss is not None:
                parts.append(f"loss {loss:.4f}")
            if acc is not None:
                parts.append(f"acc {100 * acc:.1f}%")
            if rate is not None:
                parts.append(f"{rate:.2f} steps/s")
            if "val/accuracy" in logged:
                parts.append(f"val acc {100 * logged['val/accuracy']:.1f}%")
            print(", ".join(parts), flush=True)
        if limit_s is not None and elapsed >= limit_s and not state["cancelled"]:
            state["cancelled"] = True
            print(f"[{label}] time budget of {train_minutes:g} min reached at step {step}: cancelling", flush=True)
            services.cancel(run_id)

    t0 = time.perf_counter()
    state["t0"] = t0
    status = services.train(run_id, progress=progress)
    train_s = time.perf_counter() - t0
    run = services.run(run_id)
    if status not in ("completed", "cancelled"):
        print(f"[{label}] run {run_id} {status}: {run.error}\n{run.traceback}", file=sys.stderr, flush=True)
        raise SystemExit(1)
    metrics = services.metrics(run_id)

    def last(name: str) -> float | None:
        series = metrics.get(name) or []
        return series[-1][1] if series else None

    return {
        "run_id": run_id,
        "status": status,
        "steps": int(run.step),
        "train_s": train_s,
        "config": run.config,
        "last_train_loss": last("train/loss"),
        "last_train_accuracy": last("train/accuracy"),
        "val_accuracy": last("val/accuracy"),
    }


def restore(services: Any, run_id: str, **episode: int) -> Any:
    """Builds a fresh session for the run with another episode shape and loads the run's checkpoint into it.

    Prototypical Networks size their one-hot prototypes by the session's ``ways``, so a model trained on
    20-way episodes is scored on 5-way ones through a session built for 5 ways (same weights).

    Args:
        services: The service facade.
        run_id: A trained run (with a checkpoint).
        **episode: ``ways``, ``shots``, ``queries`` overriding the run's.

    Returns:
        A :class:`metalab.core.engine.session.Session` holding the trained weights.
    """
    from metalab.core.engine.config import RunConfig
    from metalab.core.engine.checkpoints import checkpoint_path, load_checkpoint
    from metalab.core.engine.session import build_session

    run = services.run(run_id)
    config = RunConfig(**{**run.config, **episode})
    session = build_session(services.registry, config, services.settings)
    load_checkpoint(checkpoint_path(services.store, run_id), session.algorithm)
    return session


def print_result(payload: dict[str, Any]) -> None:
    """The machine-readable line: ``RESULT {json}``."""
    print("RESULT " + json.dumps(payload, sort_keys=True), flush=True)

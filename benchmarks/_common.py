"""Shared pieces of the benchmark scripts: environment, provenance (command, commit, machine), fixed-step training
through the runner, and the ``RESULT`` lines that ``reproduce.py`` reads.

The benchmarks go through metalab's product path: a run config validated by ``Services.resolve``, a run in the
SQLite store, ``Services.train`` (the one runner) and the run's checkpoint, restored into a fresh session with
``build_session``/``load_checkpoint`` for evaluation under another episode shape.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import shutil
import subprocess
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


#: What a run stopped by its time cap is, in its output and its RESULT line: its figure depends on the machine's load.
CAPPED = "capped: not a result"

#: Exit status of a benchmark script when a run reached its time cap (its figures are printed, marked CAPPED).
EXIT_CAPPED = 3


def add_common_args(parser: argparse.ArgumentParser, *, cap: bool = True) -> None:
    """Adds ``--data-dir``, ``--home``, ``--seed`` and (unless ``cap`` is false) the time cap ``--max-minutes``.

    The cap only stops a run that overruns its fixed ``--steps``: such a run is marked ``capped: not a result``.
    ``--train-minutes`` and ``--budget-minutes`` (the flags of earlier, time-budgeted runs) are the same cap.
    """
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(),
                        help="Folder holding omniglot/ (default: METALAB_DATA_DIR or <repo>/../shared/data).")
    parser.add_argument("--home", type=Path, default=None,
                        help="METALAB_HOME for the benchmark's runs (default: a temporary folder, removed at exit).")
    parser.add_argument("--seed", type=int, default=0, help="Run seed (weights and task sampling).")
    if not cap:
        return
    parser.add_argument("--max-minutes", "--train-minutes", "--budget-minutes", dest="max_minutes", type=float,
                        default=None,
                        help="Cap on each training run's wall time, with --steps only. A run that reaches it stops "
                             "where it is (the runner's cancel, which checkpoints) and its figures are printed "
                             f"marked '{CAPPED}' (exit status {EXIT_CAPPED}): how far it got depends on the "
                             "machine's load, so it cannot be rerun.")


def fix_steps(parser: argparse.ArgumentParser, args: argparse.Namespace, default: Any) -> None:
    """Fills ``args.steps`` with ``default`` unless given; refuses a time cap without ``--steps``.

    A run bounded by wall-clock time gets as many steps as the machine's load allows (the audit of issue 20 got
    372 where RESULTS.md had 1909), so its figure cannot be rerun: the steps are what a command fixes.
    """
    if args.steps is not None:
        return
    if getattr(args, "max_minutes", None) is not None:
        parser.error(
            "a time budget alone stops training on wall-clock time, so the step count, and the figure, depend on "
            "the machine's load and cannot be rerun. Fix the steps with --steps N; a time cap then only stops a "
            f"run that overruns, and marks it '{CAPPED}'. Received: --max-minutes={args.max_minutes:g} without "
            "--steps"
        )
    args.steps = default


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


def cpu_model() -> dict[str, Any]:
    """The CPU's model and the vector instruction sets figures depend on (hosts here differ about 3x in speed)."""
    model, flags = "", set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    return {"model": model or platform.processor() or "unknown", "avx2": "avx2" in flags,
            "avx512f": "avx512f" in flags}


def machine_note() -> dict[str, Any]:
    """What the figures were measured on; the load average shows how much other work shared the CPU."""
    from metalab.core.engine.devices import installed_versions, keras_backend

    backend = keras_backend()
    if backend == "jax":  # the GPU device image has JAX and no TensorFlow
        import jax

        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        gpu_names = [getattr(d, "device_kind", "gpu") for d in gpus]
    else:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        gpu_names = [g.name for g in gpus]
    note: dict[str, Any] = {
        "cpus": os.cpu_count(),
        **cpu_model(),
        "gpus": len(gpus),
        "gpu_names": gpu_names,
        "backend": backend,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }
    note.update(installed_versions(("tensorflow", "tensorflow-cpu", "jax", "keras")))
    return note


def machine_line(note: dict[str, Any]) -> str:
    """The machine in one line, as the figures registry (benchmarks/figures.json) records it."""
    isa = ("AVX-512" if note.get("avx512f") else "AVX2, no AVX-512" if note.get("avx2") else "no AVX2")
    names = sorted(set(note.get("gpu_names") or []))
    gpus = (f"{note['gpus']} GPU(s) ({', '.join(names)})" if names else f"{note['gpus']} GPU(s)") if note.get(
        "gpus") else "no GPU"
    if note.get("backend") == "jax":
        library = f"JAX {note.get('jax')}"
    else:
        library = f"TensorFlow {note.get('tensorflow-cpu') or note.get('tensorflow')}"
    return (f"{note.get('cpus')}-core {note.get('model')} ({isa}), {gpus}; Python {note.get('python')}, "
            f"{library}, Keras {note.get('keras')}")


def print_machine_note(label: str) -> dict[str, Any]:
    note = machine_note()
    gpus = f"{note['gpus']} GPU(s) visible" if note["gpus"] else "no GPU"
    print(f"[machine {label}] {note['cpus']} CPUs ({note['model']}; AVX2 {note['avx2']}, AVX-512 "
          f"{note['avx512f']}), {gpus}; load average (1/5/15 min) {note['load_avg_1_5_15']}; other processes "
          f"share this CPU, so wall times are upper bounds of what the code needs alone.", flush=True)
    print(f"[machine {label}] {note['platform']}; {machine_line(note)}", flush=True)
    return note


def commit() -> str:
    """``git rev-parse HEAD``, with " (with uncommitted changes)" when tracked files differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return head.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def provenance(argv: list[str] | None = None) -> dict[str, Any]:
    """The command (as run from the repository root), the commit and the UTC start time of this benchmark."""
    script = Path(sys.argv[0]).resolve()
    try:
        script_text = str(script.relative_to(REPO))
    except ValueError:
        script_text = str(script)
    args = sys.argv[1:] if argv is None else argv
    return {
        "command": " ".join([".venv/bin/python", script_text, *(shlex.quote(a) for a in args)]),
        "commit": commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def print_provenance(prov: dict[str, Any]) -> None:
    print(f"command: {prov['command']}", flush=True)
    print(f"commit: {prov['commit']}", flush=True)
    print(f"date: {prov['date']}", flush=True)


def describe_data(services: Any, dataset_id: str, params: dict[str, Any], label: str) -> dict[str, Any]:
    """Loads the dataset as a run would and prints what each split holds, counted from the loaded classes.

    For Omniglot the characters and alphabets are counted from the class names (``<Alphabet>/characterNN`` and,
    with rotations, ``/rotDEG``) and the character counts checked against the dataset's ``info``; the held-out
    validation alphabets are named.

    Returns:
        ``{split: {"classes", "characters", "alphabets"}}`` plus ``"val_alphabets"`` when the dataset holds some
        out.
    """
    spec = services.registry.dataset(dataset_id)
    dataset = spec.factory(spec.params(**params), services.settings.data_context())
    info = dict(getattr(dataset, "info", None) or {})
    out: dict[str, Any] = {}
    parts = []
    for split in ("train", "val", "test"):
        if split not in dataset.splits:
            continue
        names = [str(n) for n in dataset.splits[split].class_names]
        row: dict[str, Any] = {"classes": len(names)}
        if info.get("dataset") == "omniglot":
            row["characters"] = len({"/".join(n.split("/")[:2]) for n in names})
            row["alphabets"] = len({n.split("/")[0] for n in names})
            expected = (info.get("characters") or {}).get(split)
            if expected is not None and expected != row["characters"]:
                raise RuntimeError(f"{split}: {row['characters']} characters counted from the class names, "
                                   f"the dataset's info says {expected}. Received: params={params!r}")
            text = (f"{split} {row['characters']} characters of {row['alphabets']} "
                    f"alphabet{'' if row['alphabets'] == 1 else 's'} ({row['classes']} classes)")
        else:
            text = f"{split} {row['classes']} classes"
        out[split] = row
        parts.append(text)
    line = f"[data {label}] " + "; ".join(parts)
    if info.get("val_alphabets"):
        out["val_alphabets"] = list(info["val_alphabets"])
        line += f"; val alphabets held out: {', '.join(out['val_alphabets'])}"
    print(line, flush=True)
    return out


def make_services() -> Any:
    """The service facade over the built-in plugins and the run store under ``METALAB_HOME``."""
    from metalab.core.contract.manager import make_plugin_manager
    from metalab.core.services import Services
    from metalab.core.settings import load_settings

    settings = load_settings()
    return Services(settings=settings, registry=make_plugin_manager(settings=settings, distributions={"metalab"}))


def train(services: Any, raw: dict[str, Any], *, label: str, max_minutes: float | None = None,
          print_every: int = 100) -> dict[str, Any]:
    """Creates a run from ``raw`` (a run config), trains its fixed ``steps`` with the runner; returns what happened.

    A ``max_minutes`` cap is applied through the run store's cancel request, so the runner checkpoints at the
    step it stopped at, exactly as when a user cancels a run. A run stopped by it is ``capped``: it printed
    :data:`CAPPED`, and its figures are not results (how far it got depends on the machine's load).

    Returns:
        ``{"run_id", "status", "steps", "steps_requested", "capped", "train_s", "config", "last_train_loss",
        "last_train_accuracy", "val_accuracy"}``.

    Raises:
        SystemExit: The run failed (its traceback is printed).
    """
    config = services.resolve(raw)
    run_id = services.create_run(config, name=label)
    limit_s = None if max_minutes is None else 60.0 * max_minutes
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
            print(f"[{label}] time cap of {max_minutes:g} min reached at step {step} of {total}: cancelling; "
                  f"{CAPPED}", flush=True)
            services.cancel(run_id)

    t0 = time.perf_counter()
    state["t0"] = t0
    status = services.train(run_id, progress=progress)
    train_s = time.perf_counter() - t0
    run = services.run(run_id)
    if status not in ("completed", "cancelled"):
        print(f"[{label}] run {run_id} {status}: {run.error}\n{run.traceback}", file=sys.stderr, flush=True)
        raise SystemExit(1)
    steps = int(run.step)
    capped = bool(state["cancelled"]) and steps < int(config.steps)
    if capped:
        print(f"[{label}] CAPPED at step {steps} of {config.steps} after {train_s:.0f} s: {CAPPED}", flush=True)
    metrics = services.metrics(run_id)

    def last(name: str) -> float | None:
        series = metrics.get(name) or []
        return series[-1][1] if series else None

    return {
        "run_id": run_id,
        "status": status,
        "steps": steps,
        "steps_requested": int(config.steps),
        "capped": capped,
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


def result_status(capped: bool) -> str:
    """``"result"``, or :data:`CAPPED` for a figure from a run its time cap stopped."""
    return CAPPED if capped else "result"


def mean_ci95(values: Any) -> tuple[float, float]:
    """Mean and 95% confidence half-width (1.96 standard errors, ddof=1), as the runner's ``evaluate_batch``."""
    import numpy as np

    x = np.asarray(values, dtype=np.float64)
    half = float(1.96 * x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")
    return float(x.mean()), half

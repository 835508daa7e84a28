"""Run checkpoints: the last two ``.npz`` files of a run, written atomically, each with a manifest, verified on load.

A checkpoint stays a plain ``.npz`` (``np.load`` reads it): arrays ``var_<i>`` (the algorithm's variables),
``opt_<i>`` (the optimizer's), ``meta`` (JSON bytes: step, sampler state, counts) and ``manifest`` (JSON bytes:
step, config hash, each array's shape and dtype, and the sha256 of the arrays). Files written before manifests
existed still load: they are checked for their step, shapes and finite weights, not their checksum.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: The newest checkpoint of a run, and the one before it (kept so that one bad file never strands a run).
LATEST = "checkpoint.npz"
PREVIOUS = "checkpoint.prev.npz"
#: Suffix a rejected newest checkpoint is renamed to when a resume fell back past it (kept for a post-mortem).
REJECTED_SUFFIX = ".rejected"
#: The run-folder file (and artifact name) where fallbacks are recorded for the user.
WARNING_ARTIFACT = "checkpoint_warning"
MANIFEST_FORMAT = "metalab-checkpoint"
MANIFEST_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file cannot be used: unreadable, inconsistent, out of range or not finite."""


class CheckpointMismatchError(CheckpointError):
    """A readable checkpoint whose arrays do not fit the model (the run's config or plugin version changed)."""


class CheckpointWarning(UserWarning):
    """A run was restored from its previous checkpoint because the newest one could not be used."""


@dataclass
class CheckpointData:
    """A verified checkpoint file in memory (every check that needs no model has passed)."""

    path: Path
    step: int
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]
    verified: bool  # False for a file written before manifests (no checksum to compare)


@dataclass
class Restored:
    """What :func:`restore_checkpoint` loaded: the step, the file, and why newer files were passed over."""

    step: int
    path: Path
    warnings: list[str] = field(default_factory=list)


def label(path: Path) -> str:
    """How messages name a checkpoint file: ``"checkpoint.npz of run 20261203-…"`` (the folder is the run id)."""
    return f"{path.name} of run {path.parent.name}"


def checkpoint_files(run_dir: Path) -> tuple[Path, Path]:
    """The run's newest and previous checkpoint paths (either may be missing)."""
    return run_dir / LATEST, run_dir / PREVIOUS


def checkpoint_path(store: Any, run_id: str) -> Path:
    """The run's newest checkpoint (``<run folder>/checkpoint.npz``)."""
    return store.run_dir(run_id) / LATEST


def config_hash(config: dict[str, Any] | None) -> str | None:
    """The sha256 of a run's stored config (canonical JSON), as a manifest records it; ``None`` for no config."""
    if config is None:
        return None
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def payload_sha256(arrays: dict[str, np.ndarray]) -> str:
    """The sha256 over every array but the manifest: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        if name == "manifest":
            continue
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        digest.update(array.reshape(-1).view(np.uint8).data)
    return digest.hexdigest()


def _floating(array: np.ndarray) -> bool:
    kind, name = array.dtype.kind, array.dtype.name
    return kind in "fc" or (kind == "V" and name.startswith(("bfloat", "float")))  # ml_dtypes' bfloat16, float8


def _non_finite(arrays: dict[str, np.ndarray]) -> list[str]:
    return [name for name, a in arrays.items()
            if name not in ("meta", "manifest") and _floating(a) and not bool(np.all(np.isfinite(a)))]


def _json_bytes(value: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(value).encode(), dtype=np.uint8)


def _names(names: list[str], paths: list[str] | None = None) -> str:
    shown = names[:5]
    if paths:
        by_index = {f"var_{i}": p for i, p in enumerate(paths)}
        shown = [f"{n} ({by_index[n]})" if n in by_index else n for n in shown]
    return ", ".join(shown) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


# -- writing --------------------------------------------------------------------------------------------


def write_checkpoint_file(path: Path, step: int, arrays: dict[str, np.ndarray], meta: dict[str, Any], *,
                          config: dict[str, Any] | None = None, variable_paths: list[str] | None = None) -> None:
    """Writes one checkpoint file atomically: a temporary file in the same folder, fsync, then ``os.replace``.

    ``arrays`` are the ``var_<i>``/``opt_<i>`` arrays; ``meta`` and ``manifest`` are added here.
    """
    arrays = {**arrays, "meta": _json_bytes({**meta, "step": int(step)})}
    manifest = {
        "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "step": int(step), "config_hash": config_hash(config),
        "created": time.time(), "sha256": payload_sha256(arrays),
        "arrays": {name: {"shape": list(a.shape), "dtype": a.dtype.str} for name, a in sorted(arrays.items())},
    }
    if variable_paths is not None:
        manifest["variables"] = list(variable_paths)
    arrays["manifest"] = _json_bytes(manifest)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a directory; the rename itself is still atomic
    finally:
        os.close(fd)


def _peek_step(path: Path) -> int | None:
    """The step a checkpoint file says it holds, read cheaply; ``None`` if the file is unreadable."""
    try:
        with np.load(path, allow_pickle=False) as data:
            key = "manifest" if "manifest" in data.files else "meta"
            return int(json.loads(bytes(data[key]).decode())["step"])
    except Exception:  # noqa: BLE001 - any failure means "not a usable newest file"
        return None


def save_checkpoint(store: Any, run_id: str, step: int, algorithm: Any, optimizer: Any, sampler: Any, *,
                    config: dict[str, Any] | None = None) -> Path:
    """Saves weights, optimizer state and sampler state as the run's newest checkpoint; keeps the one before.

    The new file is written atomically; the old newest becomes ``checkpoint.prev.npz`` (unless it holds the same
    step, or cannot be read: then the previous one is kept as it is).

    Raises:
        FloatingPointError: A weight or optimizer array holds NaN or inf; nothing is written and both existing
            checkpoints are kept.
    """
    run_dir = store.run_dir(run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    latest, previous = checkpoint_files(run_dir)
    arrays = {f"var_{i}": np.asarray(v.numpy()) for i, v in enumerate(algorithm.variables)}
    arrays.update({f"opt_{i}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)})
    paths = [str(getattr(v, "path", "") or getattr(v, "name", "")) for v in algorithm.variables]
    bad = _non_finite(arrays)
    if bad:
        from metalab.core.engine.config import divergence_hint

        hint = divergence_hint(config)
        raise FloatingPointError(
            f"Refusing to save a checkpoint of run {run_id} at step {step}: {_names(bad, paths)} hold NaN or inf "
            f"(training diverged); the previous checkpoint is kept. {hint[:1].upper() + hint[1:]}. "
            f"Received: step={step}"
        )
    meta = {"sampler": sampler.get_state(), "n_vars": len(algorithm.variables), "n_opt": len(optimizer.variables)}
    tmp = run_dir / f".{LATEST}.new"
    write_checkpoint_file(tmp, step, arrays, meta, config=config, variable_paths=paths)
    if latest.exists():
        held = _peek_step(latest)
        if held is None:
            os.replace(latest, latest.with_name(latest.name + REJECTED_SUFFIX))  # never rotate a bad file over a good one
        elif held != int(step):
            os.replace(latest, previous)
    os.replace(tmp, latest)
    _fsync_dir(run_dir)
    store.add_artifact(run_id, "checkpoint", "checkpoint", latest, step=step)
    return latest


# -- reading --------------------------------------------------------------------------------------------


def _unreadable(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{label(path)} {what}. Received: checkpoint={str(path)!r}")


def read_checkpoint(path: Path, *, total_steps: int | None = None, config: dict[str, Any] | None = None) -> CheckpointData:
    """Reads and verifies one checkpoint file without a model: readable, checksum, step in range, finite.

    Args:
        path: The ``.npz`` file.
        total_steps: The run's total steps: a step above it (or below 0) is refused. ``None``: only below 0.
        config: The run's stored config: a manifest written for another config is refused. ``None``: not checked.

    Raises:
        CheckpointError: Naming the file and what is wrong with it (never numpy's own pickle hint).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise _unreadable(path, f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    if size == 0:
        raise _unreadable(path, "is empty (0 bytes): the write that made it did not finish")
    try:
        loaded = np.load(path, allow_pickle=False)
    except zipfile.BadZipFile:
        raise _unreadable(path, "is truncated or corrupt (not a complete .npz/zip archive)") from None
    except (ValueError, EOFError, OSError):
        # numpy's own message here suggests unpickling the file: never pass that on.
        raise _unreadable(path, "is not a NumPy .npz archive (unrecognised bytes)") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise _unreadable(path, "holds a single array, not a .npz archive")
    try:
        with loaded:
            arrays = {name: loaded[name] for name in loaded.files}
    except (zipfile.BadZipFile, EOFError, OSError, RuntimeError) as exc:
        raise _unreadable(path, f"is corrupt: an array fails its zip check ({type(exc).__name__})") from None
    except ValueError:
        raise _unreadable(path, "holds object arrays, which a metalab checkpoint never does") from None
    except Exception as exc:  # noqa: BLE001 - e.g. zlib errors in a damaged member
        raise _unreadable(path, f"is corrupt ({type(exc).__name__})") from None

    def decode(name: str) -> dict[str, Any]:
        try:
            value = json.loads(bytes(np.asarray(arrays[name], dtype=np.uint8)).decode())
        except (ValueError, TypeError, UnicodeDecodeError):
            raise _unreadable(path, f"has an unreadable {name!r} entry") from None
        if not isinstance(value, dict):
            raise _unreadable(path, f"has an unreadable {name!r} entry")
        return value

    if "meta" not in arrays:
        raise _unreadable(path, "has no 'meta' entry: it is not a metalab checkpoint")
    meta = decode("meta")
    manifest = decode("manifest") if "manifest" in arrays else None
    if manifest is not None:
        if manifest.get("format") != MANIFEST_FORMAT:
            raise _unreadable(path, f"has a manifest of another format ({manifest.get('format')!r})")
        listed = manifest.get("arrays") or {}
        present = {n: a for n, a in arrays.items() if n != "manifest"}
        if set(listed) != set(present):
            missing, extra = sorted(set(listed) - set(present)), sorted(set(present) - set(listed))
            raise _unreadable(path, f"does not hold the arrays its manifest lists (missing: {missing or 'none'}, "
                                    f"unlisted: {extra or 'none'})")
        for name, entry in listed.items():
            a = present[name]
            if list(a.shape) != list(entry.get("shape", [])) or a.dtype.str != entry.get("dtype"):
                raise _unreadable(path, f"array {name} is {a.dtype.str}{list(a.shape)} but its manifest says "
                                        f"{entry.get('dtype')}{entry.get('shape')}")
        if payload_sha256(present) != manifest.get("sha256"):
            raise _unreadable(path, "fails its sha256 checksum: its arrays changed after it was written")
        expected = config_hash(config)
        if expected is not None and manifest.get("config_hash") not in (None, expected):
            raise _unreadable(path, "was written for another config than this run's (config hash differs)")
    raw_step = (manifest or meta).get("step")
    if (isinstance(raw_step, bool) or not isinstance(raw_step, (int, float)) or not math.isfinite(raw_step)
            or raw_step != int(raw_step)):
        raise _unreadable(path, f"has no valid step (step={raw_step!r})")
    step = int(raw_step)
    if manifest is not None and meta.get("step") != step:
        raise _unreadable(path, f"has a manifest step {step} that differs from its data's ({meta.get('step')!r})")
    if step < 0 or (total_steps is not None and step > int(total_steps)):
        bound = f"0..{int(total_steps)}" if total_steps is not None else ">= 0"
        raise _unreadable(path, f"has step {step}, outside this run's steps ({bound})")
    bad = _non_finite(arrays)
    if bad:
        raise _unreadable(path, f"holds NaN or inf in {_names(bad, (manifest or {}).get('variables'))}")
    return CheckpointData(path=path, step=step, meta=meta, arrays=arrays, verified=manifest is not None)


def _dtype_fits(array: np.ndarray, variable: Any) -> bool:
    declared = getattr(variable, "dtype", None)
    name = str(getattr(declared, "name", declared))
    try:
        want = np.dtype(name)
    except TypeError:
        return True  # a dtype numpy does not name (e.g. without ml_dtypes): shapes are still checked
    if want.kind in "iu" and array.dtype.kind in "iu":
        return True  # counters: JAX keeps int32 where TensorFlow keeps int64; the value fits either
    return array.dtype == want


def _check_against(data: CheckpointData, prefix: str, variables: list[Any], what: str) -> None:
    count = data.meta.get("n_vars" if prefix == "var" else "n_opt")
    present = sum(1 for n in data.arrays if n.startswith(prefix + "_") and n[len(prefix) + 1:].isdigit())
    if count != len(variables) or present != len(variables):
        raise CheckpointMismatchError(
            f"{label(data.path)} holds {count if count is not None else present} {what} variables but this "
            f"{'model' if prefix == 'var' else 'optimizer'} has {len(variables)}: the run's config or plugin version "
            f"changed. Received: checkpoint={str(data.path)!r}"
        )
    for i, var in enumerate(variables):
        array = data.arrays[f"{prefix}_{i}"]
        shape = tuple(int(d) for d in var.shape)
        if tuple(array.shape) != shape or not _dtype_fits(array, var):
            name = getattr(var, "path", None) or getattr(var, "name", f"{prefix}_{i}")
            raise CheckpointMismatchError(
                f"{label(data.path)}: {prefix}_{i} ({name}) is {array.dtype.name}{list(array.shape)} but the "
                f"{what} variable is {getattr(var.dtype, 'name', var.dtype)}{list(shape)}: the run's config or "
                f"plugin version changed. Received: checkpoint={str(data.path)!r}"
            )


def apply_checkpoint(data: CheckpointData, algorithm: Any, optimizer: Any | None = None,
                     sampler: Any | None = None) -> int:
    """Checks a read checkpoint against the model (counts, shapes, dtypes), then restores it; returns its step.

    Nothing is assigned unless every check passes.
    """
    _check_against(data, "var", list(algorithm.variables), "model")
    if optimizer is not None:
        _check_against(data, "opt", list(optimizer.variables), "optimizer")
    if sampler is not None:
        try:
            sampler.set_state(data.meta["sampler"])
        except Exception as exc:  # noqa: BLE001 - a damaged sampler state is a damaged file
            raise CheckpointError(f"{label(data.path)} has a sampler state this sampler cannot restore "
                                  f"({type(exc).__name__}: {exc}). Received: checkpoint={str(data.path)!r}") from None
    for i, var in enumerate(algorithm.variables):
        var.assign(data.arrays[f"var_{i}"])
    if optimizer is not None:
        for i, var in enumerate(optimizer.variables):
            var.assign(data.arrays[f"opt_{i}"])
    return data.step


def load_checkpoint(path: Path, algorithm: Any, optimizer: Any | None = None, sampler: Any | None = None, *,
                    total_steps: int | None = None, config: dict[str, Any] | None = None) -> int:
    """Verifies and restores one checkpoint file (no fallback); returns the step it was taken at.

    Raises:
        CheckpointMismatchError: The file does not fit the model (counts, shapes, dtypes).
        CheckpointError: The file is unreadable, inconsistent, out of range or not finite.
    """
    return apply_checkpoint(read_checkpoint(Path(path), total_steps=total_steps, config=config),
                            algorithm, optimizer, sampler)


def restore_checkpoint(run_dir: Path, algorithm: Any, optimizer: Any | None = None, sampler: Any | None = None, *,
                       total_steps: int | None = None, config: dict[str, Any] | None = None,
                       quarantine: bool = False) -> Restored | None:
    """Restores the run's newest usable checkpoint: ``checkpoint.npz``, else ``checkpoint.prev.npz``.

    Args:
        run_dir: The run's folder.
        quarantine: Rename a newest file that was passed over to ``checkpoint.npz.rejected``, so the next save
            does not rotate it over the good previous one (only the run's writer, the training worker, does this).

    Returns:
        What was loaded, with a warning for each file passed over; ``None`` if the run has no checkpoint at all.

    Raises:
        CheckpointMismatchError: Every file exists but none fits the model.
        CheckpointError: No file could be used; the message names each file and what is wrong with it.
    """
    run_dir = Path(run_dir)
    candidates = checkpoint_files(run_dir)
    if not any(p.exists() for p in candidates):
        return None
    problems: list[CheckpointError] = []
    passed_over: list[str] = []
    for path in candidates:
        if not path.exists():
            passed_over.append(f"{label(path)} is missing")
            continue
        try:
            step = apply_checkpoint(read_checkpoint(path, total_steps=total_steps, config=config),
                                    algorithm, optimizer, sampler)
        except CheckpointError as exc:
            problems.append(exc)
            passed_over.append(str(exc).split(" Received:")[0].rstrip("."))
            continue
        if path.name != LATEST:
            passed_over = [f"{why}; restored {label(path)} (step {step}) instead" for why in passed_over]
            if quarantine and candidates[0].exists():
                os.replace(candidates[0], candidates[0].with_name(LATEST + REJECTED_SUFFIX))
        return Restored(step=step, path=path, warnings=passed_over)
    cls = CheckpointMismatchError if all(isinstance(e, CheckpointMismatchError) for e in problems) else CheckpointError
    raise cls(
        f"Run {run_dir.name} has no usable checkpoint: {'; '.join(passed_over)}. Delete the run's checkpoint files to train it "
        f"again from step 0. Received: run={run_dir.name!r}"
    )


def checkpoint_step(run_dir: Path, *, total_steps: int | None = None, config: dict[str, Any] | None = None) -> int | None:
    """The step a resume would restart from (the newest file that passes the model-free checks), else ``None``.

    For messages such as "resuming run X from step N" before the worker starts; the worker still checks the
    file against the model, and records the step it actually restored.
    """
    for path in checkpoint_files(Path(run_dir)):
        if path.exists():
            try:
                return read_checkpoint(path, total_steps=total_steps, config=config).step
            except CheckpointError:
                continue
    return None


def record_warning(store: Any, run_id: str, restored: Restored, action: str) -> None:
    """Warns (``CheckpointWarning``, which a worker's log shows) and appends the event to the run's
    ``checkpoint_warning.json`` artifact, so the report can show that the run went back to an older checkpoint."""
    if not restored.warnings:
        return
    text = "; ".join(restored.warnings)
    warnings.warn(f"Run {run_id} ({action}): {text}", CheckpointWarning, stacklevel=3)
    path = store.run_dir(run_id) / f"{WARNING_ARTIFACT}.json"
    events: list[Any] = []
    try:
        events = json.loads(path.read_text()).get("events", [])
    except (OSError, ValueError, AttributeError):
        events = []
    events.append({"time": time.time(), "action": action, "restored": restored.path.name, "step": restored.step,
                   "warnings": list(restored.warnings)})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps({"events": events}, indent=1))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        return  # e.g. a read-only showcase folder: the warning above still says it
    store.add_artifact(run_id, WARNING_ARTIFACT, "json", path, step=restored.step)

"""A sweep's record: its space, objective, budget and each trial's run and state, one JSON file per sweep under
``METALAB_HOME/sweeps/``, replaced atomically on every change (the run store itself is not touched)."""

from __future__ import annotations

import json
import math
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metalab.core.sweeps.space import SweepError, SweepSpec

#: A trial's states in the record: ``running`` while its driver watches it; ``completed`` and ``failed`` as its run
#: ended; ``stopped`` when ASHA stopped it early; ``interrupted`` when the driver stopped before it ended (resumed
#: by ``metalab sweep resume``).
TRIAL_STATES = ("running", "completed", "failed", "stopped", "interrupted")
#: Trials a resume never runs again.
FINISHED_TRIALS = ("completed", "failed", "stopped")


def sweeps_dir(home: str | os.PathLike) -> Path:
    """Where sweep records and (by default) Ray Tune's experiment folders are kept: ``METALAB_HOME/sweeps/``."""
    return Path(home) / "sweeps"


def new_sweep_id() -> str:
    """A sortable sweep id such as ``sw-20261203-235901-3fa9c1`` (the tag ``sweep:<id>`` fits a run's 40 characters)."""
    from datetime import datetime, timezone

    return "sw-" + datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def sweep_tag(sweep_id: str) -> str:
    """The tag every run of the sweep carries."""
    return f"sweep:{sweep_id}"


@dataclass
class SweepBook:
    """One sweep's record (see the module docstring); :meth:`save` writes it whole, atomically."""

    id: str
    path: Path
    spec: SweepSpec
    points: list[dict[str, Any]]
    created: float = field(default_factory=time.time)
    status: str = "created"
    storage: str = ""
    address: str | None = None
    attempts: int = 0
    #: The most steps any grid point trains (ASHA's horizon).
    max_steps: int = 0
    #: The process running the sweep now (``{"pid", "host"}``): a ``running`` sweep whose driver is gone was
    #: interrupted.
    driver: dict[str, Any] = field(default_factory=dict)
    #: ``{slot: {"run", "trial", "state", "params", "objective", "step", "node", "error"}}``; slot ``k`` (a string in
    #: the file) is the ``k``-th trial of the budget.
    trials: dict[int, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def create(cls, home: str | os.PathLike, spec: SweepSpec, points: list[dict[str, Any]]) -> "SweepBook":
        sweep_id = new_sweep_id()
        folder = sweeps_dir(home)
        folder.mkdir(parents=True, exist_ok=True)
        return cls(id=sweep_id, path=folder / f"{sweep_id}.json", spec=spec, points=points)

    @classmethod
    def load(cls, home: str | os.PathLike, ref: str) -> "SweepBook":
        """The sweep ``ref`` (its id or a unique prefix of it, with or without ``sw-``).

        Raises:
            SweepError: No sweep or several match, or its record cannot be read.
        """
        ref = str(ref or "").strip()
        folder = sweeps_dir(home)
        names = sorted(p.stem for p in folder.glob("sw-*.json")) if folder.is_dir() else []
        matches = [n for n in names if n == ref or n == f"sw-{ref}"] or [
            n for n in names if ref and (n.startswith(ref) or n.startswith(f"sw-{ref}"))]
        if not matches:
            raise SweepError(f"No sweep {ref!r} (`metalab sweep list` lists them). Received: sweep={ref!r}")
        if len(matches) > 1:
            raise SweepError(f"Sweep id prefix {ref!r} matches {len(matches)} sweeps ({', '.join(matches[:5])}); give "
                             f"more of the id. Received: sweep={ref!r}")
        path = folder / f"{matches[0]}.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SweepError(f"The record of sweep {matches[0]} could not be read ({type(exc).__name__}). "
                             f"Received: sweep={ref!r}") from None
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: Path) -> "SweepBook":
        return cls(id=data["id"], path=path, spec=SweepSpec.from_dict(data["spec"]), points=list(data["points"]),
                   created=float(data.get("created") or 0), status=data.get("status", "created"),
                   storage=data.get("storage", ""), address=data.get("address"),
                   attempts=int(data.get("attempts") or 0), max_steps=int(data.get("max_steps") or 0),
                   driver=dict(data.get("driver") or {}),
                   trials={int(k): dict(v) for k, v in (data.get("trials") or {}).items()})

    @classmethod
    def all(cls, home: str | os.PathLike) -> list["SweepBook"]:
        """Every readable sweep record, newest first."""
        folder = sweeps_dir(home)
        books = []
        for path in sorted(folder.glob("sw-*.json"), reverse=True) if folder.is_dir() else []:
            try:
                books.append(cls.from_dict(json.loads(path.read_text(encoding="utf-8")), path))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # one unreadable record does not hide the others
        return books

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "created": self.created, "status": self.status, "spec": self.spec.to_dict(),
                "points": self.points, "storage": self.storage, "address": self.address, "attempts": self.attempts,
                "max_steps": self.max_steps, "driver": self.driver,
                "trials": {str(k): v for k, v in sorted(self.trials.items())}}

    def save(self) -> None:
        """Writes the record to a new file and renames it over the old one: a reader never sees half of it."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}-{secrets.token_hex(3)}")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, indent=1, default=_jsonable)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    @property
    def state(self) -> str:
        """The sweep's status, ``interrupted`` for one recorded as running whose driver process is gone."""
        if self.status != "running" or self.driver.get("host") != os.uname().nodename:
            return self.status  # another machine's driver: trust the record
        pid = self.driver.get("pid")
        if not isinstance(pid, int) or pid <= 0:
            return self.status  # no driver recorded (os.kill(0, ...) would ask about this process group)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return "interrupted"
        except (PermissionError, OverflowError):
            pass  # alive, another user's; or not a pid at all: trust the record
        return self.status

    @property
    def total(self) -> int:
        return self.spec.total_trials()

    def point_of(self, slot: int) -> dict[str, Any]:
        """The grid point trial ``slot`` takes (trials cycle through the grid)."""
        return dict(self.points[slot % len(self.points)]) if self.points else {}

    def pending_slots(self) -> list[int]:
        """The trials of the budget a (re)start runs: those never started, or started and not finished."""
        return [k for k in range(self.total) if self.trials.get(k, {}).get("state") not in FINISHED_TRIALS]

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for entry in self.trials.values():
            found[entry.get("state", "?")] = found.get(entry.get("state", "?"), 0) + 1
        return found

    def ranked(self) -> list[tuple[int, dict[str, Any]]]:
        """The started trials, best objective first (by the sweep's mode); trials without a value last."""
        sign = -1.0 if self.spec.mode == "max" else 1.0

        def key(item: tuple[int, dict[str, Any]]) -> tuple[int, float, int]:
            value = item[1].get("objective")
            known = isinstance(value, (int, float)) and math.isfinite(value)
            return (0 if known else 1, sign * value if known else 0.0, item[0])

        return sorted(self.trials.items(), key=key)

    def best(self) -> tuple[int, dict[str, Any]] | None:
        """The completed trial with the best objective, or ``None``."""
        for slot, entry in self.ranked():
            if entry.get("state") == "completed" and isinstance(entry.get("objective"), (int, float)):
                return slot, entry
        return None


def record_sweep(services: Any, spec: SweepSpec, *, storage: str | None = None,
                 address: str | None = None) -> SweepBook:
    """Resolves every grid point (:func:`~metalab.core.sweeps.space.plan`) and records the sweep, ``created``:
    what ``metalab sweep`` does before Ray starts, and what the dashboard does before it starts a driver process.

    Raises:
        SweepError: A grid point is invalid; nothing is recorded.
    """
    from metalab.core.sweeps.space import plan

    points, max_steps = plan(services, spec)
    home = services.settings.home
    if storage and "://" not in storage and not Path(storage).is_absolute():
        storage = str(Path(storage).resolve())
    book = SweepBook.create(home, spec, points)
    book.storage = storage or str(sweeps_dir(home) / book.id)
    book.address = address
    book.max_steps = max_steps
    book.save()
    return book


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)

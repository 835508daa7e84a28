"""A sweep's search space, objective and budget: read from a TOML or YAML file and the command line, and every
grid point resolved by the ordinary run-config resolution before anything starts."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: The metric prefixes a run logs (``val/accuracy``); ``val_accuracy`` on the command line means ``val/accuracy``.
METRIC_PREFIXES = ("train", "val", "test", "cross")
#: The sampled dimensions a space may have besides the grid, and how each is written: a list of values, or
#: ``[low, high]``.
RANDOM_KINDS = ("choice", "uniform", "loguniform")
#: Trials of a space with sampled dimensions when ``trials`` is not given (a grid alone runs each point once).
DEFAULT_SAMPLED_TRIALS = 10


class SweepError(ValueError):
    """A sweep cannot start or resume; the message names the field and the value received."""


@dataclass
class SweepSpec:
    """What a sweep explores and how it is judged.

    Attributes:
        raw: Run fields given directly (``dataset``, ``algorithm``, ``backbone``, ``steps``).
        assignments: Fixed ``--set`` values every trial shares (``name=value``; names as ``metalab train`` takes).
        grid: ``{name: [values]}``: every combination is run (``--grid``, ``--seeds`` as ``run.seed``).
        random: ``{name: {"kind": "choice", "values": [...]}}`` or ``{"kind": "uniform"|"loguniform", "low", "high"}``:
            sampled by Ray Tune's search algorithm for each trial.
        metric: The objective as written (``val_accuracy`` or ``val/accuracy``); empty: ``val_accuracy``, or
            ``val_mse`` on a regression dataset (filled in by :func:`plan`).
        mode: ``max`` or ``min``; empty: ``min`` for a loss or MSE, else ``max``.
        trials: Total trials (default: each grid point once; :data:`DEFAULT_SAMPLED_TRIALS` with sampled
            dimensions); trial ``k`` takes grid point ``k mod len(grid points)``.
        max_concurrent: Trials at once (default: as many as the cluster's CPUs allow).
        scheduler: ``asha`` (stop trials that lag at each rung) or ``none``.
        grace_steps: Steps a trial trains before ASHA may stop it (default: a quarter of the steps).
        cpus_per_trial: CPUs Ray reserves for each trial.
    """

    raw: dict[str, Any] = field(default_factory=dict)
    assignments: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    random: dict[str, dict[str, Any]] = field(default_factory=dict)
    metric: str = ""
    mode: str = ""
    trials: int | None = None
    max_concurrent: int | None = None
    scheduler: str = "asha"
    grace_steps: int | None = None
    cpus_per_trial: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SweepSpec":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    @property
    def store_metric(self) -> str:
        """The objective as the run store names it (``val/accuracy``)."""
        return store_metric(self.metric)

    @property
    def tune_metric(self) -> str:
        """The objective as trials report it to Ray Tune (``val_accuracy``)."""
        return self.store_metric.replace("/", "_")

    def grid_points(self) -> list[dict[str, Any]]:
        """Every combination of the grid's values, in the order the names and values were given (``[{}]`` when the
        space has no grid)."""
        names = list(self.grid)
        return [dict(zip(names, values)) for values in itertools.product(*(self.grid[n] for n in names))]

    def total_trials(self) -> int:
        if self.trials is not None:
            return int(self.trials)
        points = len(self.grid_points())
        return max(points, DEFAULT_SAMPLED_TRIALS) if self.random else points


def store_metric(name: str) -> str:
    """``val_accuracy`` -> ``val/accuracy``; a name with a ``/`` is kept."""
    name = str(name).strip()
    if "/" in name:
        return name
    head, _, tail = name.partition("_")
    return f"{head}/{tail}" if head in METRIC_PREFIXES and tail else name


def parse_value(text: str) -> Any:
    """A value as ``--set`` reads it: JSON when it parses (``0.1``, ``true``, ``"a"``), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text.strip()


def parse_list_option(option: str, pair: str) -> tuple[str, list[Any]]:
    """``name=a,b,c`` (``--grid``, ``--choice``, ``--loguniform``) -> ``(name, [a, b, c])``."""
    name, sep, values = pair.partition("=")
    name = name.strip()
    items = [v for v in values.split(",") if v.strip()]
    if not sep or not name or not items:
        raise SweepError(f"{option} expects name=value,value,... Received: {option} {pair!r}")
    return name, [parse_value(v) for v in items]


def parse_seeds(text: str) -> list[int]:
    """``0-4`` -> ``[0, 1, 2, 3, 4]``; ``0,3,7`` -> ``[0, 3, 7]``; ranges and lists mix (``0-2,9``)."""
    seeds: list[int] = []
    try:
        for part in (p.strip() for p in str(text).split(",")):
            if not part:
                continue
            first, dash, last = part.partition("-")
            if dash and first:
                lo, hi = int(first), int(last)
                if hi < lo:
                    raise ValueError
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        raise SweepError(f"--seeds expects seeds like 0-4 or 0,3,7 (non-negative integers). Received: --seeds "
                         f"{text!r}") from None
    if not seeds or any(s < 0 for s in seeds):
        raise SweepError(f"--seeds expects at least one non-negative seed. Received: --seeds {text!r}")
    return list(dict.fromkeys(seeds))


def read_space_file(path: Path) -> dict[str, Any]:
    """A sweep file (``.toml``, ``.yaml`` or ``.yml``) as a dict; see :func:`spec_from_sources` for its keys."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SweepError(f"The sweep file could not be read ({exc.strerror or exc}). Received: file={path.name!r}"
                         ) from None
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise SweepError(f"A sweep file is .toml, .yaml or .yml. Received: file={path.name!r}")
    except SweepError:
        raise
    except Exception as exc:  # noqa: BLE001 - a syntax error is the user's to fix: say where
        raise SweepError(f"The sweep file {path.name} is not valid {path.suffix[1:].upper()}: {exc}. "
                         f"Received: file={path.name!r}") from None
    if not isinstance(data, dict):
        raise SweepError(f"A sweep file holds a table of keys (dataset, grid, ...). Received: {type(data).__name__}")
    return data


#: The keys a sweep file may have.
FILE_KEYS = ("dataset", "algorithm", "backbone", "steps", "set", "grid", "seeds", *RANDOM_KINDS, "metric", "mode",
             "trials", "max_concurrent", "scheduler", "grace_steps", "cpus_per_trial")


def spec_from_sources(file_data: dict[str, Any] | None = None, *, dataset: str | None = None,
                      algorithm: str | None = None, backbone: str | None = None, steps: int | None = None,
                      assignments: dict[str, Any] | None = None, grid: list[str] = (), choice: list[str] = (),
                      uniform: list[str] = (), loguniform: list[str] = (), seeds: str | None = None,
                      metric: str | None = None, mode: str | None = None, trials: int | None = None,
                      max_concurrent: int | None = None, scheduler: str | None = None,
                      grace_steps: int | None = None, cpus_per_trial: float | None = None) -> SweepSpec:
    """Builds a :class:`SweepSpec` from a sweep file's keys and command-line options (an option wins over the file).

    A file's keys: ``dataset``, ``algorithm``, ``backbone``, ``steps``; ``set`` (a table of fixed values);
    ``grid`` and ``choice`` (tables of lists); ``uniform`` and ``loguniform`` (tables of ``[low, high]``);
    ``seeds`` (``"0-4"`` or a list); ``metric``, ``mode``, ``trials``, ``max_concurrent``, ``scheduler``,
    ``grace_steps``, ``cpus_per_trial``.

    Raises:
        SweepError: An unknown key, a malformed option, a range with ``low >= high`` (or ``low <= 0`` for
            ``loguniform``), an unknown mode or scheduler.
    """
    data = dict(file_data or {})
    unknown = sorted(set(data) - set(FILE_KEYS))
    if unknown:
        raise SweepError(f"Unknown key in the sweep file: {unknown[0]!r} (known: {', '.join(FILE_KEYS)}). "
                         f"Received: {unknown[0]}={data[unknown[0]]!r}")
    spec = SweepSpec()
    for key, value in (("dataset", dataset), ("algorithm", algorithm), ("backbone", backbone), ("steps", steps)):
        value = value if value is not None else data.get(key)
        if value is not None:
            spec.raw[key] = value
    spec.assignments = {**_table(data, "set"), **(assignments or {})}
    spec.grid = {name: _as_list("grid", name, values) for name, values in _table(data, "grid").items()}
    for pair in grid:
        name, values = parse_list_option("--grid", pair)
        spec.grid[name] = values
    file_seeds = data.get("seeds")
    if seeds is not None or file_seeds is not None:
        chosen = seeds if seeds is not None else file_seeds
        spec.grid["run.seed"] = parse_seeds(",".join(map(str, chosen)) if isinstance(chosen, list) else chosen)
    for kind, given in (("choice", choice), ("uniform", uniform), ("loguniform", loguniform)):
        entries = dict(_table(data, kind))
        for pair in given:
            name, values = parse_list_option(f"--{kind}", pair)
            entries[name] = values
        for name, values in entries.items():
            spec.random[name] = _random_dim(kind, name, _as_list(kind, name, values))
    both = sorted(set(spec.grid) & set(spec.random))
    if both:
        raise SweepError(f"{both[0]} is both a grid dimension and a sampled one; give it once. Received: {both[0]}")
    fixed = sorted((set(spec.grid) | set(spec.random)) & set(spec.assignments))
    if fixed:
        raise SweepError(f"{fixed[0]} is swept and also set to a fixed value; give it once. "
                         f"Received: {fixed[0]}={spec.assignments[fixed[0]]!r}")
    spec.metric = str(metric or data.get("metric") or "")
    spec.mode = str(mode or data.get("mode") or "")
    if spec.mode not in ("max", "min", ""):
        raise SweepError(f"mode: max or min. Received: mode={spec.mode!r}")
    spec.trials = _positive("trials", trials if trials is not None else data.get("trials"))
    spec.max_concurrent = _positive("max_concurrent", max_concurrent if max_concurrent is not None
                                    else data.get("max_concurrent"))
    spec.scheduler = str(scheduler or data.get("scheduler") or spec.scheduler)
    if spec.scheduler not in ("asha", "none"):
        raise SweepError(f"scheduler: asha or none. Received: scheduler={spec.scheduler!r}")
    spec.grace_steps = _positive("grace_steps", grace_steps if grace_steps is not None else data.get("grace_steps"))
    cpus = cpus_per_trial if cpus_per_trial is not None else data.get("cpus_per_trial")
    if cpus is not None:
        if not isinstance(cpus, (int, float)) or isinstance(cpus, bool) or not 0 < cpus <= 1024:
            raise SweepError(f"cpus_per_trial: a number above 0. Received: cpus_per_trial={cpus!r}")
        spec.cpus_per_trial = float(cpus)
    return spec


def _table(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, dict):
        raise SweepError(f"{key} in the sweep file is a table of name = value. Received: {key}={value!r}")
    return value


def _as_list(kind: str, name: str, values: Any) -> list[Any]:
    if not isinstance(values, list) or not values:
        raise SweepError(f"{kind}.{name}: a non-empty list of values. Received: {name}={values!r}")
    return values


def _positive(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SweepError(f"{name}: a whole number of at least 1. Received: {name}={value!r}")
    return value


def _random_dim(kind: str, name: str, values: list[Any]) -> dict[str, Any]:
    if kind == "choice":
        return {"kind": kind, "values": values}
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(values) != 2 or len(numbers) != 2:
        raise SweepError(f"--{kind} {name}: two numbers, low,high. Received: {name}={values!r}")
    low, high = float(values[0]), float(values[1])
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high or (kind == "loguniform" and low <= 0):
        need = "0 < low < high" if kind == "loguniform" else "low < high"
        raise SweepError(f"--{kind} {name}: {need}. Received: {name}={values!r}")
    return {"kind": kind, "low": low, "high": high}


def describe_point(point: dict[str, Any]) -> str:
    """``inner_lr=0.01, run.seed=1``."""
    return ", ".join(f"{name}={json.dumps(value)}" for name, value in point.items())


def check_points(resolve: Any, spec: SweepSpec) -> list[dict[str, Any]]:
    """Resolves every grid point (and every choice value and range end) with ``resolve(raw, assignments)``, the
    ordinary config resolution; returns the grid points.

    Raises:
        SweepError: The first point that does not resolve, with its values and the resolution's message (which
            names the field and the value).
    """
    from metalab.core.engine.config import ConfigError

    for name in ("dataset", "algorithm"):
        if not spec.raw.get(name) and name not in spec.assignments:
            raise SweepError(f"{name}: a sweep needs one (--{name} or `{name} = ...` in the sweep file). "
                             f"Received: {name}=None")
    points = spec.grid_points()
    # Each sampled dimension is checked at its extremes (or each of its choices), beside the first grid point.
    corners = [{}]
    for name, dim in spec.random.items():
        values = dim["values"] if dim["kind"] == "choice" else [dim["low"], dim["high"]]
        corners += [{name: v} for v in values]
    first_random = {name: (dim["values"][0] if dim["kind"] == "choice" else dim["low"])
                    for name, dim in spec.random.items()}
    checks = [(f"grid point {i + 1} of {len(points)}", point, {**first_random, **point})
              for i, point in enumerate(points)]
    checks += [("sampled value", corner, {**first_random, **points[0], **corner}) for corner in corners[1:]]
    for where, shown, values in checks:
        try:
            resolve(dict(spec.raw), {**spec.assignments, **values})
        except ConfigError as exc:
            raise SweepError(f"{where} ({describe_point(shown) or 'the fixed values'}) is invalid: {exc}") from None
        except (ValueError, PermissionError) as exc:  # access and cap refusals
            raise SweepError(f"{where} ({describe_point(shown) or 'the fixed values'}) is refused: {exc}") from None
    return points


def plan(services: Any, spec: SweepSpec) -> tuple[list[dict[str, Any]], int]:
    """Resolves every grid point before anything starts and fills in the objective's defaults (``val_mse``, ``min``
    on a regression dataset; ``val_accuracy``, ``max`` otherwise); returns the points and the most steps any of them
    trains.

    Raises:
        SweepError: A point does not resolve (the message names the field and the value).
    """
    steps: list[int] = []
    datasets: list[str] = []

    def resolve(raw: dict[str, Any], assignments: dict[str, Any]) -> Any:
        config = services.resolve(raw, assignments, recommended=True)
        steps.append(int(config.steps))
        datasets.append(config.dataset)
        return config

    points = check_points(resolve, spec)
    if not spec.metric:
        kind = getattr(services.registry.datasets.get(datasets[0]), "kind", "classification")
        spec.metric = "val_mse" if kind == "regression" else "val_accuracy"
    if not spec.mode:
        spec.mode = "min" if spec.store_metric.rsplit("/", 1)[-1] in ("mse", "loss") else "max"
    return points, max(steps)

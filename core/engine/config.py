"""The run configuration: validated once, at the edge, against the chosen plugins' parameter models."""

from __future__ import annotations

import copy
import logging
import numbers
from typing import Any, Literal

import pydantic
from pydantic import Field

from metalab.core.contract.specs import SPLITS, Params

logger = logging.getLogger(__name__)

# The run fields naming plugins: their --set values choose the plugins, so they are applied before any lookup.
_PLUGIN_FIELDS = {"dataset": "dataset", "algorithm": "algorithm", "backbone": "backbone", "test_dataset": "dataset"}


class ConfigError(ValueError):
    """A run configuration is invalid; the message names the field, the problem and the value received."""


#: RunConfig's steps when none are given, and the steps the base cadences below are meant for.
BASE_STEPS = 1000
#: The run fields that say how often something happens during training. Left unset, each scales with the run's
#: steps (:func:`scaled_cadence`) from its recommended value: the dataset's preset for the algorithm, else these.
BASE_CADENCES = {"val_every": 100, "checkpoint_every": 100, "log_every": 10}
CADENCE_FIELDS = tuple(BASE_CADENCES)
#: The episode shape of a classification dataset that gives none (``DatasetSpec.episode_defaults`` goes over it).
BASE_EPISODE = {"ways": 5, "shots": 1, "queries": 15}
_CADENCE_HELP = ("Empty: scales with the steps: the recommended interval (the dataset's for this algorithm, else "
                 "{base} per 1,000 steps), shrunk in proportion for a run with fewer steps than recommended (at least "
                 "1). A value above the steps {what}: the Train page and metalab train warn.")


def scaled_cadence(every: int, at_steps: int, steps: int) -> int:
    """A cadence recommended as ``every`` steps for a run of ``at_steps``, for a run of ``steps``.

    Shrunk in proportion for a shorter run, so a short run still validates, logs and checkpoints along the way;
    never more than ``every`` (a longer run keeps it) and never below 1.

    Example: 500 recommended for 4,000 steps gives 37 for 300 steps, 500 for 4,000 and 500 for 100,000.
    """
    return max(1, min(int(every), int(every) * int(steps) // max(1, int(at_steps))))


def recommended_values(dataset: Any, algorithm_id: str) -> dict[str, Any]:
    """The recommended starting values of a run of ``algorithm_id`` on ``dataset``: one source for both the
    dashboard's Train form and ``metalab train``.

    In order, each over the one before: the episode shape (``BASE_EPISODE`` for classification, then the dataset's
    ``episode_defaults``), the papers' parameters on this dataset (``algorithm_defaults``, as ``algorithm.NAME``),
    then the dataset's ``presets`` for every algorithm (``"*"``) and for this one. Cadences listed here are the
    references :func:`resolve_config` scales to the run's steps; they are not fixed values.

    Args:
        dataset: A ``DatasetSpec``.
        algorithm_id: The algorithm's id.

    Returns:
        ``{name: value}`` with run fields unqualified and plugin parameters qualified (``algorithm.inner_lr``),
        as ``metalab train --set`` and the Train page's link take them.
    """
    values: dict[str, Any] = dict(BASE_EPISODE) if dataset.kind == "classification" else {}
    values.update(dataset.episode_defaults)
    if dataset.kind in ("regression", "environment"):
        values.pop("ways", None)
    values.update({f"algorithm.{k}": v for k, v in (dataset.algorithm_defaults.get(algorithm_id) or {}).items()})
    presets = dataset.presets or {}
    values.update(presets.get("*") or {})
    values.update(presets.get(algorithm_id) or {})
    return copy.deepcopy(values)


def config_warnings(config: "RunConfig") -> list[str]:
    """What a valid config will make a run skip: a cadence above the run's steps, named with its value.

    Returns:
        One line per problem, e.g. ``"val_every: 500 is more than the run's 300 steps, ..."``; empty when none.
    """
    steps = config.steps
    found = []
    for name, skipped in (
        ("val_every", "validates only once, at its last step (no validation curve)"),
        ("checkpoint_every", "keeps no checkpoint before it ends (a crash or a kill restarts it from step 0)"),
        ("log_every", "logs its training metrics only at its last step (no training curve)"),
    ):
        value = getattr(config, name)
        if value is not None and value > steps:
            found.append(f"{name}: {value} is more than the run's {steps} steps, so the run {skipped}; lower it or "
                         f"leave it empty to scale with the steps. Received: {name}={value}, steps={steps}")
    return found


class RunConfig(pydantic.BaseModel):
    """Everything that defines a training run (stored with the run, so a run can be reproduced).

    ``ways``/``shots``/``queries`` left empty take the dataset's defaults; ``backbone`` left empty takes the
    dataset's default backbone; ``val_every``/``checkpoint_every``/``log_every`` left empty scale with ``steps``
    (:func:`resolve_config` from the dataset's recommendation; a RunConfig made directly from
    :data:`BASE_CADENCES`). Plugin parameters are validated by each plugin's own model.
    """

    model_config = pydantic.ConfigDict(extra="forbid")

    dataset: str = Field(description="Dataset plugin id, <plugin>.<name>.")
    algorithm: str = Field(description="Algorithm plugin id, <plugin>.<name>.")
    backbone: str | None = Field(None, description="Backbone plugin id; empty: the dataset's default.")
    dataset_params: dict[str, Any] = Field(default_factory=dict)
    algorithm_params: dict[str, Any] = Field(default_factory=dict)
    backbone_params: dict[str, Any] = Field(default_factory=dict)
    ways: int | None = Field(None, ge=1, le=1000, description="Classes per episode (N).")
    shots: int | None = Field(None, ge=1, le=1000, description="Support examples per class (K).")
    queries: int | None = Field(None, ge=1, le=1000, description="Query examples per class.")
    steps: int = Field(BASE_STEPS, ge=1, le=10_000_000, description="Meta-training steps.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed for weights, task sampling and evaluation.")
    val_every: int | None = Field(
        None, ge=1, title="Validate every (steps)",
        description="Validate every this many steps (and at the last step). " + _CADENCE_HELP.format(
            what="validates only at the last step", base=BASE_CADENCES["val_every"]),
    )
    val_episodes: int = Field(50, ge=1, le=100_000, description="Fixed validation episodes.")
    test_episodes: int = Field(600, ge=1, le=100_000, title="Meta-test episodes",
                               description="Fixed meta-test episodes (the paper protocol: 600).")
    checkpoint_every: int | None = Field(
        None, ge=1, title="Checkpoint every (steps)",
        description="Checkpoint every this many steps (and at the end). " + _CADENCE_HELP.format(
            what="keeps no checkpoint until it ends", base=BASE_CADENCES["checkpoint_every"]),
    )
    log_every: int | None = Field(
        None, ge=1, title="Log every (steps)",
        description="Log training metrics every this many steps (and at the last step). " + _CADENCE_HELP.format(
            what="logs its training metrics only at the last step", base=BASE_CADENCES["log_every"]),
    )
    eval_at_end: bool = Field(True, title="Meta-test when training ends",
                              description="Run the meta-test evaluation when training ends.")
    device: str = Field("auto", description="'auto', 'cpu', or a device name such as 'GPU:0'.")
    devices: int | Literal["all"] = Field(
        1,
        description=(
            "Devices one run trains on: 1, a number N, or 'all'. Each meta-batch's tasks are split across the "
            "machine's GPUs (its CPU devices when it has none, see METALAB_CPU_DEVICES) and their meta-gradients "
            "averaged, the same as on one device; meta_batch_size must be a multiple of N."
        ),
    )
    precision: Literal["float32", "tf32", "mixed_bfloat16", "mixed_float16"] = Field(
        "float32",
        description=(
            "Compute precision: float32 (exact: matrix products and convolutions in full float32, also on GPUs "
            "whose libraries would use TensorFloat-32); tf32 (float32 with TensorFloat-32 matrix products and "
            "convolutions on GPUs that have them, such as A100 and H100: faster, with a 10-bit mantissa, so "
            "meta-gradients are approximate; the same as float32 on CPUs); mixed_bfloat16 (bfloat16 compute, "
            "float32 weights and head; for GPUs "
            "and TPUs with bfloat16 units; no loss scaling is needed since bfloat16 has float32's exponent range); "
            "or mixed_float16 (float16 compute with dynamic loss scaling; for GPUs with float16 units)."
        ),
    )
    jit_compile: bool = Field(
        False,
        title="XLA (jit_compile)",
        description="Compile the training step with XLA (often faster on GPU and TPU; measured slower on CPU here).",
    )
    test_dataset: str | None = Field(
        None,
        description=(
            "Cross-domain transfer: also meta-test on this dataset's test split (e.g. train on handwritten "
            "characters, test on digits); empty: in-domain only."
        ),
    )
    test_dataset_params: dict[str, Any] = Field(default_factory=dict, description="Parameters of test_dataset.")

    @pydantic.field_validator("devices", mode="before")
    @classmethod
    def _devices(cls, value: Any) -> int | str:
        # One clear message for every bad value (a union type would report each member's failure).
        text = value.strip().lower() if isinstance(value, str) else None
        if text == "all":
            return "all"
        if text is not None and text.isdigit():
            value = int(text)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError("expected 'all' or a whole number of devices, at least 1")
        return value

    @pydantic.model_validator(mode="after")
    def _cadences(self) -> "RunConfig":
        # resolve_config fills them from the dataset's recommendation; a RunConfig made directly scales the base.
        for name in CADENCE_FIELDS:
            if getattr(self, name) is None:
                setattr(self, name, scaled_cadence(BASE_CADENCES[name], BASE_STEPS, self.steps))
        return self


def format_validation_error(exc: pydantic.ValidationError, prefix: str = "") -> str:
    """One line per problem: ``field: message. Received: field=value``."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"])
        name = f"{prefix}{loc}" if loc else prefix.rstrip(".")
        message = err["msg"]
        if "input" in err and err["type"] != "missing":
            lines.append(f"{name}: {message}. Received: {name}={err['input']!r}")
        else:
            lines.append(f"{name}: {message}.")
    return "\n".join(lines)


def _range_hint(model: type[pydantic.BaseModel], name: str) -> str:
    field = model.model_fields.get(name)
    if field is None:
        return ""
    bounds = []
    for meta in field.metadata:
        for attr, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            value = getattr(meta, attr, None)
            if value is not None:
                bounds.append(f"{symbol} {value}")
    return f" (allowed: {', '.join(bounds)})" if bounds else ""


def validate_params(model: type[pydantic.BaseModel], values: dict[str, Any], prefix: str) -> Params:
    """Validates plugin parameters; raises :class:`ConfigError` naming field, allowed range and value."""
    try:
        return model(**values)
    except pydantic.ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else ""
            name = f"{prefix}.{field}" if field else prefix
            if err["type"] == "extra_forbidden":
                known = ", ".join(sorted(model.model_fields))
                lines.append(f"{name}: unknown parameter (known: {known}). Received: {field}={err['input']!r}")
            else:
                lines.append(f"{name}: {err['msg']}{_range_hint(model, field)}. Received: {field}={err.get('input')!r}")
        raise ConfigError("\n".join(lines)) from None


def parse_assignments(pairs: list[str]) -> dict[str, Any]:
    """Parses ``--set name=value`` pairs; values are read as JSON when they parse, else as strings.

    A name may be qualified (``algorithm.inner_lr``, ``dataset.split``, ``backbone.filters``, ``run.seed``); an
    unqualified name (``ways``, ``inner_lr``) is looked up by :func:`resolve_config`, which refuses one that both the
    run and a plugin, or two plugins, have.
    """
    import json

    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects name=value. Received: --set {pair!r}")
        name, raw = pair.split("=", 1)
        name = name.strip()
        if not name:
            raise ConfigError(f"--set expects name=value with a name. Received: --set {pair!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        out[name] = value
    return out


def resolve_config(registry: Any, raw: dict[str, Any], assignments: dict[str, Any] | None = None, *,
                   recommended: bool = False) -> RunConfig:
    """Builds a complete, validated :class:`RunConfig`.

    A cadence (``val_every``, ``checkpoint_every``, ``log_every``) left unset scales with the run's steps
    (:func:`scaled_cadence`) from its recommended value; :func:`config_warnings` names one set above the steps.

    Args:
        registry: A :class:`metalab.core.contract.manager.PluginRegistry`.
        raw: Run fields (``dataset``, ``algorithm``, ``steps``, ...).
        assignments: ``--set`` values; an unqualified name goes to the one of the run fields, the algorithm, the
            dataset and the backbone that has it (a name two of them have is refused: qualify it as
            ``run.NAME``, ``algorithm.NAME``, ``dataset.NAME`` or ``backbone.NAME``); ``test_dataset.NAME`` sets a
            parameter of the cross-domain test dataset.
        recommended: Start from :func:`recommended_values` (the dataset's presets: a quick first run) wherever
            ``raw`` and ``assignments`` leave a field unset, as ``metalab train`` and the Train page do; otherwise
            from RunConfig's and the plugins' defaults and the dataset's ``algorithm_defaults``.

    Raises:
        ConfigError: an unknown plugin id (``--set dataset=...`` and the like included), a parameter out of
            range, an algorithm that does not support the dataset's kind, a ``test_dataset`` of another kind, or an
            episode shape a split cannot serve (``ways`` above a split's classes, ``shots + queries`` above the
            images of its smallest class) when the dataset's ``split_sizes`` can tell without loading the data.
    """
    raw = dict(raw)
    for key in ("dataset_params", "algorithm_params", "backbone_params", "test_dataset_params"):
        raw[key] = dict(raw.get(key) or {})
    assignments = dict(assignments or {})
    # --set dataset=... and the like choose the plugins whose parameters the other assignments name.
    for name in _PLUGIN_FIELDS:
        if name in assignments:
            raw[name] = assignments.pop(name)

    dataset = _lookup(registry, "dataset", raw.get("dataset"))
    algorithm = _lookup(registry, "algorithm", raw.get("algorithm"))
    starting = recommended_values(dataset, algorithm.id) if recommended else {}
    for name, value in starting.items():
        head, _, tail = name.partition(".")
        if tail and f"{head}_params" in raw:
            raw[f"{head}_params"].setdefault(tail, value)
        elif not tail and name not in CADENCE_FIELDS and raw.get(name) is None:
            raw[name] = value
    backbone_id = raw.get("backbone") or dataset.default_backbone
    if backbone_id is None:
        raise ConfigError(
            f"backbone: dataset {dataset.id!r} names no default backbone; pass one. Received: backbone=None"
        )
    backbone = _lookup(registry, "backbone", backbone_id)
    raw["backbone"] = backbone.id

    # The papers' settings for this dataset come first; the user's own values override them.
    raw["algorithm_params"] = {**dataset.algorithm_defaults.get(algorithm.id, {}), **raw["algorithm_params"]}
    owners = {"algorithm": algorithm.params, "dataset": dataset.params, "backbone": backbone.params}
    ids = {"run": "the run", "algorithm": algorithm.id, "dataset": dataset.id, "backbone": backbone.id}
    for name, value in assignments.items():
        head, _, tail = name.partition(".")
        if tail and head in owners:
            raw[f"{head}_params"][tail] = value
        elif tail and head == "test_dataset":
            # Never matched unqualified: the test dataset often shares parameter names with the training one.
            raw["test_dataset_params"][tail] = value
        elif tail and head == "run" and _is_run_field(tail):
            raw[tail] = value
        else:
            # A run field is a match like any other: `seed` alone must not silently pick the run's seed when the
            # dataset has a `seed` of its own.
            matches = ["run"] if _is_run_field(name) else []
            matches += [owner for owner, model in owners.items() if name in model.model_fields]
            if len(matches) == 1 and matches[0] == "run":
                raw[name] = value
            elif len(matches) == 1:
                raw[f"{matches[0]}_params"][name] = value
            elif len(matches) > 1:
                qualified = " or ".join(f"{m}.{name}" for m in matches)
                holders = [ids[m] if m == "run" else f"{m} {ids[m]}" for m in matches]
                owned = f"{', '.join(holders[:-1])} and {holders[-1]} {'both' if len(holders) == 2 else 'all'}"
                raise ConfigError(
                    f"Parameter {name!r} is ambiguous: {owned} have it; write {qualified}. Received: {name}={value!r}"
                )
            else:
                raise ConfigError(
                    f"Unknown parameter {name!r}: not a run field nor a parameter of {algorithm.id}, {dataset.id} "
                    f"or {backbone.id}. Received: {name}={value!r}"
                )

    test_dataset = _lookup(registry, "test_dataset", raw["test_dataset"]) if raw.get("test_dataset") else None

    for key, val in dataset.episode_defaults.items():
        if raw.get(key) is None:
            raw[key] = val
    if dataset.kind in ("regression", "environment"):
        raw["ways"] = 1
    for key, default in BASE_EPISODE.items():
        if raw.get(key) is None:
            raw[key] = default
    steps = raw.get("steps", BASE_STEPS)
    if _positive_int(steps):  # else RunConfig refuses it below
        for name in CADENCE_FIELDS:
            if raw.get(name) is None:
                every, at_steps = BASE_CADENCES[name], BASE_STEPS
                if _positive_int(starting.get(name)) and _positive_int(starting.get("steps", BASE_STEPS)):
                    every, at_steps = starting[name], starting.get("steps", BASE_STEPS)
                raw[name] = scaled_cadence(every, at_steps, steps)

    try:
        config = RunConfig(**raw)
    except pydantic.ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
    if dataset.kind not in algorithm.task_kinds:
        fitting = sorted(i for i, spec in (getattr(registry, "algorithms", None) or {}).items()
                         if dataset.kind in spec.task_kinds)
        raise ConfigError(
            f"Algorithm {algorithm.id!r} supports {', '.join(algorithm.task_kinds)} tasks, but dataset {dataset.id!r} "
            f"is {dataset.kind}" + (f"; algorithms for {dataset.kind} tasks: {', '.join(fitting)}" if fitting else "")
            + f". Received: algorithm={algorithm.id!r}, dataset={dataset.id!r}"
        )
    if dataset.kind == "classification" and config.ways < 2:
        raise ConfigError(f"ways: classification needs at least 2 classes per episode. Received: ways={config.ways}")

    # Normalise plugin params to their full validated form so the stored config is explicit.
    config.algorithm_params = validate_params(algorithm.params, config.algorithm_params, "algorithm").model_dump()
    meta_batch_size = config.algorithm_params.get("meta_batch_size")
    if isinstance(config.devices, int) and config.devices > 1 and isinstance(meta_batch_size, int) \
            and meta_batch_size % config.devices:
        raise ConfigError(
            f"devices: the meta-batch's {meta_batch_size} tasks must split evenly across the {config.devices} "
            f"devices; make meta_batch_size a multiple of {config.devices}. "
            f"Received: devices={config.devices}, meta_batch_size={meta_batch_size}")
    dataset_params = validate_params(dataset.params, config.dataset_params, "dataset")
    config.dataset_params = dataset_params.model_dump()
    config.backbone_params = validate_params(backbone.params, config.backbone_params, "backbone").model_dump()
    _check_split_sizes(dataset, dataset_params, config, SPLITS, "dataset")
    if test_dataset is not None:
        if test_dataset.kind != dataset.kind:
            raise ConfigError(
                f"test_dataset: a {dataset.kind} run can only be meta-tested on a {dataset.kind} dataset, but "
                f"{test_dataset.id!r} is {test_dataset.kind}. Received: test_dataset={test_dataset.id!r}"
            )
        config.test_dataset = test_dataset.id
        test_params = validate_params(test_dataset.params, config.test_dataset_params, "test_dataset")
        config.test_dataset_params = test_params.model_dump()
        # Only its test split is used (cross-domain meta-testing).
        _check_split_sizes(test_dataset, test_params, config, ("test",), "test_dataset")
    elif config.test_dataset_params:
        raise ConfigError(
            "test_dataset_params: given without a test_dataset; name the dataset they belong to. "
            f"Received: test_dataset_params={config.test_dataset_params!r}"
        )
    return config


def learning_rate_params(algorithm_params: dict[str, Any]) -> dict[str, float]:
    """The learning rates among an algorithm's parameters, ``{name: value}``, in the parameters' order.

    A learning rate is a float parameter whose name has the word ``lr`` (``lr``, ``outer_lr``, ``inner_lr_init``,
    ``finetune_lr``) or ``stepsize`` (Reptile's ``outer_stepsize``); ``lr_decay_every`` is an integer, not a rate.

    Args:
        algorithm_params: A run's validated algorithm parameters (``RunConfig.algorithm_params``).
    """
    found = {}
    for name, value in algorithm_params.items():
        words = name.lower().split("_")
        if isinstance(value, float) and not isinstance(value, bool) and ("lr" in words or "stepsize" in words):
            found[name] = value
    return found


def divergence_hint(config: RunConfig | dict[str, Any] | None) -> str:
    """What to do about a run that diverged, naming the run's own algorithm's learning rates and their values.

    Args:
        config: The run's config (a :class:`RunConfig` or its stored dict); ``None`` gives the generic advice.

    Returns:
        A clause such as ``"lower the learning rates of metalab_foo.foo (outer_lr=0.001)"``.
    """
    if config is None:
        return "lower the algorithm's learning rates"
    data = config.model_dump() if isinstance(config, RunConfig) else dict(config)
    rates = learning_rate_params(dict(data.get("algorithm_params") or {}))
    algorithm = data.get("algorithm") or "the algorithm"
    if not rates:
        return f"lower the learning rates of {algorithm}"
    listed = ", ".join(f"{name}={value:g}" for name, value in rates.items())
    return f"lower the learning rates of {algorithm} ({listed}; --set {next(iter(rates))}=...)"


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_run_field(name: str) -> bool:
    return name in RunConfig.model_fields and not name.endswith("_params")


def _lookup(registry: Any, field: str, spec_id: Any) -> Any:
    """The spec a run field names; an unknown id is a :class:`ConfigError` naming the field, value and known ids."""
    from metalab.core.contract.manager import UnknownPluginError

    kind = _PLUGIN_FIELDS[field]
    try:
        return getattr(registry, kind)(spec_id)
    except UnknownPluginError as exc:
        raise ConfigError(f"{field}: {str(exc).replace(f'Received: {kind}=', f'Received: {field}=')}") from None


def _check_split_sizes(spec: Any, params: Any, config: RunConfig, splits: tuple[str, ...], field: str) -> None:
    """Refuses an episode shape a split cannot serve, from the dataset's ``split_sizes`` (no data is loaded).

    A dataset without ``split_sizes`` (or a regression one) is checked when training starts instead.
    """
    if spec.kind != "classification" or getattr(spec, "split_sizes", None) is None:
        return
    try:
        sizes = spec.split_sizes(params)
    except ValueError as exc:  # the plugin says these parameters cannot give a usable split
        raise ConfigError(f"{field}: {exc}") from None
    except Exception:  # noqa: BLE001 - a plugin's bug here only postpones the check to training start
        logger.warning("split_sizes of dataset %r failed; the episode shape is checked when training starts",
                       spec.id, exc_info=True)
        return
    problems = []
    for split in splits:
        info = sizes.get(split) if isinstance(sizes, dict) else None
        classes = info.get("classes") if isinstance(info, dict) else None
        smallest = info.get("min_per_class") if isinstance(info, dict) else None
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (classes, smallest)):
            logger.warning("split_sizes of dataset %r gave no class counts for split %r: %r; the episode shape is "
                           "checked when training starts", spec.id, split, info)
            continue
        where = f"{'test_dataset ' if field == 'test_dataset' else ''}{spec.id}'s {split} split"
        if config.ways > classes:
            problems.append(
                f"ways: {where} has {classes} classes, fewer than the {config.ways} an episode needs; lower ways "
                f"or change the {field}'s parameters. Received: ways={config.ways}"
            )
        if config.shots + config.queries > smallest:
            problems.append(
                f"shots + queries: {where} has a class with only {smallest} images, fewer than the "
                f"{config.shots + config.queries} an episode takes from each class; lower shots or queries. "
                f"Received: shots={config.shots}, queries={config.queries}"
            )
    if problems:
        raise ConfigError("\n".join(problems))

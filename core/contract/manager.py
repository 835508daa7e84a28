"""The plugin manager factory: loads metalab plugins one at a time and keeps every failure beside what loaded.

Built-in plugins and pip-installed ones go through the same path (entry points of the ``metalab`` group); a
broken plugin is recorded as failed, with its package, version and traceback, and never stops the others: not by
raising (``SystemExit`` included), and not by hanging, since each import and each registration hook runs under a
time budget (``METALAB_PLUGIN_IMPORT_TIMEOUT``).
"""

from __future__ import annotations

import importlib.metadata
import inspect
import logging
import math
import numbers
import os
import re
import sys
import threading
import time
import traceback as traceback_module
import types
from dataclasses import dataclass, field
from typing import Any, Iterable

import pluggy

from metalab.core.contract import hookspecs
from metalab.core.contract.factories import SpecFactory
from metalab.core.contract.specs import (
    PLUGIN_API_VERSION,
    AlgorithmSpec,
    BackboneSpec,
    ClassificationDataset,
    DatasetSpec,
)
from metalab.core.settings import Settings, load_settings

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginRecord",
    "PluginRegistry",
    "UnknownPluginError",
    "PluginLoadError",
    "PluginContractError",
    "DEFAULT_IMPORT_TIMEOUT",
    "IMPORT_TIMEOUT_ENV",
    "SLOW_PLUGIN_SECONDS",
    "check_factory_result",
    "backbone_maker",
    "plugin_import_timeout",
    "make_plugin_manager",
    "normalize_namespace",
]

logger = logging.getLogger(__name__)

#: The entry-point group (and pluggy project name) a plugin package declares its plugins under.
ENTRY_POINT_GROUP = "metalab"

# The registration hooks the loader calls, what each must return, and the registry table it fills.
_REGISTRATION_HOOKS: dict[str, tuple[str, type]] = {
    "metalab_register_algorithms": ("algorithm", AlgorithmSpec),
    "metalab_register_datasets": ("dataset", DatasetSpec),
    "metalab_register_backbones": ("backbone", BackboneSpec),
}
_KINDS = ("algorithm", "dataset", "backbone")
_API_RE = re.compile(r"^(\d+)\.(\d+)$")

#: The environment variable holding the seconds a plugin's import (and, apart, its registration hooks) may take.
IMPORT_TIMEOUT_ENV = "METALAB_PLUGIN_IMPORT_TIMEOUT"
#: The budget when ``METALAB_PLUGIN_IMPORT_TIMEOUT`` is unset: built-ins import in well under a second.
DEFAULT_IMPORT_TIMEOUT = 10.0
#: A plugin whose import and registration took at least this many seconds is listed as slow.
SLOW_PLUGIN_SECONDS = 1.0

# Imports that ran past their budget and are still running, by module name. Python cannot stop an import, and a
# second import of a module still being imported waits for the first, so a later load in this process (a new
# registry, or another entry point of the same module) must skip the module at once rather than wait again.
# Process-wide on purpose: the import system it mirrors is process-wide too.
_STALLED_IMPORTS: dict[str, tuple[threading.Thread, float]] = {}
_STALLED_LOCK = threading.Lock()


@dataclass
class PluginRecord:
    """What the loader knows about one plugin, loaded or not.

    Attributes:
        name: The entry-point name (or the name given for a directly registered plugin).
        namespace: The id prefix the plugin's specs must use: its normalized distribution name (``metalab`` for
            the built-ins, ``metalab-foo`` -> ``metalab_foo``), or the normalized name for a plugin registered
            directly.
        package: The distribution name, or ``None`` for a directly registered plugin.
        version: The distribution version, or ``None``.
        module: The module path of the plugin (``module.Class`` for a plugin object).
        status: ``"loaded"``, ``"failed"`` or ``"disabled"``.
        error: One line saying what went wrong (``None`` when loaded).
        traceback: The formatted traceback of the exception behind ``error``, where there was one.
        api_version: The plugin API version the plugin targets (its ``METALAB_PLUGIN_API``), where known.
        hooks: The hook names the plugin implements (empty when it was never registered).
        seconds: Wall-clock seconds its import and registration took (``None`` for a disabled plugin); a plugin
            stopped by the time budget shows about the budget.
    """

    name: str
    namespace: str
    package: str | None
    version: str | None
    module: str
    status: str
    error: str | None = None
    traceback: str | None = None
    api_version: str | None = None
    hooks: list[str] = field(default_factory=list)
    seconds: float | None = None


class UnknownPluginError(KeyError, ValueError):
    """Raised when an algorithm, dataset or backbone id names nothing that loaded.

    A ``KeyError`` (lookup by id) and a ``ValueError`` (a bad value in a run config) at once.

    Attributes:
        kind: ``"algorithm"``, ``"dataset"``, ``"backbone"`` or ``"spec"``.
        id: The id asked for.
        known: The ids of that kind that did load.
    """

    def __init__(self, message: str, *, kind: str, id: str, known: list[str]):
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.id = id
        self.known = known

    def __str__(self) -> str:
        # KeyError would otherwise print the repr of its argument, quotes and escapes included.
        return self.message


class PluginLoadError(RuntimeError):
    """Raised in strict mode when any plugin failed to load; the message lists every failure.

    Attributes:
        failures: The failed :class:`PluginRecord` objects.
    """

    def __init__(self, failures: list[PluginRecord]):
        lines = [f"{len(failures)} metalab plugin(s) failed to load (strict mode is on):"]
        for record in failures:
            lines.append(f"  - {record.name} ({_origin(record)}): {record.error}")
        lines.append(
            "Fix or uninstall them, block them with METALAB_DISABLE_PLUGINS=<name>, "
            "or turn strict mode off (METALAB_STRICT_PLUGINS=0)."
        )
        super().__init__("\n".join(lines))
        self.failures = failures


class PluginContractError(TypeError, ValueError):
    """Raised when a plugin's factory returns something core cannot use; the message names the plugin.

    A ``TypeError`` (the wrong kind of object) and a ``ValueError`` at once, so that callers reporting unusable
    datasets or configs (``except ValueError``) show it as they show those.

    Attributes:
        kind: ``"algorithm"``, ``"dataset"`` or ``"backbone"``.
        spec_id: The id of the spec whose factory was called.
        plugin: The name of the plugin providing the spec, where known.
        received: The type name of what the factory returned.
    """

    def __init__(self, message: str, *, kind: str, spec_id: str, plugin: str | None, received: str):
        super().__init__(message)
        self.kind = kind
        self.spec_id = spec_id
        self.plugin = plugin
        self.received = received


class _PluginFailure(Exception):
    """Internal: one plugin failed; carries the one-line error and the traceback, if any."""

    def __init__(self, error: str, tb: str | None = None):
        super().__init__(error)
        self.error = error
        self.traceback = tb


class PluginRegistry:
    """The loaded plugins and their specs, as made by :func:`make_plugin_manager`.

    Treat it as read-only: to see a different set of plugins, make a new registry.

    Attributes:
        pm: The ``pluggy.PluginManager`` holding the loaded plugins (failed ones are unregistered).
        plugins: One :class:`PluginRecord` per plugin seen, in load order, failed and disabled ones included.
        algorithms: ``{id: AlgorithmSpec}`` of every loaded algorithm, sorted by id.
        datasets: ``{id: DatasetSpec}``, sorted by id.
        backbones: ``{id: BackboneSpec}``, sorted by id.
    """

    def __init__(
        self,
        pm: pluggy.PluginManager,
        plugins: list[PluginRecord],
        algorithms: dict[str, AlgorithmSpec],
        datasets: dict[str, DatasetSpec],
        backbones: dict[str, BackboneSpec],
        owners: dict[tuple[str, str], str],
    ):
        self.pm = pm
        self.plugins = plugins
        self.algorithms = algorithms
        self.datasets = datasets
        self.backbones = backbones
        self._owners = owners
        # Loaded plugins have unique names (pluggy's key); a failed one may share a name with a loaded one.
        self._records = {record.name: record for record in plugins if record.status == "loaded"}

    def __repr__(self) -> str:
        return (
            f"PluginRegistry(plugins={len(self.plugins)}, failed={len(self.failures)}, "
            f"algorithms={list(self.algorithms)}, datasets={list(self.datasets)}, backbones={list(self.backbones)})"
        )

    def _table(self, kind: str) -> dict[str, Any]:
        return {"algorithm": self.algorithms, "dataset": self.datasets, "backbone": self.backbones}[kind]

    def _unknown(self, kind: str, spec_id: Any, known: list[str]) -> UnknownPluginError:
        message = f"Unknown {kind} {spec_id!r}. Known: {', '.join(known) if known else '(none)'}."
        # Point at a plugin that would have provided the id but did not load: the usual cause.
        prefix = spec_id.split(".", 1)[0] if isinstance(spec_id, str) else None
        culprits = [
            f"{r.name} ({r.status}): {r.error}" if r.error else f"{r.name} ({r.status})"
            for r in self.plugins
            if r.status != "loaded" and r.namespace == prefix
        ]
        if culprits:
            # The failure itself, not only the plugin's name: a training worker's log is often all a user sees.
            message += (
                f" Plugins of namespace {prefix!r} that did not load: {'; '.join(culprits)}"
                " (see `metalab plugins list`)."
            )
        return UnknownPluginError(f"{message} Received: {kind}={spec_id!r}", kind=kind, id=spec_id, known=known)

    def _get(self, kind: str, spec_id: str) -> Any:
        table = self._table(kind)
        if isinstance(spec_id, str) and spec_id in table:
            return table[spec_id]
        raise self._unknown(kind, spec_id, sorted(table))

    def algorithm(self, id: str) -> AlgorithmSpec:
        """Returns the algorithm spec with this id.

        Args:
            id: An algorithm id such as ``"metalab_foo.foo"``.

        Returns:
            The :class:`AlgorithmSpec`.

        Raises:
            UnknownPluginError: No loaded plugin provides it; the message lists the known ids.
        """
        return self._get("algorithm", id)

    def dataset(self, id: str) -> DatasetSpec:
        """Returns the dataset spec with this id; raises :class:`UnknownPluginError` like :meth:`algorithm`."""
        return self._get("dataset", id)

    def backbone(self, id: str) -> BackboneSpec:
        """Returns the backbone spec with this id; raises :class:`UnknownPluginError` like :meth:`algorithm`."""
        return self._get("backbone", id)

    def plugin_of(self, spec_id: str, kind: str | None = None) -> PluginRecord:
        """Returns the record of the plugin that provides a spec.

        Args:
            spec_id: An algorithm, dataset or backbone id.
            kind: ``"algorithm"``, ``"dataset"`` or ``"backbone"`` to look in one table only (ids are unique
                within a kind); by default the tables are searched in that order.

        Returns:
            The :class:`PluginRecord` of the providing plugin.

        Raises:
            UnknownPluginError: No loaded spec has this id.
            ValueError: ``kind`` is not one of the three kinds.
        """
        if kind is not None and kind not in _KINDS:
            raise ValueError(f"kind must be one of {', '.join(_KINDS)}. Received: kind={kind!r}")
        for k in (kind,) if kind else _KINDS:
            owner = self._owners.get((k, spec_id))
            if owner is not None:
                return self._records[owner]
        known = sorted({sid for (k, sid) in self._owners if kind is None or k == kind})
        raise self._unknown(kind or "spec", spec_id, known)

    @property
    def failures(self) -> list[PluginRecord]:
        """The records of plugins that failed to load (disabled ones are not failures)."""
        return [record for record in self.plugins if record.status == "failed"]

    def describe(self) -> list[dict[str, Any]]:
        """Returns one row per spec and one per plugin that did not load (``metalab plugins list --json``).

        Every row has the same keys: ``id``, ``kind`` (``"algorithm"``, ``"dataset"``, ``"backbone"``, or
        ``"plugin"`` for a plugin that did not load), ``title``, ``description``, ``paper``, ``plugin``,
        ``package``, ``version``, ``status``, ``error``, ``traceback``, ``params`` (the JSON schema of the
        spec's parameter model) and ``seconds`` (how long the plugin's import and registration took, see
        :attr:`PluginRecord.seconds`). Keys that do not apply are ``None``.

        Returns:
            A list of JSON-serialisable dicts: specs sorted by kind then id, then failed and disabled plugins.
        """
        rows: list[dict[str, Any]] = []
        for kind in _KINDS:
            for spec_id, spec in self._table(kind).items():
                record = self._records[self._owners[(kind, spec_id)]]
                rows.append(
                    {
                        "id": spec_id,
                        "kind": kind,
                        "title": spec.title,
                        "description": spec.description,
                        "paper": spec.paper,
                        "plugin": record.name,
                        "package": record.package,
                        "version": record.version,
                        "status": "loaded",
                        "error": None,
                        "traceback": None,
                        "params": spec.params.model_json_schema(),
                        "seconds": record.seconds,
                    }
                )
        for record in self.plugins:
            if record.status == "loaded":
                continue
            rows.append(
                {
                    "id": None,
                    "kind": "plugin",
                    "title": record.name,
                    "description": None,
                    "paper": None,
                    "plugin": record.name,
                    "package": record.package,
                    "version": record.version,
                    "status": record.status,
                    "error": record.error,
                    "traceback": record.traceback,
                    "params": None,
                    "seconds": record.seconds,
                }
            )
        return rows

    def slow_plugins(self, threshold: float = SLOW_PLUGIN_SECONDS) -> list[PluginRecord]:
        """The plugins whose import and registration took at least ``threshold`` seconds, slowest first.

        Failed ones count too: a plugin stopped by the time budget is the slowest of all.

        Args:
            threshold: Seconds; by default :data:`SLOW_PLUGIN_SECONDS`.

        Returns:
            :class:`PluginRecord` objects sorted by ``seconds``, descending.
        """
        timed = [r for r in self.plugins if r.seconds is not None and r.seconds >= threshold]
        return sorted(timed, key=lambda r: r.seconds, reverse=True)

    def check_factory_result(self, spec: Any, result: Any) -> Any:
        """:func:`check_factory_result` naming the plugin of ``spec`` from this registry; returns ``result``."""
        return check_factory_result(spec, result, registry=self)


def normalize_namespace(name: str) -> str:
    """Returns the id prefix for a distribution or plugin name: lowercased, runs of ``-_.`` as one ``_``.

    Args:
        name: A distribution name such as ``"metalab-foo"``.

    Returns:
        The namespace, e.g. ``"metalab_foo"``.
    """
    return re.sub(r"[-_.]+", "_", name).lower()


def _origin(record: PluginRecord) -> str:
    if record.package is None:
        return f"registered directly, module {record.module}"
    return f"{record.package} {record.version}"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _describe_exception(exc: BaseException) -> str:
    message = _one_line(str(exc))
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _format_traceback(exc: BaseException) -> str:
    return "".join(traceback_module.format_exception(type(exc), exc, exc.__traceback__))


def _module_of(plugin: object) -> str:
    if isinstance(plugin, types.ModuleType):
        return plugin.__name__
    if isinstance(plugin, type):
        return f"{plugin.__module__}.{plugin.__qualname__}"
    cls = type(plugin)
    return f"{cls.__module__}.{cls.__qualname__}"


def _safe_repr(value: Any, limit: int = 200) -> str:
    """``repr(value)`` on one line, cut to ``limit`` characters; never raises (a plugin's ``__repr__`` may)."""
    try:
        text = _one_line(repr(value))
    except Exception:  # noqa: BLE001 - only for a message
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def plugin_import_timeout(settings: Settings | None = None) -> float:
    """The seconds a plugin's import, and apart its registration hooks, may take; ``0`` means no limit.

    Read from ``settings.plugin_import_timeout`` when the settings have that field, else from the environment
    variable ``METALAB_PLUGIN_IMPORT_TIMEOUT``; :data:`DEFAULT_IMPORT_TIMEOUT` when neither is set. A value that is
    not a finite number >= 0 is ignored with a warning: a typo in the environment must not stop the host.

    Args:
        settings: The settings, or ``None``.

    Returns:
        The budget in seconds, ``0.0`` for none.
    """
    value = getattr(settings, "plugin_import_timeout", None) if settings is not None else None
    source = "plugin_import_timeout"
    if value is None:
        value = os.environ.get(IMPORT_TIMEOUT_ENV, "").strip() or None
        source = IMPORT_TIMEOUT_ENV
    if value is None:
        return DEFAULT_IMPORT_TIMEOUT
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not (math.isfinite(seconds) and seconds >= 0):
        logger.warning(
            "%s must be a number of seconds >= 0 (0: no limit); using %s s. Received: %s=%r",
            source, DEFAULT_IMPORT_TIMEOUT, source, value,
        )
        return DEFAULT_IMPORT_TIMEOUT
    return min(seconds, threading.TIMEOUT_MAX)


class _TimedOut:
    """Internal: what :func:`_bounded_call` returns when the call ran past its budget."""

    def __init__(self, thread: threading.Thread):
        self.thread = thread


def _bounded_call(fn: Any, timeout: float, name: str) -> tuple[str, Any]:
    """Calls ``fn()`` with a time budget; a plugin's code must neither end nor stall the host.

    With a budget the call runs in a daemon thread joined for ``timeout`` seconds (Python cannot interrupt an
    import or a running function, so a call past its budget is abandoned, never stopped). ``timeout == 0`` calls
    ``fn`` in the calling thread, without a limit.

    Returns:
        ``("ok", value)``, ``("raised", exception)`` for any ``BaseException`` but ``KeyboardInterrupt`` (which
        is raised again here: Ctrl-C still stops the host), or ``("timeout", _TimedOut)``.
    """
    if not timeout:
        try:
            return "ok", fn()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # SystemExit and GeneratorExit included: a plugin may not end the host
            return "raised", exc

    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # everything: an escaped exception would only reach threading's excepthook
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"metalab-plugin:{name}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return "timeout", _TimedOut(thread)
    if "error" in box:
        if isinstance(box["error"], KeyboardInterrupt):
            raise box["error"]
        return "raised", box["error"]
    return "ok", box.get("value")


# The members core uses of the objects factories return (see plugin_api.Algorithm and RegressionTaskFamily).
_ALGORITHM_ATTRIBUTES = ("trainable_variables", "variables", "meta_batch_size")
_REGRESSION_MEMBERS = ("kind", "input_shape", "output_dim", "sample_task", "sample_points", "evaluate")
_ENVIRONMENT_MEMBERS = ("kind", "input_shape", "action_kind", "action_dim", "horizon", "sample_tasks", "make_env",
                        "describe_task")


def _has(obj: Any, name: str) -> bool:
    # Statically first, so a property is not run just to see it is there; then dynamically for __getattr__.
    try:
        inspect.getattr_static(obj, name)
        return True
    except AttributeError:
        pass
    try:
        return hasattr(obj, name)
    except Exception:  # noqa: BLE001 - a property that raises is as good as absent here
        return False


def _factory_name(spec: Any) -> str:
    factory = getattr(spec, "factory", None)
    if isinstance(factory, SpecFactory):
        return factory.name
    module = getattr(factory, "__module__", None)
    qualname = getattr(factory, "__qualname__", None) or type(factory).__name__
    return f"{module}.{qualname}" if module else qualname


def check_factory_result(spec: Any, result: Any, *, registry: Any = None) -> Any:
    """Checks what a spec's factory returned before core uses it; returns ``result`` unchanged.

    Call it wherever core calls ``spec.factory(...)``: a dataset factory must return a
    :class:`~metalab.core.contract.specs.ClassificationDataset` (``kind="classification"``) or a
    :class:`~metalab.core.contract.specs.RegressionTaskFamily` (``kind="regression"``); an algorithm factory an object
    with the :class:`~metalab.core.contract.specs.Algorithm` members core calls (``meta_gradients``, ``evaluate``,
    ``trainable_variables``, ``variables`` and a positive integer ``meta_batch_size``); a backbone factory a
    callable model. Anything else would fail later and far away (an empty summary, a cryptic trace error).

    Args:
        spec: The :class:`AlgorithmSpec`, :class:`DatasetSpec` or :class:`BackboneSpec` whose factory was called.
        result: What the factory returned.
        registry: The :class:`PluginRegistry` holding ``spec``, to name its plugin, package and version in the
            message; without one the message names the factory's module.

    Returns:
        ``result``.

    Raises:
        PluginContractError: ``result`` is not what the spec's kind promises; the message names the spec, the
            plugin, the factory and the type received.
        TypeError: ``spec`` is not a spec.

    Example:
        dataset = check_factory_result(spec, spec.factory(params, context), registry=registry)
    """
    if isinstance(spec, AlgorithmSpec):
        kind = "algorithm"
    elif isinstance(spec, DatasetSpec):
        kind = "dataset"
    elif isinstance(spec, BackboneSpec):
        kind = "backbone"
    else:
        raise TypeError(
            f"check_factory_result expects an AlgorithmSpec, DatasetSpec or BackboneSpec. "
            f"Received: spec of type {type(spec).__name__}"
        )
    problem = _factory_problem(kind, spec, result)
    if problem is None:
        return result
    plugin_name = None
    where = f"factory {_factory_name(spec)}"
    if registry is not None and hasattr(registry, "plugin_of"):
        try:
            record = registry.plugin_of(spec.id, kind=kind)
        except (KeyError, ValueError):
            record = None
        if record is not None:
            plugin_name = record.name
            where = f"plugin {record.name!r} ({_origin(record)}), {where}"
    received = type(result).__name__
    raise PluginContractError(
        f"The {kind} factory of {spec.id!r} ({where}) {problem}. Received: {received} {_safe_repr(result)}",
        kind=kind, spec_id=spec.id, plugin=plugin_name, received=received,
    )


def backbone_maker(spec: BackboneSpec, params: Any, input_shape: tuple[int, ...], *,
                   registry: Any = None) -> Any:
    """The ``make_backbone`` of a :class:`~metalab.core.contract.specs.TaskSpec`: a new, checked model per call.

    Args:
        spec: The run's backbone spec.
        params: Its validated parameters.
        input_shape: The shape of one input.
        registry: The registry holding ``spec``, to name its plugin in messages and the backbones that give
            feature maps.

    Returns:
        ``make_backbone(feature_maps=False) -> keras.Model``. With ``feature_maps=True`` the spec's factory is
        called with ``feature_maps=True`` and the model returns its last feature map ``[N, h, w, c]``.

    Raises:
        ValueError: (from ``make_backbone``) ``feature_maps=True`` for a backbone whose spec does not declare
            ``feature_maps``; the message names the backbones that do.
    """

    def make_backbone(feature_maps: bool = False) -> Any:
        if not feature_maps:
            return check_factory_result(spec, spec.factory(params, input_shape), registry=registry)
        if not spec.feature_maps:
            table = getattr(registry, "backbones", {}) or {}
            able = sorted(sid for sid, other in table.items() if getattr(other, "feature_maps", False))
            raise ValueError(
                f"Backbone {spec.id!r} gives flat feature vectors only (its spec does not declare feature_maps); "
                f"run with a backbone that gives feature maps ({', '.join(able) or 'none is loaded'}). "
                f"Received: feature_maps=True"
            )
        return check_factory_result(spec, spec.factory(params, input_shape, feature_maps=True), registry=registry)

    return make_backbone


def _factory_problem(kind: str, spec: Any, result: Any) -> str | None:
    """What is wrong with a factory's result, as the end of a sentence, or ``None``."""
    if kind == "dataset" and spec.kind == "environment":
        missing = [m for m in _ENVIRONMENT_MEMBERS if not _has(result, m)]
        if missing or getattr(result, "kind", None) != "environment":
            detail = f"; missing: {', '.join(missing)}" if missing else "; its kind must be 'environment'"
            return f"must return an EnvironmentTaskFamily (the spec declares kind='environment'){detail}"
        if result.action_kind not in ("continuous", "discrete"):
            return (f"must return an EnvironmentTaskFamily whose action_kind is 'continuous' or 'discrete', not "
                    f"action_kind={_safe_repr(result.action_kind)}")
        for name in ("action_dim", "horizon"):
            value = getattr(result, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
                return (f"must return an EnvironmentTaskFamily whose {name} is an integer >= 1, not "
                        f"{name}={_safe_repr(value)}")
        return None
    if kind == "dataset":
        is_classification = isinstance(result, ClassificationDataset)
        missing = [m for m in _REGRESSION_MEMBERS if not _has(result, m)]
        is_regression = not is_classification and not missing and getattr(result, "kind", None) == "regression"
        if spec.kind == "classification":
            if is_classification:
                return None
            if is_regression:
                return ("returned a regression task family, but the spec declares kind='classification'; "
                        "it must return a ClassificationDataset")
            return "must return a ClassificationDataset (the spec declares kind='classification')"
        if is_regression:
            return None
        if is_classification:
            return ("returned a ClassificationDataset, but the spec declares kind='regression'; it must return a "
                    "RegressionTaskFamily")
        detail = f"; missing: {', '.join(missing)}" if missing else "; its kind must be 'regression'"
        return f"must return a RegressionTaskFamily (the spec declares kind='regression'){detail}"
    if kind == "algorithm":
        # The methods core calls for the task kinds the spec declares: evaluate for episodes, gather and
        # adaptation_returns for environments.
        kinds = set(getattr(spec, "task_kinds", None) or ("classification", "regression"))
        methods = ["meta_gradients", *(["evaluate"] if kinds - {"environment"} else []),
                   *(["gather", "adaptation_returns"] if "environment" in kinds else [])]
        missing = [m for m in methods if not (_has(result, m) and callable(getattr(result, m, None)))]
        missing += [m for m in _ALGORITHM_ATTRIBUTES if not _has(result, m)]
        if missing:
            return (f"must return an Algorithm (with {', '.join(methods + list(_ALGORITHM_ATTRIBUTES))}); "
                    f"missing or not callable: {', '.join(missing)}")
        size = getattr(result, "meta_batch_size", None)
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or int(size) < 1:
            return (f"must return an Algorithm whose meta_batch_size is an integer >= 1, "
                    f"not meta_batch_size={_safe_repr(size)}")
        return None
    if result is None or not callable(result):
        return "must return a model (a callable keras.Model mapping inputs to feature vectors)"
    return None


def _check_api_version(plugin: object) -> str:
    """Returns the plugin's ``METALAB_PLUGIN_API``; raises :class:`_PluginFailure` if metalab cannot load it."""
    supported = f"{PLUGIN_API_VERSION.split('.')[0]}.x"
    if not hasattr(plugin, "METALAB_PLUGIN_API"):
        raise _PluginFailure(
            f"Plugin does not declare the plugin API version it targets; add METALAB_PLUGIN_API = "
            f"{PLUGIN_API_VERSION!r} to its module (this metalab supports {supported}). "
            f"Received: METALAB_PLUGIN_API=None"
        )
    declared = getattr(plugin, "METALAB_PLUGIN_API")
    match = _API_RE.match(declared) if isinstance(declared, str) else None
    if match is None:
        raise _PluginFailure(
            f"METALAB_PLUGIN_API must be a string 'MAJOR.MINOR' such as {PLUGIN_API_VERSION!r} "
            f"(this metalab supports {supported}). Received: METALAB_PLUGIN_API={declared!r}"
        )
    if int(match.group(1)) != int(PLUGIN_API_VERSION.split(".")[0]):
        raise _PluginFailure(
            f"Plugin targets plugin API {declared}; this metalab supports {supported}. "
            f"Received: METALAB_PLUGIN_API={declared!r}"
        )
    return declared


#: What :meth:`_Loader._import` returns for a plugin it recorded as failed.
_SKIPPED = object()


def _thread_stack(thread: threading.Thread) -> str | None:
    """Where a thread is now, formatted like a traceback (what a stalled import is busy with), if known."""
    frame = sys._current_frames().get(thread.ident) if thread.ident is not None else None
    if frame is None:
        return None
    return "Stack of the plugin's thread when its time ran out (most recent call last):\n" + "".join(
        traceback_module.format_stack(frame)
    )


class _Loader:
    """Builds one registry: validates and registers plugins one at a time, keeping each failure."""

    def __init__(self, disabled: set[str], timeout: float = DEFAULT_IMPORT_TIMEOUT):
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.disabled = disabled
        self.timeout = timeout
        self.disabled_namespaces = {normalize_namespace(name) for name in disabled}
        self.records: list[PluginRecord] = []
        self.tables: dict[str, dict[str, Any]] = {kind: {} for kind in _KINDS}
        self.owners: dict[tuple[str, str], str] = {}

    def is_disabled(self, name: str, package: str | None) -> bool:
        return name in self.disabled or (
            package is not None and normalize_namespace(package) in self.disabled_namespaces
        )

    def add_entry_point(self, ep: importlib.metadata.EntryPoint) -> None:
        dist = ep.dist
        package = dist.name if dist is not None else None
        version = dist.version if dist is not None else None
        record = PluginRecord(
            name=ep.name,
            namespace=normalize_namespace(package) if package else normalize_namespace(ep.name),
            package=package,
            version=version,
            module=ep.module,
            status="loaded",
        )
        if self.is_disabled(ep.name, package):
            self._disable(record)
            return
        start = time.perf_counter()
        try:
            plugin = self._import(record, ep)
            if plugin is not _SKIPPED:
                self._add(record, plugin)
        finally:
            record.seconds = round(time.perf_counter() - start, 3)

    def _import(self, record: PluginRecord, ep: importlib.metadata.EntryPoint) -> Any:
        """Imports an entry point under the time budget; returns the plugin, or ``_SKIPPED`` after recording why."""
        with _STALLED_LOCK:
            stalled = _STALLED_IMPORTS.get(ep.module)
            if stalled is not None and not stalled[0].is_alive():
                del _STALLED_IMPORTS[ep.module]
                stalled = None
        if stalled is not None:
            # Importing it again would wait for the first import, which may never end.
            self._fail(
                record,
                f"Import of {ep.value!r} is still running {time.monotonic() - stalled[1]:.0f} s after it started in "
                f"an earlier load, which gave up on it (over its {IMPORT_TIMEOUT_ENV} budget); it is skipped. "
                f"Received: module={ep.module!r}",
            )
            return _SKIPPED
        started = time.monotonic()
        outcome, value = _bounded_call(ep.load, self.timeout, ep.name)
        if outcome == "ok":
            return value
        if outcome == "raised":  # a plugin's import may raise anything, SystemExit included; it fails alone
            self._fail(record, f"Import of {ep.value!r} failed: {_describe_exception(value)}",
                       _format_traceback(value))
            return _SKIPPED
        with _STALLED_LOCK:
            _STALLED_IMPORTS[ep.module] = (value.thread, started)
        self._fail(
            record,
            f"Import of {ep.value!r} took longer than {self.timeout:g} s; it is skipped (if it finishes later, this "
            f"registry ignores it). Raise {IMPORT_TIMEOUT_ENV} if the plugin is only slow. "
            f"Received: {IMPORT_TIMEOUT_ENV}={self.timeout:g}",
            _thread_stack(value.thread),
        )
        return _SKIPPED

    def add_object(self, name: str, plugin: object) -> None:
        record = PluginRecord(
            name=name,
            namespace=normalize_namespace(name),
            package=None,
            version=None,
            module=_module_of(plugin),
            status="loaded",
        )
        if self.is_disabled(name, None):
            self._disable(record)
            return
        start = time.perf_counter()
        try:
            self._add(record, plugin)
        finally:
            record.seconds = round(time.perf_counter() - start, 3)

    def _loaded(self, name: str) -> PluginRecord:
        return next(r for r in self.records if r.name == name and r.status == "loaded")

    def _disable(self, record: PluginRecord) -> None:
        record.status = "disabled"
        record.error = "Disabled by METALAB_DISABLE_PLUGINS."
        self.records.append(record)

    def _fail(self, record: PluginRecord, error: str, tb: str | None = None) -> None:
        record.status = "failed"
        record.error = _one_line(error)
        record.traceback = tb
        self.records.append(record)
        logger.warning("metalab plugin %r (%s) failed to load: %s", record.name, _origin(record), record.error)

    def _add(self, record: PluginRecord, plugin: object) -> None:
        if plugin is None:
            self._fail(record, "Plugin object is None; an entry point must name a module or an object with hooks.")
            return
        if self.pm.get_plugin(record.name) is not None:
            taken = self._loaded(record.name)
            self._fail(
                record,
                f"Plugin name {record.name!r} is already taken by a loaded plugin ({_origin(taken)}). "
                f"Received: name={record.name!r}",
            )
            return
        if self.pm.is_registered(plugin):
            self._fail(
                record,
                f"The same plugin object is already loaded as {self.pm.get_name(plugin)!r}. "
                f"Received: name={record.name!r}",
            )
            return
        try:
            record.api_version = _check_api_version(plugin)
        except _PluginFailure as failure:
            self._fail(record, failure.error)
            return
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a module __getattr__ or a property may raise anything
            self._fail(record, f"Reading METALAB_PLUGIN_API failed: {_describe_exception(exc)}",
                       _format_traceback(exc))
            return
        try:
            self.pm.register(plugin, name=record.name)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # pluggy refuses an implementation taking arguments its spec lacks
            mismatch = self._signature_message(record, plugin)
            self._fail(record, mismatch or f"Registration failed: {_describe_exception(exc)}", _format_traceback(exc))
            return
        record.hooks = sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or [])
        try:
            # Every plugin registered before this one passed, so a pending hook can only be this plugin's.
            self.pm.check_pending()
            specs = self._collect(record, plugin)
        except pluggy.PluginValidationError:
            self._reject(record, plugin, self._unknown_hooks_message(plugin), None)
            return
        except _PluginFailure as failure:
            self._reject(record, plugin, failure.error, failure.traceback)
            return
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # anything else a plugin's code raised on the way
            self._reject(record, plugin, f"Registration failed: {_describe_exception(exc)}", _format_traceback(exc))
            return
        for kind, spec in specs:
            self.tables[kind][spec.id] = spec
            self.owners[(kind, spec.id)] = record.name
        self.records.append(record)

    def _signature_message(self, record: PluginRecord, plugin: object) -> str | None:
        """Says which hook implementation takes arguments its hook does not pass, and what the hook passes.

        pluggy's own refusal names neither the arguments metalab passes nor what to do; ``None`` when no
        implementation of a known hook has such an argument (the refusal was about something else).
        """
        for name in dir(plugin):
            caller = getattr(self.pm.hook, name, None)
            if not hasattr(caller, "has_spec") or not caller.has_spec():
                continue
            if self.pm.parse_hookimpl_opts(plugin, name) is None:
                continue
            try:
                parameters = inspect.signature(getattr(plugin, name)).parameters
            except (TypeError, ValueError):
                continue
            taken = [p for p, info in parameters.items() if info.kind not in (info.VAR_POSITIONAL, info.VAR_KEYWORD)]
            passed = tuple(caller.spec.argnames)
            extra = [p for p in taken if p not in passed]
            if extra:
                offer = (f"metalab calls it with {', '.join(passed)} (an implementation takes any of them, by name)"
                         if passed else "metalab calls it with no arguments")
                return (
                    f"Hook {name} of plugin {record.name!r} takes {', '.join(map(repr, extra))}, which the hook does "
                    f"not pass; {offer}. Received: {name}({', '.join(taken)})"
                )
        return None

    def _unknown_hooks_message(self, plugin: object) -> str:
        callers = self.pm.get_hookcallers(plugin) or []
        unknown = sorted(c.name for c in callers if not c.has_spec())
        known = sorted(name for name, c in vars(self.pm.hook).items() if not name.startswith("_") and c.has_spec())
        return (
            f"Unknown hook {', '.join(map(repr, unknown))} (misspelled?); metalab's hooks are {', '.join(known)}. "
            f"Received: hook={unknown[0] if len(unknown) == 1 else unknown}"
        )

    def _reject(self, record: PluginRecord, plugin: object, error: str, tb: str | None) -> None:
        self.pm.unregister(plugin, name=record.name)
        self._fail(record, error, tb)

    def _collect(self, record: PluginRecord, plugin: object) -> list[tuple[str, Any]]:
        """Calls the plugin's registration hooks and validates every spec; any fault rejects the whole plugin.

        The hooks share one time budget, as the import has its own: a hook that hangs fails its plugin.
        """
        specs: list[tuple[str, Any]] = []
        seen: set[tuple[str, str]] = set()
        deadline = time.monotonic() + self.timeout
        for hook_name, (kind, spec_type) in _REGISTRATION_HOOKS.items():
            caller = getattr(self.pm.hook, hook_name)
            for impl in caller.get_hookimpls():
                if impl.plugin is not plugin:
                    continue
                left = max(deadline - time.monotonic(), 1e-3) if self.timeout else 0
                outcome, result = _bounded_call(impl.function, left, f"{record.name}.{hook_name}")
                if outcome == "raised":  # a raising hook fails its plugin only, SystemExit included
                    raise _PluginFailure(
                        f"Hook {hook_name} raised {_describe_exception(result)}", _format_traceback(result)
                    )
                if outcome == "timeout":
                    raise _PluginFailure(
                        f"Hook {hook_name} took longer than {self.timeout:g} s (the plugin's registration hooks "
                        f"together); the plugin is skipped. Received: {IMPORT_TIMEOUT_ENV}={self.timeout:g}",
                        _thread_stack(result.thread),
                    )
                if not isinstance(result, (list, tuple)):
                    raise _PluginFailure(
                        f"Hook {hook_name} must return a list of {spec_type.__name__}. "
                        f"Received: {type(result).__name__} {_safe_repr(result)}"
                    )
                for spec in result:
                    self._validate(record, hook_name, kind, spec_type, spec, seen)
                    seen.add((kind, spec.id))
                    specs.append((kind, spec))
        return specs

    def _validate(
        self, record: PluginRecord, hook_name: str, kind: str, spec_type: type, spec: Any, seen: set
    ) -> None:
        if not isinstance(spec, spec_type):
            raise _PluginFailure(
                f"Hook {hook_name} must return {spec_type.__name__} objects. "
                f"Received: {type(spec).__name__} {_safe_repr(spec)}"
            )
        try:
            # Also refuses parameter defaults outside their own ranges and models without a JSON schema (the
            # dashboard builds its forms from it): the plugin fails here, not a run later in a worker.
            spec.validate()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            raise _PluginFailure(
                f"Hook {hook_name} returned an invalid {spec_type.__name__}: {_describe_exception(exc)}",
                _format_traceback(exc),
            ) from None
        prefix = spec.id.split(".", 1)[0]
        if prefix != record.namespace:
            raise _PluginFailure(
                f"Spec id {spec.id!r} must start with {record.namespace + '.'!r} (the plugin's namespace). "
                f"Received: id={spec.id!r}"
            )
        if (kind, spec.id) in seen:
            raise _PluginFailure(f"Plugin returns {kind} {spec.id!r} twice. Received: id={spec.id!r}")
        owner = self.owners.get((kind, spec.id))
        if owner is not None:
            owner_record = self._loaded(owner)
            raise _PluginFailure(
                f"Duplicate {kind} id {spec.id!r}: already provided by plugin {owner!r} "
                f"({_origin(owner_record)}); plugin {record.name!r} cannot provide it too. Received: id={spec.id!r}"
            )

    def finish(self) -> PluginRegistry:
        # Each plugin passed check_pending as it registered and failed ones were unregistered, so this holds.
        self.pm.check_pending()
        tables = {kind: dict(sorted(table.items())) for kind, table in self.tables.items()}
        return PluginRegistry(
            pm=self.pm,
            plugins=self.records,
            algorithms=tables["algorithm"],
            datasets=tables["dataset"],
            backbones=tables["backbone"],
            owners=dict(self.owners),
        )


def _entry_points(distributions: Iterable[str] | None) -> list[importlib.metadata.EntryPoint]:
    eps = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    if distributions is not None:
        wanted = {normalize_namespace(name) for name in distributions}
        eps = [ep for ep in eps if ep.dist is not None and normalize_namespace(ep.dist.name) in wanted]

    # Built-ins first, then by package and name: which of two clashing plugins loads must not depend on disk order.
    def order(ep: importlib.metadata.EntryPoint) -> tuple:
        package = normalize_namespace(ep.dist.name) if ep.dist is not None else ""
        return (package != ENTRY_POINT_GROUP, package, ep.name)

    return sorted(eps, key=order)


def make_plugin_manager(
    *,
    entry_points: bool = True,
    distributions: Iterable[str] | None = None,
    plugins: Iterable[tuple[str, object]] = (),
    settings: Settings | None = None,
    strict: bool | None = None,
    import_timeout: float | None = None,
) -> PluginRegistry:
    """Makes a fresh plugin manager, loads the plugins and returns their registry.

    Each entry point of the ``metalab`` group (the built-ins included) is loaded on its own: a plugin that
    cannot be imported, targets another major plugin API, implements an unknown hook, raises in a hook or returns
    an invalid spec is recorded as failed (and unregistered, none of its specs kept) while the others load.
    ``SystemExit`` and any other ``BaseException`` a plugin raises count as its failure (``KeyboardInterrupt`` is
    raised again). Each import runs in a daemon thread with a time budget, and so do the plugin's registration
    hooks (a second budget of the same length): a plugin past it is recorded as failed and the others load. Each
    record holds the seconds its plugin took (:attr:`PluginRecord.seconds`).

    Args:
        entry_points: Load the plugins declared as entry points. Off, only ``plugins`` are registered.
        distributions: Load only the entry points of these distributions (e.g. ``{"metalab"}`` for the
            built-ins alone). ``None`` loads every distribution's.
        plugins: ``(name, module_or_object)`` pairs registered directly after the entry points, through the
            same checks; their namespace is their normalized name.
        settings: Where ``disabled`` and ``strict_plugins`` come from; by default read from the environment
            (``METALAB_DISABLE_PLUGINS``, ``METALAB_STRICT_PLUGINS``).
        strict: Raise if any plugin failed; defaults to ``settings.strict_plugins``.
        import_timeout: Seconds each plugin's import (and, apart, its registration hooks) may take; ``0`` imports
            in this thread without a limit. Defaults to :func:`plugin_import_timeout`
            (``METALAB_PLUGIN_IMPORT_TIMEOUT``, else :data:`DEFAULT_IMPORT_TIMEOUT`).

    Returns:
        A new :class:`PluginRegistry`, sharing no state with any other.

    Raises:
        PluginLoadError: In strict mode, when any plugin failed; the message lists each failure.

    Example:
        registry = make_plugin_manager(distributions={"metalab"})
        spec = registry.algorithm("metalab_foo.foo")
    """
    if settings is None:
        settings = load_settings()
    if strict is None:
        strict = settings.strict_plugins
    if import_timeout is None:
        import_timeout = plugin_import_timeout(settings)
    elif isinstance(import_timeout, bool) or not (
        isinstance(import_timeout, (int, float)) and math.isfinite(import_timeout) and import_timeout >= 0
    ):
        raise ValueError(
            f"import_timeout must be a number of seconds >= 0. Received: import_timeout={import_timeout!r}"
        )
    loader = _Loader(settings.disabled, min(float(import_timeout), threading.TIMEOUT_MAX))
    if entry_points:
        for ep in _entry_points(distributions):
            loader.add_entry_point(ep)
    for pair in plugins:
        try:
            name, plugin = pair
        except (TypeError, ValueError):
            raise TypeError(f"plugins must hold (name, plugin) pairs. Received: {pair!r}") from None
        if not isinstance(name, str) or not name:
            raise TypeError(f"A plugin name must be a non-empty string. Received: name={name!r}")
        loader.add_object(name, plugin)
    registry = loader.finish()
    if strict and registry.failures:
        raise PluginLoadError(registry.failures)
    return registry

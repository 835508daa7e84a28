"""The plugin manager factory: loads metalab plugins one at a time and keeps every failure beside what loaded.

Built-in plugins and pip-installed ones go through the same path (entry points of the ``metalab`` group); a
broken plugin is recorded as failed, with its package, version and traceback, and never stops the others.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
import traceback as traceback_module
import types
from dataclasses import dataclass, field
from typing import Any, Iterable

import pluggy

from . import hookspecs
from .plugin_api import PLUGIN_API_VERSION, AlgorithmSpec, BackboneSpec, DatasetSpec
from .settings import Settings, load_settings

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginRecord",
    "PluginRegistry",
    "UnknownPluginError",
    "PluginLoadError",
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
        culprits = [f"{r.name} ({r.status})" for r in self.plugins if r.status != "loaded" and r.namespace == prefix]
        if culprits:
            message += (
                f" Plugins of namespace {prefix!r} that did not load: {', '.join(culprits)}"
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
            id: An algorithm id such as ``"metalab.maml"``.

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
        ``package``, ``version``, ``status``, ``error``, ``traceback`` and ``params`` (the JSON schema of the
        spec's parameter model). Keys that do not apply are ``None``.

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
                }
            )
        return rows


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


class _Loader:
    """Builds one registry: validates and registers plugins one at a time, keeping each failure."""

    def __init__(self, disabled: set[str]):
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.disabled = disabled
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
        try:
            plugin = ep.load()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # a plugin's import may raise anything; it must not stop the others
            self._fail(record, f"Import of {ep.value!r} failed: {_describe_exception(exc)}", _format_traceback(exc))
            return
        self._add(record, plugin)

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
        self._add(record, plugin)

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
        try:
            self.pm.register(plugin, name=record.name)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # pluggy refuses an implementation taking arguments its spec lacks
            self._fail(record, f"Registration failed: {_describe_exception(exc)}", _format_traceback(exc))
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
        for kind, spec in specs:
            self.tables[kind][spec.id] = spec
            self.owners[(kind, spec.id)] = record.name
        self.records.append(record)

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
        """Calls the plugin's registration hooks and validates every spec; any fault rejects the whole plugin."""
        specs: list[tuple[str, Any]] = []
        seen: set[tuple[str, str]] = set()
        for hook_name, (kind, spec_type) in _REGISTRATION_HOOKS.items():
            caller = getattr(self.pm.hook, hook_name)
            for impl in caller.get_hookimpls():
                if impl.plugin is not plugin:
                    continue
                try:
                    result = impl.function()
                except (KeyboardInterrupt, SystemExit):
                    raise
                except BaseException as exc:  # a raising hook fails its plugin only
                    raise _PluginFailure(
                        f"Hook {hook_name} raised {_describe_exception(exc)}", _format_traceback(exc)
                    ) from None
                if not isinstance(result, (list, tuple)):
                    raise _PluginFailure(
                        f"Hook {hook_name} must return a list of {spec_type.__name__}. "
                        f"Received: {type(result).__name__} {_one_line(repr(result))[:200]}"
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
                f"Received: {type(spec).__name__} {_one_line(repr(spec))[:200]}"
            )
        try:
            spec.validate()
            # The dashboard builds its forms from this schema, so a model without one is a broken spec.
            spec.params.model_json_schema()
        except (KeyboardInterrupt, SystemExit):
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
) -> PluginRegistry:
    """Makes a fresh plugin manager, loads the plugins and returns their registry.

    Each entry point of the ``metalab`` group (the built-ins included) is loaded on its own: a plugin that
    cannot be imported, targets another major plugin API, implements an unknown hook, raises in a hook or returns
    an invalid spec is recorded as failed (and unregistered, none of its specs kept) while the others load.

    Args:
        entry_points: Load the plugins declared as entry points. Off, only ``plugins`` are registered.
        distributions: Load only the entry points of these distributions (e.g. ``{"metalab"}`` for the
            built-ins alone). ``None`` loads every distribution's.
        plugins: ``(name, module_or_object)`` pairs registered directly after the entry points, through the
            same checks; their namespace is their normalized name.
        settings: Where ``disabled`` and ``strict_plugins`` come from; by default read from the environment
            (``METALAB_DISABLE_PLUGINS``, ``METALAB_STRICT_PLUGINS``).
        strict: Raise if any plugin failed; defaults to ``settings.strict_plugins``.

    Returns:
        A new :class:`PluginRegistry`, sharing no state with any other.

    Raises:
        PluginLoadError: In strict mode, when any plugin failed; the message lists each failure.

    Example:
        registry = make_plugin_manager(distributions={"metalab"})
        spec = registry.algorithm("metalab.maml")
    """
    if settings is None:
        settings = load_settings()
    if strict is None:
        strict = settings.strict_plugins
    loader = _Loader(settings.disabled)
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

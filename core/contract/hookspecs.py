"""The metalab hook specifications: the versioned contract between metalab and its plugins.

Every hook is documented here and in ``docs/plugins.md``; hooks change only by addition (see the changelog
there). A plugin implements any subset with ``@metalab.core.contract.specs.hookimpl``.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("metalab")


@hookspec
def metalab_register_algorithms() -> list:
    """Returns the algorithms this plugin provides, as a list of ``AlgorithmSpec``.

    Called once when a plugin manager is made (at start-up of the CLI, the dashboard and every training
    worker), after the plugin's module was imported. Keep it cheap: build specs, import no deep-learning
    framework. Each spec's id must be ``<plugin>.<name>`` where ``<plugin>`` is the plugin's namespace (its
    distribution name, lowercased, ``-`` as ``_``; ``metalab`` for the built-ins).

    Returns:
        list[AlgorithmSpec]

    Since: plugin API 1.0
    """


@hookspec
def metalab_register_datasets() -> list:
    """Returns the datasets this plugin provides, as a list of ``DatasetSpec``.

    Called once when a plugin manager is made, like :func:`metalab_register_algorithms`. The spec's factory,
    not this hook, reads files: listing datasets never touches the disk or the network.

    Returns:
        list[DatasetSpec]

    Since: plugin API 1.0
    """


@hookspec
def metalab_register_backbones() -> list:
    """Returns the backbones (feature extractors) this plugin provides, as a list of ``BackboneSpec``.

    Called once when a plugin manager is made, like :func:`metalab_register_algorithms`.

    Returns:
        list[BackboneSpec]

    Since: plugin API 1.0
    """


@hookspec
def metalab_report_panels(run: dict, report_data: dict, artifacts_dir: str, metrics: dict) -> list:
    """Returns the panels this plugin adds to a run's report, as a list of ``ReportPanel``.

    Called by the report (the dashboard's Run report page and the HTML export, through the service facade) for
    every finished run, in the dashboard's process: never import a deep-learning framework here, and read only
    plain data. Whatever a panel needs from the trained model must be written by the training worker: an
    algorithm's optional ``report_data()`` method returns a JSON-serialisable dict that metalab stores in the
    run's ``report_data.json`` under the algorithm's id (``report_data["metalab_foo.foo"]``); what it logged during
    training arrives as ``metrics``. A hook that raises or returns something else shows as a warning in that
    plugin's place; the rest of the report is unaffected.

    Which runs: a plugin targeting plugin API 1.4 or later (``METALAB_PLUGIN_API = "1.4"``) that registers
    algorithms, datasets or backbones is called only for the runs that use one of them, so its panels need no
    check of ``run["algorithm"]``; a plugin that registers none is called for every run. A plugin targeting an
    earlier API is called for every run, and returns an empty list for runs it has nothing to say about.

    Args:
        run: The run's record as a dict (``id``, ``algorithm``, ``dataset``, ``backbone``, ``config``,
            ``status``, ...).
        report_data: The run's ``report_data.json`` (an empty dict when the worker wrote none).
        artifacts_dir: The run's folder (checkpoint, ``report_data.json`` and any other artifact files).
        metrics: The series the run logged, ``{name: [(step, value), ...]}`` in step order (e.g.
            ``"train/loss"``, ``"val/accuracy"`` and whatever the algorithm's metrics add). Since: plugin API 1.4;
            like every argument, an implementation names it only if it uses it.

    Returns:
        list[ReportPanel]

    Since: plugin API 1.2
    """

"""The metalab hook specifications: the versioned contract between metalab and its plugins.

Every hook is documented here and in ``docs/plugins.md``; hooks change only by addition (see the changelog
there). A plugin implements any subset with ``@metalab.core.plugin_api.hookimpl``.
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

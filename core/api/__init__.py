"""metalab's public API: everything a plugin author imports, and nothing else.

``metalab.api`` holds the hook marker, the spec types, the parameter types and the protocols; its submodules
hold the rest of the author's kit:

* :mod:`metalab.api.algorithms` - :class:`MetaAlgorithm`, the base class of algorithm implementations
  (variables, the outer optimizer, metrics);
* :mod:`metalab.api.functional` - the functional seam (stateless calls with explicit weights, gradients);
* :mod:`metalab.api.layers` - meta-learning layers (per-step batch norm, folding Sequential);
* :mod:`metalab.api.episodic` - episodic helpers (prototypes, batched losses, adaptation evaluation);
* :mod:`metalab.api.data` - data helpers (archives, images, class splits, checked downloads, caches);
* :mod:`metalab.api.testing` - the conformance kit and its pytest fixture.

Importing ``metalab.api`` is cheap (no TensorFlow, no Keras). Everything else in metalab is internal and may
change in any release; this package follows the plugin API version (:data:`PLUGIN_API_VERSION`): a minor
release only adds, a major one may remove or change (docs/plugins.md, "Versions").
"""

from metalab.core.contract.specs import *  # noqa: F401,F403 - the facade re-exports the contract
from metalab.core.contract.specs import __all__ as _contract_names

__all__ = list(_contract_names)

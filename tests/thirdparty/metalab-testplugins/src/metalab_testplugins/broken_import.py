"""A broken plugin: importing it raises ImportError, as a plugin with a missing dependency does."""

import a_module_that_does_not_exist_xyz  # noqa: F401

METALAB_PLUGIN_API = "1.0"

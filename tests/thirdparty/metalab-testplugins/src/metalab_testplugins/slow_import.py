"""A plugin whose import sleeps ``METALAB_TESTPLUGINS_IMPORT_SLEEP`` seconds (default 0) before it registers nothing.

Tests set the variable past ``METALAB_PLUGIN_IMPORT_TIMEOUT`` to see the host skip it and stay responsive; left
unset, the plugin loads at once and costs the rest of the suite nothing.
"""

import os
import time

METALAB_PLUGIN_API = "1.0"

time.sleep(float(os.environ.get("METALAB_TESTPLUGINS_IMPORT_SLEEP") or 0))

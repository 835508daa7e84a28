"""A broken plugin: importing it calls ``sys.exit(3)``, which must fail this plugin only, never end the host."""

import sys

METALAB_PLUGIN_API = "1.0"

sys.exit(3)

"""Test plugins for metalab's plugin loader: ``lines`` works, ``slow_import`` is slow when told to, the rest are
broken on purpose."""

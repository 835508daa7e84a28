"""Test plugins for metalab's plugin loader: ``lines`` works, the other modules are broken on purpose."""

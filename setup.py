"""Finds metalab's packages: each top-level folder installs under the ``metalab`` namespace."""

from setuptools import find_packages, setup

FOLDERS = {"core": "metalab.core", "plugins": "metalab.plugins", "dashboard": "metalab.dashboard"}


def packages() -> list[str]:
    found = ["metalab.api"]
    for folder, name in FOLDERS.items():
        # core/api is installed once, as metalab.api, never also as metalab.core.api.
        found += [name] + [f"{name}.{sub}" for sub in find_packages(folder, exclude=["api", "api.*"])]
    return found


setup(packages=packages())

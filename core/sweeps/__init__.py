"""Sweeps on Ray Tune: a search space over run and plugin fields, trained as ordinary metalab runs.

Importing this package does not import Ray: :func:`start_sweep` and :func:`resume_sweep` do (``pip install
"metalab[sweep]"``). Each trial is a run validated by the ordinary config resolution, trained by the ordinary runner
in a Ray worker, and written into the run store by the driver (tagged ``sweep:<id>``); the sweep's own record is a
JSON file under ``METALAB_HOME/sweeps/``.
"""

from __future__ import annotations

from typing import Any

from metalab.core.sweeps.book import FINISHED_TRIALS, SweepBook, record_sweep, sweep_tag, sweeps_dir
from metalab.core.sweeps.space import SweepError, SweepSpec, parse_seeds, read_space_file, spec_from_sources

__all__ = ["FINISHED_TRIALS", "SweepBook", "SweepError", "SweepSpec", "parse_seeds", "read_space_file",
           "record_sweep", "resume_sweep", "ray_available", "spec_from_sources", "start_sweep", "sweep_tag",
           "sweeps_dir"]


def ray_available() -> bool:
    """Whether Ray Tune can be imported here."""
    import importlib.util

    return importlib.util.find_spec("ray") is not None and importlib.util.find_spec("ray.tune") is not None


def _driver() -> Any:
    if not ray_available():
        raise SweepError('Sweeps run on Ray Tune, which is not installed here: pip install "metalab[sweep]" (or '
                         '"ray[tune]>=2.40"). Received: ray=None')
    from metalab.core.sweeps import driver

    return driver


def start_sweep(services: Any, spec: SweepSpec, **options: Any) -> SweepBook:
    """Validates every grid point, records the sweep and runs it; see :func:`metalab.core.sweeps.driver.start_sweep`.

    Raises:
        SweepError: A grid point is invalid (before Ray starts), or Ray Tune is not installed.
    """
    from metalab.core.sweeps.space import plan

    plan(services, spec)  # a bad point is refused here, before Ray is imported or started
    return _driver().start_sweep(services, spec, **options)


def resume_sweep(services: Any, ref: str, **options: Any) -> SweepBook:
    """Runs the unfinished trials of a sweep; see :func:`metalab.core.sweeps.driver.resume_sweep`."""
    return _driver().resume_sweep(services, ref, **options)

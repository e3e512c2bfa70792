"""Test configuration: Hypothesis profiles and shared helpers.

``ci`` (selected when CI is set) is derandomised so a run is reproducible; ``dev`` explores more.
Neither has a deadline: the first example of a shape pays for JIT compilation.
"""

import os

import jax
import matplotlib
import pytest
from hypothesis import HealthCheck, settings

matplotlib.use("Agg")

settings.register_profile(
    "ci",
    max_examples=30,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev",
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def pytest_collection_modifyitems(config, items):
    # x64 tests are deselected by default (pyproject.toml); selected without x64 on, they would
    # silently test float32, so they are skipped with the command that runs them.
    if not jax.config.jax_enable_x64:
        skip = pytest.mark.skip(
            reason="float64 test: run JAX_ENABLE_X64=1 python -m pytest -m x64 -n 0"
        )
        for item in items:
            if "x64" in item.keywords:
                item.add_marker(skip)

"""Hypothesis profiles: `ci` (a bounded run inside `make test`, ~10 s in all) and `fuzz` (`make fuzz`, long)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

_DATABASE = DirectoryBasedExampleDatabase(".cache/hypothesis")  # failing examples replay first next time

settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("SHOAL_FUZZ_EXAMPLES", "150")),
    deadline=None,
    database=_DATABASE,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("SHOAL_FUZZ_EXAMPLES", "20000")),
    deadline=None,
    database=_DATABASE,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

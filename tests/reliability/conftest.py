"""Hypothesis profiles of the reliability suite: "ci" (default, bounded) and "long" (HYPOTHESIS_PROFILE=long).

The profiles are applied by the fuzz tests themselves (``settings(PROFILE)``), not loaded globally, so that
the rest of the test suite keeps its own Hypothesis settings.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                                         HealthCheck.data_too_large, HealthCheck.filter_too_much]}
settings.register_profile("ci", max_examples=60, derandomize=True, print_blob=True, **_COMMON)
settings.register_profile("long", max_examples=2000, print_blob=True, **_COMMON)

PROFILE_NAME = os.environ.get("HYPOTHESIS_PROFILE", "ci")

"""Which backends the shared suite runs on: every backend that imports here, or those
FASTMLP_TEST_BACKENDS names (see conftest.py). A module of its own, not conftest.py's
names, so that test files can import it: ``from conftest import ...`` finds
benchmarks/conftest.py instead when pytest runs tests/ and benchmarks/ together."""
import os

import pytest

import fastmlp as fm


def _backends():
    available = fm.available_backends()
    chosen = [b for b in os.environ.get("FASTMLP_TEST_BACKENDS", "").split(",") if b]
    if not chosen:
        return available
    missing = [b for b in chosen if b not in available]
    if missing:
        raise pytest.UsageError(f"FASTMLP_TEST_BACKENDS names {missing}, which do not import "
                                f"here (available: {available})")
    return chosen


BACKENDS = _backends()
COMPILED = [b for b in BACKENDS if b != "numpy"]

"""Shared fixtures: every test that takes ``backend`` runs on every backend
that imports here, against the NumPy reference.

Set FASTMLP_REQUIRE_BACKENDS=numpy,numba,cython (as .ci/run does) to make a
missing backend a failure rather than a silent skip.
"""
import numpy as np
import pytest

import fastmlp as fm

BACKENDS = fm.available_backends()
COMPILED = [b for b in BACKENDS if b != "numpy"]

from tolerances import TOLERANCES


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(params=COMPILED or [pytest.param(None, marks=pytest.mark.skip("no compiled backend"))])
def compiled_backend(request):
    return request.param


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    return request.param


@pytest.fixture
def tol(dtype):
    return TOLERANCES[dtype]


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


"""Shared fixtures: every test that takes ``backend`` runs on every backend
that imports here, against the NumPy reference.

Set FASTMLP_REQUIRE_BACKENDS=numpy,numba,cython (as .ci/run does) to make a
missing backend a failure rather than a silent skip.

Set FASTMLP_TEST_BACKENDS=cuda (a comma-separated list) to run the shared suite on
those backends only: .ci/run runs the "cuda" backend that way under the Numba CUDA
simulator (NUMBA_ENABLE_CUDASIM=1, in its own pytest process), whose Python threads
are far too slow to run every CPU test beside it. A named backend that does not
import here is an error, not a skip.
"""
import signal
import sys

import numpy as np
import pytest

from backends_under_test import BACKENDS, COMPILED
from tolerances import TOLERANCES


def pytest_configure(config):
    """Ctrl-C as a user's terminal gives it: Python's KeyboardInterrupt handler. A process
    started in the background by a non-interactive shell (``cmd &`` in a script, as
    .ci/run starts the simulator's suite) inherits SIGINT ignored, and Python then installs
    no handler: every test sending itself a real SIGINT failed there."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


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



@pytest.fixture(scope="module")
def joblib_workers_stopped():
    """For tests running joblib with n_jobs > 1: joblib's worker processes stopped after
    their module (reused until then). Left idle, they end after 300 s, and the pipes this
    process held to them close in the middle of whichever test runs then (CI, 2026-12-07:
    one closed while test_sigint_everywhere.py counted this process's descriptors)."""
    yield
    from joblib.externals.loky import get_reusable_executor
    get_reusable_executor().shutdown(wait=True, kill_workers=True)


@pytest.fixture
def timeout_handler():
    """A SIGALRM handler raising TimeoutError, as pytest-timeout's signal method does (the
    signal tests raise SIGALRM themselves); the handler, profile and trace hooks put back
    after the test."""
    def timeout(signum, frame):
        raise TimeoutError("timed out")
    previous = signal.signal(signal.SIGALRM, timeout)
    yield timeout
    sys.setprofile(None)
    sys.settrace(None)
    signal.signal(signal.SIGALRM, previous)

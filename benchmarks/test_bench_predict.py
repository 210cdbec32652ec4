"""Predict throughput of every backend on W2's net at batch 512 (see workloads.py)."""
import numpy as np

from workloads import BY_NAME, Case


def test_predict(run_case, backend):
    run_case(BY_NAME["predict"], backend)


def test_predict_same_as_reference(backend):
    cases = [Case(BY_NAME["predict"], b) for b in ("numpy", backend)]
    np.testing.assert_allclose(cases[1].run(), cases[0].run(), rtol=2e-4, atol=2e-5)

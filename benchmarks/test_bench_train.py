"""Train-step and train-epoch throughput of every backend (see workloads.py)."""
import numpy as np
import pytest

from workloads import BY_NAME, WORKLOADS, Case

TRAIN = [w for w in WORKLOADS if w.kind != "predict"]


@pytest.mark.parametrize("workload", TRAIN, ids=[w.name for w in TRAIN])
def test_train(run_case, workload, backend):
    case = run_case(workload, backend)
    assert np.isfinite(case.model.engine.theta).all()


@pytest.mark.parametrize("name", ["W1", "W1-epoch", "W2"])
def test_same_work_as_reference(backend, name):
    """One timed call updates the parameters exactly as the reference does,
    so no backend is timed doing less than the workload claims."""
    cases = [Case(BY_NAME[name], b) for b in ("numpy", backend)]
    losses = [c.run() for c in cases]
    np.testing.assert_allclose(losses[1], losses[0], rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(cases[1].model.engine.theta, cases[0].model.engine.theta, rtol=2e-4, atol=2e-5)
    assert not np.array_equal(cases[0].model.engine.theta, Case(BY_NAME[name], "numpy").model.engine.theta)

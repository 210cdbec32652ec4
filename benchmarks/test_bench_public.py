"""Every workload once in every column, checked to do the same work as competent
NumPy; the public-API columns (numpy, cython, numba) timed by pytest-benchmark."""
import dataclasses

import numpy as np
import pytest

from columns import BASELINE, BY_NAME as COLUMN, COLUMNS, applies, evidence, run_once, same_work
from conftest import baseline_evidence, require
from workloads import BY_NAME, CONVERSION_WORKLOADS, WORKLOADS, start

PUBLIC = [BASELINE, "cython", "numba"]
# the default run's rows and the conversion rows (float64 X, input scaling), whose
# columns each convert X their own way
CHECKED = [(w, c) for w in WORKLOADS + CONVERSION_WORKLOADS for c in COLUMNS
           if c.name != BASELINE and applies(c, w)]


@pytest.mark.parametrize("w, column", CHECKED, ids=[f"{w.name}-{c.name}" for w, c in CHECKED])
def test_same_work(w, column):
    """After one call from the same start, the column's weights (or predictions)
    match competent NumPy's: nobody is timed doing less than the row claims."""
    require(column.name)
    case = run_once(column, w)
    same_work(w, evidence(w, case), baseline_evidence(w.name), who=f" on {column.name}")


@pytest.mark.parametrize("column_name", PUBLIC)
@pytest.mark.parametrize("w", WORKLOADS, ids=[w.name for w in WORKLOADS])
def test_public_api(time_public, w, column_name):
    column = require(column_name)
    case = column.make(w)
    result = time_public(w, column_name, case)
    assert np.isfinite(np.asarray(result, dtype=np.float64)).all()
    if w.trains:
        assert not np.array_equal(case.weights(), start(w)[0])


@pytest.mark.parametrize("name, change", [
    ("vehicles-fit", {"epochs": BY_NAME["vehicles-fit"].epochs - 1}),
    ("vehicles-b1", {"batch_size": 2}),
    ("W2", {"lr": 0.99 * BY_NAME["W2"].lr}),
    ("W2-adam", {"optimizer": "sgd"}),
    ("narrow-8192-scaled", {"scaled": False}),
])
def test_same_work_detects_less_work(name, change):
    """The check is strict enough to see one epoch fewer, batches of 2 instead of 1,
    a 1 % smaller learning rate, SGD in place of Adam or the raw features predicted
    unscaled, while the unchanged workload passes it."""
    w = BY_NAME[name]
    changed = dataclasses.replace(w, name=f"{name}-changed", **change)
    baseline = COLUMN[BASELINE]
    with pytest.raises(AssertionError):
        same_work(w, evidence(changed, run_once(baseline, changed)), baseline_evidence(name))
    same_work(w, evidence(w, run_once(baseline, w)), baseline_evidence(name))

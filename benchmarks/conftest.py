"""pytest fixtures for the benchmarks.

``pytest benchmarks --benchmark-disable`` (CI's smoke test) runs every workload
once in every column that imports here and checks that each did the same work
as competent NumPy; ``pytest benchmarks`` also times the public-API columns
with pytest-benchmark. Optional frameworks (torch, jax, onnxruntime) are skipped
when missing. For numbers, unset the OpenBLAS overrides:
``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE pytest benchmarks``; report.py
gives the full comparison.
"""
import functools

import pytest

from columns import BASELINE, BY_NAME as COLUMN, evidence, run_once
from workloads import BY_NAME, WORKLOADS

_RESULTS = []  # (workload, column, samples/s) for the summary


def require(column_name):
    """The column, or skip the test when its package does not import here."""
    column = COLUMN[column_name]
    if not column.available():
        pytest.skip(f"{column_name} is not available here")
    return column


@functools.cache
def baseline_evidence(workload_name):
    """Competent NumPy's weights (training) or outputs (predict) after one call."""
    w = BY_NAME[workload_name]
    return evidence(w, run_once(COLUMN[BASELINE], w))


@pytest.fixture
def time_public(benchmark):
    """Time ``case.run`` with pytest-benchmark after one untimed warm-up call (JIT
    compilation is not timed); samples/s go into extra_info. With --benchmark-disable
    the call runs exactly once."""
    def run(w, column_name, case):
        if benchmark.enabled:
            case.run()
        benchmark.group = w.name
        benchmark.extra_info.update(workload=w.name, column=column_name, samples=w.samples)
        result = benchmark(case.run)
        if benchmark.enabled and benchmark.stats is not None:
            rate = w.samples / benchmark.stats.stats.median
            benchmark.extra_info["samples_per_s"] = rate
            _RESULTS.append((w.name, column_name, rate))
        return result
    return run


def pytest_terminal_summary(terminalreporter):
    if not _RESULTS:
        return
    tr = terminalreporter
    tr.section("samples/s (median); the comparison with ratios: benchmarks/report.py")
    order = {w.name: i for i, w in enumerate(WORKLOADS)}
    for name, column, rate in sorted(_RESULTS, key=lambda r: order.get(r[0], 99)):
        tr.write_line(f"{name:14s} {column:8s} {rate:14,.0f} samples/s")

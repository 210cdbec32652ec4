"""pytest-benchmark fixtures: every benchmark runs on every backend that
imports here (``fm.available_backends()``), so new backends join by themselves.

``pytest benchmarks`` times them; ``pytest benchmarks --benchmark-disable``
runs each call once, as a smoke test (what CI does). For numbers, unset the
OpenBLAS overrides: ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE pytest benchmarks``.
"""
import time

import pytest

import fastmlp as fm

from workloads import WORKLOADS, Case

BACKENDS = fm.available_backends()
_RESULTS = []  # (workload, backend, samples/s, first call s) for the summary


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def run_case(benchmark):
    """Time ``Case(workload, backend).run`` with ``benchmark``.

    When timing is on, one untimed warm-up call comes first (JIT compilation
    excluded from the timings, its duration kept as ``first_call_s``); with
    --benchmark-disable the call runs exactly once. Samples/s and GFLOP/s
    go into ``extra_info``.
    """
    def run(workload, backend):
        case = Case(workload, backend)
        benchmark.group = workload.name
        benchmark.extra_info.update(workload=workload.name, backend=backend, rows=workload.rows)
        first = None
        if benchmark.enabled:
            start = time.perf_counter()
            case.check(case.run())
            first = time.perf_counter() - start
            benchmark.extra_info["first_call_s"] = first
        case.check(benchmark(case.run))
        if benchmark.enabled and benchmark.stats is not None:
            median = benchmark.stats.stats.median
            rate = workload.rows / median
            benchmark.extra_info["samples_per_s"] = rate
            if workload.flops:
                benchmark.extra_info["gflops"] = workload.flops / median / 1e9
            _RESULTS.append((workload.name, backend, rate, first))
        return case
    return run


def pytest_terminal_summary(terminalreporter):
    if not _RESULTS:
        return
    tr = terminalreporter
    tr.section("fastmlp samples/s (median; first call includes any JIT compile)")
    order = {w.name: i for i, w in enumerate(WORKLOADS)}
    for name, backend, rate, first in sorted(_RESULTS, key=lambda r: order[r[0]]):
        tr.write_line(f"{name:10s} {backend:8s} {rate:14,.0f} samples/s   first call {first * 1e3:9.2f} ms")

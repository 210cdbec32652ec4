"""report.py and the pipeline row run end to end (tiny timings: a smoke test, no numbers)."""
import json
import os
import warnings

import numpy as np
import pytest

import pipeline
import report
from columns import BY_NAME as COLUMN


@pytest.mark.parametrize("column", pipeline.COLUMNS)
def test_pipeline_trains_on_the_preprocessed_batch(column):
    if not COLUMN[column].available():
        pytest.skip(f"{column} is not available here")
    p = pipeline.Pipeline(column)
    np.testing.assert_allclose(p.Z, p.X_raw @ p.P, rtol=1e-4, atol=1e-4)
    assert np.isfinite(p.step())
    result = pipeline.measure(column, min_time=0.0)
    assert set(result) == {"alone", "inside", "gemm", "penalty"}
    assert result["alone"] > 0 and result["inside"] > 0
    assert result["penalty"] == pytest.approx(result["inside"] / result["alone"] - 1)


def test_report_prints_tables_and_targets(capsys):
    columns = [c for c in ("cython", "numba") if COLUMN[c].available()]
    report.main(["--workloads", "vehicles-step,predict-1", "--columns", ",".join(columns),
                 "--min-time", "0.01", "--rounds", "1"])
    out = capsys.readouterr().out
    assert "| vehicles-step: vehicles, train_on_batch on the 6 rows | 6 |" in out
    assert "| 1-row predict ≥ 2.5× NumPy |" in out
    assert "| pipeline penalty ≤ 10 % |" in out
    for b in columns:
        assert f"**{b}**: fastmlp, backend='{b}', public API" in out
    # a target whose row was not run is not judged
    assert "| W4 ≥ 1.1× NumPy | n/a (not run) | n/a (not run) |" in out
    assert "load average" in out
    assert "| call | scikit-learn | " in out and "| training accuracy after fit |" in out


def test_sklearn_rows_do_the_same_work():
    """Every column of the scikit-learn table trains EPOCHS epochs over every row and fits
    them; the check fails for an estimator that stopped early."""
    import sklearn_case
    X, y = sklearn_case.data()
    for column in sklearn_case.COLUMNS:
        if sklearn_case.estimator(column) is None:
            continue
        case = sklearn_case.Case(column, X, y)
        assert case.check() >= sklearn_case.MIN_ACCURACY
        assert set(case.calls) == set(sklearn_case.CALLS)
    ours = next(c for c in sklearn_case.COLUMNS[1:] if sklearn_case.estimator(c) is not None)
    stopped = sklearn_case.Case(ours, X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stopped.fitted = stopped.fitted.set_params(max_iter=3).fit(X, y)
    with pytest.raises(AssertionError, match="n_iter_"):
        stopped.check()
    for call in ("partial_fit-64", "partial_fit-64 frame"):
        idle = sklearn_case.Case(ours, X, y)
        idle.calls[call] = lambda: idle.streaming   # a partial_fit that trains nothing
        with pytest.raises(AssertionError, match=f"{call} went"):
            idle.check()


def test_sgemm_rows_time_the_gemms_of_the_call():
    """The GEMMs timed alone are those of the call, counted as the FLOPs the table divides by."""
    from workloads import BY_NAME as WORKLOAD, SgemmCase
    for name in report.GFLOP_WORKLOADS:
        w = WORKLOAD[name]
        case = SgemmCase(w)
        flops = sum(2 * A.shape[0] * A.shape[1] * B.shape[1] for A, B, _ in case.ops)
        assert flops == w.flops == case.flops
        assert len(case.ops) == (3 * (len(w.dims) - 1) - 1 if w.trains else len(w.dims) - 1)
        assert case.ops[0][0].shape == (w.rows, w.dims[0])


def test_report_shows_the_gemm_ceiling(capsys):
    columns = [c for c in ("cython", "numba") if COLUMN[c].available()]
    report.main(["--workloads", "predict-W2", "--columns", ",".join(columns),
                 "--min-time", "0.01", "--rounds", "1", "--no-pipeline"])
    out = capsys.readouterr().out
    assert "predict-W2 predict: forward GEMMs per call, 0.24 GFLOP; elementwise" in out
    assert "| sgemm alone (np.matmul, the BLAS the kernels call" in out
    import re
    assert re.search(r"same rounds\) \| [\d.]+ \| [\d.]+ \| 100 \| [\d.]+× \|", out)
    assert re.search(r"\| numpy \| [\d.]+ \| [\d.]+ \| \d+ \| 1\.00× \|", out)
    for name in columns:
        assert re.search(rf"\| {name} \| [\d.]+ \| [\d.]+ \| \d+ \| [\d.]+× \|", out)


def _cells(**medians):
    return {name: {"per_call": m, "first": m, "spread": 1.0} for name, m in medians.items()}


def test_targets_are_judged_from_the_run():
    results = {"W3": _cells(numpy=1.0, cython=0.8, numba=0.9, jax=0.85),
               "W4": _cells(numpy=1.0, cython=0.9, numba=0.5)}
    sgemm = {"W4": {"per_call": 0.855}}
    pipe = {"cython": {"penalty": 0.05}, "numba": {"penalty": 0.5}}
    judged = dict(report.targets(results, sgemm, pipe))
    assert judged["W3 ≥ 1.15× NumPy"] == {"cython": (True, "1.25×"), "numba": (False, "1.11×")}
    assert judged["W3 ≥ JAX"]["cython"] == (True, "1.06×")
    assert judged["W3 ≥ JAX"]["numba"][0] is False
    assert judged["W4 ≥ 95 % of the sgemm rate"]["cython"] == (True, "95 %")
    # numba "faster than sgemm on the same GEMMs": the sgemm timing was disturbed
    assert judged["W4 ≥ 95 % of the sgemm rate"]["numba"][0] is None
    assert judged["pipeline penalty ≤ 10 %"] == {"cython": (True, "+5 %"), "numba": (False, "+50 %")}
    assert judged["W2 ≥ 1.4× NumPy"]["cython"] == (None, "not run")
    assert judged["predict-W2 ≥ onnxruntime"]["cython"] == (None, "not run")


@pytest.mark.parametrize("argv, says", [
    (["--threads", "0"], "argument --threads: expected a positive integer"),
    (["--rounds", "-5"], "argument --rounds: expected a positive integer"),
    (["--min-time", "nan"], "argument --min-time: expected a finite number > 0"),
    (["--json", "."], "--json .: is a directory; give a file name"),
    (["--json", "no/such/folder/r.json"], "does not exist"),
    # round 55: "" was skipped silently, a folder's name failed after the whole run
    (["--json", ""], "--json: the path is empty; give a file name"),
    (["--json", "nodir/"], "--json nodir/: "),
    # round 60: these ran nothing, or printed tables of headers, and exited 0
    (["--only-sklearn", "--no-sklearn"], "--only-sklearn and --no-sklearn contradict"),
])
def test_bad_options_are_usage_errors_before_anything_runs(argv, says, capsys):
    """(round 54: --threads 0 was a ValueError traceback, --json naming a folder failed
    with the run's timings after the whole run, --min-time nan was taken)"""
    with pytest.raises(SystemExit) as ended:
        report.main(argv + ["--workloads", "vehicles-step"])
    assert ended.value.code == 2
    assert says in capsys.readouterr().err


def test_a_json_that_cannot_be_written_keeps_the_file_there(tmp_path, capsys):
    """Round 55: --json was written with open(path, "w"): a failed write (a file size
    limit here, a full disk) had emptied the last run's file and left a cut-off one, with
    a traceback after the whole run. (Python ignores SIGXFSZ: the write fails with EFBIG.)"""
    import resource
    path = tmp_path / "r.json"
    path.write_text('{\n "results": {"old": "timings"}}')   # an earlier run's
    argv = ["--workloads", "vehicles-step", "--columns", "numpy", "--rounds", "1",
            "--min-time", "0.01", "--no-pipeline", "--no-sklearn", "--json", str(path)]
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100, hard))
    try:
        with pytest.raises(SystemExit) as ended:
            report.main(argv)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert f"--json {path}: not written (" in str(ended.value.code)
    assert "the tables above are this run's" in str(ended.value.code)
    assert path.read_text() == '{\n "results": {"old": "timings"}}'
    assert os.listdir(tmp_path) == ["r.json"]
    report.main(argv)
    assert "vehicles-step" in json.loads(path.read_text())["results"]


def test_json_refuses_to_replace_a_file_no_run_wrote(tmp_path, capsys):
    """Round 60: --json replaced any file with the timings: the shipped digits, or this
    script itself."""
    path = tmp_path / "digits.csv.gz"
    path.write_bytes(b"\x1f\x8b precious data")
    with pytest.raises(SystemExit) as ended:
        report.main(["--workloads", "vehicles-step", "--json", str(path)])
    assert ended.value.code == 2
    assert (f"--json {path}: the file there is not a report.py JSON file; refusing to "
            "replace it") in capsys.readouterr().err
    assert path.read_bytes() == b"\x1f\x8b precious data"


def test_benchmark_scripts_refuse_bad_options_before_running(capsys):
    """Round 60: 0 rounds, steps or threads, an unknown backend or row were tracebacks
    (or an empty table and exit 0); no workload at all ran nothing and exited 0."""
    import gpu
    import mpi_scaling
    import pipeline_penalty
    cases = [(report.main, ["--workloads", ","], "--workloads names no workload"),
             (pipeline_penalty.main, ["--rounds", "0"], "expected a positive integer"),
             (pipeline_penalty.main, ["--seconds", "nan"], "expected a finite number > 0"),
             (pipeline_penalty.main, ["--backends", "nope"], "'nope' is not available"),
             (gpu.main, ["--smoke", "--only", "W9"], "--only: unknown rows ['W9']")]
    for main, argv, says in cases:
        with pytest.raises(SystemExit) as ended:
            main(argv)
        assert ended.value.code == 2 and says in capsys.readouterr().err, argv
    import sys
    saved = sys.argv
    sys.argv = ["mpi_scaling.py", "--steps", "0"]
    try:
        with pytest.raises(SystemExit) as ended:
            mpi_scaling.main()
    finally:
        sys.argv = saved
    assert ended.value.code == 2 and "expected a positive integer" in capsys.readouterr().err

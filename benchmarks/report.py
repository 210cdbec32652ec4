"""Time every workload in every column and print a markdown report.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/report.py

Rows are the workloads of workloads.py plus the pipeline row (pipeline.py);
columns are those of columns.py that import here. Then the scikit-learn table
(sklearn_case.py): fastmlp's MLPClassifier against scikit-learn's own. Each cell: build the case,
one first call (timed, and checked against the competent-NumPy baseline's
first call: same weights after the same training, same predictions), then
timing samples of at least 2 ms each (tiny calls looped) in --rounds passes
over the columns, --min-time seconds per cell in all; the fastest sample per
call is reported (--stat median: the median of the fastest round). Ratios are
speed-ups over competent NumPy in this run. The issue-10 targets are judged
from this run's numbers. One cell at a time, a short pause between cells.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

import fastmlp as fm
from fastmlp import _atomic
from fastmlp._cli_options import positive_float, positive_int   # (the CLI's option types)
from fastmlp._cli_outputs import check_output_path   # (what fastmlp train checks --save by)
from fastmlp.threads import GEMM_LOOPS

import onnx_case
import pipeline
import sklearn_case
from columns import BASELINE, BY_NAME as COLUMN, COLUMNS, applies, evidence, same_work
from workloads import BY_NAME, EXTRA_WORKLOADS, WORKLOADS, SgemmCase

PAUSE_S = 0.2
SAMPLE_S = 2e-3  # each timing sample lasts at least this long (loops tiny calls)
# the rows whose GEMMs are timed alone too (SgemmCase): their share of the call, and the
# ratio over NumPy a call made of its GEMMs alone would reach
GFLOP_WORKLOADS = ("W2", "W3", "W4", "predict-W2", "predict-W4")
SGEMM_SHARE_MAX = 1.15
COMPILED = ("cython", "numba")
NOISY = "†"


def measure(run, min_time, min_reps=5, max_reps=2000):
    """(median s per call, fastest sample s per call) of ``run``, after the caller's first call."""
    loops = 1
    while True:
        start = time.perf_counter()
        for _ in range(loops):
            run()
        took = time.perf_counter() - start
        if took >= SAMPLE_S:
            break
        loops *= max(2, min(100, int(SAMPLE_S / max(took, 1e-9) * 1.5)))
    samples, spent = [], 0.0
    while len(samples) < min_reps or (spent < min_time and len(samples) < max_reps):
        start = time.perf_counter()
        for _ in range(loops):
            run()
        took = time.perf_counter() - start
        samples.append(took / loops)
        spent += took
    return statistics.median(samples), min(samples)


def run_workload(w, columns, min_time, rounds, stat, log, extra=None):
    """{column: {"first": s, "per_call": s (the reported time per call), "spread": max/min of the rounds' medians, ...}}.

    Every case is built and called once first (timed; the baseline's result is the
    evidence every other column must match); then ``rounds`` passes over the columns,
    each timing every column for min_time / rounds seconds. The fastest sample of all
    counts (``stat="min"``) or the fastest round's median (``stat="median"``), so a
    burst of other load on this shared machine is not reported as a column's speed;
    ``spread`` shows how much the rounds' medians disagreed.
    ``extra``: {name: case} timed in the same rounds (not checked), e.g. the sgemm rate."""
    cases, cells, want = dict(extra or {}), {}, None
    for name, case in cases.items():
        case.run()
        cells[name] = {"first": 0.0, "rounds": [], "fastest": []}
    for col in columns:
        case = cases[col.name] = col.make(w)
        start = time.perf_counter()
        case.last = case.run()
        cells[col.name] = {"first": time.perf_counter() - start, "rounds": [], "fastest": []}
        got = evidence(w, case)
        if want is None:
            want = got
        else:
            same_work(w, got, want, who=f" on {col.name}")
    for _ in range(rounds):
        for name, case in cases.items():
            time.sleep(PAUSE_S)   # let the last library's spinning threads go to sleep
            median, fastest = measure(case.run, min_time / rounds)
            cells[name]["rounds"].append(median)
            cells[name]["fastest"].append(fastest)
    for name, cell in cells.items():
        cell["spread"] = max(cell["rounds"]) / min(cell["rounds"])
        cell["per_call"] = min(cell["rounds"] if stat == "median" else cell["fastest"])
        log(f"{w.name:13s} {name:26s} {w.samples / cell['per_call']:14,.0f} samples/s"
            f"  (rounds differ {cell['spread']:.2f}x)")
    return cells


def run(workloads, columns, min_time, rounds, stat, with_pipeline, log):
    """(results[workload][column], sgemm[workload], pipe[column]).

    The sgemm rate is timed in the same rounds as the columns (its fastest round
    kept), so a burst of other load cannot flatter fastmlp's share of it."""
    results, sgemm, pipe = {}, {}, {}
    for w in workloads:
        cols = [c for c in columns if applies(c, w)]
        extra = {"sgemm": SgemmCase(w)} if w.name in GFLOP_WORKLOADS else {}
        results[w.name] = run_workload(w, cols, min_time, rounds, stat, log, extra)
        if extra:
            sgemm[w.name] = results[w.name].pop("sgemm")
    if with_pipeline:
        for name in pipeline.COLUMNS:
            if name in [c.name for c in columns]:
                pipe[name] = pipeline.measure(name, min_time, rounds, stat)
                log(f"pipeline      {name:26s} step alone {pipe[name]['alone'] * 1e3:.2f} ms, "
                    f"inside {pipe[name]['inside'] * 1e3:.2f} ms")
                time.sleep(PAUSE_S)
    return results, sgemm, pipe


def _per_call(seconds):
    return f"{seconds * 1e6:,.1f} µs" if seconds < 1e-3 else f"{seconds * 1e3:,.2f} ms"


def speed_table(workloads, columns, results, stat):
    names = [c.name for c in columns]
    out = ["| workload (one call) | samples/call | " + " | ".join(names) + " |",
           "|---|---:|" + "---:|" * len(names)]
    for w in workloads:
        res = results[w.name]
        base = res[BASELINE]["per_call"]
        cells = []
        for name in names:
            if name not in res:
                cells.append("–")
                continue
            seconds = res[name]["per_call"]
            cell = f"{w.samples / seconds:,.0f}" + (NOISY if res[name]["spread"] > 1.25 else "")
            if name != BASELINE:
                cell += f" ({base / seconds:.2f}×)"
            cells.append(cell)
        out.append(f"| {w.name}: {w.about} | {w.samples} | " + " | ".join(cells) + " |")
    how = ("the median of the fastest round (--stat median)" if stat == "median" else
           "the fastest sample of all rounds")
    out += ["", f"Samples/s from the time per call, {how}; (×) = speed-up "
            f"over competent NumPy in this run; {NOISY} = the rounds differed by more than 25 % "
            "(load from other work). fit rows count rows × epochs.", "",
            "| time per call (first call) | " + " | ".join(names) + " |",
            "|---|" + "---:|" * len(names)]
    for w in workloads:
        res = results[w.name]
        out.append(f"| {w.name} | " + " | ".join(
            f"{_per_call(res[n]['per_call'])} ({_per_call(res[n]['first'])})" if n in res else "–"
            for n in names) + " |")
    return out


def sgemm_table(results, sgemm):
    out = []
    for wname, sg in sgemm.items():
        w = BY_NAME[wname]
        rate = w.flops / sg["per_call"] / 1e9
        base = results[wname].get(BASELINE, {}).get("per_call")
        what = ("train step: GEMMs per step (forward, dW of every layer, dx of all but the "
                "first)" if w.trains else "predict: forward GEMMs per call")
        out += ["", f"{wname} {what}, {w.flops / 1e9:.2f} GFLOP; elementwise work not counted. "
                "The sgemm row's × NumPy is what a call doing nothing but these GEMMs would "
                "reach", "",
                "| | ms/call | GFLOP/s | % of sgemm | × NumPy |", "|---|---:|---:|---:|---:|"]
        rows = [("sgemm alone (np.matmul, the BLAS the kernels call, the same GEMMs, same "
                 "rounds)", sg)] + list(results[wname].items())
        for name, cell in rows:
            gf = w.flops / cell["per_call"] / 1e9
            times = f"{base / cell['per_call']:.2f}×" if base else "–"
            out.append(f"| {name} | {cell['per_call'] * 1e3:.3f} | {gf:.1f} | "
                       f"{100 * gf / rate:.0f} | {times} |")
    return out


def pipeline_table(pipe):
    if not pipe:
        return []
    w = pipeline.WORKLOAD
    out = ["", f"Pipeline: per iteration, NumPy `np.matmul(X_raw, P, out=Z)` ({w.rows}×"
           f"{w.dims[0]} @ {w.dims[0]}×{w.dims[0]}, NumPy's BLAS), then one W3 train step on Z "
           "(public API for fastmlp)", "",
           "| | step alone | step inside the pipeline | penalty | NumPy GEMM inside |",
           "|---|---:|---:|---:|---:|"]
    for name, p in pipe.items():
        out.append(f"| {name} | {p['alone'] * 1e3:.2f} ms | {p['inside'] * 1e3:.2f} ms | "
                   f"{100 * p['penalty']:+.0f} % | {p['gemm'] * 1e3:.2f} ms |")
    return out


def _ratio(results, wname, name, over):
    """How many times faster column ``name`` ran ``wname`` than column ``over``; None if missing."""
    res = results.get(wname, {})
    if name not in res or over not in res:
        return None
    return res[over]["per_call"] / res[name]["per_call"]


def targets(results, sgemm, pipe):
    """[(target text, {backend: (met, shown value)})]: issue 10's targets, judged from this run."""
    rows = []

    def ratio_target(text, wname, over, at_least, missing):
        judged = {}
        for b in COMPILED:
            r = _ratio(results, wname, b, over)
            if r is not None:
                judged[b] = (r >= at_least, f"{r:.2f}×")
            else:
                ran = b in results.get(wname, {})
                judged[b] = (None, missing if ran else "not run")
        rows.append((text, judged))

    ratio_target("vehicles fit(epochs=K, batch_size=6) ≥ 30× NumPy", "vehicles-fit", BASELINE, 30,
                 "not run")
    ratio_target("vehicles train_on_batch ≥ 10× NumPy", "vehicles-step", BASELINE, 10, "not run")
    ratio_target("1-row predict ≥ 2.5× NumPy", "predict-1", BASELINE, 2.5, "not run")
    ratio_target("1-row predict ≥ 1.5× onnxruntime", "predict-1", "onnxruntime", 1.5,
                 "no onnxruntime")
    ratio_target("W2 ≥ 1.4× NumPy", "W2", BASELINE, 1.4, "not run")
    ratio_target("W3 ≥ 1.15× NumPy", "W3", BASELINE, 1.15, "not run")
    ratio_target("W3 ≥ JAX", "W3", "jax", 1.0, "no jax")
    ratio_target("W4 ≥ 1.1× NumPy", "W4", BASELINE, 1.1, "not run")
    judged = {}
    for b in COMPILED:
        if "W4" in sgemm and b in results.get("W4", {}):
            share = sgemm["W4"]["per_call"] / results["W4"][b]["per_call"]
            # The step can beat its GEMMs timed alone a little (105-108 % measured: its
            # dW GEMMs carry the SGD update, beta = 1, with no pass of their own), not
            # by much: a share over SGEMM_SHARE_MAX means load disturbed the sgemm timing.
            judged[b] = ((None, f"{100 * share:.0f} %: sgemm timing disturbed, rerun")
                         if share > SGEMM_SHARE_MAX else (share >= 0.95, f"{100 * share:.0f} %"))
        else:
            judged[b] = (None, "not run")
    rows.append(("W4 ≥ 95 % of the sgemm rate", judged))
    for wname in ("predict-W2", "predict-W4"):
        ratio_target(f"{wname} ≥ 1.3× NumPy", wname, BASELINE, 1.3, "not run")
        ratio_target(f"{wname} ≥ onnxruntime", wname, "onnxruntime", 1.0, "no onnxruntime")
    judged = {b: ((pipe[b]["penalty"] <= 0.10, f"{100 * pipe[b]['penalty']:+.0f} %")
                  if b in pipe else (None, "not run")) for b in COMPILED}
    rows.append(("pipeline penalty ≤ 10 %", judged))
    return rows


def targets_table(rows):
    out = ["", "Issue 10's targets (public API, both compiled backends), judged from this run:", "",
           "| target | " + " | ".join(COMPILED) + " |", "|---|" + "---|" * len(COMPILED)]
    for text, judged in rows:
        cells = []
        for b in COMPILED:
            met, shown = judged[b]
            cells.append(f"n/a ({shown})" if met is None else
                         f"{'met' if met else '**not met**'} ({shown})")
        out.append(f"| {text} | " + " | ".join(cells) + " |")
    return out


def _version(module):
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def environment(threads, columns):
    """Lines: versions, CPU, and every thread pool threadpoolctl sees (which BLAS kernel ran)."""
    import scipy
    import threadpoolctl

    versions = [f"Python {platform.python_version()}", f"fastmlp {_version('fastmlp')}",
                f"numpy {np.__version__}", f"scipy {scipy.__version__}"]
    for module in ("numba", "torch", "jax", "onnxruntime"):
        v = _version(module)
        if v is not None:
            versions.append(f"{module} {v}")
    cpu, flags = platform.processor() or "?", []
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read().splitlines()
        cpu = next(l.split(":", 1)[1].strip() for l in info if l.startswith("model name"))
        have = next(l.split(":", 1)[1].split() for l in info if l.startswith("flags"))
        flags = [f for f in ("avx2", "fma", "avx512f") if f in have]
    except (OSError, StopIteration):
        pass
    cpu += f" ({', '.join(flags)})" if flags else ""
    lines = ["- " + ", ".join(versions),
             f"- CPU: {cpu}, {os.cpu_count()} logical cores; threads {threads}: "
             f"fm.set_num_threads({threads}) (numpy's and scipy's BLAS, Numba), "
             f"torch.set_num_threads({threads}), onnxruntime intra_op_num_threads={threads}; "
             "JAX uses its own pool"]
    try:  # which build of the Cython kernels ran (kernels/cython_mlp.py)
        from fastmlp.kernels import cython_mlp
        lines.append(f"- Cython kernels: the {cython_mlp.ISA} build")
        where = GEMM_LOOPS[cython_mlp.gemm_policy()]   # (-1: only asks)
        pooled = cython_mlp._blas_pool()["on"]
        lines.append(f"- GEMM loops: fm.set_gemm_loops({where!r}); their second part on "
                     + ("the BLAS's own worker (kernels/_blas_pool.h)" if pooled
                        else "the extension's worker (kernels/_gemv_pool.h) or none"))
    except ImportError as exc:
        lines.append(f"- Cython kernels: not importable ({exc})")
    for info in threadpoolctl.threadpool_info():
        path = info.get("filepath") or "?"
        where = path.split("site-packages/")[-1]   # e.g. numpy.libs/libscipy_openblas64_...so
        owner = where.split("/")[0].split(".")[0] if "/" in where and not where.startswith("/") \
            else "system"
        lines.append(f"- thread pool ({owner}'s): {info.get('internal_api')} "
                     f"{info.get('version') or ''}, "
                     f"kernels {info.get('architecture', '-')}, {info.get('num_threads')} threads, "
                     f"{where}")
    lines.append("- columns: " + "; ".join(f"**{c.name}**: {c.label}" for c in columns))
    return lines


# how every --json file this script writes begins (json.dumps of its dict, "results" first)
JSON_START = b'{\n "results":'


def _check_replaceable(path):
    """Refuse a --json path holding a file that no earlier run wrote: it replaced the
    shipped digits, or this script, with its timings (hostile round 60)."""
    if not os.path.isfile(path):
        return
    with open(path, "rb") as f:
        start = f.read(len(JSON_START))
    if start != JSON_START:
        raise ValueError(f"--json {path}: the file there is not a report.py JSON file; "
                         "refusing to replace it (choose another path, or remove it)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default=",".join(w.name for w in WORKLOADS),
                        help="comma-separated subset of %(default)s (also: "
                             f"{', '.join(w.name for w in EXTRA_WORKLOADS)})")
    parser.add_argument("--columns", default=",".join(c.name for c in COLUMNS if c.available()),
                        help="comma-separated subset of the columns that import here "
                             "(default %(default)s); numpy, the baseline, is always run")
    parser.add_argument("--rounds", type=positive_int, default=3,
                        help="passes over the columns per workload; the fastest counts (default 3)")
    parser.add_argument("--stat", choices=("min", "median"), default="min",
                        help="per cell: its fastest sample (default: on a shared machine other "
                             "work only adds time), or the median of its fastest round")
    parser.add_argument("--no-pipeline", action="store_true", help="skip the pipeline row")
    parser.add_argument("--no-sklearn", action="store_true",
                        help="skip the scikit-learn table (sklearn_case.py)")
    parser.add_argument("--only-sklearn", action="store_true",
                        help="the scikit-learn table alone (no workload, no pipeline row)")
    parser.add_argument("--min-time", type=positive_float, default=1.0,
                        help="seconds of timing per cell (default 1)")
    parser.add_argument("--threads", type=positive_int, default=2,
                        help="BLAS, Numba, torch and onnxruntime threads (default 2)")
    parser.add_argument("--json", help="also write the raw timings to this file")
    args = parser.parse_args(argv)
    try:
        workloads = [BY_NAME[n.strip()] for n in args.workloads.split(",") if n.strip()]
    except KeyError as exc:
        parser.error(f"unknown workload {exc}; choose from {sorted(BY_NAME)}")
    if args.only_sklearn:
        if args.no_sklearn:
            parser.error("--only-sklearn and --no-sklearn contradict each other")
        workloads, args.no_pipeline, args.no_sklearn = [], True, False
    elif not workloads:
        parser.error("--workloads names no workload (give --only-sklearn for the "
                     "scikit-learn table alone)")
    names = [n.strip() for n in args.columns.split(",") if n.strip()]
    for n in names:
        if n not in COLUMN:
            parser.error(f"unknown column {n!r}; choose from {[c.name for c in COLUMNS]}")
        if not COLUMN[n].available():
            parser.error(f"column {n!r} does not import here")
    columns = [COLUMN[BASELINE]] + [COLUMN[n] for n in names if n != BASELINE]
    if args.json is not None:   # checked now, not after the whole run (its timings were
        try:                    # lost), as fastmlp train checks --save ("" too: an error)
            check_output_path("--json", args.json)
            _check_replaceable(args.json)
        except ValueError as exc:
            parser.error(str(exc))

    import scipy.linalg.blas  # noqa: F401  load scipy's BLAS so its threads are set and shown
    fm.set_num_threads(args.threads)
    onnx_case.THREADS[0] = args.threads
    if "torch" in names:
        import torch
        torch.set_num_threads(args.threads)
    if "jax" in names:
        import jax  # noqa: F401  loaded now so its pools show in the environment lines

    overrides = [v for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if v in os.environ]
    warning = ""
    if overrides:
        warning = (f"> WARNING: {', '.join(f'{v}={os.environ[v]}' for v in overrides)} is set; "
                   "OpenBLAS may not use this CPU's best kernels. For real numbers run\n"
                   "> `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/report.py`")
        print(warning.replace("> ", ""), file=sys.stderr)

    load_before = os.getloadavg()
    began = time.perf_counter()
    results, sgemm, pipe = run(workloads, columns, args.min_time, max(1, args.rounds),
                               args.stat, not args.no_pipeline,
                               log=lambda s: print(s, file=sys.stderr, flush=True))
    skl = {}
    if not args.no_sklearn and sklearn_case.available():
        skl = sklearn_case.measure(args.min_time, max(1, args.rounds), measure)
        for name, cells in skl.items():
            print(f"scikit-learn  {name:26s} fit {cells['fit'] * 1e3:.2f} ms", file=sys.stderr)
    load_after = os.getloadavg()
    lines = [f"## fastmlp benchmark (float32; SGD, lr {BY_NAME['W2'].lr} for W2-W4, "
             f"{BY_NAME['vehicles-fit'].lr} for vehicles; Adam, lr {BY_NAME['W2-adam'].lr} "
             "for W2-adam)", ""]
    if warning:
        lines += [warning, ""]
    if workloads:   # (--only-sklearn: its table alone, not two tables of headers)
        lines += speed_table(workloads, columns, results, args.stat) + sgemm_table(results, sgemm)
    lines += pipeline_table(pipe) + sklearn_case.table(skl)
    if workloads:
        lines += targets_table(targets(results, sgemm, pipe))
        lines += ["", "Every column started from the same weights and data; after its first "
                  "call its weights (training) or outputs (predict) matched competent NumPy's "
                  "within float32 tolerance, so every column does the same work."]
    lines.append("")
    lines += environment(args.threads, columns)
    lines.append(f"- load average (1, 5, 15 min) {', '.join(f'{x:.2f}' for x in load_before)} "
                 f"before, {', '.join(f'{x:.2f}' for x in load_after)} after; run took "
                 f"{time.perf_counter() - began:.0f} s. The machine is shared with other "
                 "work: a load well above 0 means the numbers are noisy.")
    print("\n".join(lines))
    if args.json is not None:
        raw = json.dumps({"results": results, "sgemm": sgemm, "pipeline": pipe, "sklearn": skl,
                          "env": environment(args.threads, columns),
                          "load": [load_before, load_after]}, indent=1)
        try:   # as save writes a model: a failed write (a full disk) keeps the file there
            _atomic.replace(args.json, lambda f: f.write(raw.encode()))
        except (OSError, ValueError) as exc:
            sys.exit(f"report.py: --json {args.json}: not written ({exc}); the tables above "
                     "are this run's")


if __name__ == "__main__":
    main()

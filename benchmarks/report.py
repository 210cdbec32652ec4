"""Run every workload on every backend and print a markdown report.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/report.py

Samples/s are medians of repeated timings of one backend-contract call (see
workloads.py), after one warm-up call whose duration is reported as the
first call. Ratios are to the NumPy reference measured in the same run. For
W4, achieved GFLOP/s of each train step is set against scipy's float32 sgemm
doing the same GEMMs in the same run. PyTorch, if importable, gets a column.
Each backend runs all its repetitions, then a 0.3 s pause, then the next.
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
from workloads import BY_NAME, WORKLOADS, Case, SgemmCase

PAUSE_S = 0.3
SAMPLE_S = 2e-3  # each timing sample lasts at least this long (loops tiny calls)
GFLOP_WORKLOADS = ("W4",)


def measure(case, min_time, min_reps=5, max_reps=1000):
    """(first call s, median s per call, samples) of ``case.run``."""
    start = time.perf_counter()
    case.check(case.run())
    first = time.perf_counter() - start
    loops = 1
    while True:
        start = time.perf_counter()
        for _ in range(loops):
            result = case.run()
        took = time.perf_counter() - start
        if took >= SAMPLE_S:
            break
        loops *= max(2, min(100, int(SAMPLE_S / max(took, 1e-9) * 1.5)))
    samples, spent = [], 0.0
    while len(samples) < min_reps or (spent < min_time and len(samples) < max_reps):
        start = time.perf_counter()
        for _ in range(loops):
            result = case.run()
        took = time.perf_counter() - start
        samples.append(took / loops)
        spent += took
    case.check(result)
    return first, statistics.median(samples), len(samples)


def torch_available():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def environment(threads):
    """Lines describing versions, CPU and BLAS threads."""
    import scipy

    lines = [f"- Python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}"]
    try:
        import numba
        lines[0] += f", numba {numba.__version__} ({numba.get_num_threads()} threads)"
    except ImportError:
        pass
    if torch_available():
        import torch
        lines[0] += f", torch {torch.__version__} ({torch.get_num_threads()} threads)"
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lines.append(f"- CPU: {cpu}, {os.cpu_count()} logical cores; fm.set_num_threads({threads})")
    for info in fm.thread_info():
        lines.append(f"- BLAS: {info['internal_api']} {info['version']}, kernels "
                     f"{info['architecture']}, {info['num_threads']} threads, "
                     f"{os.path.basename(info['filepath'] or '?')}")
    return lines


def run(workloads, backends, with_torch, min_time, log):
    """results[workload][backend] = (first s, median s, samples); sgemm[workload] likewise.

    The sgemm baseline is measured before and after the backends and the faster
    kept, so a burst of other load cannot flatter the backends' share of it."""
    results, sgemm = {}, {}
    for w in workloads:
        results[w.name] = {}
        baseline = []
        if w.name in GFLOP_WORKLOADS:
            baseline.append(_sgemm(w, min_time, log))
        for name in backends + (["torch"] if with_torch else []):
            if name == "torch":
                from torch_case import TorchCase
                case = TorchCase(w)
            else:
                case = Case(w, name)
            results[w.name][name] = measure(case, min_time)
            log(f"{w.name:9s} {name:7s} {w.rows / results[w.name][name][1]:14,.0f} samples/s")
            del case
            time.sleep(PAUSE_S)
        if baseline:
            baseline.append(_sgemm(w, min_time, log))
            sgemm[w.name] = min(baseline, key=lambda r: r[1])
    return results, sgemm


def _sgemm(w, min_time, log):
    result = measure(SgemmCase(w.dims, w.rows), min_time)
    log(f"{w.name:9s} sgemm   {w.flops / result[1] / 1e9:14,.1f} GFLOP/s")
    time.sleep(PAUSE_S)
    return result


def markdown(workloads, results, sgemm):
    """The report tables as a list of lines."""
    names = list(next(iter(results.values())))
    out = ["| workload | rows/call | " + " | ".join(names) + " |",
           "|---|---:|" + "---:|" * len(names)]
    for w in workloads:
        ref = results[w.name].get("numpy")
        cells = []
        for name in names:
            first, median, _ = results[w.name][name]
            cell = f"{w.rows / median:,.0f}"
            if ref and name != "numpy":
                cell += f" ({ref[1] / median:.2f}×)"
            cells.append(cell)
        out.append(f"| {w.name}: {w.about} | {w.rows} | " + " | ".join(cells) + " |")
    out += ["", "Samples/s, median; (×) = speed-up over numpy in this run.", "",
            "| first call, ms | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for w in workloads:
        out.append(f"| {w.name} | " + " | ".join(f"{results[w.name][n][0] * 1e3:.2f}"
                                                  for n in names) + " |")
    for wname, (_, sg_median, _) in sgemm.items():
        w = BY_NAME[wname]
        sg = w.flops / sg_median / 1e9
        out += ["", f"{wname} train step: {w.flops / 1e9:.2f} GFLOP of GEMMs per step "
                "(forward, dW of every layer, dx of all but the first)", "",
                "| | ms/step | GFLOP/s | % of sgemm |", "|---|---:|---:|---:|",
                f"| scipy sgemm, same GEMMs (faster of before/after) | {sg_median * 1e3:.1f} | {sg:.1f} | 100 |"]
        for name in names:
            median = results[wname][name][1]
            gf = w.flops / median / 1e9
            out.append(f"| {name} | {median * 1e3:.1f} | {gf:.1f} | {100 * gf / sg:.0f} |")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default=",".join(w.name for w in WORKLOADS),
                        help="comma-separated subset of %(default)s")
    parser.add_argument("--backends", default=",".join(fm.available_backends()),
                        help="comma-separated (default: every available backend)")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch column")
    parser.add_argument("--min-time", type=float, default=1.0,
                        help="seconds of timing per workload and backend (default 1)")
    parser.add_argument("--threads", type=int, default=2,
                        help="BLAS, Numba and torch threads (default 2)")
    parser.add_argument("--json", help="also write the raw timings to this file")
    args = parser.parse_args(argv)
    try:
        workloads = [BY_NAME[n] for n in args.workloads.split(",")]
    except KeyError as exc:
        parser.error(f"unknown workload {exc}; choose from {sorted(BY_NAME)}")
    backends = args.backends.split(",")
    if "numpy" not in backends:
        backends.insert(0, "numpy")  # the baseline of every ratio
    for b in backends:
        try:
            fm.backends.get_backend(b)
        except ValueError as exc:
            parser.error(str(exc))

    import scipy.linalg.blas  # noqa: F401  load scipy's BLAS so its threads are set and shown
    with_torch = not args.no_torch and torch_available()
    fm.set_num_threads(args.threads)
    if with_torch:
        import torch
        torch.set_num_threads(args.threads)

    overrides = [v for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if v in os.environ]
    warning = ""
    if overrides:
        warning = (f"> WARNING: {', '.join(f'{v}={os.environ[v]}' for v in overrides)} is set; "
                   "OpenBLAS may not use this CPU's best kernels. For real numbers run\n"
                   "> `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/report.py`")
        print(warning.replace("> ", ""), file=sys.stderr)

    load_before = os.getloadavg()[0]
    results, sgemm = run(workloads, backends, with_torch, args.min_time,
                         log=lambda s: print(s, file=sys.stderr, flush=True))
    lines = ["## fastmlp benchmark (float32, SGD lr 0.01)", ""]
    if warning:
        lines += [warning, ""]
    lines += markdown(workloads, results, sgemm) + [""] + environment(args.threads)
    lines.append(f"- 1-minute load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} "
                 "after (well above 0 means other work shared the cores: numbers are noisy)")
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            keys = ("first_call_s", "median_s", "samples")
            raw = {w: {b: dict(zip(keys, r)) for b, r in res.items()} for w, res in results.items()}
            json.dump({"results": raw, "sgemm": {w: dict(zip(keys, r)) for w, r in sgemm.items()},
                       "env": environment(args.threads)}, f, indent=1)


if __name__ == "__main__":
    main()

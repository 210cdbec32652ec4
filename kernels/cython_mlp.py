"""The Cython kernels, in the widest build this processor runs.

setup.py compiles kernels/_mlp.pxi three times on x86-64 with GCC or clang: for the
compiler's default target (baseline x86-64, SSE2, so a wheel runs on any x86-64),
with AVX2 + FMA, and with AVX-512 (F, CD, BW, DQ, VL); elsewhere only the first.
Importing this module imports the widest of them that the processor and the OS
support, by NumPy's run-time CPU detection, and puts it in this module's place:
``fastmlp.kernels.cython_mlp`` is that build (its ``ISA`` says which). Mostly the
elementwise passes around the GEMMs change width (bias + activation, the deltas,
the losses, the finiteness checks): the GEMMs are BLAS's, and the small-predict
GEMV loops pick their width at run time in every build (kernels/_gemv.h). Every build
gives the same bits (setup.py: -ffp-contract=off), but for the AVX-512 build's own
float32 GEMM loops (predict's batches, kernels/_sgemm.h; fit's epochs,
kernels/_sgemm_blas.h), which sum in their own order: with them off (``_use_sgemm(0)``)
it gives the others' bits. Measured on an AVX-512 machine
(benchmarks/isa_builds.py, 784-256-128-10 float32): the AVX-512 build's train steps
1.17-1.22x faster than the baseline's with tanh, 1.11-1.16x with sigmoid, about the
same with relu; with the baseline build a tanh step of 512 rows was 0.86-0.88x
competent NumPy.

``FASTMLP_CYTHON_ISA`` = ``base``, ``avx2`` or ``avx512`` imports that build instead
(to compare builds, or to test each); one this processor cannot run is refused.
"""
from __future__ import annotations

import os
import sys

from .cython_builds import ENV, load

# this module becomes the build: `from fastmlp.kernels.cython_mlp import Engine` and
# `from fastmlp.kernels import cython_mlp` get its names
sys.modules[__name__] = load(os.environ.get(ENV, "").strip().lower() or None)

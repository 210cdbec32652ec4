# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, language_level=3
"""fastmlp's Cython kernels (kernels/_mlp.pxi) compiled for AVX-512 (F, CD, BW, DQ, VL) with AVX2 + FMA.

Import :mod:`fastmlp.kernels.cython_mlp`, which is the widest build this processor runs.
"""
include "_mlp.pxi"

ISA = "avx512"  # the build: setup.py's flags for it, cython_mlp.py's choice

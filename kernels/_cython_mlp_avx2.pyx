# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, language_level=3
"""fastmlp's Cython kernels (kernels/_mlp.pxi) compiled for AVX2 + FMA (+ F16C).

Import :mod:`fastmlp.kernels.cython_mlp`, which is the widest build this processor runs.
"""
include "_mlp.pxi"

ISA = "avx2"  # the build: setup.py's flags for it, cython_mlp.py's choice

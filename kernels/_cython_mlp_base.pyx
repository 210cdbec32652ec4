# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, language_level=3
"""fastmlp's Cython kernels (kernels/_mlp.pxi) compiled for the compiler's default target:
baseline x86-64 (SSE2) on x86-64, so this build runs on every machine.

Import :mod:`fastmlp.kernels.cython_mlp`, which is the widest build this processor runs.
"""
include "_mlp.pxi"

ISA = "base"  # the build: setup.py's flags for it, cython_mlp.py's choice

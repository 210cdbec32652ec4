"""Arrays whose data starts on a cache line.

theta is made so (a model's own, and one read from a file), and so is every W in it
whose offset is a multiple of 16 floats (every W of a net whose layers are multiples
of 16 wide): the float32 predict loops of kernels/_sgemm.h read W's rows where they
lie, and a 64-byte load across two cache lines cost them 15 % (NumPy aligns its
arrays to 16 bytes).
"""
from __future__ import annotations

import numpy as np

CACHE_LINE = 64


def aligned_empty(n, dtype):
    """An uninitialised (n,) array of ``dtype`` whose data starts on a CACHE_LINE-byte
    boundary: a view of a slightly larger array."""
    itemsize = np.dtype(dtype).itemsize
    raw = np.empty(n * itemsize + CACHE_LINE, dtype=np.uint8)
    start = -raw.ctypes.data % CACHE_LINE
    return raw[start:start + n * itemsize].view(dtype)


def aligned_zeros(n, dtype):
    """aligned_empty, zeroed."""
    a = aligned_empty(n, dtype)
    a[...] = 0
    return a


def aligned_copy(a, dtype=None):
    """A 1-D array's copy on a cache line, cast to ``dtype`` if given (unsafely: the
    caller checks the values)."""
    out = aligned_empty(a.shape[0], a.dtype if dtype is None else dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        np.copyto(out, a, casting="unsafe")
    return out

"""Input checks, done once in Python before any compiled code runs.

Every check raises ValueError or TypeError naming the problem. Arrays that are
only laid out differently (Fortran order, strided views, other numeric dtypes)
are converted, never rejected: the backends always receive C-contiguous arrays
of the model dtype whose shapes match the network.
"""
from __future__ import annotations

import numpy as np

from .losses import BINARY_CROSS_ENTROPY, CROSS_ENTROPY


def _all_finite(a):
    """True when every entry of ``a`` is finite, without an a-sized temporary.

    A sum is finite only if every term is (inf and NaN propagate), so the
    float64 sum answers at once; only when it overflows are entries checked.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.sum(a, dtype=np.float64)):
            return True
    return bool(np.isfinite(a).all())


def _asarray(a, name):
    """np.asarray, with NumPy's error for ragged nested lists reworded to name the argument."""
    try:
        return np.asarray(a)
    except ValueError as exc:
        raise ValueError(f"{name} must be a rectangular array of numbers: its rows differ in "
                         f"length ({exc})") from None


def as_float_matrix(a, name, dtype):
    """``a`` as a C-contiguous 2-D array of ``dtype``; rejects non-numeric, empty, NaN/inf."""
    arr = _asarray(a, name)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"{name} must be real, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (samples, features), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty: it has 0 rows")
    with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf is reported below
        out = np.ascontiguousarray(arr, dtype=dtype)
    if not _all_finite(out):
        bad = np.argwhere(~np.isfinite(out))[0]
        raise ValueError(f"{name} contains NaN or inf (first at row {bad[0]}, column {bad[1]})")
    return out


def check_inputs(X, input_dim, dtype):
    X = as_float_matrix(X, "X", dtype)
    if X.shape[1] != input_dim:
        raise ValueError(f"X has {X.shape[1]} columns but the model expects input_dim={input_dim}")
    return X


def check_targets(Y, n_rows, net, dtype):
    """Targets as floats (n, outputs); integer class labels become one-hot rows."""
    n_out, loss = net.output_dim, net.loss.code
    arr = _asarray(Y, "Y")
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"Y must be numeric, got dtype {arr.dtype}")
    if arr.ndim == 0 or arr.shape[0] != n_rows:
        raise ValueError(f"Y has {arr.shape[0] if arr.ndim else 0} rows but X has {n_rows}")
    labels = (loss == CROSS_ENTROPY and n_out > 1
              and (arr.ndim == 1 or (arr.ndim == 2 and arr.shape[1] == 1)))
    if labels:
        flat = arr.reshape(-1)
        if not np.issubdtype(flat.dtype, np.integer):
            if not np.isfinite(flat).all():
                raise ValueError("Y contains NaN or inf")
            if np.any(flat != np.round(flat)):
                raise ValueError("class labels in Y must be integers")
        if flat.min() < 0 or flat.max() >= n_out:
            raise ValueError(f"class labels must be in [0, {n_out}), got values from "
                             f"{flat.min()} to {flat.max()}")
        T = np.zeros((n_rows, n_out), dtype=dtype)
        T[np.arange(n_rows), flat.astype(np.int64)] = 1
        return T
    T = as_float_matrix(arr, "Y", dtype)
    if T.shape[1] != n_out:
        raise ValueError(f"Y has {T.shape[1]} columns but the model has {n_out} outputs")
    if loss in (CROSS_ENTROPY, BINARY_CROSS_ENTROPY) and (T.min() < 0 or T.max() > 1):
        raise ValueError(f"targets for {net.loss.name} must lie in [0, 1]")
    return T


def check_batch_size(batch_size, n_rows):
    if batch_size is None:
        return n_rows
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    return min(int(batch_size), n_rows)


def check_count(value, name, minimum=0):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)

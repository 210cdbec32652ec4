"""Input checks, done once in Python before any compiled code runs.

Every check raises ValueError or TypeError naming the problem. Arrays that are
only laid out differently (Fortran order, strided views, other numeric dtypes)
are converted, never rejected: the backends always receive C-contiguous arrays
of the model dtype whose shapes match the network.
"""
from __future__ import annotations

import functools
import math
import numbers
import sys

import numpy as np

from .losses import BINARY_CROSS_ENTROPY, CROSS_ENTROPY, MSE
from .rules import CONVERT_BYTES


# x . 0 is NaN exactly when some x is NaN or inf and, unlike a sum, never overflows; BLAS's
# dot reads the data once, at memory speed (a max and a min would read it twice).
# np.vdot (unlike @ and np.dot) raises no FP error under np.errstate(all="raise"):
# test_divergence checks that. Large arrays go block by block against one zero block.
_BLOCK = 1 << 18  # 1 MiB of float32 zeros, 2 MiB of float64
_FEW = 16         # values finite() checks in Python (0.4 us for 3, the dot 0.9 us)
_ZEROS = {np.dtype(t): np.zeros(_BLOCK, dtype=t) for t in (np.float32, np.float64)}


def finite(a):
    """True when every entry of ``a`` (a float array, any layout) is finite; quick, silent
    for float32 and float64 (another float dtype, e.g. a loaded model's float16 classes_,
    by np.isfinite)."""
    zeros = _ZEROS.get(a.dtype)
    if zeros is None:
        return bool(np.isfinite(a).all())
    if not a.flags.c_contiguous:
        # NaN propagates through max and min without a warning; inf shows as the max or min
        return (math.isfinite(np.maximum.reduce(a, axis=None))
                and math.isfinite(np.minimum.reduce(a, axis=None)))
    flat = a.reshape(-1)
    if flat.size <= _FEW:   # a 1-row softmax's outputs: a BLAS call's set-up costs more
        return all(map(math.isfinite, flat.tolist()))
    if flat.size <= _BLOCK:
        return math.isfinite(np.vdot(flat, zeros[:flat.size]))
    for start in range(0, flat.size, _BLOCK):
        block = flat[start:start + _BLOCK]
        if not math.isfinite(np.vdot(block, zeros[:block.size])):
            return False
    return True


def python_laid_out(a, cols, dtype):
    """True when ``a`` is laid out as the backends take it: a C-contiguous, aligned 2-D
    ndarray of ``dtype`` with ``cols`` columns and at least one row. O(1): its values
    are not read (see :func:`ready`). Written for the 1-row predict, whose whole
    budget is a few microseconds: each attribute is read once."""
    if type(a) is not np.ndarray or a.dtype != dtype or a.ndim != 2:
        return False
    n, c = a.shape
    if n == 0 or c != cols:
        return False
    flags = a.flags
    return flags.c_contiguous and flags.aligned


def python_laid_out_xy(X, Y, n_in, n_out, dtype):
    """python_laid_out(X, n_in, dtype) and python_laid_out(Y, n_out, dtype), Y with as
    many rows as X: a train_on_batch the backends take as it is. O(1)."""
    return (python_laid_out(X, n_in, dtype) and python_laid_out(Y, n_out, dtype)
            and X.shape[0] == Y.shape[0])


# laid_out and laid_out_xy: the same two tests in C when the extension is built, where
# these Python attribute reads are most of the Python around a 1-row predict or a tiny
# network's step (~0.35 us of ~1.5). tests/test_laid_out.py holds both to one answer.
laid_out, laid_out_xy = python_laid_out, python_laid_out_xy
_compiled_scale_into = None   # input scaling in one pass (see _scale_into)
try:
    from .kernels.cython_mlp import laid_out, laid_out_xy  # noqa: F401, F811
    from .kernels.cython_mlp import scale_into as _compiled_scale_into  # noqa: F811
except ImportError:
    pass


def column_major(a):
    """``a`` (an ndarray) is 2-D with each column's values adjacent and its rows not:
    Fortran order, as a DataFrame's values are, or a block of rows of such an array."""
    return (a.ndim == 2 and a.shape[0] > 1 and a.shape[1] > 1 and a.strides[0] == a.itemsize
            and a.strides[1] >= a.shape[0] * a.itemsize)


def laid_out_columns(a, cols, dtype):
    """:func:`laid_out`, but Fortran-ordered (and not also C-contiguous): the layout the
    backends that read columns (``reads_columns``) take as it is. O(1)."""
    return (type(a) is np.ndarray and a.ndim == 2 and a.shape[1] == cols and a.shape[0] > 1
            and cols > 1 and a.flags.f_contiguous and a.flags.aligned and a.dtype == dtype)


def ready(a, cols, dtype):
    """True when ``a`` is already what the backends take: :func:`laid_out`, and all
    finite. O(1) Python work and one vectorised pass; anything else goes through
    the full checks."""
    return laid_out(a, cols, dtype) and finite(a)


def ready_unit(a, cols, dtype):
    """As :func:`ready`, for targets that must lie in [0, 1] (NaN fails the comparisons)."""
    return (laid_out(a, cols, dtype) and np.minimum.reduce(a, axis=None) >= 0
            and np.maximum.reduce(a, axis=None) <= 1)


SMALL_COPY_BYTES = 1 << 16


def small_real_copy(X, width, dtype):
    """A C-contiguous copy of X in ``dtype`` when X is a small (<= SMALL_COPY_BYTES) plain
    2-D ndarray of real numbers or bools ``width`` wide in another dtype or layout (a
    float64 row for a float32 model), else None. predict's checked kernel then finds
    NaN, inf and values too large for ``dtype`` (inf after the cast) as it reads it,
    skipping the validation pass a 1-row call would spend most of its time in."""
    if not _small_plain(X, width):
        return None
    with np.errstate(over="ignore", invalid="ignore"):   # found by the checked kernel
        return np.array(X, dtype=dtype, order="C")


def _small_plain(X, width):
    """X is a small (<= SMALL_COPY_BYTES) plain 2-D ndarray of real numbers or bools,
    ``width`` wide, with rows: what the small-call fast paths take."""
    return (type(X) is np.ndarray and X.ndim == 2 and X.shape[1] == width
            and X.dtype.kind in "fiub" and X.nbytes <= SMALL_COPY_BYTES and len(X) > 0)


_EYE_CLASSES = 256   # one-hot rows are taken from a cached identity up to this many classes


@functools.lru_cache(maxsize=16)
def _eye(k, dtype):
    """The read-only identity (k, k) of ``dtype``: its rows are the one-hot targets."""
    eye = np.eye(k, dtype=dtype)
    eye.flags.writeable = False
    return eye


_UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def class_indices(Y, n_rows, k):
    """Y as a 1-D integer array (n_rows,) (a view) when it is a plain integer ndarray
    (n_rows,) or (n_rows, 1) with every value in [0, k); else None, and the full checks
    (check_targets, after labels.encode) map other labels or name the problem. One
    reduction (two for a signed Y of 1 or 2 bytes and k beyond its positive range)."""
    if (type(Y) is not np.ndarray or Y.dtype.kind not in "iu" or not Y.dtype.isnative
            or not (Y.ndim == 1 or (Y.ndim == 2 and Y.shape[1] == 1))
            or len(Y) != n_rows or n_rows == 0):
        return None   # (byte-swapped: the unsigned view below would misread it)
    flat = Y.reshape(-1)
    if Y.dtype.kind == "i":
        # [0, k) in one reduction: read as unsigned, a negative index is at least
        # 2 ** (bits - 1), beyond k (it would wrap round in take); the view costs no copy.
        # Not so where k is beyond that: an int8 -1 read as 255 passed for a 256-class
        # model and trained as class 255.
        if k > 1 << (8 * flat.dtype.itemsize - 1) and np.minimum.reduce(flat) < 0:
            return None
        flat_unsigned = flat.view(_UNSIGNED[flat.dtype.itemsize])
    else:
        flat_unsigned = flat
    return None if np.maximum.reduce(flat_unsigned) >= k else flat


def python_index_targets(Y, n_rows, k, dtype):
    """One-hot targets (n_rows, k) of ``dtype`` for class indices Y (see
    :func:`class_indices`); else None. O(1) Python work: one reduction and one gather,
    about the cost of a manual ``np.eye(k)[y]``."""
    flat = class_indices(Y, n_rows, k)
    if flat is None:
        return None
    if k <= _EYE_CLASSES:
        return _eye(k, dtype).take(flat, axis=0)
    T = np.zeros((n_rows, k), dtype=dtype)
    T[np.arange(n_rows), flat] = 1
    return T


# index_targets: the same in C when the extension is built, one pass over Y (NumPy's
# two reductions and a gather were 2.4 us of a 6-row train_on_batch on class labels,
# against 1.8 us for the whole step on one-hot rows). tests/test_index_targets.py holds
# both to one answer.
index_targets = python_index_targets
try:
    from .kernels.cython_mlp import index_targets  # noqa: F811
except ImportError:
    pass


def small_scaled_copy(X, width, dtype, scaling):
    """:func:`small_real_copy` for a model with input scaling (mean, scale): (X - mean) /
    scale by :func:`_scaled`'s own arithmetic (float64, then ``dtype``), else None.
    Non-finite results are found by predict's checked kernel, as there."""
    if not _small_plain(X, width):
        return None
    out = np.empty(X.shape, dtype=dtype)
    _scale_into(out, X, *scaling)   # one block: no slicing (a 1-row predict's budget)
    return out


def refuse_masked(a, name):
    """``a`` itself, unless it is a masked array: np.asarray (and scikit-learn's checks)
    would drop the mask and train on, or predict from, the hidden values."""
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(f"{name} is a masked array: fastmlp does not honour masks; pass "
                        f"{name}.filled(value) or drop the masked rows "
                        f"({name}[~{name}.mask.any(axis=1)])")
    return a


def refuse_sparse(a, name):
    """``a`` itself, unless it is a scipy.sparse matrix or array, which np.asarray would
    wrap in a 0-d object array."""
    if type(a).__module__.startswith("scipy.sparse"):
        raise TypeError(f"{name} is a scipy.sparse {type(a).__name__}: fastmlp takes dense "
                        f"arrays; pass {name}.toarray()")
    return a


def as_array(a, name):
    """np.asarray, refusing masked and sparse arrays and rewording NumPy's ragged-list
    error."""
    refuse_masked(a, name)
    refuse_sparse(a, name)
    try:
        return np.asarray(a)
    except ValueError as exc:
        raise ValueError(f"{name} must be a rectangular array of numbers: its rows differ in "
                         f"length ({exc})") from None


def _check_real(arr, name):
    if arr.dtype.kind in "mM":  # NumPy counts timedelta64 as an integer: its unit's count
        since = "(" + name + " - np.datetime64('1970-01-01'))" if arr.dtype.kind == "M" else name
        raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}: convert times to "
                        f"numbers in a unit of your choice first (e.g. {since} / "
                        "np.timedelta64(1, 's'))")
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"{name} must be real, got dtype {arr.dtype}")


def as_finite(arr, name, dtype, first_row=0, columns=False, what_at=None):
    """``arr`` (any shape) as a C-contiguous, aligned array of ``dtype`` whose values are
    finite and representable: values that overflow ``dtype`` (1e39 in float32) are refused.
    ``first_row``: the number of arr's first row in the caller's data, for the message.
    ``columns``: a Fortran-ordered array instead (see check_inputs). ``what_at``: for a
    1-D arr, a function naming what its element i is (theta's: Network.parameter_at), or
    None, said after the refusal's index."""
    _check_real(arr, name)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf is reported below
        out = np.asfortranarray(arr, dtype=dtype) if columns else c_copy(arr, dtype)
    if not out.flags.aligned:  # e.g. a memmap at an odd offset; compiled code needs alignment
        out = out.copy(order="K")
    if not finite(out):
        _refuse_nonfinite(out, np.asarray(arr), name, first_row, what_at=what_at)
    return out


# A column-major source is copied in tiles of this many rows and columns: NumPy's own
# copy walks it a row at a time, each element a cache line apart (a DataFrame's values,
# 8,192 x 784 float32: 38 ms, tiled 8.7 ms, a plain copy 1.7 ms).
_TILE_ROWS, _TILE_COLS = 256, 64


def c_copy(arr, dtype):
    """``np.ascontiguousarray(arr, dtype=dtype)`` (the same values, cast alike), a 2-D
    column-major ``arr`` (a DataFrame's values, Fortran order) copied a tile at a time."""
    if (arr.ndim != 2 or arr.shape[1] <= _TILE_COLS or arr.shape[0] <= _TILE_ROWS
            or arr.flags.c_contiguous or abs(arr.strides[0]) >= abs(arr.strides[1])):
        # (a narrow one NumPy copies well: 100,000 x 3 took 0.34 ms, tiled 0.74)
        return np.ascontiguousarray(arr, dtype=dtype)
    out = np.empty(arr.shape, dtype=dtype)
    rows, cols = arr.shape
    for r in range(0, rows, _TILE_ROWS):
        for c in range(0, cols, _TILE_COLS):
            np.copyto(out[r:r + _TILE_ROWS, c:c + _TILE_COLS],
                      arr[r:r + _TILE_ROWS, c:c + _TILE_COLS], casting="unsafe")
    return out


def _refuse_nonfinite(out, src, name, first_row, scaling=None, what_at=None):
    """Raise for the first entry of ``out`` that is not finite; ``src``: what out was
    converted from (a finite source value means it was too large for out's dtype);
    ``what_at``: as_finite's."""
    where = np.unravel_index(int(np.argmin(np.isfinite(out))), out.shape)
    value = src[where]
    at = (f"row {first_row + where[0]}, column {where[1]}" if out.ndim == 2
          else f"index {tuple(int(i) for i in where)}")
    what = what_at(int(where[0])) if what_at is not None and out.ndim == 1 else None
    said = f": {what}" if what else ""
    with np.errstate(over="ignore"):
        in_float64 = np.isfinite(np.float64(value))   # False for inf and NaN too
    if scaling is not None and in_float64:
        raw = value
        with np.errstate(over="ignore", invalid="ignore"):
            value = (np.float64(value) - scaling[0][where[1]]) / scaling[1][where[1]]
        if not np.isfinite(value):   # finite data the model's own scaling made inf
            raise ValueError(f"{name} has a value the model's input scaling takes past "
                             f"float64's range ({float(raw)!r} at {at}: (x - mean) / scale "
                             f"with mean {float(scaling[0][where[1]])!r} and scale "
                             f"{float(scaling[1][where[1]])!r})")
    if (np.issubdtype(src.dtype, np.floating) or scaling is not None) and np.isfinite(value):
        # (a long double past float64's range is too large for float64 whatever the dtype:
        # scaling is computed in float64, and float() would show it as inf)
        too_large_for = out.dtype.name if in_float64 else "float64"
        made = ""
        if scaling is not None and in_float64 and value != np.float64(raw):   # not X's
            made = (f", which the model's input scaling made of {_shown(raw)}: (x - mean) "
                    f"/ scale with mean {float(scaling[0][where[1]])!r} and scale "
                    f"{float(scaling[1][where[1]])!r}")
        raise ValueError(f"{name} has a value too large for {too_large_for} "
                         f"({_shown(value)} at {at}{made}){said}")
    raise ValueError(f"{name} contains NaN or inf (first at {at}){said}")


def _shown(value):
    """A finite number as the message shows it: float's repr, or NumPy's own text for a
    long double float() would turn into inf (1e+400)."""
    with np.errstate(over="ignore"):
        as_float = float(value)
    return repr(as_float) if np.isfinite(as_float) else str(value)


def _scaled(arr, name, dtype, scaling, first_row, columns=False):
    """(arr - mean) / scale computed in float64, written into a new C-contiguous (or, with
    ``columns``, Fortran-ordered) array of ``dtype`` a block of CONVERT_BYTES at a time:
    the float64 temporaries stay one block, not two copies of arr (the same values as
    computing it whole)."""
    mean, scale = scaling
    out = np.empty(arr.shape, dtype=dtype, order="F" if columns else "C")
    step = max(1, CONVERT_BYTES // (8 * max(1, arr.shape[1])))
    for start in range(0, len(arr), step):
        _scale_into(out[start:start + step], arr[start:start + step], mean, scale)
    if not finite(out):
        _refuse_nonfinite(out, arr, name, first_row, scaling)
    return out


def plain_numbers(a, width):
    """``a`` (an ndarray) is 2-D, ``width`` wide, with rows, of real numbers or bools:
    what :func:`convert_into` converts as the full checks would."""
    return (a.ndim == 2 and a.shape[1] == width and len(a) > 0 and a.dtype.kind in "fiub"
            and a.dtype.isnative)


def convert_into(out, arr, scaling=None):
    """out[...] = arr in out's dtype, or (arr - mean) / scale by input scaling's
    arithmetic (``scaling`` (mean, scale)): the values the full checks make of a
    :func:`plain_numbers` array, unchecked (NaN, inf and values too large for out's
    dtype, inf after the cast, are the caller's to find)."""
    if scaling is not None:
        _scale_into(out, arr, *scaling)
        return
    with np.errstate(over="ignore", invalid="ignore"):
        np.copyto(out, arr, casting="unsafe")


def _scale_into(out, arr, mean, scale):
    """out[...] = (arr - mean) / scale, in float64 then cast, unchecked (the callers find
    what is not finite): the one arithmetic of input scaling. In one compiled pass when
    the Cython extension is built and the arrays are float32/float64 in rows or in
    columns (kernels/_scaling.pxd: the same bits), else by NumPy."""
    if _compiled_scale_into is not None and _compiled_scale_into(out, arr, mean, scale):
        return
    with np.errstate(over="ignore", invalid="ignore"):
        block = np.subtract(arr, mean, dtype=np.float64)
        block /= scale
        out[...] = block


def as_float_matrix(a, name, dtype, scaling=None, first_row=0, columns=False):
    """``a`` as a C-contiguous 2-D array of ``dtype``; rejects non-numeric, empty, NaN/inf.

    ``scaling`` (mean, scale), float64 (k,): returns (a - mean) / scale, computed in float64.
    ``first_row``: the number of a's first row in the caller's data, for messages.
    ``columns``: a Fortran-ordered array instead (see check_inputs).
    """
    arr = as_array(a, name)
    _check_real(arr, name)
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (samples, features), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty: it has 0 rows")
    if scaling is not None and arr.shape[1] == len(scaling[0]):
        return _scaled(arr, name, dtype, scaling, first_row, columns)
    return as_finite(arr, name, dtype, first_row, columns)


def distinct_dtypes(dtypes):
    """The set of a DataFrame's column ``dtypes`` (its dtypes Series), fast for a frame of
    one dtype: hashing 784 dtype objects cost 12 us, where list.count compares by identity
    first (0.5 us)."""
    listed = dtypes.tolist()   # (iterating over the Series itself: 12 us more)
    if listed and listed.count(listed[0]) == len(listed):
        return {listed[0]}
    return set(listed)


def frame_values(frame, name):
    """A pandas DataFrame's values as an ndarray (frame.to_numpy()); anything else is returned
    as it is.

    np.asarray gives an object array for a frame mixing bool and number columns or holding
    pandas' nullable dtypes (Int64, Float64, boolean), so such a frame becomes float64,
    pd.NA becoming NaN, which the finiteness check then names by row and column. float64
    rather than the model dtype: input scaling is computed in float64, and a value too
    large for float32 is reported as such. A column that is not numbers is named."""
    dtypes = getattr(frame, "dtypes", None)
    if dtypes is None or not hasattr(frame, "columns") or not hasattr(dtypes, "items"):
        return frame
    # judged per distinct dtype (a frame of 784 float columns has one), columns only for
    # the message: walking every column cost a 1-row predict of such a frame 0.4 ms
    kinds = {dt: getattr(dt, "kind", "O") for dt in distinct_dtypes(dtypes)}
    if any(kind not in "biuf" for kind in kinds.values()):
        bad = [(column, dt) for column, dt in dtypes.items() if kinds[dt] not in "biuf"]
        shown = ", ".join(f"{column!r} ({dt})" for column, dt in bad[:5])
        raise TypeError(f"{name} must be numeric: column{'s' if len(bad) > 1 else ''} "
                        f"{shown}{' ...' if len(bad) > 5 else ''} "
                        f"{'are' if len(bad) > 1 else 'is'} not numbers or bools; encode "
                        "or drop them first")
    if all(isinstance(dt, np.dtype) and kind in "iuf" for dt, kind in kinds.items()):
        # their common numeric dtype, as np.asarray gives it, in a twentieth of its time
        # (31 us against 1.3 for one row of 784 float32 columns, pandas 3.1)
        return frame.to_numpy()
    return frame.to_numpy(dtype=np.float64, na_value=np.nan)


def series_values(Y):
    """The ndarray np.asarray makes of a pandas Series (not a subclass) of a NumPy dtype
    (its values) or of pandas' string dtype (an object array: str, NaN or pd.NA where
    missing), at a fraction of np.asarray's cost; None for anything else. (pandas is not
    imported: a Series exists only if whoever made it imported pandas.)"""
    pd = sys.modules.get("pandas")
    if pd is None or type(Y) is not pd.Series:
        return None
    if isinstance(Y.dtype, np.dtype):
        return Y.to_numpy()
    if isinstance(Y.dtype, pd.StringDtype):
        return Y.to_numpy(dtype=object)
    return None


def check_inputs(X, input_dim, dtype, scaling=None, first_row=0, columns=False):
    """X as (n, input_dim) in ``dtype``; a 1-D X is n samples of one feature. A DataFrame's
    numeric and bool columns, nullable ones included, are taken (see frame_values).
    ``first_row``: the number of X's first row in the caller's data, for messages.
    ``columns``: Fortran-ordered (for a predict of a Fortran-ordered X, which the backends
    read where it lies: a cast or scaling then streams down its columns, where a copy
    into rows would cross them), else C-contiguous."""
    arr = as_array(frame_values(X, "X"), "X")
    if arr.ndim == 1 and input_dim > 1 and len(arr):
        one = f"; for one sample use X.reshape(1, -1), shape (1, {input_dim})" \
            if len(arr) == input_dim else ""
        raise ValueError(f"X must be 2-D (samples, features), got a 1-D array of length "
                         f"{len(arr)} and the model expects input_dim={input_dim}{one}")
    if arr.ndim == 2 and len(arr) and arr.shape[1] != input_dim:
        _check_real(arr, "X")  # (a column count is not worth converting X for)
        _wrong_width(arr.shape[1], input_dim)
    X = as_float_matrix(arr, "X", dtype, scaling, first_row, columns)
    if X.shape[1] != input_dim:
        _wrong_width(X.shape[1], input_dim)
    return X


def _wrong_width(columns, input_dim):
    raise ValueError(f"X has {columns} columns but the model expects input_dim={input_dim}")


def check_targets(Y, n_rows, net, dtype):
    """Targets as floats (n, outputs); integer class labels become one-hot rows."""
    n_out, loss = net.output_dim, net.loss.code
    arr = as_array(Y, "Y")
    strings = arr.dtype.kind in "US" or (arr.dtype == object and arr.size > 0
                                          and isinstance(arr.flat[0], str))
    if strings and loss == MSE:   # (the cross-entropies map labels before this)
        raise TypeError(f"Y holds strings (dtype {arr.dtype}), and loss 'mse' takes numbers: "
                        "class labels need loss='cross_entropy' (softmax outputs) or "
                        "'binary_cross_entropy'")
    _check_real(arr, "Y")
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
        # in [0, n_out) as checked just above: the shortcut's one-hot rows, never None
        return index_targets(flat.astype(np.int64), n_rows, n_out, dtype)
    T = as_float_matrix(arr, "Y", dtype)
    if T.shape[1] != n_out:
        hint = ("; class labels (one per row) need loss='cross_entropy' (softmax outputs) "
                "or 'binary_cross_entropy', and mse takes one column per output"
                if T.shape[1] == 1 and loss == MSE else "")
        raise ValueError(f"Y has {T.shape[1]} columns but the model has {n_out} outputs{hint}")
    if loss in (CROSS_ENTROPY, BINARY_CROSS_ENTROPY) and (T.min() < 0 or T.max() > 1):
        raise ValueError(_outside_unit_message(T, net))
    return T


def _shortest(value):
    """A NumPy float as the shortest text that reads back as it ('3', '1.0000001',
    '1e+30'): :g rounded 1 + 1e-7 to '1', and a refusal of values in [0, 1] read so."""
    text = str(value)
    return text[:-2] if text.endswith(".0") else text


def _outside_unit_message(T, net):
    """Why targets T with values outside [0, 1] are refused, for this loss and output."""
    seen = f"got values from {_shortest(T.min())} to {_shortest(T.max())}"
    if net.loss.code == CROSS_ENTROPY:
        return f"targets for cross_entropy must lie in [0, 1], {seen}"
    if net.output_dim > 1:
        return (f"multi-label targets for binary_cross_entropy ({net.output_dim} sigmoid "
                f"outputs) must be 0/1 indicators (or probabilities: they must lie in "
                f"[0, 1]), {seen}")
    distinct = np.unique(T)
    shown = ", ".join(map(_shortest, distinct[:5])) + (", ..." if len(distinct) > 5 else "")
    return (f"targets for binary_cross_entropy must lie in [0, 1], or be class labels with "
            f"exactly two values (integers or strings); Y has {len(distinct)} distinct "
            f"values ({shown})")


def check_batch_size(batch_size, n_rows):
    if batch_size is None:
        return n_rows
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    return min(int(batch_size), n_rows)


def as_float(value):
    """float(value) of a real number, an integer too large for a float (10**400) being
    +-inf (float() raises OverflowError, np.isfinite TypeError), so that the caller's range
    check names it; a long double rounds to the float64 the model will hold."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def shown(value, limit=60):
    """repr(value) for an error message, cut to ``limit`` characters; an integer far
    beyond any float (whose repr may even be refused: over 4,300 digits) by its size."""
    if isinstance(value, (int, np.integer)) and abs(int(value)).bit_length() > 1100:
        sign = "a negative" if value < 0 else "an"
        return f"{sign} integer of about {int(abs(int(value)).bit_length() * 0.30103)} digits"
    try:
        text = repr(value)
    except ValueError:   # a Fraction of such integers
        return f"a {type(value).__name__} too long to show"
    return text if len(text) <= limit else text[:limit] + "..."


def real_number(value, name):
    """``value`` as a float, checked: a real number (bool, None, strings, complex refused
    with a TypeError naming ``name``), finite once a float64 (10**400, a long double
    1e4000, a Fraction beyond float range refused with a ValueError)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} "
                        f"{shown(value)}")
    number = as_float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {shown(value)}")
    return number


def check_tol(tol):
    """None, or a finite real number >= 0."""
    if tol is None:
        return None
    if isinstance(tol, (bool, np.bool_)) or not isinstance(tol, (int, float, np.integer,
                                                                 np.floating)):
        raise TypeError(f"tol must be a number >= 0 or None, got {type(tol).__name__} {tol!r}")
    value = as_float(tol)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"tol must be a finite number >= 0 or None, got {shown(tol)}")
    return value


def check_flag(value, name):
    """``value`` as a bool: True or False (NumPy's bools and the ints 0 and 1 too); anything
    else refused, naming ``name``, rather than read by its truth (nesterov=0.5 turned
    Nesterov on, shuffle="no" shuffled, and an array raised NumPy's "truth value of an
    array is ambiguous", naming nothing)."""
    if not isinstance(value, (bool, np.bool_, int, np.integer)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} "
                        f"{value!r:.60}")
    if value not in (0, 1):
        raise ValueError(f"{name} must be True or False, got {value!r:.60}")
    return bool(value)


def check_pair(value, must):
    """ValueError unless ``value`` is a tuple or list of two (validation_data's (X, Y)):
    ``must`` says what it must be, and the error what it got (its length where it has
    one: len() of a 0-d array raises TypeError, which had escaped raw)."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return
    try:
        length = len(value)
    except TypeError:
        length = "?"
    raise ValueError(f"{must} got {type(value).__name__} of length {length}")


def check_fraction(value, name):
    """A number in [0, 1)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer,
                                                                     np.floating)):
        raise TypeError(f"{name} must be a number in [0, 1), got {value!r}")
    if not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return float(value)


def check_count(value, name, minimum=0, maximum=None):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be an integer <= {maximum}, got {value!r}")
    return int(value)

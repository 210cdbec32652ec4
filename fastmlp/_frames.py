"""pandas inputs that scikit-learn's checks would take with no more than a conversion.

fastmlp.sklearn's predict and later partial_fit calls skip scikit-learn's input checks
for data those checks would pass unchanged (see BaseMLP._plain_rows). For a pandas
DataFrame the checks cost a 1-row predict over 500 us (narwhals' detection, the dtype
survey, the feature-name comparison, DataFrame.__array__), some hundred times the
network itself. The functions here say, in a few microseconds, whether a DataFrame or a
Series is one the checks would turn into a plain ndarray without a word, and make that
ndarray exactly as they do; anything else (extension dtypes, sparse or object columns,
names that differ, a subclass) is left to the checks, which convert it or name the
problem in scikit-learn's words. pandas is never imported here: an object can only be
a DataFrame if pandas was imported by whoever made it.
"""
from __future__ import annotations

import sys

import numpy as np

from . import validation

# column dtypes whose values scikit-learn's check converts with a plain cast
_NUMBER_KINDS = "fiub"


def _pandas():
    return sys.modules.get("pandas")


def frame_rows(X, names, dtype):
    """X's values, which cast to ``dtype`` are ``np.asarray(X, dtype=dtype)``, the values
    scikit-learn's check makes of it, if X is a pandas DataFrame (not a subclass) whose
    columns are ``names`` (the fitted ``feature_names_in_``, an object ndarray of str), in
    order, and whose column dtypes are all NumPy numbers or bools; else None.
    (Finiteness is the caller's to check, and the cast: predict casts a block of rows at
    a time, where a cast here copied a float64 frame whole for a float32 model.)
    In the layout pandas gives them, not copied into rows as the check copies them: a
    frame of one dtype gives Fortran order, which predict reads where it lies (a copy
    into rows took 38 ms for 8,192 rows of 784 float32 columns, the predict of a
    784-16-10 net 2.3 ms)."""
    pd = _pandas()
    if pd is None or type(X) is not pd.DataFrame or names is None:
        return None
    if X.shape[1] != len(names):
        return None
    columns = X.columns.tolist()
    # scikit-learn takes column names as feature names only when all are exactly str
    # (asked first: comparing pd.NA with a str raises)
    if set(map(type, columns)) != {str} or columns != names.tolist():
        return None
    dtypes = validation.distinct_dtypes(X.dtypes)
    if not all(isinstance(dt, np.dtype) and dt.kind in _NUMBER_KINDS for dt in dtypes):
        return None   # extension (nullable, category, sparse, string) or object columns
    # to_numpy() is DataFrame.__array__'s own first step (the one block, or the columns
    # in their common dtype), then one cast: np.asarray(X, dtype) gives these very
    # values, at 80 us rather than 14 for 512 rows of 64 float64 columns.
    # (A value past the dtype's range becomes inf in the cast: the caller's finiteness
    # check refuses it, and scikit-learn's checks then say so, warning once, not twice.)
    if any(dt.kind == "b" for dt in dtypes):
        # scikit-learn casts a frame holding bools column by column first (beside
        # numbers, pandas gives bools as objects, and a Python int reaches float32
        # through float64: 2**60 + 2**36 + 1 rounded twice)
        with np.errstate(over="ignore", invalid="ignore"):
            return X.astype(dtype).to_numpy()
    return X.to_numpy()


def plain_labels(y):
    """y as the ndarray scikit-learn's check makes of it if y is a plain ndarray (itself)
    or a pandas Series of a NumPy dtype or of pandas' string dtype
    (validation.series_values); else None."""
    return y if type(y) is np.ndarray else validation.series_values(y)

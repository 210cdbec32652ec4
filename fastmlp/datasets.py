"""Data for fastmlp: the shipped data sets, CSV loading and two preprocessing helpers.

* :func:`load_digits`: the UCI 8x8 handwritten digits (1797 samples, 64
  features 0..16, 10 classes; CC BY 4.0, see ``fastmlp/data/README.md``).
* :func:`load_vehicles`: the lessons' toy table (wheels, height, weight -> car/bike).
* :func:`load_csv`: a user's classification table (header row, numeric features).
* :func:`train_test_split` and :func:`standardize` (statistics of the training
  rows only, so nothing about the held-out rows leaks into training).

>>> from fastmlp import datasets
>>> X, y = datasets.load_digits()
>>> X.shape, y.shape
((1797, 64), (1797,))
"""
from __future__ import annotations

import csv
import gzip
import os
from importlib import resources

import numpy as np

VEHICLE_FEATURES = ("wheels", "height", "weight")
VEHICLE_CLASSES = ("car", "bike")

# The lessons' table: three cars, then three bikes.
_VEHICLES = np.array([
    [4, 6.0, 500],
    [4, 5.5, 600],
    [4, 5.0, 550],
    [2, 3.0, 200],
    [2, 3.5, 150],
    [2, 4.0, 250],
])


def load_digits():
    """The 8x8 digits: X float64 (1797, 64) with values 0..16, y int64 (1797,) in 0..9."""
    source = resources.files("fastmlp") / "data" / "digits.csv.gz"
    with source.open("rb") as raw, gzip.open(raw, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.float64)
    return np.ascontiguousarray(table[:, :-1]), table[:, -1].astype(np.int64)


def load_vehicles():
    """The lessons' vehicles: X float64 (6, 3) wheels/height/weight, Y one-hot (6, 2) car/bike."""
    Y = np.zeros((6, 2))
    Y[:3, 0] = 1  # car
    Y[3:, 1] = 1  # bike
    return _VEHICLES.astype(np.float64), Y


def train_test_split(X, y, test_fraction=0.2, seed=0):
    """Shuffle rows and split: (X_train, X_test, y_train, y_test).

    X (n, d), y (n,) or (n, k). The test part has round(n * test_fraction)
    rows, at least one; the training part keeps at least one row too.
    """
    X, y = np.asarray(X), np.asarray(y)
    n = len(X)
    if len(y) != n:
        raise ValueError(f"X has {n} rows but y has {len(y)}")
    if isinstance(test_fraction, bool) or not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction!r}")
    if n < 2:
        raise ValueError(f"need at least 2 rows to split into training and test sets, got {n}")
    n_test = min(max(int(round(n * float(test_fraction))), 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    test, train = perm[:n_test], perm[n_test:]
    return X[train], X[test], y[train], y[test]


def standardize(train, *others):
    """Scale columns to mean 0, std 1 using ``train``'s statistics.

    Returns ``(train_scaled, *others_scaled, mean, std)``; every array is (n, d)
    float64. Constant columns (std 0, e.g. the digits' always-blank corner
    pixels) get std 1, so they become 0 instead of NaN.
    """
    train = np.asarray(train, dtype=np.float64)
    if train.ndim != 2 or len(train) == 0:
        raise ValueError(f"train must be a non-empty 2-D array, got shape {train.shape}")
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std[std == 0] = 1.0
    scaled = [(np.asarray(a, dtype=np.float64) - mean) / std for a in (train, *others)]
    return (*scaled, mean, std)


def load_csv(path, target=None):
    """A classification table from a CSV file with a header row (``.csv.gz`` too).

    ``target`` names the label column (default: the last one); its values,
    numbers or strings, become class indices in sorted order. Every other
    column must be numeric. Returns ``(X float64 (n, d), y int64 (n,),
    classes list[str], features list[str])``; any problem is a ValueError
    naming the file, line and column.
    """
    path = os.fspath(path)
    try:
        header, rows, lines = _read_rows(path)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise ValueError(f"{path} is not a readable CSV file: {exc}") from None
    if not rows:
        raise ValueError(f"{path} has a header but no data rows")
    if target is None:
        target = header[-1]
    if target not in header:
        shown = ", ".join(header[:20]) + (", ..." if len(header) > 20 else "")
        raise ValueError(f"{path} has no column {target!r}; its columns are: {shown}")
    if len(header) < 2:
        raise ValueError(f"{path} has only the target column {target!r}; no feature columns")
    t = header.index(target)
    features = [h for i, h in enumerate(header) if i != t]
    columns = list(zip(*rows))
    X = np.empty((len(rows), len(features)), dtype=np.float64)
    for j, i in enumerate(i for i in range(len(header)) if i != t):
        X[:, j] = _numeric_column(path, header[i], columns[i], lines)
    y, classes = _encode_labels(path, target, columns[t], lines)
    return X, y, classes, features


def _read_rows(path):
    """(header, rows, line numbers) of a CSV file; blank lines skipped, ragged rows rejected."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or not any(h.strip() for h in header):
            raise ValueError(f"{path} is empty: expected a header row naming the columns")
        header = [h.strip() for h in header]
        _check_header(path, header)
        rows, lines = [], []
        for row in reader:
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise ValueError(f"{path}, line {reader.line_num}: {len(row)} fields but the "
                                 f"header has {len(header)}")
            rows.append(row)
            lines.append(reader.line_num)
    return header, rows, lines


def _check_header(path, header):
    for i, name in enumerate(header):
        if not name:
            raise ValueError(f"{path}: column {i + 1} of the header has no name")
    seen = set()
    for name in header:
        if name in seen:
            raise ValueError(f"{path}: column name {name!r} appears twice in the header")
        seen.add(name)


def _numeric_column(path, name, cells, lines):
    """One feature column as float64 (n,); the first bad cell is named in the error."""
    try:
        values = np.array(cells).astype(np.float64)
    except ValueError:
        values = None
    if values is not None and np.isfinite(values).all():
        return values
    out = np.empty(len(cells), dtype=np.float64)
    for k, (cell, line) in enumerate(zip(cells, lines)):
        where = f"{path}, line {line}, column {name!r}"
        if not cell.strip():
            raise ValueError(f"{where}: missing value")
        try:
            out[k] = float(cell)
        except ValueError:
            raise ValueError(f"{where}: {cell!r} is not a number (feature columns must be numeric; "
                             "encode or drop non-numeric columns)") from None
        if not np.isfinite(out[k]):
            raise ValueError(f"{where}: {cell!r} is not a finite number")
    return out


def _encode_labels(path, name, cells, lines):
    """Class labels -> (indices int64 (n,), class names). Numeric labels sort as numbers."""
    cells = [c.strip() for c in cells]
    for cell, line in zip(cells, lines):
        if not cell:
            raise ValueError(f"{path}, line {line}, target column {name!r}: missing label")
    try:
        numbers = [float(c) for c in cells]
        numeric = all(np.isfinite(numbers))
    except ValueError:
        numeric = False
    if numeric:
        keys = numbers
        classes = sorted(set(numbers))
        names = [f"{c:g}" for c in classes]
    else:
        keys = cells
        classes = names = sorted(set(cells))
    if len(classes) < 2:
        raise ValueError(f"{path}: target column {name!r} has only one class ({names[0]!r}); "
                         "a classifier needs at least 2")
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[k] for k in keys], dtype=np.int64), names

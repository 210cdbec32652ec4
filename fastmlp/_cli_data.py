"""``fastmlp train``'s data: the shipped digits or a CSV, its task, and the held-out split."""
from __future__ import annotations

import math
import os
import sys
import zlib
from typing import NamedTuple

import numpy as np

from fastmlp import datasets
from fastmlp._cli_options import MAX_AUTO_CLASSES

INT64 = np.iinfo(np.int64)


class Data(NamedTuple):
    """What ``train`` learns from."""

    X: np.ndarray          # raw features, float64 (n, d)
    y: np.ndarray          # class indices int64 (n,), or regression targets float64 (n,)
    classes: list | None   # class names (classification), as printed, or None (regression)
    features: list         # feature names (d,)
    target: str            # the target's name
    task: str              # "classification" or "regression"
    why: str               # why that task, for the model line
    description: str       # for the data line
    labels: np.ndarray | None = None   # the classes as the model holds them (its classes_):
                                       # int64 or str (k,); None: the names
    lines: list | None = None   # the file line of each row of X (a CSV), for error messages


def choose_task(args, table):
    """("classification" or "regression", why) for a CSV target.

    --task classification/regression decides. With --task auto (the default):
    text labels are classes; --loss cross_entropy or binary_cross_entropy means
    classification and --loss mse regression; otherwise a numeric target is a
    regression target when it has more than MAX_AUTO_CLASSES (20) distinct
    values, or non-integer values with more than half the rows distinct, and
    class labels when not.

    A column of numbers with some missing (NA, NaN, null, ...) or infinite cells
    is not text labels: with --loss mse it is a regression target (whose reading
    names the first bad cell), otherwise a ValueError names that cell. Taken as
    labels, every distinct number would silently become a class.

    Integer labels are counted exactly, as class_labels reads them: float64 would count
    2**53 and 2**53 + 1 as one value, and integers beyond its range as missing.
    """
    if args.task != "auto":
        return args.task, f"--task {args.task}"
    integers = datasets._integers(table.cells)
    values = datasets.numeric_target(table, required=False)
    if values is None and integers is None:
        gap = _first_gap(table)
        if gap is None:
            return "classification", "text labels in the target column"
        if args.loss != "mse":
            raise ValueError(gap)
        # --loss mse: regression, whose reading of the target names the bad cell
    if args.loss in ("cross_entropy", "binary_cross_entropy"):
        return "classification", f"--loss {args.loss}"
    if args.loss == "mse":
        return "regression", "numeric target and --loss mse"
    distinct = len(set(integers)) if integers is not None else len(np.unique(values))
    if distinct > MAX_AUTO_CLASSES:
        return "regression", (f"numeric target with {distinct} distinct values, more than "
                              f"{MAX_AUTO_CLASSES}")
    if integers is None and np.any(values != np.round(values)) and distinct > len(values) / 2:
        return "regression", (f"non-integer target with {distinct} distinct values in "
                              f"{len(values)} rows")
    return "classification", (f"numeric target with {distinct} distinct values, at most "
                              f"{MAX_AUTO_CLASSES}; --task regression to override")


# Cells that stand for a missing value (compared in lower case): pandas' default
# na_values and a few other common spellings.
MISSING = frozenset({"na", "n/a", "nan", "-nan", "null", "none", "nil", "missing", "#n/a",
                     "#n/a n/a", "#na", "<na>", "-1.#ind", "-1.#qnan", "1.#ind", "1.#qnan",
                     "?", "-", "."})


def _first_gap(table):
    """For a target column of numbers in which some cells are missing (see MISSING) or not
    finite (inf, nan): the error naming the first such cell. None when a cell is text that
    is neither (the column holds text labels) or when no cell is a finite number."""
    gap, numbers = None, 0
    for cell, line in zip(table.cells, table.lines):
        number = _number(cell)
        if number is None and cell.lower() not in MISSING:
            return None
        if number is not None and math.isfinite(number):
            numbers += 1
        elif gap is None:
            what = ("a missing value" if number is None or math.isnan(number)
                    else "not a finite number")
            gap = (f"{table.path}, line {line}, target column {table.target!r}: {cell!r} is "
                   f"{what}, in a column of numbers; fill or drop the rows whose target is not "
                   "a finite number (or use --task classification to take every cell as a "
                   "class label)")
    return gap if numbers else None


def _header_looks_like_data(features, target):
    """Whether every feature column's name is a finite number, other than column indices
    (pandas writes a frame of unnamed columns with the names 0..n-1; 1..n too): a file
    without a header row, whose first row of data became the names (the target's name
    may be a class label: '5.1,3.5,Iris-setosa')."""
    numbers = [_number(name) for name in features]
    if not all(v is not None and math.isfinite(v) for v in numbers):
        return False
    names = {*features, target} if _number(target) is not None else set(features)
    n = len(names)
    return names not in ({str(i) for i in range(n)}, {str(i + 1) for i in range(n)})


def _number(cell):
    """float(cell), or None when the cell is not a number (or not a plain one:
    datasets._plain_numbers, the labels' rule: '1_000' is text)."""
    if not datasets._plain_numbers([cell]):
        return None
    try:
        return float(cell)
    except ValueError:
        return None


def data_file(args):
    """(path, how messages name it) of the file train reads: --data, or the shipped digits
    without it (its path None where the package is not in a folder). --save and --plot
    must not be it: with no --data, --save <the digits file> replaced the data set with a
    model."""
    if args.data is not None:
        return args.data, "the --data file"
    return digits_path(), "the shipped digits file, which train reads without --data"


def digits_path():
    """The shipped digits' path, or None where the package is not in a folder (a zip).
    No --save or --plot may name it, with --data or without: it replaced the data set."""
    source = datasets.digits_file()
    return os.fspath(source) if isinstance(source, os.PathLike) else None


def load_data(args):
    """The data set of --data (a CSV) or the shipped digits, and its task."""
    if args.data is None:
        if args.target is not None:
            raise ValueError("--target needs --data (the digits data set has no named columns)")
        try:
            X, y = datasets.load_digits()
        except (OSError, EOFError, zlib.error, ValueError) as exc:  # e.g. overwritten
            raise ValueError(f"{data_file(args)[0]}: the shipped digits cannot be read "
                             f"({exc}); reinstall fastmlp") from None
        task = "classification" if args.task == "auto" else args.task
        why = "the digits' 10 classes" if args.task == "auto" else f"--task {args.task}"
        features = [f"pixel{i}" for i in range(X.shape[1])]
        name = "digits (UCI Optical Recognition of Handwritten Digits, CC BY 4.0)"
        if task == "regression":
            return Data(X, y.astype(np.float64), None, features, "digit", task, why, name)
        return Data(X, y, [str(c) for c in range(10)], features, "digit", task, why, name,
                    np.arange(10, dtype=np.int64))
    table = datasets.read_csv(args.data, args.target)
    if _header_looks_like_data(table.features, table.target):
        # pandas takes the first row for names too, silently; a row of data lost is said
        shown_names = ", ".join(datasets.shown_name(f) for f in table.features[:3])
        print(f"note: every feature column's name in {datasets.shown_path(args.data)}'s "
              f"header row is a number ({shown_names}{', ...' if len(table.features) > 3 else ''}): "
              "the first row is read as the names of the columns, not as data (a CSV needs "
              "a header row)", file=sys.stderr)
    task, why = choose_task(args, table)
    names = [datasets.shown_name(f) for f in table.features[:8]]   # one line each
    shown = ", ".join(names) + (", ..." if len(table.features) > 8 else "")
    description = (f"{datasets.shown_path(args.data)} (target {datasets.shown_name(table.target)}; "
                   f"features {shown})")
    if task == "regression":
        return Data(table.X, datasets.numeric_target(table), None, table.features,
                    table.target, task, why, description, lines=table.lines)
    y, classes = datasets.class_labels(table)
    classes = _distinct_names(table, classes)
    if len(classes) > len(y) / 2:
        print(f"note: target column {table.target!r} has {len(classes)} distinct values in "
              f"{len(y)} rows; they are treated as class labels", file=sys.stderr)
    return Data(table.X, y, classes, table.features, table.target, task, why, description,
                _label_values(table, classes), table.lines)


def _label_values(table, names):
    """The classes as the model holds them (its classes_, which --save stores), in the order
    of ``names``: integers as int64, so predict_classes compares equal to the data's labels
    (the names '0'..'9' compared with the integers 0..9 scored 0 %, silently); read exactly
    (2**53 + 1 stays itself; '2.0' is the integer 2: see datasets._integers). Other labels
    keep their names: text, integers beyond int64 (no NumPy number holds them exactly) and
    other numbers (fit takes no fractional labels).
    Both orders are class_labels': numbers sort as numbers."""
    integers = datasets._integers(table.cells)
    if integers is not None and INT64.min <= min(integers) and max(integers) <= INT64.max:
        return np.array(sorted(set(integers)), dtype=np.int64)
    return np.array(names)


def _distinct_names(table, names):
    """The class names, distinct: numeric labels print with %g (6 digits), which merges
    labels such as 123.4561 and 123.4562; those then print with all their digits. The model
    maps labels to output units by these names (its classes_), so they must differ."""
    if len(set(names)) == len(names):
        return names
    return [str(float(v)) for v in np.unique(datasets.numeric_target(table))]


def check_dtype(data, path, mean, scale, dtype):
    """Before training: refuse, naming the file's line and column, a feature value the model
    cannot hold in ``dtype`` once standardized (it casts (x - mean) / scale to its dtype).
    A training row's standardized value stays within sqrt(rows), so only a held-out row
    can fail: 1e39 passed the float64 check, then stopped the run after its first epoch
    with "X has a value too large for float32 (... at row 3, column 0)", a row of the
    shuffled held-out part. A block of rows at a time: the temporaries stay ~32 MiB."""
    rows = max(1, (4 << 20) // max(1, data.X.shape[1]))
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, len(data.X), rows):
            bad = ~np.isfinite(((data.X[start:start + rows] - mean) / scale).astype(dtype))
            if bad.any():
                break
        else:
            return
    i, j = np.unravel_index(int(np.argmax(bad)), bad.shape)   # the first in file order
    i += start
    where = f"line {data.lines[i]}" if data.lines is not None else f"row {i + 1}"
    value = float(data.X[i, j])
    raise ValueError(f"{path}, {where}, column {data.features[j]!r}: {value!r} is too large "
                     f"for a {np.dtype(dtype).name} model once standardized ((x - mean) / "
                     f"scale = {(value - mean[j]) / scale[j]:.6g}); use --dtype float64 or "
                     "rescale the column, e.g. divide it by a power of ten")


def split(args, data):
    """(X_train, X_test, y_train, y_test); no held-out rows with --test-fraction 0."""
    if args.test_fraction == 0:
        return data.X, data.X[:0], data.y, data.y[:0]
    try:
        return datasets.train_test_split(data.X, data.y, args.test_fraction, args.seed)
    except ValueError as exc:
        raise ValueError(f"--test-fraction {args.test_fraction:g}: {exc}") from None

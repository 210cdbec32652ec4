"""``fastmlp train``'s data: the shipped digits or a CSV, its task, and the held-out split."""
from __future__ import annotations

import sys
from typing import NamedTuple

import numpy as np

from fastmlp import datasets
from fastmlp._cli_options import MAX_AUTO_CLASSES


class Data(NamedTuple):
    """What ``train`` learns from."""

    X: np.ndarray          # raw features, float64 (n, d)
    y: np.ndarray          # class indices int64 (n,), or regression targets float64 (n,)
    classes: list | None   # class names (classification) or None (regression)
    features: list         # feature names (d,)
    target: str            # the target's name
    task: str              # "classification" or "regression"
    why: str               # why that task, for the model line
    description: str       # for the data line


def choose_task(args, table):
    """("classification" or "regression", why) for a CSV target.

    --task classification/regression decides. With --task auto (the default):
    text labels are classes; --loss cross_entropy or binary_cross_entropy means
    classification and --loss mse regression; otherwise a numeric target is a
    regression target when it has more than MAX_AUTO_CLASSES (20) distinct
    values, or non-integer values with more than half the rows distinct, and
    class labels when not.
    """
    if args.task != "auto":
        return args.task, f"--task {args.task}"
    values = datasets.numeric_target(table, required=False)
    if values is None:
        return "classification", "text labels in the target column"
    if args.loss in ("cross_entropy", "binary_cross_entropy"):
        return "classification", f"--loss {args.loss}"
    if args.loss == "mse":
        return "regression", "numeric target and --loss mse"
    distinct = len(np.unique(values))
    if distinct > MAX_AUTO_CLASSES:
        return "regression", (f"numeric target with {distinct} distinct values, more than "
                              f"{MAX_AUTO_CLASSES}")
    if np.any(values != np.round(values)) and distinct > len(values) / 2:
        return "regression", (f"non-integer target with {distinct} distinct values in "
                              f"{len(values)} rows")
    return "classification", (f"numeric target with {distinct} distinct values, at most "
                              f"{MAX_AUTO_CLASSES}; --task regression to override")


def load_data(args):
    """The data set of --data (a CSV) or the shipped digits, and its task."""
    if args.data is None:
        if args.target is not None:
            raise ValueError("--target needs --data (the digits data set has no named columns)")
        X, y = datasets.load_digits()
        task = "classification" if args.task == "auto" else args.task
        why = "the digits' 10 classes" if args.task == "auto" else f"--task {args.task}"
        features = [f"pixel{i}" for i in range(X.shape[1])]
        name = "digits (UCI Optical Recognition of Handwritten Digits, CC BY 4.0)"
        if task == "regression":
            return Data(X, y.astype(np.float64), None, features, "digit", task, why, name)
        return Data(X, y, [str(c) for c in range(10)], features, "digit", task, why, name)
    table = datasets.read_csv(args.data, args.target)
    task, why = choose_task(args, table)
    shown = ", ".join(table.features[:8]) + (", ..." if len(table.features) > 8 else "")
    description = f"{args.data} (target {table.target}; features {shown})"
    if task == "regression":
        return Data(table.X, datasets.numeric_target(table), None, table.features,
                    table.target, task, why, description)
    y, classes = datasets.class_labels(table)
    classes = _distinct_names(table, classes)
    if len(classes) > len(y) / 2:
        print(f"note: target column {table.target!r} has {len(classes)} distinct values in "
              f"{len(y)} rows; they are treated as class labels", file=sys.stderr)
    return Data(table.X, y, classes, table.features, table.target, task, why, description)


def _distinct_names(table, names):
    """The class names, distinct: numeric labels print with %g (6 digits), which merges
    labels such as 123.4561 and 123.4562; those then print with all their digits. The model
    maps labels to output units by these names (its classes_), so they must differ."""
    if len(set(names)) == len(names):
        return names
    return [str(float(v)) for v in np.unique(datasets.numeric_target(table))]


def split(args, data):
    """(X_train, X_test, y_train, y_test); no held-out rows with --test-fraction 0."""
    if args.test_fraction == 0:
        return data.X, data.X[:0], data.y, data.y[:0]
    try:
        return datasets.train_test_split(data.X, data.y, args.test_fraction, args.seed)
    except ValueError as exc:
        raise ValueError(f"--test-fraction {args.test_fraction:g}: {exc}") from None

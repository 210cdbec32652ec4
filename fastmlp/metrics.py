"""Metrics that ``Model.fit(metrics=[...])`` records per epoch, by name.

Each takes the network outputs P (n, k) and the float targets T (n, k) the model
trains on (one-hot rows for class labels) and returns a float.
"""
from __future__ import annotations

import numpy as np

from .validation import finite


def _check_pair(P, T, name):
    """ValueError unless P and T are (n, k) arrays of one shape (a 1-D pair had raised
    a raw IndexError in accuracy; other shapes broadcast, into a wrong number, in the
    others)."""
    P, T = np.asarray(P), np.asarray(T)
    if P.ndim != 2 or P.shape != T.shape:
        raise ValueError(f"{name} takes outputs P and targets T of one shape (n, k), got "
                         f"{P.shape} and {T.shape}")


def accuracy(P, T):
    """Fraction of rows classified right: argmax for several (softmax) outputs, > 0.5
    for one. Several sigmoid (multi-label) outputs need :func:`binary_accuracy`, the
    fraction of outputs right: ``get`` gives it for "accuracy" under binary_cross_entropy.
    NaN when an output is NaN (argmax takes a NaN for the largest, and NaN > 0.5 is
    False: overflowed outputs scored as class 0, and an EarlyStopping on the accuracy
    took that score for a real one)."""
    _check_pair(P, T, "accuracy")
    if not finite(P):
        return float("nan")
    if P.shape[1] == 1:
        return float(np.mean((P[:, 0] > 0.5) == (T[:, 0] > 0.5)))
    return float(np.mean(P.argmax(axis=1) == T.argmax(axis=1)))


def binary_accuracy(P, T):
    """Fraction of outputs on the right side of 0.5 (multi-label); NaN when an output is
    NaN, as :func:`accuracy`."""
    _check_pair(P, T, "binary_accuracy")
    if not finite(P):
        return float("nan")
    return float(np.mean((P > 0.5) == (T > 0.5)))


def mae(P, T):
    """Mean absolute error over every output."""
    _check_pair(P, T, "mae")
    return float(np.mean(np.abs(P.astype(np.float64) - T)))


def rmse(P, T):
    """Root of the mean squared error over every output."""
    _check_pair(P, T, "rmse")
    return float(np.sqrt(np.mean(np.square(P.astype(np.float64) - T))))


METRICS = {f.__name__: f for f in (accuracy, binary_accuracy, mae, rmse)}
# Which way the loss and each metric improve: what EarlyStopping's and ModelCheckpoint's
# mode="auto" uses (a name not here, one a callback logs, needs its mode given).
IMPROVES = {"loss": "min", "accuracy": "max", "binary_accuracy": "max", "mae": "min",
            "rmse": "min"}


# What "accuracy" means under each loss, where it is not the function of that name: under
# binary cross-entropy the outputs are independent sigmoids, each right or wrong on its
# own side of 0.5 (Keras maps "accuracy" to binary accuracy there too).
_ACCURACY_UNDER = {"binary_cross_entropy": binary_accuracy}


def get(names, loss=None):
    """[(name, function)] for a list of metric names; a clear error for unknown ones.
    ``loss``: the model's loss name; "accuracy" is binary_accuracy under
    binary_cross_entropy (the same as accuracy for one sigmoid unit)."""
    if names is None:
        return []
    if isinstance(names, str):
        names = [names]
    out = []
    for name in names:
        if name not in METRICS:
            raise ValueError(f"unknown metric {name!r}; choose from {sorted(METRICS)}")
        fn = _ACCURACY_UNDER.get(loss, accuracy) if name == "accuracy" else METRICS[name]
        out.append((name, fn))
    return out

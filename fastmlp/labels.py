"""Class labels of any kind (strings, non-contiguous integers, a pandas Series) and the
targets the losses need.

``encode`` turns labels into what :func:`fastmlp.validation.check_targets` takes
(class indices 0..k-1 for a softmax, 0/1 for one sigmoid unit) and returns the
``classes_`` array that maps them back; ``decode`` maps predictions back to labels.
"""
from __future__ import annotations

import numpy as np

from .losses import BINARY_CROSS_ENTROPY, CROSS_ENTROPY


def _as_labels(arr):
    """A 1-D array of labels in a dtype np.save can store without pickle (numbers or str)."""
    if arr.dtype != object:
        return arr
    values = arr.tolist()
    kinds = {"str" if isinstance(v, str) else "number" if isinstance(v, (int, float, np.number))
             and not isinstance(v, bool) else type(v).__name__ for v in values}
    if len(kinds) > 1 or not kinds <= {"str", "number", "bool"}:
        raise TypeError(f"class labels must be all numbers or all strings, got {sorted(kinds)}")
    return np.asarray(values)


def n_classes(output_dim, loss_code):
    """How many class labels a network with ``output_dim`` outputs and this loss has: one
    per output unit (a softmax's classes, or the indicator columns of several sigmoid
    units), except one sigmoid unit with binary cross-entropy, which tells 2 classes apart.
    ``classes_`` must hold exactly this many distinct labels."""
    return 2 if loss_code == BINARY_CROSS_ENTROPY and output_dim == 1 else output_dim


def is_labels(Y, net):
    """True when Y (an ndarray) holds one label per row for a classification model."""
    k, loss = net.output_dim, net.loss.code
    one_column = Y.ndim == 1 or (Y.ndim == 2 and Y.shape[1] == 1)
    if loss == CROSS_ENTROPY:
        return k > 1 and one_column
    if loss == BINARY_CROSS_ENTROPY:
        # 0/1 or probabilities stay targets; strings, bools-as-labels etc. are labels
        return k == 1 and one_column and not np.issubdtype(Y.dtype, np.number)
    return False


def encode(Y, net, classes):
    """(targets, classes): labels Y (n,) as indices into ``classes`` (found when None).

    Integer labels all in [0, k) are taken as class indices (classes = 0..k-1), as
    before; any other labels need exactly k distinct values, sorted to give classes.
    """
    k = n_classes(net.output_dim, net.loss.code)  # is_labels: a softmax or one sigmoid unit
    flat = Y.reshape(-1)
    if flat.dtype != bool and np.issubdtype(flat.dtype, np.number):
        if not np.all(np.isfinite(flat)):
            raise ValueError("Y contains NaN or inf")
        if np.issubdtype(flat.dtype, np.floating) and np.any(flat != np.round(flat)):
            raise ValueError("class labels in Y must be integers (or strings)")
    if classes is None:
        if flat.dtype != bool and np.issubdtype(flat.dtype, np.number) and _are_indices(flat, k):
            return Y, np.arange(k)
        classes = _found(flat, k)
    classes = np.asarray(classes)
    if (classes.dtype.kind in "iu" and flat.dtype.kind in "iuf"
            and np.array_equal(classes, np.arange(len(classes)))):
        return Y, classes  # already indices; check_targets checks their range
    codes = _lookup(_as_labels(flat), classes)
    if net.loss.code == BINARY_CROSS_ENTROPY:
        codes = codes.reshape(-1, 1)
    return codes, classes


def _lookup(flat, classes):
    """Index of each label of ``flat`` in ``classes`` (any order), vectorised."""
    order = np.argsort(classes, kind="stable")
    ranked = classes[order]
    known = np.zeros(len(flat), dtype=bool)
    try:
        pos = np.clip(np.searchsorted(ranked, flat), 0, len(ranked) - 1)
        known = ranked[pos] == flat
    except (TypeError, np.exceptions.DTypePromotionError if hasattr(np, "exceptions") else TypeError):
        pos = np.zeros(len(flat), dtype=np.int64)
    if not np.all(known):
        unknown = sorted({repr(v) for v in flat[~np.asarray(known, bool)].tolist()})[:5]
        raise ValueError(f"Y has labels the model does not know: {', '.join(unknown)} "
                         f"(classes_ = {classes.tolist()})")
    return order[pos]


def _are_indices(flat, k):
    return bool(flat.min() >= 0 and flat.max() < k)


def _found(flat, k):
    try:
        classes = np.unique(_as_labels(flat))
    except TypeError as exc:
        raise TypeError(f"Y: {exc}") from None
    if len(classes) != k:
        shown = classes.tolist()[:10]
        raise ValueError(f"Y has {len(classes)} distinct labels {shown} but the model has "
                         f"{k} classes: give labels 0..{k - 1}, or exactly {k} distinct labels, "
                         "or set model.classes_ first")
    return classes


def decode(P, net, classes):
    """Labels (n,) for network outputs P (n, k): the most probable class of a softmax,
    P > 0.5 for one sigmoid unit; several sigmoid units give a 0/1 indicator (n, k)."""
    if net.loss.code == CROSS_ENTROPY:
        idx = P.argmax(axis=1)
    elif net.loss.code == BINARY_CROSS_ENTROPY:
        if P.shape[1] > 1:
            return (P > 0.5).astype(np.int64)
        idx = (P[:, 0] > 0.5).astype(np.int64)
    else:
        raise ValueError(f"predict_classes needs a classification loss (cross_entropy or "
                         f"binary_cross_entropy); this model's loss is {net.loss.name!r}")
    return idx if classes is None else np.asarray(classes)[idx]

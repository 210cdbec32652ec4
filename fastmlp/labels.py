"""Class labels of any kind (strings, non-contiguous integers, a pandas Series) and the
targets the losses need.

``encode`` turns labels into what :func:`fastmlp.validation.check_targets` takes
(class indices 0..k-1 for a softmax, 0/1 for one sigmoid unit) and returns the
``classes_`` array that maps them back; ``decode`` maps predictions back to labels.
"""
from __future__ import annotations

import numpy as np

from .losses import BINARY_CROSS_ENTROPY, CROSS_ENTROPY
from .validation import finite


# Label dtypes a saved model can hold (fastmlp.io writes classes of these kinds):
# bool, integers, floats and fixed-width unicode.
_SAVEABLE = "biufU"


def kinds_of(values):
    """The kinds of label among ``values`` (a list of Python objects or an array):
    "str", "number", "bool", else the type's name."""
    if isinstance(values, np.ndarray):   # (as Python objects: one rule for both)
        values = values.tolist()
    return {"str" if isinstance(v, str) else "number" if isinstance(v, (int, float, np.number))
            and not isinstance(v, bool) else type(v).__name__ for v in values}


def _as_labels(arr):
    """A 1-D array of labels in a dtype np.save can store without pickle (numbers or str).

    Python objects become numbers or str; NumPy 2's variable-width strings (StringDType)
    become fixed-width str. Dates, durations, bytes and complex numbers are refused here,
    when fit first sees them, rather than by save after training."""
    if arr.dtype.kind == "T":   # StringDType: np.save cannot store it; its str values can
        arr = arr.astype(object)   # then read as Python strings below (a missing one is named)
    if arr.dtype != object:
        if arr.dtype.kind == "c":
            raise TypeError(f"class labels must be real numbers or strings, got dtype {arr.dtype}")
        if arr.dtype.kind not in _SAVEABLE:
            raise TypeError(f"class labels of dtype {arr.dtype} cannot be saved with the model "
                            "(it holds numbers or strings): convert them first, e.g. "
                            "Y.astype(str)")
        return arr
    values = arr.tolist()
    kinds = kinds_of(values)
    if len(kinds) > 1 or not kinds <= {"str", "number", "bool"}:
        raise TypeError(f"class labels must be all numbers or all strings, got {sorted(kinds)}"
                        " (convert them first, e.g. to str)")
    ints = [v for v in values if isinstance(v, (int, np.integer)) and not isinstance(v, bool)]
    if ints and len(ints) == len(values):
        return _integers(values)
    if kinds == {"str"}:
        _refuse_trailing_nul(values)
    labels = np.asarray(values)
    # beside floats, integers become float64: refused where that changes one (2**53 + 1)
    if labels.dtype.kind == "f" and any(float(v) != v for v in ints):
        raise TypeError("class labels mix floats with integers float64 cannot hold exactly: "
                        "convert them first, e.g. to str")
    return labels


def _refuse_trailing_nul(values):
    """A ValueError naming the first str label that ends in NUL: NumPy's str arrays (a
    model's classes_, what save writes) drop trailing NULs, so 'x\\0' would silently
    train as the class 'x'."""
    for v in values:
        if v.endswith("\0"):
            raise ValueError(f"the class label {v!r} ends in a NUL character, which a model's "
                             f"classes_ (a NumPy str array) drops: it would train as "
                             f"{v.rstrip(chr(0))!r}; remove or replace the NULs first")


def _integers(values):
    """Integers (Python's or NumPy's) as int64, else uint64 (NumPy made those of
    [2**63, 2**64) float64, turning 2**64 - 1 into 2**64); beyond both, refused: save could
    not hold them. The range is judged on the values as Python ints: NumPy casts an int64
    -1 to uint64 2**64 - 1 without a word."""
    exact = [int(v) for v in values]
    low, high = min(exact), max(exact)
    for dtype in (np.int64, np.uint64):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return np.asarray(exact, dtype=dtype)
    raise TypeError("class labels hold integers that no 64-bit integer type holds (beyond "
                    "64 bits, or both below 0 and above 2**63 - 1), which cannot be saved with "
                    "the model: convert them first, e.g. to str")


def exact(arr, given):
    """``arr`` (np.asarray(given)), or ``given`` as an object array where NumPy rounded its
    Python integers (a ValueError where a str label of a list ends in NUL, which
    np.asarray dropped: _refuse_trailing_nul): it makes float64 of integers in
    [2**63, 2**64), or of such beside negative ones, and 2**64 - 1 became the label 2**64.
    Only a float array made from a sequence, holding magnitudes from 2**53 on, is looked
    at again."""
    if arr.dtype.kind == "U" and not isinstance(given, np.ndarray) and arr.size:
        # a list of str: np.asarray dropped the trailing NULs of its labels ('x\0' -> 'x')
        objects = np.asarray(given, dtype=object)
        if objects.shape == arr.shape:
            _refuse_trailing_nul([v for v in objects.reshape(-1).tolist()
                                  if isinstance(v, str)])
        return arr
    if isinstance(given, np.ndarray) or arr.dtype.kind != "f" or arr.size == 0:
        return arr
    with np.errstate(invalid="ignore"):
        if not np.nanmax(np.abs(arr)) >= 2.0**53:
            return arr
    objects = np.asarray(given, dtype=object)
    return objects if objects.shape == arr.shape else arr


def n_classes(output_dim, loss_code):
    """How many class labels a network with ``output_dim`` outputs and this loss has: one
    per output unit (a softmax's classes, or the indicator columns of several sigmoid
    units), except one sigmoid unit with binary cross-entropy, which tells 2 classes apart.
    ``classes_`` must hold exactly this many distinct labels."""
    return 2 if loss_code == BINARY_CROSS_ENTROPY and output_dim == 1 else output_dim


def is_labels(Y, net, classes=None, part=False):
    """True when Y (an ndarray) holds one label per row for a classification model.

    ``classes``: the model's classes_, if it has them. For one sigmoid unit, numeric Y
    whose values all lie in [0, 1] are targets (0/1 or soft labels); integers outside
    [0, 1] are labels when there are exactly two of them, or the model already has
    numeric classes_ (a batch may hold only one of the two), or Y is ``part`` of the
    rows (one rank's shard: the union of every part must then hold two)."""
    k, loss = net.output_dim, net.loss.code
    one_column = Y.ndim == 1 or (Y.ndim == 2 and Y.shape[1] == 1)
    if loss == CROSS_ENTROPY:
        return k > 1 and one_column
    if loss == BINARY_CROSS_ENTROPY and k == 1 and one_column:
        if Y.dtype.kind not in "iuf":   # strings, bools, ...: labels (complex: refused later)
            return Y.dtype.kind != "c"
        return _two_numeric_labels(Y.reshape(-1), classes, part)
    return False


def _two_numeric_labels(flat, classes, part=False):
    """Whether numeric Y for one sigmoid unit are labels: integers, not all in [0, 1]."""
    if flat.size == 0 or not np.isfinite(flat).all():
        return False   # check_targets names the NaN or inf
    if flat.min() >= 0 and flat.max() <= 1:
        # targets, always (the fast paths of every call read such a Y so; the CLI passes
        # 0/1 targets beside classes_ [1, 2]); a rank's shard of them beside shards of
        # labels is labels (fastmlp.distributed: label_candidates)
        return False
    if flat.dtype.kind == "f" and np.any(flat != np.round(flat)):
        return False   # check_targets says targets must lie in [0, 1]
    known = classes is not None and np.asarray(classes).dtype.kind in "iuf"
    return known or part or len(np.unique(flat)) == 2


def unit_values(Y, net):
    """For one sigmoid unit, numeric Y's values (flat) when they are finite and all lie
    in [0, 1], the Y that is_labels reads as targets; None for anything else."""
    if not (net.loss.code == BINARY_CROSS_ENTROPY and net.output_dim == 1
            and Y.dtype.kind in "iuf" and Y.size and np.isfinite(Y).all()):
        return None
    flat = Y.reshape(-1)
    return None if flat.min() < 0 or flat.max() > 1 else flat


def label_candidates(Y, net):
    """For one sigmoid unit, the distinct values of unit_values(Y) when they are integers
    (0 and 1): labels if another part of the rows holds labels outside [0, 1] (one rank
    holding only 1s beside one holding 2s: labels {1, 2}, as one process reads their rows
    together), else targets. None for anything else."""
    flat = unit_values(Y, net)
    if flat is None or np.any(flat != np.round(flat)):
        return None
    return np.unique(flat)


def encode(Y, net, classes, learn=True):
    """(targets, classes): labels Y (n,) as indices into ``classes`` (found when None).

    Integer labels all in [0, k) are taken as class indices (classes = 0..k-1), as
    before; any other labels need exactly k distinct values, sorted to give classes
    (``learn``: the call may learn them; evaluate's and gradients' refusal does not
    advise giving k distinct labels, which they refuse to map).
    """
    k = n_classes(net.output_dim, net.loss.code)  # is_labels: a softmax or one sigmoid unit
    flat = _as_labels(Y.reshape(-1))
    numeric = flat.dtype.kind in "iuf"
    if numeric:
        if not np.all(np.isfinite(flat)):
            raise ValueError("Y contains NaN or inf")
        if flat.dtype.kind == "f" and np.any(flat != np.round(flat)):
            raise ValueError("class labels in Y must be integers (or strings)")
    if classes is None:
        if numeric and _are_indices(flat, k):
            return flat.reshape(Y.shape), index_classes(k)
        classes = _found(flat, k, learn)   # (k distinct labels of Y's, finite, sorted)
    else:
        classes = checked_classes(classes, k)
    if numeric and are_indices(classes):
        return flat.reshape(Y.shape), classes  # already indices; check_targets checks their range
    codes = _lookup(flat, classes)
    if net.loss.code == BINARY_CROSS_ENTROPY:
        codes = codes.reshape(-1, 1)
    return codes, classes


def counted(classes, k):
    """``classes`` (a model's classes_, which anyone may assign) as an array, if it holds
    exactly k labels; else a ValueError naming both counts (a label past the output units
    was otherwise reported as an index out of range that the user never gave)."""
    classes = np.asarray(classes)
    if classes.ndim != 1:
        raise ValueError(f"classes_ must be 1-D, one label per class; got shape "
                         f"{classes.shape}")
    if len(classes) != k:
        raise ValueError(f"classes_ holds {classes.size} label(s) {classes.reshape(-1).tolist()[:10]}"
                         f" but the model has {k} classes: set classes_ to exactly {k} "
                         "distinct labels, one per class")
    return classes


def index_classes(k):
    """The classes_ of a model trained on class indices: 0..k-1 (int64 (k,))."""
    return np.arange(k, dtype=np.int64)


def are_indices(classes):
    """True when ``classes`` are 0..k-1: labels that are their own class indices."""
    classes = np.asarray(classes)
    return classes.dtype.kind in "iu" and np.array_equal(classes, np.arange(len(classes)))


def sorted_classes(classes):
    """(order, ranked): the argsort of ``classes`` (1-D) and the classes in that order, as
    :func:`find` takes them; a ValueError when a label appears twice (the second unit of
    that label would never be trained; save refuses such classes_)."""
    order = np.argsort(classes, kind="stable")
    ranked = classes[order]
    twice = ranked[1:][ranked[1:] == ranked[:-1]]
    if len(twice):
        raise ValueError(f"classes_ {classes.tolist()[:10]} hold the label "
                         f"{twice[:1].tolist()[0]!r} twice; each class needs its own")
    return order, ranked


def find(flat, ranked):
    """(pos, known): where each label of ``flat`` lies in ``ranked`` (sorted_classes'),
    clipped into it, and whether the label there is that one: order[pos] are the class
    indices when every label is known. One sorted search."""
    flat, ranked = exactly_comparable(flat, ranked)
    pos = np.searchsorted(ranked, flat)
    np.minimum(pos, len(ranked) - 1, out=pos)
    return pos, np.asarray(ranked.take(pos) == flat, dtype=bool)


_EXACT_IN_FLOAT64 = 2 ** 53


def exactly_comparable(flat, ranked):
    """``flat`` and ``ranked`` as arrays whose comparisons are exact. NumPy compares an
    int64 or uint64 with a float, or int64 with uint64, as float64, which holds integers
    beyond 2**53 only approximately: a label 2.0**53 matched the class 2**53 + 1, and a
    label of uint64 missed its own class of int64. Such a pair becomes Python ints and
    floats, which compare exactly; other labels keep NumPy's search."""
    kinds = flat.dtype.kind + ranked.dtype.kind
    if (flat.dtype == ranked.dtype or not set(kinds) <= set("iuf")
            or np.result_type(flat.dtype, ranked.dtype).kind != "f"):
        return flat, ranked
    inexact = any(a.dtype.kind in "iu" and a.dtype.itemsize == 8 and a.size
                  and (a.max() > _EXACT_IN_FLOAT64 or a.min() < -_EXACT_IN_FLOAT64)
                  for a in (flat, ranked))
    if not inexact:
        return flat, ranked
    return np.array(flat.tolist(), dtype=object), np.array(ranked.tolist(), dtype=object)


def _lookup(flat, classes):
    """Index of each label of ``flat`` in ``classes`` (any order), vectorised."""
    order, ranked = sorted_classes(classes)
    known = np.zeros(len(flat), dtype=bool)
    try:
        pos, known = find(flat, ranked)
    except (TypeError, np.exceptions.DTypePromotionError if hasattr(np, "exceptions") else TypeError):
        pos = np.zeros(len(flat), dtype=np.int64)
    if not np.all(known):
        unknown = sorted({repr(v) for v in flat[~np.asarray(known, bool)].tolist()})[:5]
        raise ValueError(f"Y has labels the model does not know: {', '.join(unknown)} "
                         f"(classes_ = {_shown_classes(classes)})")
    return order[pos]


def _shown_classes(classes, most=10):
    """classes_ as an error message shows them: the first ``most`` and how many more (a
    model of 100,000 classes put 1.4 million characters into one message)."""
    more = len(classes) - most
    return f"{classes[:most].tolist()}" + (f" and {more} more" if more > 0 else "")


def _are_indices(flat, k):
    return bool(flat.min() >= 0 and flat.max() < k)


def _found(flat, k, learn=True):
    classes = np.unique(flat)
    if len(classes) != k:
        shown = classes.tolist()[:10]
        if not learn:   # (k distinct labels would be refused next: no classes_ to map them)
            raise ValueError(f"Y has {len(classes)} distinct labels {shown} but the model "
                             f"has {k} classes and no classes_: give class indices "
                             f"0..{k - 1}, or train it on its labels first (fit and "
                             "train_on_batch record classes_) or set model.classes_")
        raise ValueError(f"Y has {len(classes)} distinct labels {shown} but the model has "
                         f"{k} classes: give labels 0..{k - 1}, or exactly {k} distinct labels, "
                         "or set model.classes_ first")
    return classes


def decode(P, net, classes):
    """Labels (n,) for network outputs P (n, k): the most probable class of a softmax,
    P > 0.5 for one sigmoid unit; several sigmoid units give a 0/1 indicator (n, k).
    A ValueError where an output is NaN (refuse_nan_outputs)."""
    if net.loss.code in (CROSS_ENTROPY, BINARY_CROSS_ENTROPY):
        refuse_nan_outputs(P)
    if net.loss.code == CROSS_ENTROPY:
        idx = P.argmax(axis=1)
    elif net.loss.code == BINARY_CROSS_ENTROPY:
        if P.shape[1] > 1:
            return (P > 0.5).astype(np.int64)
        idx = (P[:, 0] > 0.5).astype(np.int64)
    else:
        raise ValueError(f"predict_classes needs a classification loss (cross_entropy or "
                         f"binary_cross_entropy); this model's loss is {net.loss.name!r}")
    if classes is None:
        return idx
    return checked_classes(classes, n_classes(net.output_dim, net.loss.code))[idx]


def checked_classes(classes, k):
    """``classes`` (a model's classes_, which anyone may assign or edit) as an array of k
    labels it can answer with, as evaluate, fit and save take them: numbers or strings
    (_as_labels), no NaN, none twice (sorted_classes); else the error naming the problem
    (predict_classes had answered 'a' for two units of classes_ ['a', 'a', 'b'], and
    NaN or None as labels)."""
    classes = _as_labels(counted(classes, k))
    if classes.dtype.kind == "f" and not finite(classes):
        raise ValueError(f"classes_ {_shown_classes(classes)} hold NaN or inf, which no "
                         "prediction can be; each class needs a label")
    if not are_indices(classes):   # (the classes_ of class indices: distinct already)
        sorted_classes(classes)
    return classes


def refuse_nan_outputs(P):
    """A ValueError naming the first row of outputs P (n, k) that holds NaN: no class can
    be chosen there (argmax took a NaN for the largest output, P > 0.5 read it as no,
    so overflowed outputs were class 0, silently)."""
    if not finite(P):
        row = int(np.argmax(~np.isfinite(P).all(axis=1)))
        raise ValueError(f"the model's outputs are not finite for row {row} (its weights or "
                         "inputs overflowed: predict shows them), so no class can be chosen")

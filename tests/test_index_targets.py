"""validation.index_targets: class indices Y (n,) as one-hot targets (n, k), the shortcut
train_on_batch, fit and the estimators take for labels that are their own indices. The
Cython extension has the same function in C (validation uses it when it is built): both
must give the same answer for every object, since a wrong array trains the wrong class
and a wrong None only costs the full label checks.

Also the mend it came with: read as unsigned, a negative int8 label was -1 + 256 = 255,
inside [0, k) for a 256-class model, so it trained as class 255 on every backend."""
import numpy as np
import pytest

import fastmlp as fm
from fastmlp import validation

try:
    from fastmlp.kernels import cython_mlp
except ImportError:  # the extension is not built: only the Python function is tested
    cython_mlp = None

IMPLEMENTATIONS = [pytest.param(validation.python_index_targets, id="python")]
if cython_mlp is not None:
    IMPLEMENTATIONS.append(pytest.param(cython_mlp.index_targets, id="cython"))

INTEGERS = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64,
            np.intc, np.uintc, np.longlong, np.ulonglong, np.intp, np.uintp]


class Sub(np.ndarray):
    pass


def _unaligned(values, dtype):
    itemsize = np.dtype(dtype).itemsize
    raw = np.zeros(len(values) * itemsize + 1, dtype=np.uint8)
    a = np.frombuffer(raw.data, dtype=dtype, count=len(values), offset=1)
    a[...] = values
    return a


def _cases():
    """(name, Y, n_rows, k): every kind of object the shortcut may be given."""
    cases = []
    for t in INTEGERS:
        name = np.dtype(t).name
        cases += [(f"{name} in range", np.array([0, 2, 1, 2], t), 4, 3),
                  (f"{name} (n, 1)", np.array([[0], [2], [1]], t), 3, 3),
                  (f"{name} k - 1", np.array([0, 2], t), 2, 3),
                  (f"{name} k", np.array([0, 3], t), 2, 3),
                  (f"{name} max", np.array([0, np.iinfo(t).max], t), 2, 3),
                  (f"{name} max for k = max + 1", np.array([np.iinfo(t).max], t), 1,
                   min(int(np.iinfo(t).max) + 1, 1 << 20)),
                  (f"{name} strided", np.array([0, 9, 1, 9, 2, 9], t)[::2], 3, 3),
                  (f"{name} reversed", np.array([0, 1, 2], t)[::-1], 3, 3),
                  (f"{name} unaligned", _unaligned([1, 0, 2], t), 3, 3),
                  (f"{name} byte-swapped", np.array([0, 1, 2], np.dtype(t).newbyteorder()), 3, 3)]
        if np.iinfo(t).min < 0:
            cases += [(f"{name} -1", np.array([0, -1, 1], t), 3, 3),
                      (f"{name} min", np.array([np.iinfo(t).min], t), 1, 3),
                      # the mended case: -1 read as unsigned lies in [0, k)
                      (f"{name} -1, k beyond its positive range",
                       np.array([0, -1, 1], t), 3, min(int(np.iinfo(t).max) + 2, 1 << 20)),
                      (f"{name} min, k beyond its positive range",
                       np.array([np.iinfo(t).min], t), 1, min(int(np.iinfo(t).max) + 2, 1 << 20))]
    cases += [
        ("256 classes, int8 -1", np.array([-1, 0, 1], np.int8), 3, 256),
        ("300 classes (no cached identity)", np.array([0, 299, 150]), 3, 300),
        ("300 classes, -1", np.array([0, -1]), 2, 300),
        ("one class", np.array([0, 0]), 2, 1),
        ("rows differ", np.array([0, 1, 1]), 2, 3),
        ("no rows", np.array([], np.int64), 0, 3),
        ("(n, 2)", np.array([[0, 1], [1, 0]]), 2, 3),
        ("(1, n)", np.array([[0, 1, 2]]), 3, 3),
        ("0-d", np.array(1), 1, 3),
        ("3-d", np.zeros((2, 1, 1), np.int64), 2, 3),
        ("float", np.array([0.0, 1.0]), 2, 3),
        ("bool", np.array([True, False]), 2, 3),
        ("str", np.array(["0", "1"]), 2, 3),
        ("object", np.array([0, 1], dtype=object), 2, 3),
        ("timedelta", np.array([0, 1], "m8[s]"), 2, 3),
        ("list", [0, 1], 2, 3),
        ("subclass", np.array([0, 1]).view(Sub), 2, 3),
        ("read-only", np.array([0, 1, 2]), 3, 3),
    ]
    cases[-1][1].flags.writeable = False
    return cases


CASES = _cases()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("index_targets", IMPLEMENTATIONS)
def test_index_targets_are_the_labels_one_hot_or_none(index_targets, case, dtype):
    _, Y, n_rows, k = case
    got = index_targets(Y, n_rows, k, np.dtype(dtype))
    want = _expected(Y, n_rows, k, dtype)
    if want is None:
        assert got is None
    else:
        assert type(got) is np.ndarray and got.dtype == dtype and got.flags.c_contiguous
        np.testing.assert_array_equal(got, want)


def _expected(Y, n_rows, k, dtype):
    """The plain rule: a plain native-order integer ndarray (n_rows,) or (n_rows, 1),
    every value in [0, k) as a Python int; its one-hot rows."""
    if (type(Y) is not np.ndarray or Y.dtype.kind not in "iu" or not Y.dtype.isnative
            or Y.ndim not in (1, 2) or (Y.ndim == 2 and Y.shape[1] != 1)
            or len(Y) != n_rows or n_rows == 0):
        return None
    values = [int(v) for v in Y.reshape(-1)]
    if any(v < 0 or v >= k for v in values):
        return None
    T = np.zeros((n_rows, k), dtype=dtype)
    T[np.arange(n_rows), values] = 1
    return T


@pytest.mark.skipif(cython_mlp is None, reason="the Cython extension is not built")
def test_the_model_uses_the_compiled_index_targets():
    assert validation.index_targets is cython_mlp.index_targets


@pytest.mark.parametrize("call", ["train_on_batch", "fit"])
def test_a_negative_int8_label_is_not_class_255(backend, call):
    """256 outputs, labels [-1, 0, 1] as int8: not the classes' indices (and 3 distinct
    labels are not 256 classes), so refused by the full label checks, the model left as
    it was; before, the -1 trained as class 255."""
    model = fm.Model([fm.Dense(256, "softmax")], input_dim=2, loss="cross_entropy",
                     backend=backend, seed=0)
    before = model.get_weights()
    X = np.ones((3, 2), np.float32)
    Y = np.array([-1, 0, 1], np.int8)
    with pytest.raises(ValueError, match="3 distinct labels"):
        getattr(model, call)(X, Y)
    assert model.classes_ is None
    for w, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(w, b)
    # the same labels as int16 (no wrap at 256) and as indices 0..2 are taken as before
    model.classes_ = np.arange(256)
    with pytest.raises(ValueError, match="-1"):
        getattr(model, call)(X, Y.astype(np.int16))
    getattr(model, call)(X, np.array([255, 0, 1], np.uint8))

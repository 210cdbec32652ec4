"""validation.laid_out / laid_out_xy: the O(1) test that lets predict and
train_on_batch hand an array to the backend as it is. The Cython extension has the
same tests in C (the Model calls those when it is built): both must give the same
answer for every object, since a wrong True would hand the kernels an array they
read wrongly."""
import mmap

import numpy as np
import pytest

from fastmlp import validation

try:
    from fastmlp.kernels import cython_mlp
except ImportError:  # the extension is not built: only the Python tests run
    cython_mlp = None

IMPLEMENTATIONS = [pytest.param((validation.python_laid_out, validation.python_laid_out_xy),
                                id="python")]
if cython_mlp is not None:
    IMPLEMENTATIONS.append(pytest.param((cython_mlp.laid_out, cython_mlp.laid_out_xy),
                                        id="cython"))

F32 = np.dtype(np.float32)


class Sub(np.ndarray):
    pass


def _unaligned(rows, cols):
    raw = np.zeros(rows * cols * 4 + 1, dtype=np.uint8)
    a = np.frombuffer(raw.data, dtype=np.float32, count=rows * cols, offset=1)
    return a.reshape(rows, cols)


def _read_only():
    a = np.ones((4, 3), np.float32)
    a.flags.writeable = False
    return a


def _memory_mapped():
    buf = mmap.mmap(-1, 4 * 3 * 4)
    return np.frombuffer(buf, dtype=np.float32).reshape(4, 3)


# (object, laid out as a (n, 3) float32 input?)
CASES = {
    "c float32": (np.ones((4, 3), np.float32), True),
    "one row": (np.ones((1, 3), np.float32), True),
    "read-only": (_read_only(), True),
    "mapped buffer": (_memory_mapped(), True),
    "metadata dtype": (np.ones((4, 3), np.dtype(np.float32, metadata={"unit": "m"})), True),
    "one row of a bigger array": (np.ones((4, 3), np.float32)[::4], True),  # strides moot
    "fortran one row": (np.asfortranarray(np.ones((1, 3), np.float32)), True),
    "float64": (np.ones((4, 3)), False),
    "big-endian": (np.ones((4, 3), ">f4"), False),
    "float16": (np.ones((4, 3), np.float16), False),
    "int32 (same item size)": (np.ones((4, 3), np.int32), False),
    "fortran": (np.asfortranarray(np.ones((4, 3), np.float32)), False),
    "column slice": (np.ones((4, 6), np.float32)[:, ::2], False),
    "row slice": (np.ones((8, 3), np.float32)[::2], False),
    "broadcast": (np.broadcast_to(np.ones(3, np.float32), (4, 3)), False),
    "unaligned": (_unaligned(4, 3), False),
    "subclass": (np.ones((4, 3), np.float32).view(Sub), False),
    "matrix": (np.ones((4, 3), np.float32).view(np.matrix), False),
    "memmap class": (np.ones((4, 3), np.float32).view(np.memmap), False),
    "zero rows": (np.ones((0, 3), np.float32), False),
    "wrong columns": (np.ones((4, 2), np.float32), False),
    "1-D": (np.ones(3, np.float32), False),
    "3-D": (np.ones((4, 3, 1), np.float32), False),
    "0-D": (np.array(1.0, np.float32), False),
    "list": ([[1.0, 2.0, 3.0]], False),
    "None": (None, False),
}


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_laid_out(impl, name):
    laid_out, _ = impl
    a, expected = CASES[name]
    assert laid_out(a, 3, F32) is expected


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_laid_out_xy_takes_each_side_as_laid_out(impl, name):
    _, laid_out_xy = impl
    a, expected = CASES[name]
    good_x, good_y = np.ones((4, 3), np.float32), np.ones((4, 3), np.float32)
    rows = np.shape(a)[0] if expected else 4
    assert laid_out_xy(a, np.ones((rows, 3), np.float32), 3, 3, F32) is expected
    assert laid_out_xy(np.ones((rows, 3), np.float32), a, 3, 3, F32) is expected
    assert laid_out_xy(good_x, good_y, 3, 3, F32) is True


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_laid_out_xy_needs_as_many_target_rows_and_their_width(impl):
    _, laid_out_xy = impl
    X = np.ones((4, 3), np.float32)
    assert laid_out_xy(X, np.ones((4, 2), np.float32), 3, 2, F32) is True
    assert laid_out_xy(X, np.ones((5, 2), np.float32), 3, 2, F32) is False
    assert laid_out_xy(X, np.ones((3, 2), np.float32), 3, 2, F32) is False
    assert laid_out_xy(X, np.ones((4, 3), np.float32), 3, 2, F32) is False
    assert laid_out_xy(X, np.ones((4, 2), np.float64), 3, 2, F32) is False
    assert laid_out_xy(X.astype(np.float64), np.ones((4, 2)), 3, 2, np.dtype(np.float64)) is True


def test_the_model_uses_the_compiled_tests_when_built():
    if cython_mlp is None:
        pytest.skip("the Cython extension is not built: the Python tests are the ones in use")
    assert validation.laid_out is cython_mlp.laid_out
    assert validation.laid_out_xy is cython_mlp.laid_out_xy

"""The float32 products of the kernels on _sgemm.h's loops (kernels/_sgemm_blas.h), in
the AVX-512 Cython build, and the Numba kernels' calls to them (numba_blas's
fastmlp_sgemm64, cython_mlp.own_sgemm64_address).

Checked: where they run (fastmlp.set_gemm_loops: "fit" inside fit's epochs only;
"auto", the default, is checked in test_blas_worker.py);
all four transpositions against float64 maths, every tail of rows (blocks of
12) and columns (vectors of 16, masked), alpha and beta as a training step uses them
(beta 0 never reads C), a B over 1 MiB and alpha 0 left to BLAS; the bits the same
whichever rows share a call, on one thread or two, and whether an operand came
transposed or not; the Numba kernels' gemm_nn / gemm_tn / gemm_nt giving the Cython
extension's bits; train steps on both backends against each other and the loops off.
"""
import contextlib

import numpy as np
import pytest

import fastmlp as fm
from helpers import pool_threads, run_in_threads

cython_mlp = pytest.importorskip("fastmlp.kernels.cython_mlp")

needs_loops = pytest.mark.skipif(
    cython_mlp._use_sgemm() != 1,
    reason=f"the {cython_mlp.ISA} build has no _sgemm.h loops (AVX-512 only): BLAS does it")

pytestmark = needs_loops


@pytest.fixture(autouse=True)
def _loops_in_every_call():
    """The loops take products in every call here, whatever the default does where the
    BLAS has no pool of its own to share (fastmlp.set_gemm_loops), so each kernel's
    products can be checked."""
    was = fm.set_gemm_loops("always")
    yield
    fm.set_gemm_loops(was)


def _threads(n):
    """At most n threads for the pool's split (helpers.pool_threads)."""
    return pool_threads(cython_mlp, n)


@contextlib.contextmanager
def _loops(on):
    was = cython_mlp._use_sgemm(1 if on else 0)
    try:
        yield
    finally:
        cython_mlp._use_sgemm(was)


def _operands(rng, ta, tb, m, n, k):
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
    return a, b


def _op(x, t):
    return x.T if t else x


def _gemm(ta, tb, alpha, a, b, beta, c, path=-1):
    out = c.copy()
    cython_mlp._gemm(ta, tb, alpha, a, b, beta, out, path)
    return out


TRANSPOSES = [(False, False), (True, False), (False, True), (True, True)]
SHAPES = [(1, 17, 9), (2, 16, 33), (11, 31, 64), (12, 32, 40), (13, 33, 7), (25, 70, 100),
          (40, 10, 128), (64, 1, 300)]
SCALARS = [(1.0, 0.0), (-0.01, 1.0), (0.5, 0.0), (2.0, 0.75)]


@pytest.mark.parametrize("ta,tb", TRANSPOSES)
@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("alpha,beta", SCALARS)
def test_products_match_float64_maths(ta, tb, m, n, k, alpha, beta):
    rng = np.random.default_rng(m * 1000 + n * 10 + k)
    a, b = _operands(rng, ta, tb, m, n, k)
    c = rng.standard_normal((m, n)).astype(np.float32)
    got = _gemm(ta, tb, alpha, a, b, beta, c)
    a64, b64 = _op(a, ta).astype(np.float64), _op(b, tb).astype(np.float64)
    want = alpha * (a64 @ b64) + beta * c.astype(np.float64)
    bound = (abs(alpha) * (np.abs(a64) @ np.abs(b64)) * (k + 2)
             + abs(beta) * np.abs(c) * 2) * np.finfo(np.float32).eps
    assert np.all(np.abs(got - want) <= bound + 1e-30)


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_bits_do_not_depend_on_layout_rows_or_threads(m, n, k):
    """Each C[i, j] is one chain of fused multiply-adds over k from 0: A or B given
    transposed, a row's neighbours in the call, and the split between threads do not
    change it."""
    rng = np.random.default_rng(k)
    a, b = _operands(rng, False, False, m, n, k)
    c = np.full((m, n), np.nan, np.float32)   # beta 0: C is never read
    with _threads(2):
        base = _gemm(False, False, 1.0, a, b, 0.0, c)
    assert np.all(np.isfinite(base))
    at, bt = np.ascontiguousarray(a.T), np.ascontiguousarray(b.T)
    np.testing.assert_array_equal(_gemm(True, False, 1.0, at, b, 0.0, c), base)
    np.testing.assert_array_equal(_gemm(False, True, 1.0, a, bt, 0.0, c), base)
    np.testing.assert_array_equal(_gemm(True, True, 1.0, at, bt, 0.0, c), base)
    with _threads(1):
        np.testing.assert_array_equal(_gemm(False, False, 1.0, a, b, 0.0, c), base)
    for lo, hi in [(0, 1), (m // 3, m), (m // 2, m // 2 + 1)]:
        if hi > lo:
            part = _gemm(False, False, 1.0, np.ascontiguousarray(a[lo:hi]), b, 0.0, c[lo:hi])
            np.testing.assert_array_equal(part, base[lo:hi])


def test_the_loops_run_and_differ_from_blas_only_in_rounding():
    """The products do go through the loops: their bits differ from BLAS's somewhere (a
    sum in another order), within rounding; with the loops off they are BLAS's."""
    rng = np.random.default_rng(3)
    a, b = _operands(rng, False, False, 64, 48, 500)
    c = np.zeros((64, 48), np.float32)
    own, blas = _gemm(False, False, 1.0, a, b, 0.0, c), _gemm(False, False, 1.0, a, b, 0.0, c, 1)
    assert not np.array_equal(own, blas)
    np.testing.assert_allclose(own, blas, rtol=1e-4, atol=1e-4)
    with _loops(False):
        np.testing.assert_array_equal(_gemm(False, False, 1.0, a, b, 0.0, c), blas)


def test_a_big_b_and_alpha_zero_stay_with_blas():
    rng = np.random.default_rng(4)
    a, b = _operands(rng, False, False, 8, 600, 500)   # B 1.2 MB: over the loops' 1 MiB
    c = np.zeros((8, 600), np.float32)
    np.testing.assert_array_equal(_gemm(False, False, 1.0, a, b, 0.0, c),
                                  _gemm(False, False, 1.0, a, b, 0.0, c, 1))
    a, b = _operands(rng, False, False, 8, 32, 64)
    a[0, 0] = np.inf    # alpha 0: BLAS reads neither A nor B; the loops would give NaN
    c = rng.standard_normal((8, 32)).astype(np.float32)
    np.testing.assert_array_equal(_gemm(False, False, 0.0, a, b, 0.5, c),
                                  _gemm(False, False, 0.0, a, b, 0.5, c, 1))


def test_non_finite_values_propagate_as_in_blas():
    rng = np.random.default_rng(5)
    a, b = _operands(rng, False, False, 30, 40, 50)
    a[17, 3], b[9, 33] = np.nan, np.inf
    c = np.zeros((30, 40), np.float32)
    own, blas = _gemm(False, False, 1.0, a, b, 0.0, c), _gemm(False, False, 1.0, a, b, 0.0, c, 1)
    np.testing.assert_array_equal(np.isfinite(own), np.isfinite(blas))


def _in_a_new_thread(work):
    """work() run in a thread of its own (whose buffer starts empty, whatever earlier
    tests left in this one's): its return value, or its exception raised here."""
    return run_in_threads([work])[0]


def test_a_transposed_b_is_copied_into_a_buffer_the_thread_keeps():
    """op(B) = B^T is copied into a buffer of the calling thread's, allocated at its first
    such product and grown only for a bigger copy: a training step allocates nothing.
    Another thread has a buffer of its own, so two threads' products never share one."""
    rng = np.random.default_rng(11)
    a, bt = _operands(rng, False, True, 64, 128, 200)
    c = np.zeros((64, 128), np.float32)
    small_a, small_bt = _operands(rng, False, True, 8, 16, 30)
    big_a, big_bt = _operands(rng, False, True, 16, 256, 300)

    def products():
        empty = cython_mlp._gemm_scratch()
        base = _gemm(False, True, 1.0, a, bt, 0.0, c)
        first = cython_mlp._gemm_scratch()
        _gemm(False, True, 1.0, small_a, small_bt, 0.0, np.zeros((8, 16), np.float32))
        again = _gemm(False, True, 1.0, a, bt, 0.0, c)
        kept = cython_mlp._gemm_scratch()
        _gemm(False, True, 1.0, big_a, big_bt, 0.0, np.zeros((16, 256), np.float32))
        grown = cython_mlp._gemm_scratch()
        after = _gemm(False, True, 1.0, a, bt, 0.0, c)
        return empty, base, first, again, kept, grown, after, cython_mlp._gemm_scratch()

    empty, base, first, again, kept, grown, after, last = _in_a_new_thread(products)
    assert empty == (0, 0)
    assert first[0] != 0 and first[1] == 200 * 128
    assert kept == first                       # the smaller copy used it as it was
    assert grown[1] == 300 * 256               # grown once, for the bigger copy
    assert last == grown                       # and kept at that size
    np.testing.assert_array_equal(again, base)
    np.testing.assert_array_equal(after, base)
    np.testing.assert_array_equal(_gemm(False, True, 1.0, a, bt, 0.0, c), base)
    other = _in_a_new_thread(lambda: (_gemm(False, True, 1.0, a, bt, 0.0, c),
                                      cython_mlp._gemm_scratch()))
    np.testing.assert_array_equal(other[0], base)
    assert other[1][0] != 0 and other[1][0] != cython_mlp._gemm_scratch()[0]


@pytest.mark.parametrize("backend", ["cython", "numba"])
def test_train_steps_allocate_no_buffer_for_their_products(backend):
    """Steps after the first reuse the thread's buffer for delta W^T's copy of W^T."""
    rng = np.random.default_rng(12)
    X = rng.standard_normal((64, 784)).astype(np.float32)
    T = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 64)]
    m = _net(backend)
    m.train_on_batch(X, T)
    kept = cython_mlp._gemm_scratch()
    assert kept[1] >= 256 * 128   # the second layer's W^T (the first needs no delta W^T)
    for _ in range(3):
        m.train_on_batch(X, T)
        assert cython_mlp._gemm_scratch() == kept


numba_blas = pytest.importorskip("fastmlp.kernels.numba_blas")


def _numba_products():
    from numba import njit

    @njit
    def products(a, b, bt, at, c_nn, c_tn, c_nt, alpha, beta):
        numba_blas.gemm_nn(a, b, c_nn, alpha, beta)
        numba_blas.gemm_tn(at, b, c_tn, alpha, beta)
        numba_blas.gemm_nt(a, bt, c_nt, alpha, beta)
    return products


@pytest.mark.parametrize("m,n,k", [(2, 16, 33), (13, 33, 64), (64, 10, 128), (100, 70, 90),
                                   (64, 600, 500)])
@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (-0.01, 1.0)])
def test_numba_kernels_call_the_same_loops(m, n, k, alpha, beta):
    """numba_blas's gemm_nn, gemm_tn and gemm_nt (Fortran ABI, column-major) reach the
    loops through own_sgemm64_address with the operands in the right places: the
    extension's bits for each."""
    assert numba_blas.GEMM_SCOPE is not None   # the loops are in front of BLAS
    rng = np.random.default_rng(m + n + k)
    a, b = _operands(rng, False, False, m, n, k)
    at, bt = np.ascontiguousarray(a.T), np.ascontiguousarray(b.T)
    c = rng.standard_normal((m, n)).astype(np.float32)
    outs = [c.copy() for _ in range(3)]
    _numba_products()(a, b, bt, at, *outs, alpha, beta)
    np.testing.assert_array_equal(outs[0], _gemm(False, False, alpha, a, b, beta, c))
    np.testing.assert_array_equal(outs[1], _gemm(True, False, alpha, at, b, beta, c))
    np.testing.assert_array_equal(outs[2], _gemm(False, True, alpha, a, bt, beta, c))
    with _loops(False):   # the shim's fallback: the BLAS the symbol named before
        outs = [c.copy() for _ in range(3)]
        _numba_products()(a, b, bt, at, *outs, alpha, beta)
        np.testing.assert_array_equal(outs[0], _gemm(False, False, alpha, a, b, beta, c, 1))


def _net(backend, sizes=(784, 256, 128, 10), optimizer=None):
    layers = [fm.Dense(u, "relu") for u in sizes[1:-1]] + [fm.Dense(sizes[-1], "softmax")]
    return fm.Model(layers, input_dim=sizes[0], loss="cross_entropy", backend=backend,
                    optimizer=optimizer or fm.SGD(lr=0.05), seed=1)


def _trained(backend, optimizer, X, y, loops):
    with _loops(loops):
        m = _net(backend, optimizer=optimizer)
        for _ in range(3):
            m.train_on_batch(X, y)
    return m.get_weights()


@pytest.mark.parametrize("backend", ["cython", "numba"])
@pytest.mark.parametrize("optimizer", [None, fm.SGD(lr=0.05, momentum=0.9), fm.Adam()],
                         ids=["sgd-folded", "momentum", "adam"])
def test_train_steps_run_on_the_loops_and_agree_with_blas(backend, optimizer):
    """Three steps of a 784-256-128-10 net with the loops on and off: different bits (the
    loops ran: every layer's products are theirs), the same weights up to rounding. (The
    two backends' elementwise passes differ in their last bits anyway.)"""
    rng = np.random.default_rng(6)
    X = rng.standard_normal((96, 784)).astype(np.float32)
    y = rng.integers(0, 10, 96)
    own = _trained(backend, optimizer, X, y, True)
    blas = _trained(backend, optimizer, X, y, False)
    for i, (o, b) in enumerate(zip(own, blas)):
        if i % 2 == 0:   # each W: a product of the loops wrote it
            assert not np.array_equal(o, b)
        np.testing.assert_allclose(o, b, rtol=1e-3, atol=1e-5)
    np.testing.assert_array_equal(own[0], _trained(backend, optimizer, X, y, True)[0])


def _fitted(backend, X, y, epochs=2):
    m = _net(backend)
    m.fit(X, y, epochs=epochs, batch_size=32, shuffle=False)
    return m.get_weights()


@pytest.mark.parametrize("backend", ["cython", "numba"])
def test_fit_puts_the_loops_in_fits_epochs_only(backend):
    """set_gemm_loops("fit"): fit's epochs on the loops (bits differ from the loops off),
    train_on_batch on BLAS (the same bits as the loops off); "always" puts
    train_on_batch on the loops too, and "never" fit on BLAS."""
    rng = np.random.default_rng(9)
    X = rng.standard_normal((64, 784)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    assert fm.set_gemm_loops("fit") == "always"   # the fixture's
    fit_blas = _trained(backend, None, X, y, False)
    fitted = {}
    for where in ("fit", "always", "never"):
        fm.set_gemm_loops(where)
        fitted[where] = (_fitted(backend, X, y), _trained(backend, None, X, y, True))
    with _loops(False):
        fitted["off"] = (_fitted(backend, X, y), fit_blas)
    for (fw, sw), where in [(fitted["fit"], "fit"), (fitted["always"], "always")]:
        assert not np.array_equal(fw[0], fitted["off"][0][0]), where   # fit on the loops
        for a, b in zip(fw, fitted["off"][0]):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
    for a, b in zip(fitted["fit"][1], fit_blas):   # a lone step: BLAS, to the bit
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(fitted["always"][1][0], fit_blas[0])
    for a, b in zip(fitted["never"][0], fitted["off"][0]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(fitted["never"][1], fit_blas):
        np.testing.assert_array_equal(a, b)


def test_set_gemm_loops_refuses_what_it_does_not_know():
    for bad in ("sometimes", None, 1, True, "", np.array(["auto", "fit"]), ["auto"]):
        with pytest.raises(ValueError, match="where must be one of"):
            fm.set_gemm_loops(bad)
    assert fm.set_gemm_loops("always") == "always"   # unchanged by the refusals


# --- products whose B is over 1 MiB: copied into panels first (fm_gemm_packed) --------

@contextlib.contextmanager
def _packing(mode):
    """cython_mlp._pack_gemm: 2 packs every product the loops take, 1 (the default) those
    whose B is over 1 MiB, 0 none (BLAS takes those)."""
    was = cython_mlp._pack_gemm(mode)
    try:
        yield
    finally:
        cython_mlp._pack_gemm(was)


# tails of every kind: blocks of 12 rows (37 = 3 x 12 + 1), 16 and 32 columns, groups of
# 8 panels (290 = 256 + 32 + 2 columns), 16 k at a time in the 16 x 16 transposes (31)
PACKED_SHAPES = [(1, 17, 9), (12, 32, 40), (13, 33, 7), (25, 70, 100), (40, 10, 128),
                 (64, 1, 300), (50, 300, 17), (37, 290, 31), (11, 256, 16)]


@pytest.mark.parametrize("ta,tb", TRANSPOSES)
@pytest.mark.parametrize("m,n,k", PACKED_SHAPES)
@pytest.mark.parametrize("alpha,beta", SCALARS)
def test_packed_products_have_the_direct_loops_bits(ta, tb, m, n, k, alpha, beta):
    """Packing copies the operands, not the sums: every C[i, j] is the same chain of fused
    multiply-adds as the direct loops', on one thread or two, and within rounding of
    float64 maths; beta 0 never reads C."""
    rng = np.random.default_rng(m * 1000 + n * 10 + k + 7)
    a, b = _operands(rng, ta, tb, m, n, k)
    c = rng.standard_normal((m, n)).astype(np.float32)
    if beta == 0.0:
        c[0, 0] = np.nan
    direct = _gemm(ta, tb, alpha, a, b, beta, c)
    with _packing(2):
        with _threads(2):
            packed = _gemm(ta, tb, alpha, a, b, beta, c)
        with _threads(1):
            alone = _gemm(ta, tb, alpha, a, b, beta, c)
    np.testing.assert_array_equal(packed, direct)
    np.testing.assert_array_equal(alone, direct)
    a64, b64 = _op(a, ta).astype(np.float64), _op(b, tb).astype(np.float64)
    c64 = c.astype(np.float64) if beta else np.zeros_like(c, np.float64)
    want = alpha * (a64 @ b64) + beta * c64
    bound = (abs(alpha) * (np.abs(a64) @ np.abs(b64)) * (k + 2)
             + abs(beta) * np.abs(c64) * 2) * np.finfo(np.float32).eps
    assert np.all(np.abs(packed - want) <= bound + 1e-30)


@pytest.mark.parametrize("ta,tb", TRANSPOSES)
def test_a_big_b_goes_to_the_packed_loops_from_48_rows(ta, tb):
    """B of 1.2 MB (over the direct loops' 1 MiB): from 48 rows of C the loops take it,
    packed (bits of their own, within rounding of BLAS's; the same with packing forced);
    47 rows, or packing off, stay with BLAS, to the bit. So does a C of 40 columns (1.1 MB
    of B), which would not split into two parts of 32 columns: on one thread the loops
    would leave the other core idle."""
    rng = np.random.default_rng(21)
    for m, n, k, packed in [(48, 600, 500, True), (47, 600, 500, False),
                            (130, 600, 500, True), (100, 40, 7000, False)]:
        a, b = _operands(rng, ta, tb, m, n, k)
        c = rng.standard_normal((m, n)).astype(np.float32)
        got = _gemm(ta, tb, 0.5, a, b, 1.0, c)
        blas = _gemm(ta, tb, 0.5, a, b, 1.0, c, 1)
        assert (not np.array_equal(got, blas)) == packed, m
        np.testing.assert_allclose(got, blas, rtol=1e-4, atol=1e-3)
        if packed:
            with _packing(2):
                np.testing.assert_array_equal(_gemm(ta, tb, 0.5, a, b, 1.0, c), got)
            with _packing(0):
                np.testing.assert_array_equal(_gemm(ta, tb, 0.5, a, b, 1.0, c), blas)


def test_a_product_whose_packed_copies_would_pass_64_mib_goes_to_blas():
    """Each part packs all of op(A): 4,096 rows by 2,100 (34 MB) on two threads would hold
    69 MB of copies, so BLAS takes it."""
    rng = np.random.default_rng(22)
    a, b = _operands(rng, False, False, 4096, 128, 2100)
    c = np.zeros((4096, 128), np.float32)
    with _threads(2):
        np.testing.assert_array_equal(_gemm(False, False, 1.0, a, b, 0.0, c),
                                      _gemm(False, False, 1.0, a, b, 0.0, c, 1))


def test_packed_products_from_many_threads_each_get_their_own_buffers():
    """Four threads' packed products at once, each in its calling thread's buffer: each
    gives the bits of the same product alone."""
    rng = np.random.default_rng(23)
    cases = [_operands(rng, ta, tb, 60 + 7 * i, 600, 500) + (ta, tb)
             for i, (ta, tb) in enumerate(TRANSPOSES)]
    c = {i: np.zeros((60 + 7 * i, 600), np.float32) for i in range(4)}
    alone = [_gemm(ta, tb, 1.0, a, b, 0.0, c[i]) for i, (a, b, ta, tb) in enumerate(cases)]

    def work(i):
        a, b, ta, tb = cases[i]
        return [_gemm(ta, tb, 1.0, a, b, 0.0, c[i]) for _ in range(5)]

    for i, outs in enumerate(run_in_threads([lambda i=i: work(i) for i in range(4)])):
        for out in outs:
            np.testing.assert_array_equal(out, alone[i])


@pytest.mark.parametrize("backend", ["cython", "numba"])
def test_steps_of_a_wide_net_pack_into_a_buffer_the_thread_keeps(backend):
    """A 600-700-10 net (W1 1.7 MB): its big products are packed, into the calling
    thread's buffer, allocated at the first step and kept: later steps allocate nothing.
    The weights agree with BLAS's steps up to rounding, with bits of their own."""
    rng = np.random.default_rng(24)
    X = rng.standard_normal((64, 600)).astype(np.float32)
    y = rng.integers(0, 10, 64)

    def steps(packing):
        with _packing(packing):
            m = _net(backend, sizes=(600, 700, 10))
            m.train_on_batch(X, y)
            kept = cython_mlp._gemm_scratch()
            for _ in range(3):
                m.train_on_batch(X, y)
                assert cython_mlp._gemm_scratch() == kept
            return m.get_weights(), kept

    (own, kept), (blas, _) = run_in_threads([lambda: steps(1)])[0], steps(0)
    assert kept[1] >= 64 * 600 + 8 * 32 * 600   # x's blocks and 8 panels of W1
    assert not np.array_equal(own[0], blas[0])
    for o, b in zip(own, blas):
        np.testing.assert_allclose(o, b, rtol=1e-3, atol=1e-5)

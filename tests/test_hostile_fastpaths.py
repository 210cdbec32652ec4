"""A hostile pass over the fast paths (laid_out, predict_checked, the small-row GEMV
loops and their worker, the numba entry points, the compiled multi-epoch fit and the
guarded train_on_batch step), each compiled backend against the NumPy reference.

The first three tests record bugs this pass found (each failed before its fix):
- the Cython float32 MSE loss squared (y - t) in double, so a loss past FLT_MAX stays
  finite: evaluate, train_on_batch and fit accept what the reference and numba call
  divergence (kernels/_losses.pxd, loss_forward_backward);
- both compiled cross-entropy losses formed z - (m + log s) instead of (z - m) - log s,
  so logits with a large common offset give a wrong loss (0 instead of ln 3), and
  fit(tol=...) stops early on it (kernels/_losses.pxd, kernels/numba_layers.py
  loss_value);
- Model.gradient_vector accepted an unaligned ``out``, which the Cython engine then
  refused with its internal "grad must be ..." message (numpy and numba accepted it).

The rest cover gaps the other files leave: odd layouts through every public call,
the guarded step on batches of several chunks with bad values at the chunk edges,
threads training one model, the quiet fit against the per-epoch loop with divergence
in tiny chunks, and GEMV shapes at the worker's cut.
"""

import numpy as np
import pytest

import fastmlp as fm
from fastmlp.model import TrainingDiverged

from helpers import run_in_threads
from tolerances import TOLERANCES

DTYPES = ["float32", "float64"]
# the reference warns (overflow) on the huge weights some tests set on purpose
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _flat(model):
    return np.concatenate([w.ravel() for w in model.get_weights()])


def _state(model):
    s = model.get_state()
    return np.concatenate([s["theta"], s["opt_buffers"].ravel(), s["opt_step"].astype(float)])


def _outcome(fn):
    try:
        return "ok", fn()
    except Exception as exc:  # compared across backends, type and message
        return "err", f"{type(exc).__name__}: {exc}"


# -- bugs a hostile pass found, each fixed with its test ---------------------------

def test_float32_mse_loss_past_float32_max_is_divergence_as_in_the_reference(compiled_backend):
    """|y - t| > sqrt(FLT_MAX) ~ 1.84e19: the reference and numba square in float32 (inf)
    and call the step divergence; Cython squared in double and trained on."""
    backend = compiled_backend
    rng = np.random.default_rng(0)
    X = rng.standard_normal((9, 5)).astype(np.float32)
    Y = np.full((9, 2), 1.9e19, np.float32)

    def make(b):
        return fm.Model([fm.Dense(7, activation="tanh"), fm.Dense(2)], input_dim=5,
                        backend=b, seed=1, optimizer=fm.SGD(1e-30))

    ref, model = make("numpy"), make(backend)
    assert np.isinf(ref.evaluate(X, Y))
    assert np.isinf(model.evaluate(X, Y))
    before = _state(model)
    with pytest.raises(TrainingDiverged):
        model.train_on_batch(X, Y)
    assert np.array_equal(_state(model), before)
    with pytest.raises(TrainingDiverged):
        make(backend).fit(X, Y, epochs=2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_loss_of_large_equal_logits_is_ln_k(compiled_backend, dtype):
    """Softmax outputs 1/3 each (logits all 1e17): the loss is ln 3, as the reference
    says; the compiled kernels lose it to z - (m + log s) rounding (0.0 here; 1.125
    at 1e15, 1.09863 at 1e12)."""
    backend = compiled_backend
    X = np.ones((4, 2)); Y = np.eye(3)[[0, 1, 2, 0]]

    def make(b):
        m = fm.Model([fm.Dense(2, activation="relu"), fm.Dense(3, activation="softmax")],
                     input_dim=2, loss="cross_entropy", backend=b, dtype=dtype, seed=0,
                     optimizer=fm.SGD(1e-3))
        w = m.get_weights(); w[2][:] = 0; w[3][:] = 1e17
        m.set_weights(w)
        return m

    ref, model = make("numpy"), make(backend)
    np.testing.assert_allclose(model.predict(X), 1 / 3, rtol=1e-6)
    assert ref.evaluate(X, Y) == pytest.approx(np.log(3), rel=1e-6)
    assert model.evaluate(X, Y) == pytest.approx(np.log(3), rel=1e-4)
    assert model.train_on_batch(X, Y) == pytest.approx(np.log(3), rel=1e-4)
    # the wrong loss stops fit at tol: the reference runs its 5 epochs
    assert len(make("numpy").fit(X, Y, epochs=5, tol=0.5, batch_size=4).history["loss"]) == 5
    assert len(make(backend).fit(X, Y, epochs=5, tol=0.5, batch_size=4).history["loss"]) == 5


@pytest.mark.parametrize("dtype", DTYPES)
def test_gradient_vector_into_an_unaligned_out(backend, dtype):
    """Model.gradient_vector checks out's type, shape, dtype, contiguity and writability,
    not its alignment: numpy and numba fill an unaligned out, Cython raises its engine's
    internal 'grad must be a writable aligned ...' error."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((10, 4)).astype(dtype)
    Y = rng.standard_normal((10, 2)).astype(dtype)
    model = fm.Model([fm.Dense(5, activation="prelu"), fm.Dense(2)], input_dim=4,
                     backend=backend, dtype=dtype, seed=0)
    n, size = model.n_params, np.dtype(dtype).itemsize
    out = np.frombuffer(bytearray(n * size + 1), dtype=dtype, offset=1, count=n)
    assert not out.flags.aligned
    loss, grad = model.gradient_vector(X, Y, out=out)
    want_loss, want = model.gradient_vector(X, Y)
    assert grad is out
    assert loss == want_loss
    np.testing.assert_array_equal(out, want)


# -- gaps covered (pass today) ----------------------------------------------------------

def _odd_inputs(X, tmp_path):
    """(name, array) pairs holding X's values in layouts the fast paths must not take
    as they are, or must take correctly."""
    dtype = X.dtype
    path = tmp_path / f"x-{dtype.name}.bin"
    np.concatenate([np.zeros(1, dtype), X.ravel()]).tofile(path)
    read_only = X.copy(); read_only.setflags(write=False)
    return [
        ("fortran", np.asfortranarray(X)),
        ("reversed_rows", X[::-1].copy()[::-1]),
        ("memmap_read_only", np.memmap(path, dtype=dtype, mode="r", offset=dtype.itemsize,
                                       shape=X.shape)),
        ("unaligned", np.frombuffer(b"\0" + X.tobytes(), dtype=dtype, offset=1).reshape(X.shape)),
        ("read_only", read_only),
        ("matrix", np.matrix(X)),
        ("big_endian", X.astype(dtype.newbyteorder(">"))),
        ("list", X.tolist()),
    ]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 8, 9])
def test_odd_layouts_through_every_call_match_the_reference(compiled_backend, dtype, rows, tmp_path):
    backend = compiled_backend
    rng = np.random.default_rng(rows)
    X = rng.standard_normal((rows, 6)).astype(dtype)
    Y = rng.standard_normal((rows, 6)).astype(dtype)
    tol = TOLERANCES[dtype]
    for name, Xo in _odd_inputs(X, tmp_path):
        got = {}
        for b in ("numpy", backend):
            m = fm.Model([fm.Dense(9, activation="prelu"), fm.Dense(6)], input_dim=6,
                         backend=b, dtype=dtype, seed=0, optimizer=fm.Adam(0.01))
            got[b] = [np.asarray(m.predict(Xo)), m.train_on_batch(Xo, Y),
                      m.train_on_batch(Xo, Xo),        # X as its own target
                      np.asarray(m.fit(Xo, Y, epochs=2, batch_size=4).history["loss"]),
                      m.evaluate(Xo, Y), np.asarray(m.predict(Xo)), _flat(m)]
        for a, r in zip(got[backend], got["numpy"]):
            np.testing.assert_allclose(a, r, err_msg=name, **tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_guarded_step_over_several_chunks_refuses_bad_values_at_chunk_edges(compiled_backend, dtype):
    """3001 rows: three TRAIN_ROWS chunks and one row. A NaN/inf in X, a NaN target or
    a target outside [0, 1] on either side of a chunk edge gives the reference's message
    and leaves the model (weights, optimiser state) as it was."""
    backend = compiled_backend
    rng = np.random.default_rng(0)
    n = 3001
    X = rng.standard_normal((n, 5)).astype(dtype)
    Y = np.eye(3, dtype=dtype)[rng.integers(0, 3, n)]
    cases = [(X, Y)]
    for r in (0, 1023, 1024, 2048, 3000):
        Xb = X.copy(); Xb[r, 4] = np.inf
        Yn = Y.copy(); Yn[r, 2] = np.nan
        Yo = Y.copy(); Yo[r, 1] = 1.5
        Yneg = Y.copy(); Yneg[r, 1] = -1e-30
        cases += [(Xb, Y), (X, Yn), (X, Yo), (X, Yneg)]

    def make(b):
        m = fm.Model([fm.Dense(7, activation="prelu"), fm.Dense(3, activation="softmax")],
                     input_dim=5, loss="cross_entropy", backend=b, dtype=dtype, seed=0,
                     optimizer=fm.Adam(0.01))
        m.train_on_batch(X[:4], Y[:4])
        return m

    ref, model = make("numpy"), make(backend)
    for Xc, Yc in cases:
        before = _state(model)
        a = _outcome(lambda: model.train_on_batch(Xc, Yc))
        r = _outcome(lambda: ref.train_on_batch(Xc, Yc))
        assert a[0] == r[0]
        if a[0] == "err":
            assert a[1] == r[1]
            assert np.array_equal(_state(model), before)
        else:
            assert a[1] == pytest.approx(r[1], rel=1e-4)
            np.testing.assert_allclose(_flat(model), _flat(ref), **TOLERANCES[dtype])


@pytest.mark.parametrize("width", [17, 1000])
def test_two_trainers_and_two_readers_on_one_model(compiled_backend, width):
    """Two threads of train_on_batch on the same batch (every step identical, so the
    order does not matter) end bit for bit where 2N steps in one thread end, while two
    threads predict one row (each softmax row finite and summing to 1); a full-batch fit
    racing train_on_batch ends there too."""
    backend = compiled_backend
    rng = np.random.default_rng(0)
    X = rng.standard_normal((8, 6)).astype(np.float32)
    Y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 8)]
    N = 60 if width == 17 else 15

    def make():
        return fm.Model([fm.Dense(width, activation="prelu"),
                         fm.Dense(3, activation="softmax")], input_dim=6,
                        loss="cross_entropy", backend=backend, seed=1, optimizer=fm.Adam(0.01))

    alone = make()
    for _ in range(2 * N):
        alone.train_on_batch(X, Y)
    shared = make()

    def train():
        for _ in range(N):
            shared.train_on_batch(X, Y)

    def read():
        ok = True
        for _ in range(N):
            P = shared.predict(X[:1])
            ok &= bool(np.isfinite(P).all() and abs(P.sum() - 1) < 1e-4)
        return ok

    results = run_in_threads([train, train, read, read])
    assert results[2] and results[3]
    assert np.array_equal(_state(shared), _state(alone))

    # fit's epochs and train_on_batch on one product code, BLAS's (fit's float32 products
    # may run on the AVX-512 build's own GEMM loops where a lone step does not: the same
    # to rounding, not to the bit), so that the order of their steps cannot matter
    was = fm.set_gemm_loops("never")
    try:
        alone = make()
        for _ in range(2 * N):
            alone.train_on_batch(X, Y)
        raced = make()
        run_in_threads([lambda: raced.fit(X, Y, epochs=N, batch_size=None, shuffle=False),
                        lambda: [raced.train_on_batch(X, Y) for _ in range(N)]])
    finally:
        fm.set_gemm_loops(was)
    assert np.array_equal(_state(raced), _state(alone))


@pytest.mark.parametrize("dtype", DTYPES)
def test_cached_state_follows_every_writer(compiled_backend, dtype):
    """predict small, predict big, train_on_batch, set_weights (huge weights, so the
    guarded step's old bounds would be wrong), a mutated get_weights() copy, set_state,
    apply_gradient: after each, predict and train_on_batch equal the reference."""
    backend = compiled_backend
    rng = np.random.default_rng(3)
    X = rng.standard_normal((40, 5)).astype(dtype)
    Y = rng.standard_normal((40, 2)).astype(dtype)
    tol = TOLERANCES[dtype]
    huge = np.float32(1e15) if dtype == "float32" else 1e150

    def make(b):
        return fm.Model([fm.Dense(7, activation="prelu"), fm.Dense(2)], input_dim=5,
                        backend=b, dtype=dtype, seed=2, optimizer=fm.SGD(0.01, momentum=0.9))

    models = {b: make(b) for b in ("numpy", backend)}

    def both(fn):
        a, r = _outcome(lambda: fn(models[backend])), _outcome(lambda: fn(models["numpy"]))
        assert a[0] == r[0], (a, r)
        if a[0] == "err":
            assert a[1].split(":")[0] == r[1].split(":")[0]
        elif a[1] is not None:
            np.testing.assert_allclose(np.asarray(a[1], float), np.asarray(r[1], float), **tol)
        np.testing.assert_allclose(_flat(models[backend]), _flat(models["numpy"]), **tol)

    both(lambda m: m.predict(X[:1]))
    both(lambda m: m.predict(X))
    both(lambda m: m.train_on_batch(X[:3], Y[:3]))
    saved = models["numpy"].get_state()
    both(lambda m: m.get_weights()[0].fill(1e3))        # a copy: no effect
    both(lambda m: m.predict(X[:8]))
    weights = models["numpy"].get_weights()
    big = [w * huge if i == 0 else w for i, w in enumerate(weights)]
    both(lambda m: m.set_weights(big))
    both(lambda m: m.train_on_batch(X[:2], Y[:2]))      # diverges on both, undone
    both(lambda m: m.predict(X[:2]))
    both(lambda m: m.set_state(saved))
    both(lambda m: m.train_on_batch(X[:9], Y[:9]))
    both(lambda m: m.apply_gradient(np.full(m.n_params, 0.5, dtype)))
    both(lambda m: m.predict(X[:9]))
    both(lambda m: m.fit(X, Y, epochs=2, batch_size=8, shuffle=False).history["loss"])
    both(lambda m: m.predict(X[:1]))


class _Noop:
    def on_epoch_end(self, epoch, logs):
        pass


@pytest.mark.parametrize("lr", [0.3, 3.0])
@pytest.mark.parametrize("tol", [None, 0.5])
def test_quiet_fit_with_tiny_chunks_is_the_per_epoch_loop(compiled_backend, lr, tol):
    """One epoch per chunk (_CHUNK_WORK = 1, no time budget to grow by) and the default
    chunks: the compiled multi-epoch fit stops, diverges and rolls back (weights,
    optimiser step, generator) exactly as the per-epoch loop a callback forces."""
    backend = compiled_backend
    rng = np.random.default_rng(0)
    X = rng.standard_normal((23, 4)).astype(np.float32)
    Y = (rng.standard_normal((23, 2)) * 3).astype(np.float32)
    for work in (1, None):
        runs = []
        for callbacks in (None, [_Noop()]):
            m = fm.Model([fm.Dense(6, activation="relu"), fm.Dense(2)], input_dim=4,
                         backend=backend, seed=4, optimizer=fm.SGD(lr, momentum=0.9))
            if work:
                m._CHUNK_WORK, m._CHUNK_SECONDS = work, 0.0
            res = _outcome(lambda: m.fit(X, Y, epochs=30, batch_size=5, tol=tol,
                                         callbacks=callbacks).history["loss"])
            runs.append((res[0], m.history.history["loss"], _state(m), m.permutation(23)))
        (a_kind, a_loss, a_state, a_perm), (b_kind, b_loss, b_state, b_perm) = runs
        assert a_kind == b_kind and a_loss == b_loss
        assert np.array_equal(a_state, b_state) and np.array_equal(a_perm, b_perm)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_in, width", [(3, 30000), (70000, 1), (257, 255), (129, 513)])
def test_gemv_shapes_at_the_workers_cut(compiled_backend, dtype, n_in, width):
    """Small predicts of W's that are cut (>= 256 KB) at n_in // 2 with odd or tiny
    halves, or not cut (n_out 1, n_in under the size): the reference's outputs, and
    a NaN in the last input (the worker's half) is the usual error."""
    backend = compiled_backend
    rng = np.random.default_rng(5)
    models = {b: fm.Model([fm.Dense(width, activation="prelu"),
                           fm.Dense(2, activation="softmax")], input_dim=n_in,
                          loss="cross_entropy", backend=b, dtype=dtype, seed=2)
              for b in ("numpy", backend)}
    w = models["numpy"].get_weights()
    w[1] = rng.standard_normal(w[1].shape).astype(dtype)
    w[2] = rng.standard_normal(w[2].shape).astype(dtype)   # prelu alphas of both signs
    for m in models.values():
        m.set_weights(w)
    for rows in (1, 2, 8, 9):
        X = rng.standard_normal((rows, n_in)).astype(dtype)
        np.testing.assert_allclose(models[backend].predict(X), models["numpy"].predict(X),
                                   **TOLERANCES[dtype])
    X = rng.standard_normal((3, n_in)).astype(dtype)
    X[2, n_in - 1] = np.nan
    with pytest.raises(ValueError, match=f"row 2, column {n_in - 1}"):
        models[backend].predict(X)

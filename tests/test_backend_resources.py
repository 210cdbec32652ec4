"""Bounded memory on large batches, exact chunked results, and unaligned inputs
(issue 8, items 15, 16 and 17), on every backend.

* gradients, evaluate, train_on_batch and fit on 200,000 rows of a 20-256-5
  net: the compiled backends go through a workspace of at most 1024 rows, the
  reference through blocks of rows, so peak memory stays far below the 835 MB
  that one batch's activations would take (the Cython workspace once grew to
  the largest batch: 3.2 GB after one gradients() on a million rows; the
  reference's evaluate on 5 M rows peaked at 10.8 GB). Measured in a
  subprocess as the growth of its peak RSS (VmHWM, reset before each call).
* A batch processed in chunks gives the reference's loss, gradient and steps.
* Inputs whose data are not aligned to their item size (a memmap at an odd
  offset, np.frombuffer with an offset) are accepted by every backend (the
  Cython kernels once refused them) and give the aligned copy's results.
"""
import json
import subprocess
import sys

import numpy as np
import pytest

import fastmlp as fm
from tolerances import TOLERANCES

MB = 1 << 20
ROWS = 200_000
DIMS = (20, 256, 5)
# One batch's activations unchunked: z and f of every layer, float64.
UNBOUNDED = ROWS * 2 * sum(DIMS[1:]) * 8

MEMORY_SCRIPT = r"""
import json, re, sys
import numpy as np
import fastmlp as fm

def peak():
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) * 1024

def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                      # the peak becomes the current RSS

backend, rows = sys.argv[1], int(sys.argv[2])
model = fm.Model([fm.Dense(256, activation="relu"), fm.Dense(5, activation="softmax")],
                 input_dim=20, loss="cross_entropy", optimizer=fm.Adam(lr=1e-3),
                 backend=backend, dtype="float64", seed=0)
rng = np.random.default_rng(0)
X = rng.normal(size=(rows, 20))
T = np.eye(5)[rng.integers(0, 5, size=rows)]   # float64 one-hot: validation copies nothing
calls = {
    "gradients": lambda: model.gradients(X, T),
    "evaluate": lambda: model.evaluate(X, T),
    "train_on_batch": lambda: model.train_on_batch(X, T),
    "fit full batch": lambda: model.fit(X, T, epochs=1, batch_size=None, shuffle=False),
    "fit batch 50000": lambda: model.fit(X, T, epochs=1, batch_size=50000),
}
# warm: JIT, full-size workspaces, allocator pools
small = X[:3000], T[:3000]
model.gradients(*small), model.evaluate(*small), model.train_on_batch(*small)
model.fit(*small, epochs=1, batch_size=1500)
grown = {}
for name, call in calls.items():
    reset_peak()
    before = peak()
    call()
    grown[name] = peak() - before
print(json.dumps(grown))
"""


def test_large_batches_run_in_bounded_memory(backend):
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, backend, str(ROWS)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    grown = json.loads(out.stdout.strip().splitlines()[-1])
    limit = UNBOUNDED // 4
    report = ", ".join(f"{name} {g / MB:.0f} MB" for name, g in grown.items())
    assert all(g < limit for g in grown.values()), (
        f"{backend}: peak RSS grew by {report} on {ROWS} rows; one batch's activations "
        f"are {UNBOUNDED / MB:.0f} MB, the limit {limit / MB:.0f} MB")


# -- chunked batches give the reference's numbers ----------------------------------------

CASES = {
    "prelu-ce": ("prelu", fm.Dense(3, activation="softmax"), "cross_entropy"),
    "tanh-mse": ("tanh", fm.Dense(3, activation="sigmoid"), "mse"),
    "elu-bce": ("elu", fm.Dense(3, activation="sigmoid"), "binary_cross_entropy"),
}
OPTIMIZERS = {"sgd": lambda: fm.SGD(lr=0.1), "momentum": lambda: fm.SGD(lr=0.1, momentum=0.9),
              "adam": lambda: fm.Adam(lr=0.01)}


def _model(backend, dtype, case, optimizer):
    hidden, output, loss = CASES[case]
    return fm.Model([fm.Dense(16, activation=hidden), output], input_dim=6, loss=loss,
                    optimizer=OPTIMIZERS[optimizer](), backend=backend, dtype=dtype, seed=2)


def _data(rows, loss, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, 6))
    if loss == "mse":
        return X, rng.uniform(size=(rows, 3))
    if loss == "cross_entropy":
        return X, rng.integers(0, 3, size=rows)
    return X, rng.integers(0, 2, size=(rows, 3)).astype(float)


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("case", list(CASES))
def test_batches_larger_than_a_chunk_match_the_reference(backend, dtype, case, optimizer):
    """2500 rows: more than two 1024-row chunks of the compiled workspaces."""
    tol = {k: 10 * v for k, v in TOLERANCES[dtype].items()}  # sums over 2500 rows
    X, Y = _data(2500, CASES[case][2])
    got, ref = _model(backend, dtype, case, optimizer), _model("numpy", dtype, case, optimizer)
    loss, grads = got.gradients(X, Y)
    want_loss, want_grads = ref.gradients(X, Y)
    np.testing.assert_allclose(loss, want_loss, **tol)
    for g, w in zip(grads, want_grads):
        np.testing.assert_allclose(g, w, **tol)
    np.testing.assert_allclose(got.evaluate(X, Y), ref.evaluate(X, Y), **tol)
    np.testing.assert_allclose(got.train_on_batch(X, Y), ref.train_on_batch(X, Y), **tol)
    for batch_size in (None, 1100, 700):
        np.testing.assert_allclose(got.fit(X, Y, epochs=1, batch_size=batch_size).history["loss"],
                                   ref.fit(X, Y, epochs=1, batch_size=batch_size).history["loss"],
                                   **tol)
    for g, w in zip(got.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(g, w, **tol)


def test_a_very_wide_layer_trains_in_chunks_that_fit_train_bytes(backend, dtype):
    """Workspaces hold at most rules.TRAIN_BYTES: a 20,000-unit layer gets chunks of
    fewer than 1,024 rows (838 in float32, 419 in float64) on every backend, the
    reference included, and a 1,000-row batch's numbers still match it."""
    from fastmlp import rules
    from fastmlp.network import Network
    layers = [fm.Dense(20_000, "tanh"), fm.Dense(2)]
    assert rules.train_rows(1000, Network(layers, 3, "mse"), dtype) < 1000
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(1000, 3)), rng.normal(size=(1000, 2))
    got, ref = (fm.Model(layers, input_dim=3, loss="mse", backend=b, dtype=dtype, seed=0)
                for b in (backend, "numpy"))
    tol = {k: 10 * v for k, v in TOLERANCES[dtype].items()}
    np.testing.assert_allclose(got.gradients(X, Y)[0], ref.gradients(X, Y)[0], **tol)
    np.testing.assert_allclose(got.train_on_batch(X, Y), ref.train_on_batch(X, Y), **tol)
    for g, w in zip(got.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(g, w, **tol)
    np.testing.assert_allclose(got.predict(X), ref.predict(X), **tol)


def test_reference_blocks_give_one_blocks_numbers(dtype):
    """The reference's evaluate and gradients over several chunks of rows equal one chunk's."""
    from fastmlp import rules

    X, Y = _data(1000, "cross_entropy", seed=5)
    model = _model("numpy", dtype, "prelu-ce", "adam")
    whole = model.evaluate(X, Y), model.gradients(X, Y)
    model.engine._train_rows = model.engine._predict_rows = 300   # four chunks, the last short
    blocked = model.evaluate(X, Y), model.gradients(X, Y)
    tol = TOLERANCES[dtype]
    np.testing.assert_allclose(blocked[0], whole[0], **tol)
    np.testing.assert_allclose(blocked[1][0], whole[1][0], **tol)
    for g, w in zip(blocked[1][1], whole[1][1]):
        np.testing.assert_allclose(g, w, **tol)
    assert rules.predict_rows(model.net, np.float32) >= rules.PREDICT_MIN_ROWS


# -- unaligned inputs --------------------------------------------------------------

def _unaligned(a, offset=1):
    """A writable copy of ``a`` whose data start ``offset`` bytes into a buffer: not aligned."""
    buf = bytearray(offset + a.nbytes)
    view = np.frombuffer(buf, dtype=a.dtype, offset=offset, count=a.size).reshape(a.shape)
    view[...] = a
    assert not view.flags.aligned and view.flags.c_contiguous
    return view


def _unaligned_memmap(a, path, offset=3):
    """``a`` written to a file at ``offset`` bytes and mapped read-only, as the issue's repro."""
    with open(path, "wb") as f:
        f.write(b"\0" * offset + np.ascontiguousarray(a).tobytes())
    view = np.memmap(path, dtype=a.dtype, mode="r", offset=offset, shape=a.shape)
    assert not view.flags.aligned
    return view


@pytest.mark.parametrize("source", ["frombuffer", "memmap"])
def test_unaligned_inputs_are_accepted_and_give_the_aligned_results(backend, dtype, source,
                                                                    tmp_path):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(1000, 3)).astype(dtype)
    T = np.eye(2, dtype=dtype)[rng.integers(0, 2, size=1000)]
    if source == "memmap":
        Xu, Tu = _unaligned_memmap(X, tmp_path / "x.bin"), _unaligned_memmap(T, tmp_path / "t.bin")
    else:
        Xu, Tu = _unaligned(X), _unaligned(T)

    def run(X, T):
        m = fm.Model([fm.Dense(8, activation="tanh"), fm.Dense(2, activation="softmax")],
                     input_dim=3, loss="cross_entropy", backend=backend, dtype=dtype, seed=1)
        out = [m.predict(X), m.evaluate(X, T), m.gradients(X, T)[1], m.train_on_batch(X, T)]
        m.fit(X, T, epochs=2, batch_size=64)
        return out + [m.get_weights()]

    for got, want in zip(run(Xu, Tu), run(X, T)):
        if isinstance(got, list):
            for g, w in zip(got, want):
                np.testing.assert_array_equal(g, w)
        else:
            np.testing.assert_array_equal(got, want)


def test_backends_themselves_accept_unaligned_inputs(backend, dtype):
    """Below the Model's validation (which copies unaligned arrays), each backend's own
    entry points take unaligned X, T and perm too, with the aligned results."""
    rng = np.random.default_rng(4)
    X = rng.normal(size=(300, 3)).astype(dtype)
    T = np.eye(2, dtype=dtype)[rng.integers(0, 2, size=300)]
    perm = rng.permutation(300).astype(np.int64)

    def run(X, T, perm):
        m = fm.Model([fm.Dense(8, activation="relu"), fm.Dense(2, activation="softmax")],
                     input_dim=3, loss="cross_entropy", backend=backend, dtype=dtype, seed=1)
        e, theta = m.engine, m.engine.theta
        grad = np.empty_like(theta)
        out = [e.predict(X), e.evaluate(X, T), e.loss_and_gradient(X, T, grad),
               grad, e.train_step(X, T), e.train_epoch(X, T, perm, 32)]
        return out + [theta]

    for got, want in zip(run(_unaligned(X), _unaligned(T), _unaligned(perm)), run(X, T, perm)):
        if backend == "numpy":
            # NumPy itself may take another loop for an unaligned matmul operand (2.4's
            # float32 results differ in the last bit): the same results up to rounding
            np.testing.assert_allclose(got, want, **TOLERANCES[dtype])
        else:
            np.testing.assert_array_equal(got, want)


def test_cython_says_when_an_output_array_is_unaligned():
    pytest.importorskip("fastmlp.kernels.cython_mlp")
    m = fm.Model([fm.Dense(2, activation="softmax")], input_dim=3, loss="cross_entropy",
                 backend="cython", dtype="float32", seed=0)
    X = np.zeros((4, 3), np.float32)
    T = np.eye(2, dtype=np.float32)[[0, 1, 0, 1]]
    with pytest.raises(ValueError, match=r"grad must be a writable aligned C-contiguous .*"
                                         r"aligned: False"):
        m.engine.loss_and_gradient(X, T, _unaligned(np.zeros(m.n_params, np.float32)))

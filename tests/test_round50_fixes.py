"""Hostile round 50: one signal held back by a deferring block ran an asyncio signal
callback twice; fm.load refused backend="auto"; a ModelCheckpoint given a bytes path, or
a pattern with a positional field, failed only after an epoch had trained (a raw
AttributeError for bytes); model.permutation(n) gave an empty order for n >= 2**63. In
the Numba kernels, ``float()`` of a float32 is a float32: the gradient norms squared
float32 gradients in float32 (inf for 1e25, 0 for 1e-25), and the small products' loops
rounded each multiply-add twice, where BLAS and the Cython loops round once."""
import asyncio
import os
import signal

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import _signals


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs SIGUSR1")
def test_one_signal_held_back_runs_an_asyncio_callback_once():
    """asyncio learns of a signal from its wakeup byte, written when the signal came: the
    held-back handler is called afterwards, not the signal raised a second time."""
    async def main():
        calls = []
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, lambda: calls.append(1))
        try:
            with _signals.signals_deferred():
                os.kill(os.getpid(), signal.SIGUSR1)
            await asyncio.sleep(0.2)
        finally:
            loop.remove_signal_handler(signal.SIGUSR1)
        return calls
    assert asyncio.run(main()) == [1]


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs SIGUSR1")
def test_a_held_back_handler_runs_once_with_its_signal_number(monkeypatch):
    seen = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))
    try:
        with _signals.signals_deferred():
            signal.raise_signal(signal.SIGUSR1)
            assert seen == []   # held back
        assert seen == [signal.SIGUSR1]
        with pytest.raises(KeyboardInterrupt):   # Python's own Ctrl-C handler, called
            with _signals.signals_deferred():
                signal.raise_signal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_load_takes_backend_auto(tmp_path):
    m = fm.Model([fm.Dense(3, "tanh"), fm.Dense(1)], input_dim=2, backend="numpy", seed=0)
    path = tmp_path / "m.npz"
    m.save(path)
    loaded = fm.load(path, backend="auto")
    assert loaded.backend == fm.backends.resolve("auto")
    X = np.random.default_rng(0).random((4, 2)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict(X), m.predict(X), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        fm.load(path, backend="fast")


def test_a_checkpoint_takes_a_bytes_path(tmp_path):
    X = np.ones((8, 2), np.float32)
    Y = np.ones((8, 1), np.float32)
    m = fm.Model([fm.Dense(1)], input_dim=2, seed=0)
    path = os.fsencode(tmp_path / "ckpt-{epoch}.npz")
    checkpoint = fm.ModelCheckpoint(path, monitor="loss", save_best_only=False)
    m.fit(X, Y, epochs=2, callbacks=[checkpoint])
    assert checkpoint.last_saved == str(tmp_path / "ckpt-2.npz")
    assert len(m.history.history["loss"]) == 2
    assert fm.load(checkpoint.last_saved).get_weights()[0].shape == (2, 1)


@pytest.mark.parametrize("pattern, wording", [
    ("ck_{}.npz", "names no logged value"),
    ("ck_{0}.npz", "names no logged value"),
    ("ck_{epoch.npz", "not a valid format string"),
    ("ck_}.npz", "not a valid format string"),
])
def test_a_checkpoint_pattern_naming_nothing_is_refused_when_made(pattern, wording):
    with pytest.raises(ValueError, match=wording):
        fm.ModelCheckpoint(pattern)


def test_a_checkpoint_with_literal_braces_is_fine(tmp_path):
    checkpoint = fm.ModelCheckpoint(str(tmp_path / "ck{{x}}-{epoch:02d}.npz"), monitor="loss")
    m = fm.Model([fm.Dense(1)], input_dim=2, seed=0)
    m.fit(np.ones((4, 2), np.float32), np.ones((4, 1), np.float32), epochs=1,
          callbacks=[checkpoint])
    assert checkpoint.last_saved == str(tmp_path / "ck{x}-01.npz")


@pytest.mark.parametrize("n", [2**63, 2**63 + 7, 2**64])
def test_permutation_refuses_lengths_no_array_can_have(n):
    m = fm.Model([fm.Dense(1)], input_dim=2, seed=0)
    state = m.get_state()["rng_state"]
    with pytest.raises(ValueError, match="n must be an integer <="):
        m.permutation(n)
    assert m.get_state()["rng_state"] == state   # the generator did not move


def _numba():
    if "numba" not in fm.available_backends():
        pytest.skip("the numba backend does not import here")


@pytest.mark.parametrize("scale", [1e25, 1e-25])
def test_numba_gradient_norms_square_in_float64(scale):
    """A float32 linear model whose weight gradient is about ``scale``: its square fits
    only in float64, where the reference squares it."""
    _numba()
    X = np.array([[1.0], [-1.0], [0.3], [0.2]]) * scale
    Y = np.array([[0.3], [0.1], [0.2], [0.4]])
    norms = {}
    for backend in ("numpy", "numba"):
        m = fm.Model([fm.Dense(1, "linear")], input_dim=1, loss="mse",
                     optimizer=fm.SGD(lr=1e-30), backend=backend, dtype="float32", seed=0)
        m.set_weights([np.array([[1.0 / scale if scale > 1 else 0.1]]), np.array([0.0])])
        history = m.fit(X, Y, epochs=1, batch_size=None, shuffle=False, gradient_norms=True)
        norms[backend] = history.history["grad_norm"][0][0]
    assert 0 < norms["numba"] < np.inf
    np.testing.assert_allclose(norms["numba"], norms["numpy"], rtol=1e-5)


def _host_has_fma():
    import llvmlite.binding as llvm
    return llvm.get_host_cpu_features().get("fma", False)


def test_numba_small_products_round_each_multiply_add_once():
    """12 rows x 40 inputs x 1 unit, below numba_blas.SMALL_FLOPS: the loops' dot products,
    each step s + x w rounded once (the float64 sum of the exact float64 product, rounded
    to float32, agrees with an FMA here), as BLAS's FMAs."""
    _numba()
    if not _host_has_fma():
        pytest.skip("no FMA on this CPU: LLVM rounds the product and the sum apart")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 40)).astype(np.float32)
    W = rng.normal(size=(40, 1)).astype(np.float32)
    once = np.zeros(12, np.float32)
    twice = np.zeros(12, np.float32)
    for p in range(40):
        once = (once.astype(np.float64) + X[:, p].astype(np.float64) * np.float64(W[p, 0])
                ).astype(np.float32)
        twice = twice + X[:, p] * W[p, 0]
    assert not np.array_equal(once, twice)   # (the data tells the two apart)
    m = fm.Model([fm.Dense(1, "linear")], input_dim=40, backend="numba", dtype="float32",
                 seed=0)
    m.set_weights([W, np.zeros(1, np.float32)])
    np.testing.assert_array_equal(m.predict(X)[:, 0], once)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_small_products_of_both_compiled_backends_agree_bit_for_bit(dtype):
    """A 3-4-2 net's gradients on 2 rows: every product below both backends' thresholds
    (their own loops: Cython's small_gemm, Numba's gemm_*), each multiply-add one FMA on
    both where the CPU has it (Numba's loops fused, Cython's did not: 332 of 520 values
    differed in their last bit)."""
    _numba()
    if "cython" not in fm.available_backends():
        pytest.skip("the cython backend does not import here")
    from fastmlp.kernels import cython_mlp
    if not _host_has_fma() or cython_mlp.ISA == "base":
        pytest.skip("the baseline Cython build (or this CPU) has no FMA")
    rng = np.random.default_rng(1)
    X = rng.standard_normal((2, 3)).astype(dtype)
    Y = rng.standard_normal((2, 2)).astype(dtype)
    for seed in range(10):
        grads = [fm.Model([fm.Dense(4), fm.Dense(2)], input_dim=3, backend=backend,
                          dtype=dtype, seed=seed).gradient_vector(X, Y)[1]
                 for backend in ("numba", "cython")]
        np.testing.assert_array_equal(*grads)


# --- `fastmlp train`'s out-of-memory advice for many classes ------------------------------

def _many_classes_csv(path, rows, classes):
    path.write_text("a,y\n" + "".join(f"{i},c{i % classes}\n" for i in range(rows)))
    return str(path)


def test_train_refuses_one_hot_targets_larger_than_memory(tmp_path, monkeypatch, capsys):
    """Refused before training, naming rows, classes and the targets' size (the network
    itself fits): it was a MemoryError advising smaller --layers or --batch-size."""
    from fastmlp import _cli_train, cli
    monkeypatch.setattr(_cli_train, "_physical_memory", lambda: 100 << 10)
    data = _many_classes_csv(tmp_path / "many.csv", 500, 100)
    assert cli.main(["train", "--data", data, "--epochs", "1", "--layers", "1"]) == 2
    out, err = capsys.readouterr()
    assert err == ("fastmlp train: error: 400 rows x 100 classes: the one-hot targets fit "
                   "trains on need 156.2 KiB (this machine has 100.0 KiB); use fewer classes "
                   "or fewer rows\n")
    assert "epoch" not in out


def test_train_blames_a_memory_error_on_large_one_hot_targets(tmp_path, monkeypatch, capsys):
    from fastmlp import _cli_train, cli

    def out_of_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 29.8 GiB")
    monkeypatch.setattr(_cli_train, "ONE_HOT_NOTABLE", 1)
    monkeypatch.setattr(fm.Model, "fit", out_of_memory)
    data = _many_classes_csv(tmp_path / "many.csv", 500, 100)
    assert cli.main(["train", "--data", data, "--epochs", "1", "--layers", "1"]) == 2
    err = capsys.readouterr().err
    assert ("out of memory while training (400 rows x 100 classes: the one-hot targets fit "
            "trains on need 156.2 KiB); use fewer classes, fewer rows or a machine with more "
            "memory") in err
    assert "--layers" not in err

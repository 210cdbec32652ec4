"""fit's quiet path (no callbacks, validation, metrics or verbose output) copies its undo
snapshot only once the training since the last copy took 1 / Model._SNAPSHOT_SHARE times
as long as the copy, and sizes its chunks of epochs (one compiled call each) by the time
the last one took (Model._CHUNK_SECONDS). A chunk that diverges or is interrupted goes
back to the snapshot and replays the chunks since: whatever the chunking and however
many chunks lie between the snapshot and the bad one, the outcome is the per-epoch
loop's, bit for bit, on every backend."""
import numpy as np
import pytest

import fastmlp as fm
from fastmlp import _undo, model as model_module

ROWS = 23
NEVER, EVERY_CHUNK = float("-inf"), float("inf")   # _SNAPSHOT_SHARE: 1 copy per fit, 1 per chunk


def data():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((ROWS, 4)).astype(np.float32)
    return X, (rng.standard_normal((ROWS, 2)) * 3).astype(np.float32)


def new_model(backend, lr=0.01):
    return fm.Model([fm.Dense(6, activation="relu"), fm.Dense(2)], input_dim=4,
                    backend=backend, seed=4, optimizer=fm.SGD(lr, momentum=0.9))


def bits(m):
    s = m.get_state()
    return [s["theta"].tobytes(), s["opt_buffers"].tobytes(), s["opt_step"].tobytes(),
            s["rng_state"]]


class _Noop:
    """A callback: fit then takes the per-epoch loop, the quiet path's oracle."""

    def on_epoch_end(self, epoch, logs):
        pass


@pytest.fixture
def counted(monkeypatch):
    """{"saves": snapshot copies, "chunks": epochs of each train_epochs call} of the
    fits run with one-epoch chunks (_CHUNK_WORK 1, _CHUNK_SECONDS 0), counted from the
    test's last reset(counted) (a first numba model warms its kernels up by a fit)."""
    seen = {"saves": 0, "chunks": []}
    save, real_epochs = _undo.Snapshot.save, model_module.Model._epochs

    def counting_save(self):
        seen["saves"] += 1
        save(self)

    def counting_epochs(self, X, T, orders, *rest):
        seen["chunks"].append(len(orders))
        return real_epochs(self, X, T, orders, *rest)
    monkeypatch.setattr(_undo.Snapshot, "save", counting_save)
    monkeypatch.setattr(model_module.Model, "_epochs", counting_epochs)
    monkeypatch.setattr(fm.Model, "_CHUNK_WORK", 1)
    monkeypatch.setattr(fm.Model, "_CHUNK_SECONDS", 0.0)
    return seen


def reset(seen):
    seen["saves"] = 0
    seen["chunks"].clear()


def ctrl_c_in_chunk(m, monkeypatch, chunk=4, before_raising=lambda: None):
    """m's train_epochs raising KeyboardInterrupt after its ``chunk``-th call has trained,
    as a Ctrl-C during the compiled call is raised (``before_raising`` runs first)."""
    real, calls = m.engine.train_epochs, []

    def interrupted(*args):
        calls.append(1)
        result = real(*args)
        if len(calls) == chunk:
            before_raising()
            raise KeyboardInterrupt
        return result
    monkeypatch.setattr(m.engine, "train_epochs", interrupted)


def _outcome(fn):
    try:
        return "ok", fn()
    except Exception as exc:
        return "err", f"{type(exc).__name__}: {exc}"


@pytest.mark.parametrize("share", [NEVER, EVERY_CHUNK])
@pytest.mark.parametrize("lr, tol", [(0.01, None), (0.01, 10.0), (0.08, None)])
def test_one_snapshot_or_one_per_chunk_gives_the_per_epoch_loop(backend, counted, monkeypatch,
                                                                 share, lr, tol):
    """Diverging in a chunk some chunks after the snapshot (lr 0.08), stopping at tol, or
    running to the end: the History, the error, the weights, the optimiser state and the
    generator are the per-epoch loop's."""
    monkeypatch.setattr(fm.Model, "_SNAPSHOT_SHARE", share)
    X, Y = data()
    quiet, loud = new_model(backend, lr), new_model(backend, lr)
    reset(counted)
    got = _outcome(lambda: quiet.fit(X, Y, epochs=30, batch_size=5, tol=tol))
    saves, chunks = counted["saves"], len(counted["chunks"])
    want = _outcome(lambda: loud.fit(X, Y, epochs=30, batch_size=5, tol=tol,
                                     callbacks=[_Noop()]))
    assert got[0] == want[0] and (got[0] == "ok" or got[1] == want[1])
    assert quiet.history.history["loss"] == loud.history.history["loss"]
    assert bits(quiet) == bits(loud)
    assert chunks == len(quiet.history.epoch) + (got[0] == "err") > 2
    # (the first copy, into fresh memory, is timed again by a second: see below)
    assert saves == (2 if share == NEVER else chunks)
    if lr == 0.08:   # it diverged some chunks after the snapshot, which were replayed
        assert got[0] == "err" and "TrainingDiverged" in got[1] and chunks > 3


def test_ctrl_c_chunks_after_the_snapshot_undoes_that_chunk_only(backend, counted,
                                                                 monkeypatch):
    """Interrupted in its 4th chunk, the last snapshot taken before the 2nd: the model is
    the one 3 epochs made, the History shows 3, and fitting on gives straight training's
    bits."""
    monkeypatch.setattr(fm.Model, "_SNAPSHOT_SHARE", NEVER)
    X, Y = data()
    m, straight = new_model(backend), new_model(backend)
    reset(counted)
    ctrl_c_in_chunk(m, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        m.fit(X, Y, epochs=10, batch_size=5)
    assert counted["saves"] == 2 and len(m.history.epoch) == 3
    straight.fit(X, Y, epochs=3, batch_size=5)
    assert bits(m) == bits(straight)
    assert m.history.history["loss"] == straight.history.history["loss"]
    m.fit(X, Y, epochs=2, batch_size=5)
    straight.fit(X, Y, epochs=2, batch_size=5)
    assert bits(m) == bits(straight)


def test_a_replay_that_fails_leaves_the_snapshot_and_a_history_that_matches(backend, counted,
                                                                           monkeypatch):
    """Going back to the interrupted chunk's start, the replay of the chunks since the
    snapshot fails (no memory for its orders, say): the model is left as the snapshot has
    it, with a History of the epochs before the snapshot (the one before the 2nd chunk),
    never weights the History does not describe."""
    monkeypatch.setattr(fm.Model, "_SNAPSHOT_SHARE", NEVER)
    X, Y = data()
    m, untouched = new_model(backend), new_model(backend)
    untouched.fit(X, Y, epochs=1, batch_size=5)
    reset(counted)

    def no_memory(*args):
        raise MemoryError("no memory for the replay")
    ctrl_c_in_chunk(m, monkeypatch,
                    before_raising=lambda: monkeypatch.setattr(m, "_replay", no_memory))
    with pytest.raises((KeyboardInterrupt, MemoryError)):
        m.fit(X, Y, epochs=10, batch_size=5)
    assert m.history.epoch == [0]
    assert m.history.history["loss"] == untouched.history.history["loss"]
    assert bits(m) == bits(untouched)


def test_chunks_grow_to_the_time_budget(compiled_backend, counted, monkeypatch):
    """From a first chunk of one epoch (_CHUNK_WORK 1), each next chunk takes about
    _CHUNK_SECONDS at the last one's pace: at most 8 times the last, at most 1024 epochs;
    with no time budget every chunk stays one epoch."""
    X, Y = data()
    monkeypatch.setattr(fm.Model, "_CHUNK_SECONDS", 0.02)
    m = new_model(compiled_backend)
    reset(counted)
    m.fit(X, Y, epochs=3000, batch_size=5)
    sizes = counted["chunks"]
    assert sizes[0] == 1 and sum(sizes) == 3000 and max(sizes) <= 1024
    assert all(b <= 8 * a for a, b in zip(sizes, sizes[1:]))
    assert max(sizes) >= 64, sizes   # 20 ms of a 23-row epoch on a 4-6-2 net: many epochs
    reset(counted)
    monkeypatch.setattr(fm.Model, "_CHUNK_SECONDS", 0.0)
    m.fit(X, Y, epochs=20, batch_size=5)
    assert counted["chunks"] == [1] * 20


def test_a_fresh_snapshots_first_copy_is_timed_again(backend, counted, monkeypatch):
    """The first copy into a new snapshot pays for its memory's first touch (226 ms
    against 8 ms for a 2048-2048-2048-10 net's Adam state), which made the next copy
    due only after 50 times that (3.6 s of training a Ctrl-C then waited to replay):
    the next chunk copies again and times that. A later fit's snapshot is not fresh."""
    monkeypatch.setattr(fm.Model, "_SNAPSHOT_SHARE", NEVER)
    X, Y = data()
    m = new_model(backend)
    reset(counted)
    m.fit(X, Y, epochs=6, batch_size=5)
    assert counted["saves"] == 2 and len(counted["chunks"]) == 6
    reset(counted)
    m.fit(X, Y, epochs=6, batch_size=5)
    assert counted["saves"] == 1


def test_a_timeout_during_the_replay_keeps_the_epochs_before_the_chunk(backend, counted,
                                                                         monkeypatch):
    """A signal handler's exception (a SIGALRM timeout) landing between two replayed
    chunks, as a Ctrl-C'd chunk goes back to its start, was taken for a failed replay:
    every epoch since the snapshot was dropped. The replay now runs whole, the timeout
    raised after it: the model is the one 3 epochs made, as the per-epoch loop keeps."""
    import signal

    def timeout(signum, frame):
        raise TimeoutError("timed out")
    old = signal.signal(signal.SIGALRM, timeout)
    try:
        monkeypatch.setattr(fm.Model, "_SNAPSHOT_SHARE", NEVER)
        X, Y = data()
        m, straight = new_model(backend), new_model(backend)
        m.fit(X, Y, epochs=1, batch_size=5)   # (its snapshot no longer fresh: one copy)
        reset(counted)
        real_replay = m._replay

        def replay_then_alarm(*args):
            real_replay(*args)
            signal.raise_signal(signal.SIGALRM)   # its handler runs at once, undeferred
        ctrl_c_in_chunk(m, monkeypatch)
        monkeypatch.setattr(m, "_replay", replay_then_alarm)
        with pytest.raises((KeyboardInterrupt, TimeoutError)):
            m.fit(X, Y, epochs=10, batch_size=5)
        assert counted["saves"] == 1 and len(m.history.epoch) == 3
        straight.fit(X, Y, epochs=4, batch_size=5)
        assert bits(m) == bits(straight)
    finally:
        signal.signal(signal.SIGALRM, old)


def test_per_sample_sgds_first_chunk_counts_its_steps(compiled_backend, counted, monkeypatch):
    """A first chunk sized by rows x parameters alone was 52 epochs of 20,000 one-row
    steps of a 2-3-1 net (515 ms): each step also counts Model._STEP_WORK."""
    monkeypatch.setattr(fm.Model, "_CHUNK_WORK", 20_000_000)
    rng = np.random.default_rng(1)
    X = rng.standard_normal((2000, 2)).astype(np.float32)
    Y = X[:, :1] * 0.5
    m = fm.Model([fm.Dense(3, activation="tanh"), fm.Dense(1)], input_dim=2,
                 backend=compiled_backend, seed=0, optimizer=fm.SGD(0.01))
    reset(counted)
    m.fit(X, Y, epochs=200, batch_size=1)
    per_epoch = 2000 * m.n_params + 2000 * fm.Model._STEP_WORK
    assert counted["chunks"][0] == 20_000_000 // per_epoch < 20_000_000 // (2000 * m.n_params)

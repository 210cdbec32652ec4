"""Run under ``mpiexec -n 2`` by tests/test_distributed.py: distributed.fit on shards.

    python shards.py MODE BACKEND OUTDIR

MODE: "equivalence" (every optimiser case; each rank writes OUTDIR/rank<r>.npz),
"callbacks" (EarlyStopping + ModelCheckpoint), or a failure: "nan_x" / "nan_y"
(rank 1's X / labels have a NaN), "short_y" (rank 1's Y has a row fewer than its
X), "step_fails" (rank 1's gradient raises at the 3rd step), "callback_fails" (a
callback raises on rank 1 in epoch 2), "epoch_begin_fails" (one raises as epoch 2
begins, on rank 1 alone), "drift" (rank 1's weights are changed behind
fit's back, check_consistency=True), "interrupt" (KeyboardInterrupt on rank 1: no
agreement possible, the job is aborted), "diverge" (TrainingDiverged), "mismatch"
(rank 1 asks for one more epoch), "lr_mismatch" (rank 1's optimiser has twice the
learning rate), "columns" (DataFrame shards, rank 1's columns
in another order), "renamed" (both ranks' frames agree, but the model was trained
on other columns), "step_warning" (a step layer's warning, turned into an error as
``python -W error`` does, raised on rank 0 alone), "closed_stdout" (verbose=2
with rank 0's stdout closed: its epoch line fails to print), "interrupt_twice" (and a
second Ctrl-C during the abort), "rng_drift" (rank 1's generator moved, check_consistency),
"inter" (an intercommunicator: refused on every rank), "es_rank0" (EarlyStopping
restoring the best weights on rank 0 alone; OUTDIR/rank<r>.npy). "verbose" (verbose=2:
rank 0 prints Model.fit's epoch lines) succeeds. "frames" (a DataFrame on rank 0,
a plain array on rank 1) succeeds and writes OUTDIR/rank<r>.names; so does "bce_split"
(two numeric labels for one sigmoid unit, one on each rank) and OUTDIR/rank<r>.classes,
and "bce_12", "bce_12_float" / "bce_1_2" (labels {1, 2}, rank 0 holding only 1s)
OUTDIR/rank<r>.npy too ("bce_12_soft": rank 0's soft targets beside labels, refused). The data and the
cases are defined here and imported by the test, which trains one process on the
concatenated rows.
"""
import os
import sys
import time
import warnings

import numpy as np

import fastmlp as fm
from fastmlp.callbacks import Callback, EarlyStopping, ModelCheckpoint

N_ROWS, N_VAL, BATCH, EPOCHS = 63, 20, 10, 3
COLUMNS = ["x0", "x1", "x2", "x3", "x4"]
# Rank 0 holds rows [0, 37), rank 1 rows [37, 63): uneven, and batches mix both.
SPLIT = 37
CLASSES = np.array(["ant", "bee", "cat"])

CASES = {
    "sgd": lambda: fm.SGD(lr=0.2),
    "momentum": lambda: fm.SGD(lr=0.1, momentum=0.9),
    "nesterov_decay": lambda: fm.SGD(lr=0.1, momentum=0.8, nesterov=True, weight_decay=0.01),
    "adam": lambda: fm.Adam(lr=0.01, weight_decay=0.001),
}


def data():
    """(X (63, 5), labels (63,) strings, X_val (20, 5), labels_val (20,)) float64.

    Rank 1's rows (37..62) have no "cat", so the classes are the union over ranks."""
    rng = np.random.default_rng(7)
    X = rng.normal(size=(N_ROWS + N_VAL, 5))
    codes = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int) + (X[:, 2] > 1).astype(int)
    codes[SPLIT:N_ROWS] = np.minimum(codes[SPLIT:N_ROWS], 1)
    y = CLASSES[codes]
    return X[:N_ROWS], y[:N_ROWS], X[N_ROWS:], y[N_ROWS:]


def model(optimizer, backend="numpy"):
    return fm.Model([fm.Dense(7, activation="tanh"), fm.Dense(3, activation="softmax")],
                    input_dim=5, loss="cross_entropy", optimizer=optimizer, backend=backend,
                    dtype="float64", seed=3)


def bce_12_model():
    return fm.Model([fm.Dense(4, activation="tanh"), fm.Dense(1, activation="sigmoid")],
                    input_dim=5, loss="binary_cross_entropy", dtype="float64", seed=3)


def bce_12_labels(mode):
    """Labels {1, 2} for the N_ROWS rows: 1 on rank 0's, on rank 1's alternating
    (bce_12; as floats: bce_12_float) or all 2 (bce_1_2); bce_12_soft: rank 0's 0.3."""
    y = np.ones(N_ROWS, dtype=np.int64)
    y[SPLIT:] = 2 if mode == "bce_1_2" else 1 + np.arange(N_ROWS - SPLIT) % 2
    if mode in ("bce_12_float", "bce_12_soft"):
        y = y.astype(np.float64)
    if mode == "bce_12_soft":
        y[:SPLIT] = 0.3
    return y


def main(mode, backend, outdir):
    from mpi4py import MPI

    from fastmlp import distributed
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    X, y, X_val, y_val = data()
    # ranks after the second (mpiexec -n 3) hold no rows at all
    rows = [slice(0, SPLIT), slice(SPLIT, N_ROWS)][rank] if rank < 2 else slice(N_ROWS, None)
    X_mine, y_mine = X[rows], y[rows]
    # Rank 0 holds every validation row, rank 1 none: val_loss is over the union.
    val = (X_val, y_val) if rank == 0 else None
    # Ranks start differently: fit must broadcast rank 0's weights and generator.
    m = model(CASES["momentum"](), backend)
    if rank != 0:
        m.set_weights([w + 1.0 for w in m.get_weights()])

    if mode == "equivalence":
        out = {}
        for case, make in CASES.items():
            m = model(make(), backend)
            if rank != 0:
                m.set_state({**m.get_state(), "rng_state":
                             np.random.default_rng(99).bit_generator.state})
            h = distributed.fit(m, X_mine, y_mine, comm, epochs=EPOCHS, batch_size=BATCH,
                                validation_data=val, check_consistency=True)
            out[f"{case}_theta"] = m.get_state()["theta"]
            out[f"{case}_loss"] = h.history["loss"]
            out[f"{case}_val_loss"] = h.history["val_loss"]
            out[f"{case}_classes"] = m.classes_
        np.savez(os.path.join(outdir, f"rank{rank}.npz"), **out)
        print(f"rank {rank}: {len(X_mine)} rows", flush=True)
        return
    if mode == "callbacks":
        folder = outdir if rank == 0 else os.path.join(outdir, "rank1")
        os.makedirs(folder, exist_ok=True)
        stop = EarlyStopping("loss", patience=1, min_delta=10.0, restore_best_weights=True)
        save = ModelCheckpoint(os.path.join(folder, "ckpt-{epoch}.fastmlp"),
                               save_best_only=False)
        h = distributed.fit(m, X_mine, y_mine, comm, epochs=10, batch_size=BATCH,
                            validation_data=val, callbacks=[stop, save],
                            check_consistency=True)
        np.savez(os.path.join(outdir, f"rank{rank}.npz"), theta=m.get_state()["theta"],
                 loss=h.history["loss"], val_loss=h.history["val_loss"],
                 stopped=stop.stopped_epoch, last_saved=str(save.last_saved))
        return
    if mode in ("columns", "renamed", "frames"):
        import pandas as pd
        columns = COLUMNS[::-1] if mode == "columns" and rank == 1 else COLUMNS
        frame = pd.DataFrame(X_mine, columns=COLUMNS)[columns]
        X_mine = X_mine if mode == "frames" and rank == 1 else frame
        if mode == "renamed" and rank == 0:   # trained before on other columns
            m.feature_names_in_ = np.array(["a", "b", "c", "d", "e"])
    if mode == "frames":
        distributed.fit(m, X_mine, y_mine, comm, epochs=1, batch_size=BATCH)
        with open(os.path.join(outdir, f"rank{rank}.names"), "w") as file:
            file.write(" ".join(m.feature_names_in_.tolist()))
        return
    if mode == "bce_split":   # one sigmoid unit, labels {3, 7}: each rank holds one of them
        m = fm.Model([fm.Dense(4, activation="tanh"), fm.Dense(1, activation="sigmoid")],
                     input_dim=5, loss="binary_cross_entropy", dtype="float64", seed=3)
        distributed.fit(m, X_mine, np.full(len(X_mine), 3 if rank == 0 else 7), comm,
                        epochs=1, batch_size=BATCH)
        with open(os.path.join(outdir, f"rank{rank}.classes"), "w") as file:
            file.write(" ".join(str(c) for c in m.classes_.tolist()))
        return
    if mode in ("bce_12", "bce_12_float", "bce_1_2", "bce_12_soft", "bce_12_val",
                "bce_12_val1", "bce_str_01"):
        # one sigmoid unit, labels {1, 2}, 1 lying in [0, 1]: rank 0 holds only 1s, rank 1
        # both (bce_12, and as floats) or only 2s (bce_1_2); a shard of 1s was read as
        # targets 1. bce_12_soft: rank 0's targets 0.3 beside rank 1's labels (refused)
        m = bce_12_model()
        y_all = bce_12_labels(mode)
        # validation labels 1 on rank 0 and 2 on rank 1 (bce_12_val: together labels, as
        # one process reads them), or 1 on both (bce_12_val1: targets 1, as one process
        # reads a Y of only 1s)
        val = None
        if mode.startswith("bce_12_val"):
            val = (X_val[:10] if rank == 0 else X_val[10:],
                   np.full(10, 2 if rank == 1 and mode == "bce_12_val" else 1, np.int64))
        y_mine = y_all[rows]
        if mode == "bce_str_01":   # labels "a"/"b" on rank 0, 0/1 floats on rank 1
            odd = np.arange(len(y_mine)) % 2
            y_mine = np.where(odd, "b", "a") if rank == 0 else odd.astype(np.float64)
        try:
            history = distributed.fit(m, X_mine, y_mine, comm, epochs=2,
                                      batch_size=BATCH, validation_data=val)
        except distributed.DistributedError as exc:
            with open(os.path.join(outdir, f"rank{rank}.error"), "w") as file:
                file.write(f"{type(exc).__name__}: {exc}")
            raise
        np.save(os.path.join(outdir, f"rank{rank}.npy"), m.get_state()["theta"])
        with open(os.path.join(outdir, f"rank{rank}.classes"), "w") as file:
            file.write(" ".join(str(c) for c in m.classes_.tolist()))
        if val is not None:
            np.save(os.path.join(outdir, f"rank{rank}.val.npy"), history.history["val_loss"])
        return
    if mode == "val_labels_only":
        # 0/1 targets to train on, labels {1, 2} in rank 0's validation rows: refused on
        # every rank, as Model.fit refuses them (rank 0 learnt classes_ [1, 2] alone)
        m = bce_12_model()
        try:
            distributed.fit(m, X_mine, (X_mine[:, 0] > 0).astype(np.int64), comm, epochs=1,
                            batch_size=BATCH, validation_data=(X_val, np.repeat([1, 2], 10))
                            if rank == 0 else None)
        except distributed.DistributedError as exc:
            with open(os.path.join(outdir, f"rank{rank}.error"), "w") as file:
                file.write(f"{type(exc).__name__}: {exc} (classes_ {m.classes_})")
            raise
        return
    if mode == "owned":   # another thread's step waits for the whole distributed fit
        import threading
        m = model(CASES["momentum"](), backend)
        order = []

        class StartsAStep(Callback):
            def on_epoch_end(self, epoch, logs=None):
                order.append(f"epoch {epoch}")
                if epoch == 0 and rank == 0:
                    self.worker = threading.Thread(target=lambda: (
                        m.train_on_batch(X_mine[:4], y_mine[:4]), order.append("step")))
                    self.worker.start()
                    time.sleep(0.3)
        cb = StartsAStep()
        distributed.fit(m, X_mine, y_mine, comm, epochs=3, batch_size=BATCH, callbacks=[cb])
        if rank == 0:
            cb.worker.join(30)
        with open(os.path.join(outdir, f"rank{rank}.order"), "w") as file:
            file.write(" ".join(order))
        return
    if mode == "big_labels":   # int64 labels on rank 0, uint64 ones on rank 1: their union
        m = fm.Model([fm.Dense(4, activation="tanh"), fm.Dense(4, activation="softmax")],
                     input_dim=5, loss="cross_entropy", dtype="float64", seed=3)
        mine = [0, 1] if rank == 0 else [2**64 - 1, 2**63 + 1]
        distributed.fit(m, X_mine, np.resize(np.array(mine), len(X_mine)), comm,
                        epochs=1, batch_size=BATCH)
        with open(os.path.join(outdir, f"rank{rank}.classes"), "w") as file:
            file.write(" ".join(str(c) for c in m.classes_.tolist()))
        return
    if mode == "step_warning":   # python -W error on every rank; rank 0 warns
        warnings.filterwarnings("error", message="layer", category=RuntimeWarning)
        m = fm.Model([fm.Dense(7, activation="step"), fm.Dense(3, activation="softmax")],
                     input_dim=5, loss="cross_entropy", dtype="float64", seed=3)
    callbacks, check, verbose = [], False, 0
    if mode in ("closed_stdout", "verbose"):
        verbose = 2
        if mode == "closed_stdout" and rank == 0:
            sys.stdout = open(os.devnull, "w")
            sys.stdout.close()
    if mode == "diverge":   # relu -> linear, MSE, SGD(lr=10): one process diverges in epoch 1
        def regressor():
            return fm.Model([fm.Dense(7, activation="relu"), fm.Dense(1)], input_dim=5,
                            loss="mse", optimizer=fm.SGD(lr=10.0), dtype="float64", seed=3)
        m = regressor()
        start = regressor().get_state()["theta"]   # rank 0's, which fit starts from
        try:
            distributed.fit(m, X_mine, X_mine[:, :1], comm, epochs=EPOCHS, batch_size=BATCH)
        except fm.TrainingDiverged as exc:
            # every rank: the same error, and the model as it was at the epoch's start
            restored = np.array_equal(m.get_state()["theta"], start)
            with open(os.path.join(outdir, f"rank{rank}.error"), "w") as file:
                file.write(f"{type(exc).__name__}: {exc} (restored: {restored})")
            sys.exit(3)
    if mode == "nan_x" and rank == 1:
        X_mine = X_mine.copy()
        X_mine[4, 2] = np.nan
    if mode == "float_labels":   # integer class labels on rank 0, halves on rank 1
        y_mine = np.searchsorted(CLASSES, y_mine) + (0.5 if rank == 1 else 0)
    if mode == "mixed_labels" and rank == 0:   # integer labels on rank 0, str on rank 1
        y_mine = np.searchsorted(CLASSES, y_mine)
    if mode == "nan_y":   # numeric labels on both ranks, a NaN on rank 1
        y_mine = np.searchsorted(CLASSES, y_mine).astype(float)
        if rank == 1:
            y_mine[6] = np.nan
    if mode == "empty_wide" and rank == 1:   # no rows, but the columns of another data set
        X_mine, y_mine = np.empty((0, 9)), y_mine[:0]
    if mode == "empty_wide_y" and rank == 1:
        X_mine, y_mine = np.empty((0, 5)), np.empty((0, 9))
    if mode == "short_y" and rank == 1:
        y_mine = y_mine[:-1]
    if mode == "lr_mismatch" and rank == 1:
        m.optimizer = fm.optimizers.from_config(dict(m.optimizer.config(), lr=2 * m.optimizer.lr))
    if mode == "step_fails" and rank == 1:
        real, calls = m.engine.loss_and_gradient, []

        def failing(*args):
            calls.append(1)
            if len(calls) == 3:
                raise MemoryError("simulated: no memory for the 3rd step's gradient")
            return real(*args)
        m.engine.loss_and_gradient = failing
    if mode in ("callback_fails", "interrupt", "interrupt_twice", "drift", "rng_drift",
                "epoch_begin_fails") and rank == 1:
        callbacks = [_Trouble(mode)]
    if mode == "es_rank0":   # restores the best weights on rank 0 alone
        val = (X_val, y_val) if rank == 0 else None
        callbacks = [EarlyStopping("val_loss", patience=1, restore_best_weights=True)] \
            if rank == 0 else []
        m.optimizer = fm.SGD(lr=2.0)   # (overshoots: the best epoch is not the last)
        distributed.fit(m, X_mine, y_mine, comm, epochs=EPOCHS + 3, batch_size=BATCH,
                        validation_data=val, callbacks=callbacks)
        np.save(os.path.join(outdir, f"rank{rank}.npy"), m.get_state()["theta"])
        return
    if mode == "inter":   # an intercommunicator between two one-rank groups
        group = comm.Split(rank, 0)
        inter = group.Create_intercomm(0, comm, 1 - rank, tag=7)
        try:
            distributed.fit(m, X_mine, y_mine, inter, epochs=1, batch_size=BATCH)
        except TypeError as exc:
            with open(os.path.join(outdir, f"rank{rank}.error"), "w") as file:
                file.write(f"{type(exc).__name__}: {exc}")
        return
    if mode == "bad_monitor":   # no validation rows: refused before any step, as Model.fit
        callbacks = [EarlyStopping("val_loss")]
    if mode == "metric_monitor":   # distributed.fit logs no metrics: no metrics= advised
        callbacks = [EarlyStopping("val_accuracy")]
    check = mode in ("drift", "rng_drift")
    before = m.get_state()["theta"]
    try:
        epochs = EPOCHS + 1 if mode == "mismatch" and rank == 1 else EPOCHS
        distributed.fit(m, X_mine, y_mine, comm, epochs=epochs, batch_size=BATCH,
                        callbacks=callbacks, check_consistency=check, verbose=verbose)
    except distributed.DistributedError as exc:
        # one file per rank: the two ranks' output interleaves on stdout and stderr
        with open(os.path.join(outdir, f"rank{rank}.error"), "w") as file:
            file.write(f"{type(exc).__name__}: {exc}")
        # a refused fit learns nothing: no classes_, no names, this rank's own weights
        with open(os.path.join(outdir, f"rank{rank}.after"), "w") as file:
            file.write(f"{m.classes_} {m.feature_names_in_} "
                       f"{np.array_equal(m.get_state()['theta'], before)}")
        raise
    print(f"rank {rank}: fit returned", flush=True)


class _Trouble(Callback):
    """Misbehaves at the end of epoch 2 (index 1), on the rank that has it (or at its
    beginning: "epoch_begin_fails")."""

    def __init__(self, mode):
        self.mode = mode

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1 and self.mode == "epoch_begin_fails":
            raise RuntimeError("simulated: a callback fails as epoch 2 begins")

    def on_epoch_end(self, epoch, logs=None):
        if epoch != 1:
            return
        if self.mode == "callback_fails":
            raise OSError("simulated: disk full while writing a log")
        if self.mode == "interrupt":
            raise KeyboardInterrupt("simulated Ctrl-C on one rank")
        if self.mode == "interrupt_twice":   # and a real one during the abort's grace
            import signal
            import threading
            threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT)).start()
            raise KeyboardInterrupt("simulated Ctrl-C on one rank")
        if self.mode == "rng_drift":   # the generator moved on this rank alone
            self.model.permutation(10)
            return
        self.model.set_weights([w * 1.5 for w in self.model.get_weights()])


if __name__ == "__main__":
    main(*sys.argv[1:4])

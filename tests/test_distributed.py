"""fastmlp.distributed under ``mpiexec -n 2``, each job in a subprocess.

Equivalence with one process training on the concatenated rows (every optimiser,
float64, every backend), identical ranks, callbacks on every rank and checkpoints
on rank 0, and failures that end the job on every rank with the error, never a hang.
The jobs run tests/mpi_scripts/shards.py; skipped without mpi4py or mpiexec.
"""
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastmlp as fm

pytest.importorskip("mpi4py", reason="fastmlp.distributed needs mpi4py (pip install "
                    "'fastmlp[mpi]')")
HERE = Path(__file__).parent
sys.path.insert(0, str(HERE / "mpi_scripts"))
import shards  # noqa: E402  (the data and cases the MPI job uses)

# The mpiexec beside this Python first (the mpich wheel's, matching the MPI that mpi4py
# loads); a system one of another MPI would start unconnected single-rank processes.
MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) \
    or shutil.which("mpiexec")
if MPIEXEC is None:
    pytest.skip("no mpiexec on PATH (pip install mpich)", allow_module_level=True)

# Numba's first compile in each rank is the slow part; a hang would take forever.
TIMEOUT = 240
ROOT = HERE.parent


def mpiexec(args, ranks=2, timeout=TIMEOUT):
    """Run ``python ARGS`` on ``ranks`` ranks; (returncode, stdout, stderr).

    Fails the test if the job does not end within ``timeout`` (it is killed)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "NUMBA_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    job = subprocess.Popen([MPIEXEC, "-n", str(ranks), sys.executable, *args], cwd=ROOT,
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    try:
        out, err = job.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        out, err = job.communicate()
        pytest.fail(f"the MPI job hung (killed after {timeout} s)\nstdout:\n{out}\n"
                    f"stderr:\n{err[-3000:]}")
    return job.returncode, out, err


def run_shards(mode, backend, outdir, ranks=2):
    return mpiexec([str(HERE / "mpi_scripts" / "shards.py"), mode, backend, str(outdir)],
                   ranks=ranks)


def test_two_ranks_equal_one_process_on_the_concatenated_rows(backend, tmp_path):
    check_equivalence(backend, tmp_path, n_ranks=2)


def test_a_rank_without_rows_contributes_nothing(tmp_path):
    check_equivalence("numpy", tmp_path, n_ranks=3)


def check_equivalence(backend, tmp_path, n_ranks):
    rc, out, err = run_shards("equivalence", backend, tmp_path, n_ranks)
    assert rc == 0, err[-3000:]
    if n_ranks == 3:
        assert "rank 2: 0 rows" in out
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in range(n_ranks)]
    X, y, X_val, y_val = shards.data()
    tol = {"rtol": 1e-9, "atol": 1e-11}
    for case, make in shards.CASES.items():
        single = shards.model(make(), backend="numpy")   # the reference: one process
        history = single.fit(X, y, epochs=shards.EPOCHS, batch_size=shards.BATCH,
                             validation_data=(X_val, y_val))
        # the ranks are identical, bit for bit ...
        for rank in ranks[1:]:
            assert np.array_equal(ranks[0][f"{case}_theta"], rank[f"{case}_theta"]), case
        # ... and equal to one process up to float re-association
        theta = single.get_state()["theta"]
        assert not np.allclose(theta, shards.model(make()).get_state()["theta"])  # it trained
        np.testing.assert_allclose(ranks[0][f"{case}_theta"], theta, **tol, err_msg=case)
        for key in ("loss", "val_loss"):
            for rank in ranks:
                np.testing.assert_allclose(rank[f"{case}_{key}"], history.history[key], **tol,
                                           err_msg=f"{case} {key}")
        # rank 1 has no "cat" (rank 2 no labels): the classes are the union of every rank's
        for rank in ranks:
            assert rank[f"{case}_classes"].tolist() == single.classes_.tolist() \
                == ["ant", "bee", "cat"]


def test_callbacks_agree_and_only_rank_0_writes_checkpoints(tmp_path):
    rc, out, err = run_shards("callbacks", "numpy", tmp_path)
    assert rc == 0, err[-3000:]
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in (0, 1)]
    # EarlyStopping(min_delta=10) stops at the 2nd epoch, on both ranks, with equal logs
    for key in ("loss", "val_loss"):
        assert len(ranks[0][key]) == 2
        assert np.array_equal(ranks[0][key], ranks[1][key])
    assert int(ranks[0]["stopped"]) == int(ranks[1]["stopped"]) == 1
    # rank 0 saved after each epoch; rank 1's ModelCheckpoint (its own folder) never ran
    assert sorted(p.name for p in tmp_path.glob("*.fastmlp")) == ["ckpt-1.fastmlp",
                                                                  "ckpt-2.fastmlp"]
    assert list((tmp_path / "rank1").iterdir()) == []
    assert str(ranks[0]["last_saved"]) == str(tmp_path / "ckpt-2.fastmlp")
    assert str(ranks[1]["last_saved"]) == "None"
    # restore_best_weights put both ranks back to epoch 1, the state ckpt-1 saved
    best = fm.load(tmp_path / "ckpt-1.fastmlp").get_state()["theta"]
    assert np.array_equal(ranks[0]["theta"], best)
    assert np.array_equal(ranks[1]["theta"], best)


FAILURES = {
    # mode: what stderr must say; every rank raises DistributedError naming rank 1
    "nan_x": "rank 1 of 2 failed preparing the data: rank 1: ValueError: X contains NaN or inf "
             "(first at row 4, column 2)",
    "nan_y": "rank 1 of 2 failed checking the arguments and labels: rank 1: ValueError: Y "
             "contains NaN or inf (first at row 6)",
    # every rank fails on the union of the labels: the message names whose they were
    "float_labels": "failed preparing the data: ranks 0, 1: ValueError: class labels in Y "
                    "must be integers (or strings) (in the Y of rank 1)",
    # each rank's labels are fine alone, of different kinds together: each rank's named
    "mixed_labels": "failed preparing the data: ranks 0, 1: TypeError: class labels must be "
                    "all numbers or all strings, got ['number', 'str'] (convert them first, "
                    "e.g. to str) (the ranks' labels together (rank 0: number; rank 1: str))",
    # rank 1's 0/1 targets join rank 0's labels as labels: both ranks' kinds named
    "bce_str_01": "TypeError: class labels must be all numbers or all strings, got "
                  "['number', 'str'] (convert them first, e.g. to str) (the ranks' labels "
                  "together (rank 0: str; rank 1: number))",
    "short_y": "rank 1 of 2 failed preparing the data: rank 1: ValueError: Y has 25 rows but "
               "X has 26",
    "step_fails": "rank 1 of 2 failed in epoch 1: rank 1: MemoryError: simulated: no memory "
                  "for the 3rd step's gradient",
    "callback_fails": "rank 1 of 2 failed in the callbacks of epoch 2: rank 1: OSError: "
                      "simulated: disk full while writing a log",
    # on_epoch_begin runs on rank 1 alone, and is agreed on by every rank: no hang
    "epoch_begin_fails": "rank 1 of 2 failed in on_epoch_begin of epoch 2: rank 1: "
                         "RuntimeError: simulated: a callback fails as epoch 2 begins",
    "mismatch": "(epochs, batch_size, shuffle, check_consistency) differs between rank 0 "
                "and rank 1 ((3, 10, True, False) on rank 0 and (4, 10, True, False) on rank "
                "1); every rank must agree",
    # the field that differs, not two long configs cut off before it
    "lr_mismatch": "the model's optimizer differs between rank 0 and rank 1: ['lr'] is 0.1 on "
                   "rank 0 and 0.2 on rank 1; every rank must agree",
    "drift": "the sha256 of the model state (weights, optimiser and generator) after the "
             "callbacks of epoch 2 differs between rank 0",
    # the generator too: moved on one rank, it drew other batches while the weights agreed
    "rng_drift": "the sha256 of the model state (weights, optimiser and generator) after "
                 "the callbacks of epoch 2 differs between rank 0",
    "columns": "the list of feature names (DataFrame columns, in order) differs between rank "
               "0 and rank 1 (['x0', 'x1', 'x2', 'x3', 'x4'] on rank 0 and ['x4', 'x3', 'x2', "
               "'x1', 'x0'] on rank 1); every rank must agree",
    "renamed": "ranks 0, 1 of 2 failed preparing the data: ranks 0, 1: ValueError: X has "
               "feature names ['x0', 'x1', 'x2', 'x3', 'x4'] but the model was trained with "
               "['a', 'b', 'c', 'd', 'e']",
    "closed_stdout": "rank 0 of 2 failed in the callbacks of epoch 1: rank 0: ValueError: "
                     "I/O operation on closed file",
    "step_warning": "rank 0 of 2 failed preparing the data: rank 0: RuntimeWarning: layer(s) "
                    "[1] use step/sign",
    "empty_wide": "rank 1 of 2 failed preparing the data: rank 1: ValueError: X is empty with "
                  "shape (0, 9); this model takes 5 features: (0, 5)",
    "empty_wide_y": "rank 1 of 2 failed preparing the data: rank 1: ValueError: Y is empty "
                    "with shape (0, 9); this model has 3 outputs: (0, 3) or (0,)",
    # one process refuses their rows together (3 distinct values for one sigmoid unit)
    "bce_12_soft": "rank 0 of 2 failed preparing the data: rank 0: ValueError: Y holds "
                   "targets in [0, 1] that are no class labels, while another rank's Y "
                   "holds labels",
    "val_labels_only": "rank 0 of 2 failed preparing the data: rank 0: ValueError: "
                       "validation_data: Y holds labels [1, 2] that are not class indices "
                       "and this model has no classes_ to map them",
    "metric_monitor": "ValueError: EarlyStopping monitors 'val_accuracy', which this fit does "
                      "not log: it logs loss, samples_per_s (no metrics)",
    "bad_monitor": "ranks 0, 1 of 2 failed checking the callbacks: ranks 0, 1: ValueError: "
                   "EarlyStopping monitors 'val_loss', which this fit does not log",
}


@pytest.mark.parametrize("mode", sorted(FAILURES))
def test_a_failing_rank_ends_the_job_on_every_rank_with_its_error(mode, tmp_path):
    if mode in ("columns", "renamed"):
        pytest.importorskip("pandas")
    rc, out, err = run_shards(mode, "numpy", tmp_path)
    assert rc != 0
    assert "fit returned" not in out
    # every rank raised the same error (an agreement, not an abort) and let it end the job
    for rank in (0, 1):
        raised = (tmp_path / f"rank{rank}.error").read_text()
        assert raised.startswith("DistributedError: distributed fit: ")
        assert FAILURES[mode] in raised, raised
    assert "DistributedError" in err and "MPI_Abort" not in err


def test_every_rank_records_the_feature_names_of_the_frames(tmp_path):
    # rank 0 gives a DataFrame, rank 1 a plain array of the same columns: both ranks
    # end with the frame's names (rank 1's model had none to check its rows against)
    pytest.importorskip("pandas")
    rc, out, err = run_shards("frames", "numpy", tmp_path)
    assert rc == 0, err[-3000:]
    for rank in (0, 1):
        assert (tmp_path / f"rank{rank}.names").read_text() == " ".join(shards.COLUMNS)


def test_verbose_2_prints_model_fits_epoch_lines_on_rank_0(tmp_path):
    # callbacks.format_logs, as Model.fit prints them (they showed the raw logs:
    # "samples_per_s 5584.19")
    import re
    rc, out, err = run_shards("verbose", "numpy", tmp_path)
    assert rc == 0, err[-3000:]
    lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == shards.EPOCHS, out
    for epoch, line in enumerate(lines, 1):
        assert re.fullmatch(rf"epoch {epoch}/{shards.EPOCHS}  loss [0-9.e+-]+  "
                            r"[0-9,]+ samples/s", line), line


def test_two_numeric_labels_split_over_the_ranks_are_the_union(tmp_path):
    # one sigmoid unit and labels 3 and 7, rank 0 holding only 3s and rank 1 only 7s:
    # neither shard alone has two labels, their union has (each rank judged its own
    # shard as [0, 1] targets before, and the job failed)
    rc, out, err = run_shards("bce_split", "numpy", tmp_path)
    assert rc == 0, err[-3000:]
    for rank in (0, 1):
        assert (tmp_path / f"rank{rank}.classes").read_text() == "3 7"


@pytest.mark.parametrize("mode", ["bce_12", "bce_12_float", "bce_1_2", "bce_12_val",
                                  "bce_12_val1"])
def test_labels_one_and_two_split_over_the_ranks_train_as_one_process(mode, tmp_path):
    # one sigmoid unit, labels {1, 2}, rank 0 holding only 1s: its shard was read as
    # targets 1 (class 2) while rank 1's 1s were class 1 (47.5 % accuracy against 100 %)
    rc, out, err = run_shards(mode, "numpy", tmp_path)
    assert rc == 0, err[-3000:]
    X, _, X_val, _ = shards.data()
    one = shards.bce_12_model()
    val = None
    if mode.startswith("bce_12_val"):
        val = (X_val, np.repeat([1, 2 if mode == "bce_12_val" else 1], 10))
    history = one.fit(X, shards.bce_12_labels(mode), epochs=2, batch_size=shards.BATCH,
                      validation_data=val)
    if val is not None:
        np.testing.assert_allclose(np.load(tmp_path / "rank0.val.npy"),
                                   history.history["val_loss"], rtol=1e-12)
    for rank in (0, 1):
        assert (tmp_path / f"rank{rank}.classes").read_text() == " ".join(
            str(c) for c in one.classes_.tolist())
        np.testing.assert_allclose(np.load(tmp_path / f"rank{rank}.npy"),
                                   one.get_state()["theta"], rtol=1e-12, atol=1e-12)


def test_another_threads_step_waits_for_the_whole_distributed_fit(tmp_path):
    # distributed.fit held the lock one epoch at a time: another thread's train_on_batch
    # ran between the epochs on one rank, and the ranks ended different without a word
    rc, out, err = run_shards("owned", "numpy", tmp_path)
    assert rc == 0, err[-3000:]
    assert (tmp_path / "rank0.order").read_text() == "epoch 0 epoch 1 epoch 2 step"
    assert (tmp_path / "rank1.order").read_text() == "epoch 0 epoch 1 epoch 2"


def test_integer_labels_of_int64_and_uint64_shards_are_their_exact_union(tmp_path):
    # int64 [0, 1] and uint64 [2**64 - 1, 2**63 + 1] concatenated to float64: 2**64 - 1
    # became 2**64 (one process keeps them exact, as uint64)
    rc, out, err = run_shards("big_labels", "numpy", tmp_path)
    assert rc == 0, err[-3000:]
    for rank in (0, 1):
        assert (tmp_path / f"rank{rank}.classes").read_text() == \
            f"0 1 {2**63 + 1} {2**64 - 1}"


def test_divergence_raises_training_diverged_on_every_rank_and_restores_the_epoch(tmp_path):
    rc, out, err = run_shards("diverge", "numpy", tmp_path)
    assert rc == 3, err[-3000:]
    for rank in (0, 1):
        raised = (tmp_path / f"rank{rank}.error").read_text()
        assert raised.startswith("TrainingDiverged: training diverged in epoch 1: "), raised
        assert "the weights of the last finite epoch were kept" in raised
        assert raised.endswith("(restored: True)")


def test_an_exception_that_cannot_be_agreed_on_aborts_the_job(tmp_path):
    rc, out, err = run_shards("interrupt", "numpy", tmp_path)
    assert rc != 0
    assert "fit returned" not in out
    assert "rank 1 of 2 stopped by an exception the other ranks cannot be told about; " \
           "aborting the MPI job" in err, err
    assert "KeyboardInterrupt: simulated Ctrl-C on one rank" in err
    # (MPICH's own "MPI_Abort" line races with the job's end: not checked)
    assert not list(tmp_path.glob("*.error"))   # no rank reached an agreement


def test_a_second_ctrl_c_during_the_abort_still_aborts(tmp_path):
    # it landed in the abort's grace sleep and skipped comm.Abort: the other rank
    # waited in its next collective forever
    rc, out, err = run_shards("interrupt_twice", "numpy", tmp_path)
    assert rc != 0
    assert "aborting the MPI job" in err, err


def test_a_refused_fit_learns_nothing_on_any_rank(tmp_path):
    # rank 0's classes_ and names stayed on every rank, and its weights on rank 1
    rc, out, err = run_shards("bad_monitor", "numpy", tmp_path)
    assert rc != 0
    for rank in (0, 1):
        assert (tmp_path / f"rank{rank}.after").read_text() == "None None True"


def test_early_stopping_on_rank_0_alone_leaves_every_rank_its_best_weights(tmp_path):
    rc, out, err = run_shards("es_rank0", "numpy", tmp_path)
    assert rc == 0, err[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "rank0.npy"),
                                  np.load(tmp_path / "rank1.npy"))


def test_an_intercommunicator_is_refused_on_every_rank(tmp_path):
    # its collectives join two groups: every rank waited in the first bcast
    rc, out, err = run_shards("inter", "numpy", tmp_path)
    for rank in (0, 1):
        assert "intercommunicator" in (tmp_path / f"rank{rank}.error").read_text()


def test_the_example_reaches_the_single_process_accuracy():
    rc, out, err = mpiexec(["-m", "mpi4py", "examples/distributed.py"])
    assert rc == 0, err[-3000:]
    lines = {line.split(":")[0].strip(): line for line in out.splitlines()}
    ranks, single = lines["2 ranks"].split(), lines["one process"].split()
    acc_ranks, acc_single = float(ranks[-1]), float(single[-1])
    assert acc_ranks == acc_single >= 0.95, out
    assert float(lines["largest weight difference"].split()[-1]) < 1e-4, out

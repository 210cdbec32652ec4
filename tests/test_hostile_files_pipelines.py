"""A hostile QA pass over persistence and pipelines: save/load, pickling, the
scikit-learn estimators, ONNX, the CLI, interrupted and concurrent training.

The tests marked ``BUG`` in their docstring fail on the code as it was found
(each is the smallest reproducer of one defect); the others cover gaps the rest
of the suite left open and pass.
"""
import copy
import io
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import zipfile

import numpy as np
import pytest

import fastmlp as fm
from helpers import run_cli, saved_arrays, saved_header, without_backend

BAD = "not a readable fastmlp model file"


def _classifier(backend="numpy", dtype="float32", seed=0):
    return fm.Model([fm.Dense(5, "relu"), fm.Dense(3, "softmax")], input_dim=4,
                    loss="cross_entropy", optimizer=fm.Adam(lr=0.01), backend=backend,
                    dtype=dtype, seed=seed)


def _X(n=24, d=4, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d))


@pytest.fixture
def saved(tmp_path):
    """A fitted 4-5-3 classifier with string classes, saved; (model, path)."""
    model = _classifier()
    model.fit(_X(), np.array(["a", "b", "c"] * 8), epochs=2, batch_size=8)
    path = tmp_path / "model.npz"
    model.save(path)
    return model, path


def _write(path, arrays):
    with open(path, "wb") as f:  # a file object, so numpy adds no suffix
        np.savez(f, **arrays)


def _npy(array):
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _raw_npy(header, data=b"", version=1):
    """A .npy member with a hand-written header string."""
    text = header.encode("latin1")
    if version == 1:
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + data
    return b"\x93NUMPY" + bytes([version, 0]) + struct.pack("<I", len(text)) + text + data


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members:
            zf.writestr(name, data)


# =====================================================================================
# Bugs: each test fails on the code as found.
# =====================================================================================

# -- fastmlp.sklearn: partial_fit after early stopping ---------------------------------

@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_partial_fit_after_early_stopping_continues(backend, kind):
    """BUG: fastmlp/sklearn.py promises "Early stopping restores the best epoch's whole
    training state ..., so a later partial_fit continues from there", but fit with
    early_stopping=True sets best_loss_ = None and partial_fit's _record_loss then
    computes None - tol: TypeError."""
    pytest.importorskip("sklearn")
    from fastmlp.sklearn import MLPClassifier, MLPRegressor
    X = _X(60)
    if kind == "classifier":
        est, y = MLPClassifier((8,), max_iter=5, early_stopping=True, backend=backend,
                               random_state=0), (X[:, 0] > 0).astype(int)
    else:
        est, y = MLPRegressor((8,), max_iter=5, early_stopping=True, backend=backend,
                              random_state=0), X[:, 0]
    est.fit(X, y)
    n_iter = est.n_iter_
    est.partial_fit(X, y)
    assert est.n_iter_ == n_iter + 1 and np.isfinite(est.predict(X).astype(float)).all()


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_regressor_target_too_large_for_float32_is_named_as_such():
    """BUG: MLPRegressor casts y to float32 before fastmlp checks it: 1e300 becomes inf
    (with a RuntimeWarning) and the error says "Y contains NaN or inf", which y does not;
    fm.Model.fit itself says "Y has a value too large for float32"."""
    pytest.importorskip("sklearn")
    from fastmlp.sklearn import MLPRegressor
    with pytest.raises(ValueError, match="too large"):
        MLPRegressor((4,), max_iter=2, backend="numpy").fit(_X(6, 2), np.full(6, 1e300))


def test_estimator_with_auto_backend_unpickles_where_its_backend_is_missing(monkeypatch):
    """BUG (portability): an estimator built with backend="auto" pickles its model_ with
    the concrete backend chosen ("cython"); unpickled where that backend does not import,
    it raises "backend 'cython' is not available here" although the user asked for
    "auto", which resolves to another backend there (fm.load has backend= for this,
    pickle has no way out)."""
    pytest.importorskip("sklearn")
    from fastmlp.sklearn import MLPClassifier
    X = _X(30, 3)
    est = MLPClassifier((4,), max_iter=2, random_state=0).fit(X, (X[:, 0] > 0).astype(int))
    chosen = est.model_.backend
    if len(fm.available_backends()) < 2:
        pytest.skip("needs two backends")
    blob = pickle.dumps(est)
    without_backend(monkeypatch, chosen)
    restored = pickle.loads(blob)
    np.testing.assert_allclose(restored.predict_proba(X), est.predict_proba(X), rtol=1e-4,
                               atol=1e-6)


# -- load: classes that do not fit the output layer ------------------------------------

@pytest.mark.parametrize("classes", [np.array(["a", "b"]), np.array(list("abcde")),
                                     np.array(["a", "a", "b"]), np.array(["", "", ""])],
                         ids=["2 for 3 units", "5 for 3 units", "duplicates", "all equal"])
def test_load_refuses_classes_that_do_not_fit_the_output_layer(saved, tmp_path, classes):
    """BUG: fastmlp/io.py _layout_problem accepts any 1-D `classes` member: a file whose
    classes are fewer than the softmax's units loads, then predict_classes raises a raw
    IndexError; duplicate class labels load and predict_classes silently gives two
    output units the same label. README: every bad file gives ValueError(... not a
    readable fastmlp model file ...), never another exception."""
    bad = tmp_path / "bad.npz"
    _write(bad, dict(saved_arrays(saved[1]), classes=classes))
    with pytest.raises(ValueError, match=BAD):
        model = fm.load(bad)
        model.predict_classes(_X(4))


def test_save_refuses_classes_that_do_not_fit_the_output_layer(saved, tmp_path):
    """BUG: save writes classes_ of the wrong length (load accepts them: see above)."""
    model, path = saved
    before = path.read_bytes()
    model.classes_ = np.array(["only"])
    with pytest.raises(ValueError, match="classes"):
        model.save(path)
    assert path.read_bytes() == before


# -- save and to_onnx with a bytes path ------------------------------------------------

def test_save_accepts_a_bytes_path_as_load_does(tmp_path):
    """BUG: fm.load(b"path") works, Model.save(b"path") raises TypeError ("Can't mix
    bytes and non-bytes in path components" from tempfile.mkstemp, or "cannot use a
    string pattern on a bytes-like object" from _atomic.remove_stale_temporaries once
    the folder holds a file). io.save takes os.fspath(path), which may be bytes;
    _atomic.replace mixes it with str prefixes and a str regex."""
    model = _classifier()
    (tmp_path / "other.npz").write_bytes(b"")   # a file in the folder: listdir gives bytes
    model.save(os.fsencode(tmp_path / "m.npz"))
    np.testing.assert_array_equal(fm.load(tmp_path / "m.npz").get_weights()[0],
                                  model.get_weights()[0])


def test_to_onnx_accepts_a_bytes_path(tmp_path):
    """BUG: the same bytes-path TypeError in Model.to_onnx (it uses _atomic.replace)."""
    pytest.importorskip("onnx")
    (tmp_path / "other").write_bytes(b"")
    _classifier().to_onnx(os.fsencode(tmp_path / "m.onnx"))
    assert (tmp_path / "m.onnx").stat().st_size > 0


# -- get_state / save / pickle while another thread trains ------------------------------

def test_get_state_while_another_thread_trains_is_the_state_of_one_step(backend):
    """BUG: get_state (and so save, pickle, deepcopy, which call it) does not take the
    model's lock: read while fit runs in another thread, it returns a theta of no step at
    all (half of an update, compiled backends) or a theta and opt_step of different steps
    (numpy). README (threads): reading a model while another thread trains it sees the
    weights of some step. Here one step = one epoch (batch = all rows, no shuffle);
    the states of every step come from fit(1) repeated (fit(1) + fit(1) = fit(2))."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 8)).astype(np.float32)
    Y = rng.normal(size=(64, 2)).astype(np.float32)

    def make():
        return fm.Model([fm.Dense(32, "tanh"), fm.Dense(2)], input_dim=8,
                        optimizer=fm.Adam(1e-3), backend=backend, seed=0)

    epochs = 1500
    reference = make()
    theta_at = {0: reference.get_state()["theta"].tobytes()}
    for k in range(1, epochs + 1):
        reference.fit(X, Y, epochs=1, batch_size=64, shuffle=False)
        theta_at[k] = reference.get_state()["theta"].tobytes()
    model = make()
    trainer = threading.Thread(target=model.fit, args=(X, Y),
                               kwargs=dict(epochs=epochs, batch_size=64, shuffle=False))
    torn = []
    trainer.start()
    while trainer.is_alive() and len(torn) < 3:
        state = model.get_state()
        step = int(state["opt_step"][0])
        if theta_at.get(step) != state["theta"].tobytes():
            torn.append(step)
    trainer.join()
    assert not torn, f"get_state returned a theta that is not the one of its step {torn}"


# -- Ctrl-C while fit draws the epochs' orders ------------------------------------------

def test_ctrl_c_while_drawing_the_orders_rolls_back_the_generator(backend, monkeypatch):
    """BUG: fit's quiet path (no callbacks, metrics or validation) saves the generator
    state, then draws the chunk's orders outside the try that restores it: a Ctrl-C
    landing there (seen with real SIGINTs on numba and cython: theta of epoch k but the
    generator of more) leaves the generator advanced, so fit(1) + interrupted fit +
    fit(1) != fit(2), which the README's divergence row promises."""
    X, Y = _X(32, 4), _X(32, 2, seed=1)
    model = fm.Model([fm.Dense(6, "tanh"), fm.Dense(2)], input_dim=4, backend=backend, seed=0)
    model.fit(X, Y, epochs=1, batch_size=8)
    before = model.get_state()
    draw = fm.Model._draw_orders

    def draw_then_interrupt(self, k, n):
        draw(self, k, n)          # the generator has moved ...
        raise KeyboardInterrupt   # ... when the signal's handler runs

    monkeypatch.setattr(fm.Model, "_draw_orders", draw_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        model.fit(X, Y, epochs=3, batch_size=8)
    after = model.get_state()
    np.testing.assert_array_equal(after["theta"], before["theta"])
    assert after["rng_state"] == before["rng_state"]


# -- a failed fit keeps what it learnt about the labels and columns ---------------------

def test_a_fit_refused_for_a_bad_argument_records_no_classes_or_feature_names(backend):
    """BUG: Model.fit records classes_ and feature_names_in_ (_data(learn=True)) before it
    checks batch_size, validation_data, ...: a fit refused for a bad argument leaves them
    set, and the corrected call with the user's real data is then refused ("the model was
    trained with ['p', 'q', 'r', 's']") though the model never trained."""
    pd = pytest.importorskip("pandas")
    model = _classifier(backend)
    X = _X(12)
    with pytest.raises(ValueError, match="batch_size"):
        model.fit(pd.DataFrame(X, columns=list("pqrs")), np.array(list("abc") * 4),
                  batch_size=0)
    assert model.classes_ is None and model.feature_names_in_ is None
    model.fit(pd.DataFrame(X, columns=list("wxyz")), np.array(list("xyz") * 4), epochs=1)


def test_a_call_refused_for_bad_targets_records_no_feature_names(backend):
    """The same for the checks of the targets themselves (Model._data): feature names
    were recorded before the targets were checked, so prepare or fit refused for a NaN
    target still pinned the model to those columns."""
    pd = pytest.importorskip("pandas")
    model = fm.Model([fm.Dense(5, "relu"), fm.Dense(2)], input_dim=4, backend=backend)
    X, Y = _X(12), _X(12, 2, seed=1)
    Y[3, 1] = np.nan
    for call in (model.prepare, model.fit):
        with pytest.raises(ValueError, match="NaN"):
            call(pd.DataFrame(X, columns=list("pqrs")), Y)
        assert model.feature_names_in_ is None
    model.fit(pd.DataFrame(X, columns=list("wxyz")), np.nan_to_num(Y), epochs=1)
    assert list(model.feature_names_in_) == list("wxyz")


# -- the CLI ----------------------------------------------------------------------------

@pytest.fixture
def csv(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,b,y\n1,2,0\n3,4,1\n5,6,0\n7,8,1\n1,3,0\n2,5,1\n")
    return path


def test_cli_a_network_too_large_for_memory_is_one_line(csv):
    """BUG: `fastmlp train --layers 100000000000` (or 100000,100000) ends in a MemoryError
    traceback with exit status 1: cli.main catches ValueError, TypeError, OSError and
    TrainingDiverged only, and nothing bounds the layer sizes. Expected: one line,
    exit status 2. (np.zeros of 3.6 TiB fails at once; nothing is allocated.)"""
    proc = subprocess.run([sys.executable, "-m", "fastmlp", "train", "--data", str(csv),
                           "--backend", "numpy", "--epochs", "1", "--layers", "100000000000"],
                          capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr[-500:]
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("option", ["--save", "--plot"])
def test_cli_an_empty_output_path_is_an_error(capsys, csv, tmp_path, monkeypatch, option):
    """BUG: `--save ""` (e.g. `--save "$OUT"` with OUT unset) and `--plot ""` are skipped
    silently (`if args.save:`): exit status 0, no file, nothing said."""
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "train", "--data", str(csv), "--backend", "numpy",
                             "--epochs", "1", option, "")
    assert code == 2 and option in err, (code, out[-300:], err)


# =====================================================================================
# Gaps covered: these pass.
# =====================================================================================

# -- crafted archives ---------------------------------------------------------------------

def _members(path):
    return [(k + ".npy", _npy(v)) for k, v in saved_arrays(path).items()]


def _replace(members, name, data):
    return [(n, d) for n, d in members if n != name] + [(name, data)]


def _crafted(path, theta_size):
    members = _members(path)
    shape = f"'shape': ({theta_size},)"
    return {
        "duplicate member": (members + [("theta.npy", dict(members)["theta.npy"])],
                             "appears twice"),
        "duplicate under two spellings": (members + [("theta", _npy(np.zeros(3)))],
                                          "appears twice"),
        "3000 nested parentheses": (_replace(members, "theta.npy", _raw_npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': " + "(" * 3000 + ")" * 3000
            + "}")), "damaged"),
        "an expression in the header": (_replace(members, "theta.npy", _raw_npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (10**100,)}")), "damaged"),
        "npy version 3": (_replace(members, "theta.npy", _raw_npy(
            "{'descr': '<f4', 'fortran_order': False, " + shape + "}",
            b"\0" * 4 * theta_size, version=3)), "version"),
        "npy header of 200 kB": (_replace(members, "theta.npy", _raw_npy(
            "{'descr': '<f4', 'fortran_order': False, " + shape + "}" + " " * 200_000,
            b"\0" * 4 * theta_size, version=2)), "damaged"),
        "negative shape": (_replace(members, "classes.npy", _raw_npy(
            "{'descr': '<i8', 'fortran_order': False, 'shape': (-1,)}")), "classes"),
        "two negative dimensions": (_replace(members, "opt_buffers.npy", _raw_npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (-2, -%d)}" % theta_size,
            b"\0" * 8 * theta_size)), "opt_buffers"),
        "a bool as a dimension": (_replace(members, "opt_step.npy", _raw_npy(
            "{'descr': '<i8', 'fortran_order': False, 'shape': (True,)}", b"\0" * 8)),
            "damaged"),
        "nested structured dtype": (_replace(members, "classes.npy", _raw_npy(
            "{'descr': " + "[('a', " * 60 + "'<f4'" + ")]" * 60
            + ", 'fortran_order': False, 'shape': (1,)}", b"\0" * 4)), "classes"),
        "a directory entry": (members + [("theta.npy/", b"")], "unknown member"),
        "names with ../": ([("../" + n, d) for n, d in members], "missing"),
        "an empty zip": ([], "missing"),
    }


CRAFTED = ["duplicate member", "duplicate under two spellings", "3000 nested parentheses",
           "an expression in the header", "npy version 3", "npy header of 200 kB",
           "negative shape", "two negative dimensions", "a bool as a dimension",
           "nested structured dtype", "a directory entry", "names with ../", "an empty zip"]


@pytest.mark.parametrize("name", CRAFTED)
def test_crafted_archive_is_the_documented_error(saved, tmp_path, name):
    model, path = saved
    members, match = _crafted(path, model.n_params)[name]
    bad = tmp_path / "bad.npz"
    _zip(bad, members)
    with pytest.raises(ValueError, match=f"{BAD}: .*{match}"):
        fm.load(bad)


def test_a_flipped_data_bit_fails_the_crc(saved, tmp_path):
    model, path = saved
    data = bytearray(path.read_bytes())
    data[data.find(model.get_state()["theta"].tobytes()) + 3] ^= 0x40
    bad = tmp_path / "flipped.npz"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{BAD}: .*CRC"):
        fm.load(bad)


def test_every_flipped_byte_of_every_member_is_refused(saved, tmp_path):
    """load reads a member's data straight from the file (not through zipfile's reader)
    and checks its CRC-32 itself, over the .npy header too: a flip anywhere in a member
    is the documented error, and only the flipped member's name is blamed."""
    model, path = saved
    data = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        members = [(info.filename, info.header_offset, info.file_size)
                   for info in archive.infolist()]
    bad = tmp_path / "flipped.npz"
    for filename, offset, size in members:
        name_length, extra_length = struct.unpack("<2H", data[offset + 26:offset + 30])
        start = offset + 30 + name_length + extra_length
        for at in sorted({start, start + 9, start + size // 2, start + size - 1}
                         | set(range(start, start + size, max(1, size // 40)))):
            flipped = bytearray(data)
            flipped[at] ^= 0x01
            bad.write_bytes(bytes(flipped))
            with pytest.raises(ValueError, match=BAD) as caught:
                fm.load(bad)
            text = str(caught.value)
            assert "CRC" in text or "header" in text or filename[:-4] in text, text


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_loaded_model_owns_the_arrays_read_in_any_member_order(backend, dtype, tmp_path):
    """load gives the model the arrays it read as its own weights and optimiser buffers
    (no copy) when they are C-ordered; a member stored Fortran-ordered (a valid .npy) is
    copied into C order. Either way the same model, training the same steps, each load
    independent of the others."""
    model = _classifier(backend, dtype)
    y = np.array(["a", "b", "c"] * 8)
    model.fit(_X(), y, epochs=2, batch_size=8)
    path = tmp_path / "model.npz"
    model.save(path)
    members = _members(path)
    buffers = saved_arrays(path)["opt_buffers"]
    fortran = tmp_path / "fortran.npz"
    _zip(fortran, _replace(members, "opt_buffers.npy", _npy(np.asfortranarray(buffers))))
    assert np.lib.format.read_array_header_1_0(
        io.BytesIO(dict(_replace(members, "opt_buffers.npy", _npy(
            np.asfortranarray(buffers))))["opt_buffers.npy"][8:]))[1] is True
    loaded = [fm.load(path), fm.load(fortran), fm.load(path)]
    for twin in loaded:
        state, want = twin.get_state(), model.get_state()
        for key in ("theta", "opt_buffers", "opt_step"):
            np.testing.assert_array_equal(state[key], want[key])
    model.fit(_X(), y, epochs=2, batch_size=8)
    loaded[0].fit(_X(), y, epochs=2, batch_size=8)
    loaded[1].fit(_X(), y, epochs=2, batch_size=8)
    for twin in loaded[:2]:
        for key in ("theta", "opt_buffers", "opt_step"):
            np.testing.assert_array_equal(twin.get_state()[key], model.get_state()[key])
    # the third load, untrained, still holds the file's state
    np.testing.assert_array_equal(loaded[2].get_state()["theta"],
                                  saved_arrays(path)["theta"])


def test_junk_before_the_archive_still_loads_the_same_model(saved, tmp_path):
    model, path = saved
    prefixed = tmp_path / "prefixed.npz"
    prefixed.write_bytes(b"#!/bin/sh\n" * 1000 + path.read_bytes())
    np.testing.assert_array_equal(fm.load(prefixed).predict(_X(5)), model.predict(_X(5)))


def test_header_fields_of_the_right_type_but_the_wrong_meaning(saved, tmp_path):
    """A loss that does not fit the output activation is a header problem, not a crash."""
    arrays = saved_arrays(saved[1])
    header = saved_header(arrays)
    header["network"]["loss"] = "binary_cross_entropy"   # on a softmax output
    bad = tmp_path / "bad.npz"
    _write(bad, dict(arrays, header=np.frombuffer(json.dumps(header).encode(), np.uint8)))
    with pytest.raises(ValueError, match=BAD):
        fm.load(bad)


# -- saving: paths, concurrency, signals ------------------------------------------------

def test_resaving_over_the_file_just_loaded(saved):
    model, path = saved
    loaded = fm.load(path)
    loaded.save(path)
    np.testing.assert_array_equal(fm.load(path).predict(_X(3)), model.predict(_X(3)))


def test_threads_saving_to_one_path_while_another_loads_it(backend, tmp_path):
    path = tmp_path / "m.npz"
    models = [_classifier(backend, seed=i) for i in range(3)]
    models[0].save(path)
    errors = []

    def save(model):
        for _ in range(20):
            try:
                model.save(path)
            except Exception as exc:  # noqa: BLE001 - any error is the failure
                errors.append(exc)

    def load():
        for _ in range(40):
            try:
                fm.load(path)
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

    threads = [threading.Thread(target=save, args=(m,)) for m in models]
    threads.append(threading.Thread(target=load))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    final = fm.load(path).predict(_X(4))
    assert any(np.array_equal(final, m.predict(_X(4))) for m in models)


def test_sigint_while_saving_keeps_a_loadable_file_and_no_temporaries(tmp_path):
    path = tmp_path / "m.npz"
    code = (f"import fastmlp as fm\n"
            f"m = fm.Model([fm.Dense(1000, 'tanh'), fm.Dense(2)], input_dim=300, "
            f"backend='numpy', seed=0)\n"
            f"m.save({str(path)!r}); print('ready', flush=True)\n"
            f"while True:\n    m.save({str(path)!r})\n")
    for delay in (0.02, 0.15):
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"ready"
        threading.Event().wait(delay)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
        assert fm.load(path).n_params == 303_002
        assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


@pytest.mark.parametrize("path, error", [("", ValueError), (None, TypeError)])
def test_save_to_nothing_is_refused(tmp_path, path, error):
    with pytest.raises(error):
        _classifier().save(path)


def test_a_file_object_is_refused_with_a_type_error(saved):
    with pytest.raises(TypeError, match="PathLike"):
        saved[0].save(io.BytesIO())
    with open(saved[1], "rb") as f, pytest.raises(TypeError, match="PathLike"):
        fm.load(f)


def test_a_symlink_loop_is_an_os_error_on_save_and_load(tmp_path):
    os.symlink("b", tmp_path / "a")
    os.symlink("a", tmp_path / "b")
    with pytest.raises(OSError):
        _classifier().save(tmp_path / "a")
    with pytest.raises(OSError):
        fm.load(tmp_path / "a")


# -- pickling ---------------------------------------------------------------------------

def test_a_pickled_model_whose_backend_is_missing_names_it(monkeypatch):
    blob = pickle.dumps(_classifier("numpy"))
    without_backend(monkeypatch, "numpy")
    with pytest.raises(ValueError, match="'numpy' is not available"):
        pickle.loads(blob)


@pytest.mark.parametrize("clone", [lambda m: pickle.loads(pickle.dumps(m)), copy.deepcopy],
                         ids=["pickle", "deepcopy"])
def test_copies_of_an_unfitted_model_with_labels_train_like_the_original(backend, dtype, clone):
    model = _classifier(backend, dtype)
    model.classes_ = np.array(["a", "b", "c"])
    twin = clone(model)
    y = np.array(list("abc") * 4)
    model.fit(_X(12), y, epochs=2, batch_size=4)
    twin.fit(_X(12), y, epochs=2, batch_size=4)
    np.testing.assert_array_equal(twin.get_state()["theta"], model.get_state()["theta"])


# -- fastmlp.sklearn --------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_grid_search_two_processes_on_pandas_with_string_labels(backend, tmp_path,
                                                                joblib_workers_stopped):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("sklearn")
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from fastmlp.sklearn import MLPClassifier
    X = pd.DataFrame(_X(60, 3), columns=["a", "b", "c"])
    y = pd.Series(np.where(X["a"] > 0, "pos", "neg"))
    search = GridSearchCV(make_pipeline(StandardScaler(), MLPClassifier(
        (4,), max_iter=5, backend=backend, random_state=0)),
        {"mlpclassifier__learning_rate_init": [1e-3, 1e-2]}, n_jobs=2, cv=2).fit(X, y)
    best = search.best_estimator_
    assert set(best.predict(X)) <= {"pos", "neg"}
    best[-1].model_.save(tmp_path / "m.npz")
    assert fm.load(tmp_path / "m.npz").classes_.tolist() == ["neg", "pos"]
    for copied in (pickle.loads(pickle.dumps(best)), copy.deepcopy(best)):
        np.testing.assert_array_equal(copied.predict(X), best.predict(X))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("case, match", [
    ("one sample", "at least 2 classes"),
    ("one class", "at least 2 classes"),
    ("NaN label", "NaN"),
    ("two samples, early stopping", "least populated class|too small|too few"),
    ("one sample regressor, early stopping", "train set will be empty|too small"),
    ("NaN target regressor", "NaN"),
])
def test_degenerate_samples_are_clear_errors(case, match):
    pytest.importorskip("sklearn")
    from fastmlp.sklearn import MLPClassifier, MLPRegressor
    X = _X(10, 3)
    est, Xc, yc = {
        "one sample": (MLPClassifier(max_iter=2), X[:1], [1]),
        "one class": (MLPClassifier(max_iter=2), X, np.zeros(10)),
        "NaN label": (MLPClassifier(max_iter=2), X, np.r_[np.nan, np.arange(9) % 2]),
        "two samples, early stopping": (MLPClassifier(max_iter=2, early_stopping=True),
                                        X[:2], [0, 1]),
        "one sample regressor, early stopping": (MLPRegressor(max_iter=2, early_stopping=True),
                                                 X[:1], [1.0]),
        "NaN target regressor": (MLPRegressor(max_iter=2), X, np.full(10, np.nan)),
    }[case]
    with pytest.raises(ValueError, match=match):
        est.fit(Xc, yc)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_two_samples_two_classes_and_one_sample_regression_train(backend):
    pytest.importorskip("sklearn")
    from fastmlp.sklearn import MLPClassifier, MLPRegressor
    X = _X(3, 3)
    assert MLPClassifier((4,), max_iter=3, backend=backend).fit(X[:2], ["x", "y"]) \
        .predict(X).shape == (3,)
    assert MLPRegressor((4,), max_iter=3, backend=backend).fit(X[:1], [2.0]).predict(X).shape \
        == (3,)


def test_warm_start_is_refused_by_name():
    pytest.importorskip("sklearn")
    from fastmlp.sklearn import MLPClassifier
    with pytest.raises(TypeError, match="warm_start"):
        MLPClassifier(warm_start=True)


# -- ONNX -------------------------------------------------------------------------------

def test_onnx_of_a_trained_labelled_scaled_model_matches_predict_on_1_and_2_rows(
        backend, dtype, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    X = _X(40, 5) * 3 + 10
    model = fm.Model([fm.Dense(7, "prelu"), fm.Dense(6, "elu"), fm.Dense(3, "softmax")],
                     input_dim=5, loss="cross_entropy", optimizer=fm.Adam(0.01),
                     backend=backend, dtype=dtype, seed=1)
    model.set_input_scaling(X.mean(0), X.std(0))
    model.fit(X, np.array(list("xyz"))[np.arange(40) % 3], epochs=3, batch_size=8)
    path = tmp_path / "m.onnx"
    model.to_onnx(path)
    session = ort.InferenceSession(str(path))
    name = session.get_inputs()[0].name
    for n in (1, 2, 40):
        got = session.run(None, {name: X[:n].astype(dtype)})[0]
        np.testing.assert_allclose(got, model.predict(X[:n]), rtol=1e-5, atol=1e-7)


# -- callbacks, interrupts, validation data ---------------------------------------------

class _Raises:
    def __init__(self, where, error):
        self.where, self.error = where, error

    def on_train_begin(self, logs):
        if self.where == "begin":
            raise self.error

    def on_epoch_end(self, epoch, logs):
        if self.where == "epoch" and epoch == 1:
            raise self.error

    def on_train_end(self, logs):
        if self.where == "end":
            raise self.error


@pytest.mark.parametrize("where", ["begin", "epoch", "end"])
@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()],
                         ids=["RuntimeError", "KeyboardInterrupt"])
def test_a_raising_callback_leaves_a_finite_trainable_model(backend, dtype, where, error):
    model = _classifier(backend, dtype)
    X, y = _X(), np.arange(24) % 3
    with pytest.raises(type(error)):
        model.fit(X, y, epochs=3, batch_size=8, callbacks=[_Raises(where, error)])
    state = model.get_state()
    # whole epochs only: 3 steps of 8 rows per epoch
    assert state["opt_step"][0] % 3 == 0 and np.isfinite(state["theta"]).all()
    assert np.isfinite(model.predict(X)).all()
    model.fit(X, y, epochs=1)


def test_real_sigints_during_fit_leave_the_weights_of_a_whole_epoch(backend):
    """SIGINT at random moments of a long quiet fit (no shuffle): every time, theta is
    finite and is bit for bit fit(k)'s for the step count k it reports."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(256, 8)).astype(np.float32)
    Y = rng.normal(size=(256, 2)).astype(np.float32)

    def make():
        return fm.Model([fm.Dense(64, "tanh"), fm.Dense(2)], input_dim=8,
                        optimizer=fm.Adam(1e-3), backend=backend, seed=0)

    model = make()
    delays = np.random.default_rng(1).uniform(0.001, 0.03, size=6)
    for delay in delays:
        timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
        with pytest.raises(KeyboardInterrupt):
            # started inside the block: a signal landing before pytest.raises was entered
            # (a 1 ms delay on a busy machine) stopped the whole test run
            timer.start()
            model.fit(X, Y, epochs=10**7, batch_size=256, shuffle=False)
        timer.join()
        state = model.get_state()
        k = int(state["opt_step"][0])
        assert np.isfinite(state["theta"]).all()
        twin = make()
        if k:
            twin.fit(X, Y, epochs=k, batch_size=256, shuffle=False)
        np.testing.assert_array_equal(state["theta"], twin.get_state()["theta"])
    model.fit(X, Y, epochs=1, batch_size=256)
    assert np.isfinite(model.predict(X)).all()


@pytest.mark.parametrize("validation_data, match", [
    ((_X(5, 3), np.arange(5) % 3), "columns"),
    ((_X(5), np.arange(4) % 3), "rows"),
    ((_X(5), np.eye(4)[np.arange(5) % 4]), "shape|columns|outputs"),
    ((_X(5)[:0], np.arange(0)), "empty"),
    ((_X(5) * np.nan, np.arange(5) % 3), "NaN"),
    ((_X(5), np.arange(5) + 7), r"\[0, 3\)"),
    ((_X(3), np.array(["p", "q", "r"])), "does not know"),
])
def test_validation_data_of_the_wrong_shape_is_refused_before_training(
        backend, validation_data, match):
    model = _classifier(backend)
    before = model.get_state()["theta"]
    with pytest.raises(ValueError, match=match):
        model.fit(_X(), np.arange(24) % 3, epochs=2, validation_data=validation_data)
    np.testing.assert_array_equal(model.get_state()["theta"], before)


# -- the CLI: inputs the existing tests do not try ----------------------------------------

@pytest.mark.parametrize("content, ok", [
    (b"\xef\xbb\xbfa,b,y\n1,2,0\n3,4,1\n5,6,0\n7,8,1\n", True),       # UTF-8 BOM
    (b"a,b,y\r1,2,0\r3,4,1\r5,6,0\r7,8,1\r", True),                   # old Mac line ends
    (b"a,b,y\n1,\x002,0\n3,4,1\n5,6,0\n7,8,1\n", False),               # a NUL in a cell
    (b"a,b,y\n1e400,2,0\n3,4,1\n5,6,0\n7,8,1\n", False),               # overflows to inf
    (b"a,b,y\n\"1,2,0\n3,4,1\n", False),                               # an unclosed quote
    (b"\xff\xfea\x00,\x00y\x00\n\x00", False),                         # UTF-16
], ids=["BOM", "CR", "NUL", "1e400", "open quote", "UTF-16"])
def test_cli_csv_oddities(capsys, tmp_path, content, ok):
    path = tmp_path / "d.csv"
    path.write_bytes(content)
    code, out, err = run_cli(capsys, "train", "--data", str(path), "--backend", "numpy",
                             "--epochs", "1")
    if ok:
        assert code == 0, err
    else:
        assert code == 2 and len(err.strip().splitlines()) == 1 and "d.csv" in err, err

"""Hostile round 55 (four audits: threads and interrupts, numerics, the ecosystem, files):
what they found, each fixed. The first: save replaced a file its user had made read-only
(chmod a-w), which open(path, "wb") and np.save refuse: the rename needs only the
folder's write permission."""
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import fastmlp as fm
from helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]


def _model(seed=0, **kw):
    return fm.Model([fm.Dense(3, "tanh"), fm.Dense(2, "softmax")], input_dim=2,
                    loss="cross_entropy", seed=seed, **kw)


# As root, os.access grants write to any file (as open does): the user who cannot write a
# 0444 file is "nobody", in a child process
_AS_NOBODY = r"""
import os, sys
import fastmlp as fm
path = sys.argv[1]
m = fm.Model([fm.Dense(3, "tanh"), fm.Dense(2, "softmax")], input_dim=2,
             loss="cross_entropy", seed=2)
m.save(path + ".warm")   # every module save imports, while they may still be read
os.unlink(path + ".warm")
os.setgid(65534); os.setuid(65534)
kept = open(path, "rb").read()
try:
    open(path, "wb")
except PermissionError:
    print("open refused")
try:
    m.save(path)
except PermissionError as exc:
    print("save refused:", exc)
print("kept" if open(path, "rb").read() == kept else "REPLACED")
print("tmp left" if [n for n in os.listdir(os.path.dirname(path)) if n.endswith(".tmp")]
      else "no tmp")
"""


def test_save_keeps_a_file_its_user_may_not_write():
    if os.geteuid() != 0:
        pytest.skip("written for root, as CI runs: the child becomes 'nobody' (uid 65534)")
    folder = tempfile.mkdtemp(prefix="fastmlp-ro-")
    try:
        os.chmod(folder, 0o777)
        path = os.path.join(folder, "best.fastmlp")
        _model(seed=1).save(path)
        os.chmod(path, 0o444)
        result = subprocess.run([sys.executable, "-c", _AS_NOBODY, path], capture_output=True,
                                text=True, timeout=120, cwd=folder,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert result.returncode == 0, result.stderr
        out = result.stdout
        assert "open refused" in out
        assert (f"save refused: [Errno 13] cannot save {path}: the file there is read-only "
                "for this user and is kept; make it writable (chmod u+w) or choose another "
                "path") in out, out
        assert "kept\nno tmp" in out, out
        # root may write it, as open may: the mode is kept
        _model(seed=3).save(path)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o444
    finally:
        for name in os.listdir(folder):
            os.unlink(os.path.join(folder, name))
        os.rmdir(folder)


def test_save_refuses_what_os_access_says_it_may_not_write(tmp_path, monkeypatch):
    """The check itself, for any user: os.access is what open's permission check asks."""
    path = tmp_path / "m.fastmlp"
    _model(seed=1).save(path)
    kept = path.read_bytes()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if mode == os.W_OK and
                        os.path.realpath(p) == str(path) else real(p, mode, **kw))
    with pytest.raises(PermissionError, match="read-only for this user and is kept"):
        _model(seed=2).save(path)
    assert path.read_bytes() == kept and os.listdir(tmp_path) == ["m.fastmlp"]


def test_cli_save_to_a_read_only_file_is_refused_before_training(capsys, tmp_path,
                                                                  monkeypatch):
    path = tmp_path / "m.fastmlp"
    path.write_bytes(b"kept")
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if mode == os.W_OK and
                        os.path.realpath(p) == str(path) else real(p, mode, **kw))
    monkeypatch.setattr(fm, "Model", None)   # were the check missing, the run stops here
    code, out, err = run_cli(capsys, "train", "--epochs", "1", "--save", str(path))
    assert code == 2 and err.count("\n") == 1, err
    assert f"--save {path}: the file there is read-only for this user and is kept" in err
    assert path.read_bytes() == b"kept"


def test_a_path_holding_a_nul_is_named():
    """os calls said only "embedded null byte"; ModelCheckpoint took such a pattern and
    failed after the first epoch had trained."""
    with pytest.raises(ValueError, match=r"cannot save to 'm\\x00.fastmlp': the path holds "
                                         "a NUL character"):
        _model().save("m\0.fastmlp")
    with pytest.raises(ValueError, match=r"ModelCheckpoint path 'ck\\x00\{epoch\}.npz' holds "
                                         "a NUL character"):
        fm.callbacks.ModelCheckpoint("ck\0{epoch}.npz", save_best_only=False)


def test_a_folder_that_is_a_file_is_named(tmp_path):
    """It said "no such folder" for a name that exists (as a file)."""
    (tmp_path / "notes.txt").write_text("kept")
    with pytest.raises(NotADirectoryError, match=r"notes.txt is not a folder"):
        _model().save(tmp_path / "notes.txt" / "m.fastmlp")
    assert (tmp_path / "notes.txt").read_text() == "kept"


@pytest.mark.parametrize("dtype", [np.float16, np.longdouble])
def test_classes_of_another_float_dtype_predict(tmp_path, dtype):
    """save and load took float16 classes_; predict_classes then raised a bare
    KeyError: dtype('float16') from validation.finite."""
    model = fm.Model([fm.Dense(3, "softmax")], input_dim=2, loss="cross_entropy", seed=0)
    model.classes_ = np.array([0.5, 1.5, 2.5], dtype=dtype)
    model.save(tmp_path / "m")
    loaded = fm.load(tmp_path / "m")
    X = np.array([[0.1, 0.2], [3.0, -1.0]])
    got = loaded.predict_classes(X)
    np.testing.assert_array_equal(got, model.classes_[model.predict(X).argmax(axis=1)])
    loaded.classes_ = np.array([0.5, np.nan, 2.5], dtype=dtype)
    with pytest.raises(ValueError, match="NaN"):
        loaded.predict_classes(X)


@pytest.mark.parametrize("header", ["a,a\0,y", "a\0,b,y", "a,b,y\0"])
def test_a_header_name_holding_a_nul_is_refused_before_training(capsys, tmp_path,
                                                              monkeypatch, header):
    """'a' and 'a\\0' trained as two features, then save refused "feature_names ['a',
    'a'] hold a name twice" (a NumPy str array drops trailing NULs)."""
    rows = "".join(f"{i % 3},{i % 5},{'xy'[i % 2]}\n" for i in range(20))
    (tmp_path / "d.csv").write_text(header + "\n" + rows)
    monkeypatch.setattr(fm, "Model", None)
    code, out, err = run_cli(capsys, "train", "--data", str(tmp_path / "d.csv"),
                             "--target", header.split(",")[-1])
    column = [i for i, name in enumerate(header.split(",")) if "\0" in name][0] + 1
    assert code == 2 and err.count("\n") == 1, err
    assert f"column {column} of the header" in err and "holds a NUL character" in err


# -- the ecosystem audit ---------------------------------------------------------------------

@pytest.mark.parametrize("method", ["predict", "predict_proba", "score"])
def test_the_estimators_refuse_text_to_predict_from_as_scikit_learn_does(method):
    """A text X was cast to the model's dtype: "1_0" read as 10."""
    from sklearn.neural_network import MLPClassifier as Theirs
    from fastmlp.sklearn import MLPClassifier
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 3)), np.arange(30) % 3
    ours = MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, random_state=0)
    theirs = Theirs(hidden_layer_sizes=(4,), max_iter=2, random_state=0)
    for estimator in (ours, theirs):
        with pytest.warns(Warning, match="(?i)maximum iterations"):
            estimator.fit(X, y)
    for text in (X.astype(str), X.astype(bytes), np.array([["1_0", "1", "2"]])):
        args = (text, y[:len(text)]) if method == "score" else (text,)
        with pytest.raises(ValueError) as mine:
            getattr(ours, method)(*args)
        with pytest.raises(ValueError) as sklearns:
            getattr(theirs, method)(*args)
        assert str(mine.value) == str(sklearns.value)
        assert "not compatible with arrays of bytes/strings" in str(mine.value)


@pytest.mark.parametrize("argv, says", [
    (["--layers", "1_0"], "argument --layers: expected comma-separated integers like 64,32, "
                          "got '1_0'"),
    (["--layers", "٣"], "argument --layers: expected comma-separated"),
    (["--layers", "64,,32"], "argument --layers: expected comma-separated integers like 64,32, "
                             "got '64,,32'"),
    (["--layers", ",,"], "argument --layers: expected comma-separated"),
    (["--epochs", "٣"], "argument --epochs: expected a positive integer, got '٣'"),
    (["--epochs", "１２"], "argument --epochs: expected a positive integer"),
    (["--seed", "1_0"], "argument --seed: expected a non-negative integer, got '1_0'"),
    (["--lr", "1_0"], "argument --lr: expected a finite number > 0, got '1_0'"),
    (["--lr", "١"], "argument --lr: expected a finite number > 0"),
])
def test_cli_numbers_are_read_as_a_csv_cell_is(capsys, argv, says):
    """int() and float() read '1_0' as 10 and '٣' as 3; '64,,32' dropped its empty entry
    and trained a 64-32 network."""
    with pytest.raises(SystemExit) as stop:
        from fastmlp import cli
        cli.make_parser().parse_args(["train", *argv])
    assert stop.value.code == 2 and says in capsys.readouterr().err


def test_cli_numbers_people_type_still_read():
    from fastmlp import cli
    args = cli.make_parser().parse_args(["train", "--layers", " 16, 8 ", "--epochs", "+3",
                                         "--lr", "1e-2", "--seed", "007"])
    assert (args.layers, args.epochs, args.lr, args.seed) == ([16, 8], 3, 0.01, 7)
    assert cli.make_parser().parse_args(["train", "--layers", ""]).layers == []


def test_no_hidden_layer_names_no_hidden_activation(capsys, tmp_path):
    rows = "".join(f"{i % 3},{i % 5},{'xy'[i % 2]}\n" for i in range(20))
    (tmp_path / "d.csv").write_text("a,b,y\n" + rows)
    code, out, err = run_cli(capsys, "train", "--data", str(tmp_path / "d.csv"), "--target",
                             "y", "--layers", "", "--epochs", "1", "--backend", "numpy")
    assert code == 0, err
    assert "model: 2-2 softmax, loss cross_entropy" in out   # it said "2-2 relu -> softmax"


@pytest.mark.parametrize("bad_first", [False, True])
def test_a_cell_past_the_csv_readers_limit_is_named_with_its_line(capsys, tmp_path,
                                                                 bad_first):
    """It said "not a readable CSV file (field larger than field limit (131072))",
    naming no line; a bad cell above it is still named first (errors in file order)."""
    rows = ["a,y"] + [f"{i},{i % 2}" for i in range(10)]
    rows.insert(6, "1" * 140_000 + ",0")
    if bad_first:
        rows.insert(3, "x,0")
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    code, out, err = run_cli(capsys, "train", "--data", str(tmp_path / "d.csv"),
                             "--target", "y", "--backend", "numpy")
    assert code == 2 and err.count("\n") == 1, err
    if bad_first:
        assert "line 4, column 'a': 'x' is not a number" in err
    else:
        assert f"d.csv, line 7: a cell longer than 131,072 characters, the most Python's " \
               "csv reader takes" in err

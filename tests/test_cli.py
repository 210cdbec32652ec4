"""The ``fastmlp`` command: the digits main job, CSV training, errors, the vehicle example."""
import gzip
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastmlp as fm
from helpers import run_cli
from fastmlp import cli, datasets

ROOT = Path(__file__).resolve().parents[1]


run = run_cli


def one_line_error(code, err):
    return code == 2 and err.startswith("fastmlp train: error:") and err.count("\n") == 1 \
        and "Traceback" not in err


def held_out_accuracy(out):
    return float(re.search(r"held-out accuracy: ([\d.]+) %", out).group(1)) / 100


def two_blobs_csv(tmp_path, n=60, seed=0):
    """A separable two-class table with string labels and the target in the middle."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, 3)) + 3.0 * y[:, None] + [0.0, 100.0, -5.0]
    lines = ["f1,f2,species,f3"]
    lines += [f"{a:.4f},{b:.4f},{'yes' if t else 'no'},{c:.4f}" for (a, b, c), t in zip(X, y)]
    path = tmp_path / "blobs.csv"
    path.write_text("\n".join(lines) + "\n")
    return path, X, y


# -- the main job ----------------------------------------------------------------------

def test_default_train_reaches_95_percent_on_digits(capsys, backend):
    code, out, err = run(capsys, "train", "--backend", backend)
    assert code == 0, err
    assert len(re.findall(r"^epoch +\d+/20 +loss [\d.]+ .*samples/s$", out, re.M)) == 20
    assert held_out_accuracy(out) >= 0.95
    assert "359 held out" in out and "CC BY 4.0" in out
    rate = float(re.search(r"= ([\d,]+) samples/s", out).group(1).replace(",", ""))
    assert rate > 0


def test_train_help():
    result = subprocess.run([sys.executable, "-m", "fastmlp", "train", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for option in ("--data", "--target", "--layers", "--activation", "--epochs", "--backend",
                   "--batch-size", "--lr", "--optimizer", "--dtype", "--seed",
                   "--test-fraction", "--loss", "--save", "--progress", "--plot"):
        assert option in result.stdout
    assert "auto (default: the fastest here" in " ".join(result.stdout.split())


def test_no_command_prints_help_and_fails(capsys):
    code, out, err = run(capsys)
    assert code == 2 and "train" in err and "vehicles" in err


# -- a user's CSV --------------------------------------------------------------------

def test_train_on_csv_and_save(capsys, tmp_path):
    path, X, y = two_blobs_csv(tmp_path)
    saved = tmp_path / "model.npz"
    code, out, err = run(capsys, "train", "--data", str(path), "--target", "species",
                         "--layers", "8,4", "--activation", "tanh", "--epochs", "30",
                         "--batch-size", "8", "--optimizer", "sgd", "--lr", "0.1",
                         "--dtype", "float64", "--save", str(saved))
    assert code == 0, err
    assert "60 rows, 3 features, 2 classes; 48 for training, 12 held out" in out
    assert "3-8-4-2 tanh -> softmax" in out and "float64" in out and "SGD(lr=0.1)," in out
    assert held_out_accuracy(out) >= 0.9
    # The saved model takes raw features (its scaler is stored); classes sort no < yes.
    model = fm.load(saved)
    assert model.dtype == np.float64 and model.input_scaling is not None
    assert model.classes_.tolist() == ["no", "yes"]
    assert model.feature_names_in_.tolist() == ["f1", "f2", "f3"]
    assert np.mean(model.predict(X).argmax(axis=1) == y) >= 0.9


def test_the_model_line_names_sgd_momentum(capsys, tmp_path):
    path, _, _ = two_blobs_csv(tmp_path)
    code, out, err = run(capsys, "train", "--data", str(path), "--target", "species",
                         "--epochs", "1", "--optimizer", "sgd", "--momentum", "0.9")
    assert code == 0, err
    assert "SGD(lr=0.1, momentum=0.9)," in out   # momentum was applied but not shown


def test_vehicles_seed_help_names_no_split():
    help_text = " ".join(cli.make_parser()._subparsers._group_actions[0]
                         .choices["vehicles"].format_help().split())
    assert "initialisation, shuffling (default 0)" in help_text


@pytest.mark.parametrize("loss", ["mse", "binary_cross_entropy"])
def test_train_csv_other_losses_without_held_out_rows(capsys, tmp_path, loss):
    path, _, _ = two_blobs_csv(tmp_path)
    code, out, err = run(capsys, "train", "--data", str(path), "--target", "species",
                         "--loss", loss, "--epochs", "40", "--test-fraction", "0")
    assert code == 0, err
    assert "-> sigmoid" in out and "0 held out" in out
    acc = float(re.search(r"training accuracy: ([\d.]+) %", out).group(1))
    assert acc >= 90


def timestamp_csv(tmp_path, n=1000, seed=0):
    """Unix-time-like feature (1.7e9, float32 spacing 128) whose class is in its low digits."""
    rng = np.random.default_rng(seed)
    seconds = rng.uniform(0, 1000, n)
    y = (seconds > 500).astype(int)
    lines = ["time,noise,late"] + [f"{1.7e9 + s:.3f},{e:.4f},{t}"
                                   for s, e, t in zip(seconds, rng.normal(size=n), y)]
    path = tmp_path / "times.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_saved_model_reproduces_held_out_predictions_on_large_offsets(tmp_path, backend):
    """Issue 8.3: folding the scaler into float32 weights lost the signal (92.75 % in training,
    50.25 % after fm.load); the scaler is now a float64 step stored with the model."""
    path, saved = timestamp_csv(tmp_path), tmp_path / "times.fastmlp"
    args = cli.make_parser().parse_args(
        ["train", "--data", str(path), "--epochs", "10", "--backend", backend, "--save", str(saved)])
    result = cli.run_train(args, out=open(os.devnull, "w"))
    assert np.mean(result.predictions.argmax(axis=1) == result.y_test) >= 0.9
    model = fm.load(saved)
    mean, scale = model.input_scaling
    assert mean.dtype == np.float64 and mean[0] == pytest.approx(1.7e9 + 500, rel=1e-6)
    # the loaded model, on raw held-out rows, gives the training run's predictions
    loaded = model.predict(result.X_test)
    assert result.X_test[:, 0].min() > 1.7e9  # raw, not standardized
    np.testing.assert_array_equal(loaded.argmax(axis=1), result.predictions.argmax(axis=1))
    np.testing.assert_allclose(loaded, result.predictions, rtol=1e-5, atol=1e-6)
    assert np.mean(loaded.argmax(axis=1) == result.y_test) >= 0.9


def test_saved_model_matches_the_printed_accuracy_on_raw_timestamps(capsys, tmp_path):
    """The issue's reproduction through the command line: before, 92.75 % printed, 50 % loaded."""
    path, saved = timestamp_csv(tmp_path), tmp_path / "times.fastmlp"
    code, out, err = run(capsys, "train", "--data", str(path), "--epochs", "10",
                         "--save", str(saved))
    assert code == 0, err
    X, y, _, _ = datasets.load_csv(path)
    _, X_test, _, y_test = datasets.train_test_split(X, y, 0.2, seed=0)  # the CLI's split
    loaded = np.mean(fm.load(saved).predict(X_test).argmax(axis=1) == y_test)
    assert held_out_accuracy(out) >= 0.9
    assert f"held-out accuracy: {100 * loaded:.2f} %" in out


def test_scaler_is_the_training_rows_statistics_kept_in_the_model(tmp_path):
    path, _, _ = two_blobs_csv(tmp_path)
    args = cli.make_parser().parse_args(["train", "--data", str(path), "--target", "species",
                                         "--epochs", "2"])
    result = cli.run_train(args, out=open(os.devnull, "w"))
    X_train = datasets.train_test_split(result.data.X, result.data.y, 0.2, 0)[0]
    mean, scale = result.model.input_scaling
    np.testing.assert_array_equal(mean, X_train.mean(axis=0))
    np.testing.assert_array_equal(scale, X_train.std(axis=0))
    # predict takes the raw held-out rows: the same outputs as standardizing by hand
    model = result.model
    model.set_input_scaling(None, None)
    np.testing.assert_allclose(model.predict((result.X_test - mean) / scale), result.predictions,
                               rtol=1e-6)
    assert not hasattr(cli, "fold_standardization")


@pytest.mark.parametrize("value", ["7", "0.1"])   # (0.1's computed std was 1.7e-16)
def test_constant_feature_gets_scale_1(tmp_path, value):
    lines = ["c,x,y"] + [f"{value},{i},{i % 2}" for i in range(20)]
    path = tmp_path / "const.csv"
    path.write_text("\n".join(lines) + "\n")
    args = cli.make_parser().parse_args(["train", "--data", str(path), "--epochs", "1"])
    mean, scale = cli.run_train(args, out=open(os.devnull, "w")).model.input_scaling
    assert mean[0] == float(value) and scale[0] == 1


# -- errors: one line on stderr, exit status 2 ------------------------------------------

BAD_CSVS = {
    "non_numeric": ("a,colour,y\n1,red,0\n2,blue,1\n", "column 'colour'"),
    "missing_target": ("a,b\n1,0\n2,1\n", "no column 'y'"),
    "empty": ("", "empty"),
    "ragged": ("a,y\n1,0\n2,1,3\n", "line 3: 3 fields but the header has 2"),
}


@pytest.mark.parametrize("case", sorted(BAD_CSVS))
def test_bad_csv_exits_2_with_one_line(capsys, tmp_path, case):
    text, message = BAD_CSVS[case]
    path = tmp_path / "bad.csv"
    path.write_text(text)
    code, out, err = run(capsys, "train", "--data", str(path), "--target", "y")
    assert code == 2
    assert message in err and err.startswith("fastmlp train: error:")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_bad_csv_from_the_shell_has_no_traceback(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("a,colour,y\n1,red,0\n2,blue,1\n")
    result = subprocess.run([sys.executable, "-m", "fastmlp", "train", "--data", str(path),
                             "--target", "y"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "column 'colour'" in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize("argv, message", [
    (["--data", "/nonexistent/x.csv"], "/nonexistent/x.csv: No such file or directory"),
    (["--target", "y"], "--target needs --data"),
    (["--backend", "nope"], "--backend nope: unknown backend 'nope'"),
    (["--activation", "wiggle"], "argument --activation: unknown activation 'wiggle'"),
    (["--activation", "softmax"], "softmax is only allowed on the output layer"),
    (["--optimizer", "rmsprop"], "argument --optimizer: unknown optimizer 'rmsprop'"),
    (["--momentum", "0.9"], "--momentum applies to --optimizer sgd only"),
    (["--loss", "hinge"], "argument --loss: unknown loss 'hinge'"),
    (["--layers", "99999999999"], "argument --layers: layer sizes must be below 2**31"),
    (["--lr", "-1"], "argument --lr: expected a finite number > 0, got '-1'"),
    (["--lr", "nan"], "argument --lr:"),
    (["--test-fraction", "1.5"], "argument --test-fraction: expected a number from 0"),
    (["--test-fraction", "-0.1"], "argument --test-fraction:"),
    (["--seed", "-1"], "argument --seed: expected a non-negative integer, got '-1'"),
    (["--seed", "x"], "argument --seed:"),
    (["--momentum", "1"], "argument --momentum:"),
    (["--task", "clustering"], "argument --task:"),
    (["--optimizer", "sgd", "--lr", "1e6"], "training diverged"),
])
def test_bad_options_exit_2(capsys, argv, message):
    """Issue 8.20: every option's error names the option as typed (not test_fraction)."""
    code, out, err = run(capsys, "train", "--epochs", "1", *argv)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert "test_fraction" not in err


def test_a_diverged_run_with_save_says_nothing_was_saved(capsys, tmp_path):
    """Round 54: its "the weights of the last finite epoch were kept" read as saved."""
    path = tmp_path / "m.npz"
    code, out, err = run(capsys, "train", "--epochs", "1", "--optimizer", "sgd", "--lr",
                         "1e6", "--save", str(path))
    assert code == 2 and "training diverged" in err, err
    assert err.rstrip().endswith(f"; nothing was saved to {path}") and not path.exists()


def test_vehicles_options_are_named(capsys):
    for argv, message in ([["--tol", "-1"], "argument --tol:"], [["--lr", "0"], "argument --lr:"],
                          [["--seed", "-2"], "argument --seed:"],
                          [["--backend", "nope"], "--backend nope: unknown backend"]):
        try:
            code = cli.main(["vehicles", *argv])
        except SystemExit as exc:
            code = exc.code
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, err


# -- the data file: every failure is one line naming it (issue 8.18) ------------------------

def _gz(text):
    return gzip.compress(text.encode())


BAD_FILES = {
    "truncated.csv.gz": (lambda: _gz("a,y\n" + "1,0\n2,1\n" * 500)[:-30], "truncated"),
    "plain.csv.gz": (lambda: b"a,y\n1,0\n2,1\n", "not a valid gzip file"),
    "damaged.csv.gz": (lambda: _gz("a,y\n" + "1,0\n2,1\n" * 500)[:40] + b"\xff" * 60
                       + _gz("a,y\n" + "1,0\n2,1\n" * 500)[100:], "gzip"),
    "latin1.csv": (lambda: "a,y\n1,caf\xe9\n2,b\n".encode("latin-1"), "not UTF-8"),
    "empty.csv": (lambda: b"", "empty"),
    "empty.csv.gz": (lambda: _gz(""), "empty"),
    "header.csv": (lambda: b"a,y\n", "no data rows"),
    "header.csv.gz": (lambda: _gz("a,y\n"), "no data rows"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_data_file_is_one_line_naming_it(capsys, tmp_path, name):
    make, message = BAD_FILES[name]
    path = tmp_path / name
    path.write_bytes(make())
    code, out, err = run(capsys, "train", "--data", str(path), "--epochs", "1")
    assert one_line_error(code, err), err
    assert err.startswith(f"fastmlp train: error: {path}") and message in err


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_missing_or_directory_data_is_one_line(capsys, tmp_path, kind):
    path = tmp_path / "data.csv"
    if kind == "directory":
        path.mkdir()
    code, out, err = run(capsys, "train", "--data", str(path))
    assert one_line_error(code, err), err
    assert err.startswith(f"fastmlp train: error: {path}: ") and "Errno" not in err
    assert ("No such file" if kind == "missing" else "Is a directory") in err


def test_truncated_gz_from_the_shell_exits_2(tmp_path):
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(_gz("a,y\n" + "1,0\n2,1\n" * 500)[:-30])
    result = subprocess.run([sys.executable, "-m", "fastmlp", "train", "--data", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"fastmlp train: error: {path}: the gzip data is truncated")


# -- --save is checked before training (issue 8.12) -------------------------------------------

@pytest.mark.parametrize("spelling", ["same", "symlink", "dotdot", "relative", "hardlink"])
def test_save_over_the_data_file_is_refused_before_training(capsys, tmp_path, monkeypatch,
                                                             spelling):
    path, _, _ = two_blobs_csv(tmp_path)
    before = path.read_bytes()
    save = {"same": str(path), "dotdot": str(tmp_path / ".." / tmp_path.name / "blobs.csv"),
            "relative": "./blobs.csv"}.get(spelling)
    if spelling == "symlink":
        save = str(tmp_path / "link.npz")
        os.symlink(path, save)
    if spelling == "hardlink":
        save = str(tmp_path / "hard.npz")
        os.link(path, save)
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "train", "--data", str(path), "--target", "species",
                         "--save", save)
    assert one_line_error(code, err), err
    assert f"--save {save}: that is the --data file" in err
    assert "epoch" not in out and path.read_bytes() == before


def _unwritable_folder(tmp_path):
    """A folder where no file can be created, also for root (chmod does not stop root)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    for candidate in (str(folder), "/sys"):
        try:
            fd, probe = __import__("tempfile").mkstemp(dir=candidate)
        except OSError:
            return candidate
        os.close(fd)
        os.unlink(probe)
    pytest.skip("no unwritable folder here (root, and /sys is writable)")


@pytest.mark.parametrize("case", ["missing_folder", "folder_is_a_file", "is_a_directory",
                                  "unwritable", "device"])
def test_bad_save_path_is_refused_before_training(capsys, tmp_path, case):
    data, _, _ = two_blobs_csv(tmp_path)
    save, message = {
        "missing_folder": (tmp_path / "nope" / "m.npz", "does not exist"),
        "folder_is_a_file": (data / "m.npz", f"{data} is not a folder"),   # (round 54)
        "is_a_directory": (tmp_path, "is a directory"),
        "device": ("/dev/null", "not a regular file"),
    }.get(case, (None, "cannot create a file in"))
    if case == "unwritable":
        save = os.path.join(_unwritable_folder(tmp_path), "m.npz")
    code, out, err = run(capsys, "train", "--data", str(data), "--target", "species",
                         "--save", str(save))
    assert one_line_error(code, err), err
    assert err.startswith(f"fastmlp train: error: --save {save}: ") and message in err
    assert "epoch" not in out and ".tmp" not in err
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".fastmlp")]


def test_save_path_check_leaves_nothing_behind(tmp_path):
    cli.check_save_path(str(tmp_path / "m.npz"), str(tmp_path / "d.csv"))
    assert os.listdir(tmp_path) == []


# -- huge finite values (issue 8.19) ------------------------------------------------------------

def test_values_near_float64_max_train(capsys, tmp_path):
    """Finite values up to 1.7e308 were reported as "X contains NaN or inf"."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    big = (0.9 + 0.05 * y + 0.01 * rng.random(200)) * 1.7e308
    path = tmp_path / "big.csv"
    path.write_text("big,y\n" + "".join(f"{float(b)!r},{t}\n" for b, t in zip(big, y)))
    code, out, err = run(capsys, "train", "--data", str(path), "--epochs", "10")
    assert code == 0, err
    assert "NaN" not in err + out and held_out_accuracy(out) >= 0.9


def test_values_that_cannot_be_standardized_are_named(capsys, tmp_path):
    path = tmp_path / "big.csv"
    path.write_text("x,huge,y\n" + "".join(f"{i},{'1.7e308' if i % 10 else '-1.7e308'},{i % 2}\n"
                                           for i in range(40)))
    code, out, err = run(capsys, "train", "--data", str(path), "--epochs", "1")
    assert one_line_error(code, err), err
    assert "column 'huge' has values too large to standardize (|x| up to 1.7e+308)" in err
    assert "NaN or inf" not in err


def test_warnings_are_one_line(capsys):
    code, out, err = run(capsys, "train", "--activation", "step", "--epochs", "1")
    assert code == 0
    assert err.startswith("fastmlp: warning:") and "step/sign" in err and err.count("\n") == 1


@pytest.mark.parametrize("argv", [["--layers", "64,x"], ["--layers", "0"], ["--epochs", "0"],
                                  ["--batch-size", "-3"], ["--epochs", "2.5"],
                                  ["--dtype", "float16"], ["--bogus"]])
def test_usage_errors_exit_2_with_one_line(capsys, argv):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", *argv])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "error:" in err


# -- the lessons' vehicles ------------------------------------------------------------

def test_vehicles_classifies_all_six_rows(capsys, backend, dtype):
    code, out, err = run(capsys, "vehicles", "--backend", backend, "--dtype", dtype)
    assert code == 0, err
    before, after = out.split("after training:")
    assert before.count("WRONG") > 0  # random weights get some rows wrong
    # columns: features | truth target | prediction | squared errors | predicted class
    rows = [line.split("|") for line in after.splitlines() if re.match(r" +[24] ", line)]
    assert len(rows) == 6
    assert [r[4].split() for r in rows] == [["car", "ok"]] * 3 + [["bike", "ok"]] * 3
    errors = np.array([r[3].strip(" []").split() for r in rows], dtype=float)
    assert errors.shape == (6, 2) and errors.max() < 0.01  # each output within 0.1 of its target
    assert "all 6 rows classified correctly" in after


def test_backend_and_dtype_take_any_case(capsys):
    """Round 28: --loss and --optimizer took any case, --backend NUMPY was refused."""
    code, out, err = run(capsys, "vehicles", "--backend", "NumPy", "--dtype", "FLOAT64")
    assert code == 0, err
    assert "backend numpy" in out and "float64" in out


@pytest.mark.parametrize("typed, says", [("RELU", None), ("Tanh", None),
                                         ("SOFTMAX", "softmax is only allowed on the output"),
                                         ("WIGGLE", "unknown activation 'WIGGLE'")])
def test_activation_takes_any_case(capsys, typed, says):
    """Round 55: --activation RELU was refused while the other names took any case."""
    parser = cli.make_parser()
    if says is None:
        args = parser.parse_args(["train", "--activation", typed])
        assert args.activation == typed.lower()
        return
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(["train", "--activation", typed])
    assert stop.value.code == 2 and says in capsys.readouterr().err


def test_vehicles_example_script():
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "vehicles.py")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "6 of 6 rows classified correctly" in result.stdout
    assert result.stdout.count("(y_hat - y)^2") == 12  # every row, before and after


@pytest.mark.parametrize("argv, says", [
    (["--epochs", "0"], "argument --epochs: expected a positive integer"),
    (["--seed", "-1"], "argument --seed: expected a non-negative integer"),
    (["--out", __file__], "not a folder"),
    # round 55: these failed in os.makedirs, a traceback after the digits had loaded
    (["--out", ""], "--out '': cannot make that folder"),
    (["--out", __file__ + "/sub"], "cannot make that folder (Not a directory)"),
])
def test_gradient_norms_example_refuses_bad_options(argv, says):
    """Round 54: --epochs 0 was a KeyError, --seed -1 a ValueError, --out a file a
    FileExistsError, each a traceback."""
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "gradient_norms.py"),
                             *argv], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and says in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


# A Ctrl-C landing while `import fastmlp` runs (NumPy, SciPy: ~0.3 s) is raised from
# that import; the stand-in below raises it there every time.
_INTERRUPTED_IMPORT = """
import sys
class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            raise KeyboardInterrupt
sys.meta_path.insert(0, CtrlC())
import _fastmlp_command
sys.exit(_fastmlp_command.main())
"""


@pytest.mark.parametrize("module", ["numpy", "fastmlp.model", "fastmlp._cli_train"])
def test_ctrl_c_while_the_command_imports_is_one_line_and_status_130(module):
    """The entry point used to be fastmlp.cli:main, reached only after the package had
    imported: a Ctrl-C during that import printed Python's traceback."""
    result = subprocess.run([sys.executable, "-c", _INTERRUPTED_IMPORT.format(module=module),
                             "train"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 130, result.stderr
    assert result.stderr == "fastmlp: interrupted\n" and result.stdout == ""


def test_the_command_is_the_guarded_entry_point():
    import tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["fastmlp"] == "_fastmlp_command:main"
    assert "_fastmlp_command" in project["tool"]["setuptools"]["py-modules"]


def test_ctrl_c_while_the_parser_is_built_is_one_line(capsys, monkeypatch):
    def interrupted():
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "make_parser", interrupted)
    assert cli.main(["train"]) == 130
    assert capsys.readouterr().err == "fastmlp: interrupted\n"

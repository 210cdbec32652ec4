"""Round 10 of the hostile tests of the ``fastmlp`` command and ``fastmlp.datasets``.

Each test failed before its fix: a long numeric cell took rows x its length x 4 bytes; the
network size check assumed 4 parameter-sized arrays (a run holds 12) and ignored cgroup
limits; --save or --plot could replace the shipped digits file; a held-out feature too
large for float32 stopped the run after an epoch, naming a row of the shuffled held-out
part; --loss binary_cross_entropy on two classes saved a multi-label model; labels written
2.0 were saved as the names '2'; the start of ``python -m fastmlp``'s command import was
not guarded; small error-path defects of read_csv and train_test_split; a --plot that
cannot be drawn failed after training.
"""
import contextlib
import gzip
import io
import os
import runpy
import sys
import tracemalloc

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import _cli_train, cli, datasets
from helpers import run_cli, traced_peak


run = run_cli


def train(*argv):
    args = cli.make_parser().parse_args(["train", "--backend", "cython"
                                         if "cython" in fm.available_backends() else "numpy",
                                         *argv])
    return cli.run_train(args, out=io.StringIO())


def one_line_error(code, err):
    return (code == 2 and err.startswith("fastmlp train: error:") and err.count("\n") == 1
            and "Traceback" not in err)


def write(tmp_path, text, name="data.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


# -- 1: a long numeric cell costs its own size, not rows x its size --------------------------

def test_read_csv_memory_stays_proportional_to_a_file_with_one_long_number(tmp_path):
    """A feature cell and a target cell of 130,000 characters (1 and 2 written with leading
    zeros) in 200 rows: np.array(cells).astype(float64) made a fixed-width array of
    200 x 130,000 x 4 bytes (99 MiB) per column; cell by cell it is the file's size."""
    long_one, long_two = "0" * 130_000 + "1", "0" * 130_000 + "2.5"
    rows = [f"{long_one},3,{long_two}"] + [f"{i % 7},{i % 5},{i * 0.5}" for i in range(199)]
    path = write(tmp_path, "a,b,y\n" + "\n".join(rows) + "\n")
    assert os.path.getsize(path) < 300_000
    def read():
        table = datasets.read_csv(path)
        return table, datasets.numeric_target(table)

    (table, target), peak = traced_peak(read)
    assert peak < 20 * 2 ** 20, f"peak {peak / 2 ** 20:.0f} MiB"
    assert table.X[0].tolist() == [1.0, 3.0] and target[0] == 2.5   # the same numbers
    assert table.X[1:, 0].tolist() == [float(i % 7) for i in range(199)]


@pytest.mark.parametrize("cell", ["7", "0.123456789"])
def test_read_csv_memory_of_a_wide_file_stays_near_its_table(tmp_path, cell):
    """Round 28: a chunk was 8,192 rows whatever the width, every cell a str held twice,
    and the chunks' tables were joined at the end (the table held twice): 3,000 rows x
    1,000 columns took over 10 times the text. Now a chunk holds at most 98,304 cells and
    the table grows in place: the peak stays below the float64 table's 1.25 x growth
    step plus a chunk's text, and the numbers are the same."""
    rows, width = 3000, 1000
    line = ",".join([cell] * width) + ",1\n"
    path = write(tmp_path, ",".join(f"c{j}" for j in range(width)) + ",y\n" + line * rows)
    table_bytes = rows * width * 8
    table, peak = traced_peak(lambda: datasets.read_csv(path))
    assert table.X.shape == (rows, width) and (table.X == float(cell)).all()
    assert peak < 1.25 * table_bytes + 16 * 2 ** 20, (
        f"peak {peak / 2 ** 20:.0f} MiB, table {table_bytes / 2 ** 20:.0f} MiB, "
        f"file {os.path.getsize(path) / 2 ** 20:.0f} MiB")


# -- 2: the network size check counts what a run holds, and the cgroup's limit ---------------

def test_parameter_copies_covers_what_a_train_run_holds(tmp_path):
    """Measured (tracemalloc) on `fastmlp train --save` with Adam, a 64-1000-1000-10 network,
    less a run of a tiny network (the data, the libraries): about 12 arrays the size of the
    parameters at the peak (theta, gradient, Adam's two buffers, fit's undo copy of theta and
    buffers, then --save's copies); the check assumed 4, so networks of up to 3 times the
    memory passed it and were killed by the system."""
    backend = "cython" if "cython" in fm.available_backends() else "numpy"

    def peak(layers):
        argv = ["train", "--backend", backend, "--epochs", "1", "--layers", layers,
                "--save", str(tmp_path / "m.fastmlp")]
        tracemalloc.start()
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                assert cli.main(argv) == 0
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    base = peak("8")
    n_params = 64 * 1000 + 1000 + 1000 * 1000 + 1000 + 1000 * 10 + 10
    copies = (peak("1000,1000") - base) / (n_params * 4)
    assert 8 < copies <= _cli_train.PARAMETER_COPIES + 0.5, copies


def test_cgroup_limits_are_read_v1_v2_and_own_cgroup(tmp_path):
    root, own = tmp_path / "cgroup", tmp_path / "self_cgroup"
    (root / "memory" / "job").mkdir(parents=True)
    (root / "memory.max").write_text("max\n")                      # v2, unlimited
    (root / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    own.write_text("4:memory:/job\n0::/\n")
    assert _cli_train._cgroup_limit(str(root), str(own)) == 9223372036854771712
    (root / "memory" / "job" / "memory.limit_in_bytes").write_text("3000000000\n")
    assert _cli_train._cgroup_limit(str(root), str(own)) == 3_000_000_000
    (root / "memory.max").write_text("2000000000\n")                # v2's own, smaller
    assert _cli_train._cgroup_limit(str(root), str(own)) == 2_000_000_000
    assert _cli_train._cgroup_limit(str(tmp_path / "none"), str(tmp_path / "none")) is None


def test_physical_memory_is_the_smaller_of_the_machine_and_the_cgroup(monkeypatch):
    machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    monkeypatch.setattr(_cli_train, "_cgroup_limit", lambda: 1_000_000)
    assert _cli_train._physical_memory() == 1_000_000
    monkeypatch.setattr(_cli_train, "_cgroup_limit", lambda: 10 * machine)
    assert _cli_train._physical_memory() == machine
    monkeypatch.setattr(_cli_train, "_cgroup_limit", lambda: None)
    assert _cli_train._physical_memory() == machine


# -- 3: without --data, --save and --plot must not be the shipped digits file ----------------

@pytest.mark.parametrize("with_data", [False, True], ids=["digits", "--data"])
@pytest.mark.parametrize("option", ["--save", "--plot"])
def test_save_or_plot_over_the_shipped_digits_is_refused_before_reading(capsys, monkeypatch,
                                                                        option, with_data,
                                                                        tmp_path):
    """`fastmlp train --save <fastmlp/data/digits.csv.gz>` replaced the data set with a model.
    (fm.Model is unset: were the check missing, the run stops before training, the file
    kept.)"""
    digits = os.path.join(os.path.dirname(fm.__file__), "data", "digits.csv.gz")
    with open(digits, "rb") as f:
        before = f.read()
    monkeypatch.setattr(fm, "Model", None)
    data = []
    if with_data:   # round 12: with --data given, the digits file was not protected
        (tmp_path / "d.csv").write_text("a,y\n1,0\n2,1\n3,0\n4,1\n")
        data = ["--data", str(tmp_path / "d.csv")]
    code, out, err = run(capsys, "train", "--epochs", "1", *data, option, digits)
    with open(digits, "rb") as f:
        assert f.read() == before
    assert one_line_error(code, err), err
    assert "that is the shipped digits file" in err and out == ""


def test_an_unreadable_digits_file_is_named(capsys, monkeypatch):
    def damaged():
        raise gzip.BadGzipFile("Not a gzipped file (b'PK')")
    monkeypatch.setattr(datasets, "load_digits", damaged)
    code, out, err = run(capsys, "train", "--epochs", "1")
    assert one_line_error(code, err), err
    assert "digits.csv.gz: the shipped digits cannot be read" in err and "reinstall" in err


# -- 4: every feature must fit the model's dtype once standardized, before training ----------

def outlier_csv(tmp_path):
    """60 rows; data row 5 (file line 7) has a = 1e39, finite in float64 only."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3)).round(5)
    lines = ["a,b,c,label"] + [f"{'1e39' if i == 5 else r[0]},{r[1]},{r[2]},"
                               f"{'yes' if r[0] > 0 else 'no'}" for i, r in enumerate(X)]
    return write(tmp_path, "\n".join(lines) + "\n", "outlier.csv")


def test_a_held_out_feature_too_large_for_float32_is_refused_naming_line_and_column(
        capsys, tmp_path):
    """With --seed 6 the row is held out (index 3 of the shuffled held-out part): the run
    trained an epoch, then stopped with 'X has a value too large for float32 (... at row 3,
    column 0)'."""
    path = outlier_csv(tmp_path)
    code, out, err = run(capsys, "train", "--data", str(path), "--backend", "numpy",
                         "--epochs", "5", "--seed", "6")
    assert one_line_error(code, err), err
    assert f"{path}, line 7, column 'a': 1e+39 is too large for a float32 model" in err
    assert "--dtype float64" in err and "epoch" not in out
    code, out, err = run(capsys, "train", "--data", str(path), "--backend", "numpy",
                         "--epochs", "1", "--seed", "6", "--dtype", "float64")
    assert code == 0, err


# -- 5: two classes with binary_cross_entropy: one sigmoid unit ------------------------------

def test_binary_cross_entropy_on_two_classes_saves_a_binary_classifier(tmp_path):
    """One sigmoid unit, as Keras (Dense(1, 'sigmoid') with binary_crossentropy) and
    scikit-learn's MLPClassifier (one logistic output for two classes) build a binary
    classifier, and as fastmlp.labels defines it (n_classes(1, binary cross-entropy) is 2):
    classes_ holds the two labels and predict_classes returns one of them per row. One unit
    per class made a multi-label model whose saved predict_classes gave indicator rows
    ([0, 0], [1, 1]), so the printed accuracy could not be reproduced from the file. (More
    than two classes stay one sigmoid unit each: multi-label.)"""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(200, 2))
    kinds = np.where(X[:, 0] + 0.3 * X[:, 1] > 0, "spam", "ham")
    path = write(tmp_path, "a,b,kind\n" + "".join(f"{a:.6f},{b:.6f},{k}\n"
                                                   for (a, b), k in zip(X, kinds)))
    saved = tmp_path / "m.fastmlp"
    result = train("--data", str(path), "--epochs", "20", "--loss", "binary_cross_entropy",
                   "--save", str(saved))
    model = fm.load(saved)
    assert model.net.output_dim == 1 and model.classes_.tolist() == ["ham", "spam"]
    predicted = model.predict_classes(result.X_test)
    assert predicted.shape == (len(result.X_test),)
    truth = np.array(["ham", "spam"])[result.y_test]
    accuracy = np.mean(predicted == truth)
    assert accuracy > 0.9
    printed = result.history.history["val_accuracy"][-1]
    assert printed == pytest.approx(accuracy)       # the file reproduces what was printed


# -- 6: integral decimal labels (2.0) are the integers, int64 --------------------------------

def test_labels_written_as_integral_decimals_are_int64_classes(tmp_path):
    """0.0, 1.0, 2.0 (pandas' text for an integer column that once held a NaN) were saved as
    the names '0', '1', '2', so predict_classes never equalled the data's labels (0 %),
    while Model.fit on the same labels learns int64 [0 1 2]."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(120, 2))
    k = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0).astype(int)
    path = write(tmp_path, "a,b,y\n" + "".join(f"{a:.6f},{b:.6f},{v}.0\n"
                                                for (a, b), v in zip(X, k)))
    saved = tmp_path / "m.fastmlp"
    result = train("--data", str(path), "--epochs", "20", "--save", str(saved))
    model = fm.load(saved)
    assert model.classes_.dtype == np.int64 and model.classes_.tolist() == [0, 1, 2]
    assert result.data.labels.dtype == np.int64
    assert np.mean(model.predict_classes(X) == k.astype(np.float64)) > 0.85


@pytest.mark.parametrize("cells, labels, names", [
    (["-3.00", "+5.", "1e3", "5"], [-3, 5, 1000], ["-3", "5", "1000"]),
    (["9007199254740993.0", "9007199254740992"], [2 ** 53, 2 ** 53 + 1],
     [str(2 ** 53), str(2 ** 53 + 1)]),                   # exact, not through float64
    (["2.5", "1"] * 3, ["1", "2.5"], ["1", "2.5"]),        # not integers: names
    (["1e30", "2e30"], ["1e+30", "2e+30"], ["1e+30", "2e+30"]),   # beyond int64: names
])
def test_integral_decimal_labels_are_read_exactly(tmp_path, cells, labels, names):
    from fastmlp import _cli_data
    rows = "".join(f"{i},{c}\n" for i, c in enumerate(cells))
    table = datasets.read_csv(write(tmp_path, "a,y\n" + rows))
    _, classes = datasets.class_labels(table)
    assert classes == names
    assert _cli_data._label_values(table, classes).tolist() == labels
    args = cli.make_parser().parse_args(["train"])
    task, why = cli.choose_task(args, table)   # --task auto counts them exactly too
    assert task == "classification" and f"with {len(names)} distinct values" in why


# -- 7: python -m fastmlp: the command's import is guarded -----------------------------------

def test_python_m_fastmlp_guards_the_import_of_the_command(capsys, monkeypatch):
    """The package itself is imported before fastmlp/__main__ runs (nothing there can guard
    it: the README points to the `fastmlp` command); the command's import after it is."""
    class Interrupt:
        def find_spec(self, name, path=None, target=None):
            if name == "fastmlp.cli":
                raise KeyboardInterrupt
            return None
    monkeypatch.delitem(sys.modules, "fastmlp.cli")
    monkeypatch.delitem(sys.modules, "fastmlp.__main__", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Interrupt(), *sys.meta_path])
    try:
        runpy.run_module("fastmlp", run_name="__main__", alter_sys=False)
    except SystemExit as exc:
        code = exc.code
    except KeyboardInterrupt:   # (uncaught, it would end the whole test session)
        pytest.fail("the KeyboardInterrupt came out of python -m fastmlp")
    assert code == 130
    assert capsys.readouterr().err == "fastmlp: interrupted\n"


# -- 8: small error-path defects -------------------------------------------------------------

def test_a_blank_first_line_is_called_a_blank_header_not_an_empty_file(tmp_path):
    path = write(tmp_path, "\na,b,y\n1,2,x\n3,4,z\n")
    with pytest.raises(ValueError, match=r"line 1: the header line is blank: .* \(the first "
                       r"line with text is line 2"):
        datasets.read_csv(path)
    with pytest.raises(ValueError, match="the file is empty"):
        datasets.read_csv(write(tmp_path, "\n \n\n", "blank.csv"))


def test_a_header_name_with_a_newline_keeps_errors_and_the_data_line_one_line(capsys,
                                                                            tmp_path):
    path = write(tmp_path, '"a\nb",c,y\n1,2,x\n3,4,z\n1,2,x\n3,4,z\n')
    code, out, err = run(capsys, "train", "--data", str(path), "--target", "q")
    assert one_line_error(code, err), err
    assert "its columns are: 'a\\nb', c, y" in err
    code, out, err = run(capsys, "train", "--data", str(path), "--backend", "numpy",
                         "--epochs", "1")
    assert code == 0, err
    assert "features 'a\\nb', c)" in out.splitlines()[0]


def test_read_csv_takes_bytes_and_path_like_paths(tmp_path):
    path = write(tmp_path, "a,y\n1,x\n2,z\n")
    for given in (os.fsencode(path), path, str(path)):
        table = datasets.read_csv(given)
        assert table.path == str(path) and table.X.tolist() == [[1.0], [2.0]]


def test_train_test_split_names_a_bad_seed():
    with pytest.raises(ValueError, match=r"seed must be a non-negative integer .* got -1"):
        datasets.train_test_split(np.zeros((4, 2)), np.zeros(4), 0.5, -1)
    with pytest.raises(TypeError, match=r"seed must be .* got 'x'"):
        datasets.train_test_split(np.zeros((4, 2)), np.zeros(4), 0.5, "x")


# -- 9: --plot of a curve that cannot be drawn -----------------------------------------------

def huge_target_csv(tmp_path, scale):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 2))
    y = (3 * X[:, 0] + X[:, 1] + 0.5 * rng.normal(size=100)) * scale
    return write(tmp_path, "a,b,y\n" + "".join(f"{a:.5f},{b:.5f},{t!r}\n"
                                               for (a, b), t in zip(X, y.tolist())), "huge.csv")


def test_plot_of_a_target_beyond_what_an_axis_spans_is_refused_before_training(capsys,
                                                                              tmp_path):
    """The RMSE curve is in the target's units; plot_history refuses values beyond 1e300,
    so the run trained and saved, then exited 2 without the PNG."""
    pytest.importorskip("matplotlib")
    path, saved = huge_target_csv(tmp_path, 1e301), tmp_path / "m.fastmlp"
    code, out, err = run(capsys, "train", "--data", str(path), "--backend", "numpy",
                         "--epochs", "2", "--dtype", "float64", "--save", str(saved),
                         "--plot", str(tmp_path / "c.png"))
    assert one_line_error(code, err), err
    assert f"--plot {tmp_path / 'c.png'}: the target's std" in err and "1e+300" in err
    assert out == "" and not saved.exists()


def test_a_plot_that_fails_after_saving_says_the_model_is_saved(capsys, tmp_path,
                                                               monkeypatch):
    pytest.importorskip("matplotlib")
    from fastmlp import plot

    def refuse(history, path):
        raise ValueError("plot_history: history['val_rmse'] holds 2e+300 in size, beyond "
                         "the 1e+300 matplotlib's axes can span")
    monkeypatch.setattr(plot, "plot_history", refuse)
    path, saved, png = huge_target_csv(tmp_path, 1.0), tmp_path / "m.fastmlp", tmp_path / "c.png"
    code, out, err = run(capsys, "train", "--data", str(path), "--backend", "numpy",
                         "--epochs", "1", "--save", str(saved), "--plot", str(png))
    assert one_line_error(code, err), err
    assert f"--plot {png}: not written: plot_history:" in err
    assert f"the model is saved all the same, to {saved}" in err
    assert saved.exists() and fm.load(saved).predict(np.zeros((1, 2))).shape == (1, 1)


# -- round 12: exact integers beside labels that are not integers ------------------------------

def test_exact_integer_labels_stay_apart_beside_a_fractional_one(tmp_path):
    """One label that is no integer (0.5, or beyond int64) sent the whole column through
    float64: 2**53 + 1 and 2**53 became one class, named 9007199254740992.0."""
    rows = ["9007199254740993", "9007199254740992", "0.5"] * 4
    path = tmp_path / "labels.csv"
    path.write_text("x,y\n" + "".join(f"{i},{label}\n" for i, label in enumerate(rows)))
    y, names = datasets.class_labels(datasets.read_csv(path))
    assert names == ["0.5", "9007199254740992", "9007199254740993"]
    assert y.tolist() == [2, 1, 0] * 4


def test_a_long_text_label_costs_its_own_size_not_rows_times_it(capsys, tmp_path):
    """One 100,000-character class label among 2,400 rows: cross_entropy's fit was given
    the label of every row as NumPy text (rows x the longest label x 4 bytes, 915 MiB).
    It trains on the class indices now and gets its labels after."""
    long = "x" * 100_000
    rows = [f"{i % 5},{long if i % 2 else 'short'}" for i in range(400)]
    path = write(tmp_path, "a,y\n" + "\n".join(rows) + "\n")
    tracemalloc.start()
    try:
        code, out, err = run(capsys, "train", "--data", str(path), "--epochs", "1",
                             "--backend", "numpy", "--save", str(tmp_path / "m.fastmlp"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 0, err
    assert peak < 40 * 2 ** 20, f"peak {peak / 2 ** 20:.0f} MiB"   # was 400 x 400 KB
    saved = fm.load(tmp_path / "m.fastmlp")
    assert sorted(saved.classes_.tolist()) == sorted(["short", long])


def test_a_limit_on_a_parent_cgroup_counts(tmp_path):
    """A systemd slice's MemoryMax= (or a pod's limit) is set on a cgroup above the
    process's own: only the root's and the own cgroup's were read."""
    root, own = tmp_path / "cgroup", tmp_path / "self_cgroup"
    (root / "limited.slice" / "session.scope").mkdir(parents=True)
    (root / "memory.max").write_text("max\n")
    (root / "limited.slice" / "memory.max").write_text("1073741824\n")
    (root / "limited.slice" / "session.scope" / "memory.max").write_text("max\n")
    own.write_text("0::/limited.slice/session.scope\n")
    assert _cli_train._cgroup_limit(str(root), str(own)) == 1073741824


def test_paths_holding_a_newline_keep_every_line_one_line(capsys, tmp_path):
    """A path the user gave is shown with its non-printing characters escaped: a newline
    in it made the error, the data line and the saved line two lines each."""
    folder = tmp_path / "two\nlines"
    folder.mkdir()
    code, out, err = run(capsys, "train", "--data", str(folder / "missing.csv"))
    assert one_line_error(code, err), err
    assert "two\\nlines" in err
    path = write(folder, "a,b,y\n1,2,x\n3,4,z\n1,2,x\n3,4,z\n")
    code, out, err = run(capsys, "train", "--data", str(path), "--backend", "numpy",
                         "--epochs", "1", "--save", str(folder / "m.npz"))
    assert code == 0, err
    assert out.splitlines()[0].startswith(f"data: '{tmp_path}/two\\nlines/data.csv' (target")
    saved = [line for line in out.splitlines() if line.startswith("saved to")]
    assert saved and saved[0].startswith(f"saved to '{tmp_path}/two\\nlines/m.npz': takes")
    assert fm.load(folder / "m.npz").n_params > 0


def test_a_path_holding_a_backslash_is_shown_unambiguously(capsys, tmp_path):
    """The two characters backslash and n in a folder's name are not shown as a newline's
    escape: a path holding a backslash or a character that does not print is shown as
    its repr (quoted, every backslash doubled); a plain path as typed."""
    folder = tmp_path / "back\\nslash"
    folder.mkdir()
    path = write(folder, "a,b,y\n1,2,x\n3,4,z\n1,2,x\n3,4,z\n")
    code, out, err = run(capsys, "train", "--data", str(path), "--backend", "numpy",
                         "--epochs", "1", "--save", str(tmp_path / "m.npz"))
    assert code == 0, err
    assert out.splitlines()[0].startswith(f"data: '{tmp_path}/back\\\\nslash/data.csv' (")
    assert f"saved to {tmp_path}/m.npz: takes" in out


def test_a_path_its_stdout_cannot_encode_is_printed_escaped_and_the_run_succeeds(tmp_path):
    """Under an ASCII stdout (PYTHONIOENCODING=ascii, a C locale) a non-ASCII path made
    the run exit 2 with a UnicodeEncodeError once the model was saved."""
    import subprocess
    data = write(tmp_path, "a,b,y\n1,2,x\n3,4,z\n1,2,x\n3,4,z\n", "dätä.csv")
    env = dict(os.environ, PYTHONIOENCODING="ascii")
    done = subprocess.run([sys.executable, "-m", "fastmlp", "train", "--data", str(data),
                           "--backend", "numpy", "--epochs", "1",
                           "--save", str(tmp_path / "café.npz")],
                          capture_output=True, text=True, encoding="ascii",
                          errors="strict", env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "d\\xe4t\\xe4.csv (target y" in done.stdout
    assert "saved to " in done.stdout and "caf\\xe9.npz: takes" in done.stdout
    assert fm.load(tmp_path / "café.npz").n_params > 0
    stdout_errors = sys.stdout.errors
    cli.main(["train", "--data", str(data), "--backend", "numpy", "--epochs", "1"])
    assert sys.stdout.errors == stdout_errors   # put back after an in-process run

"""``fastmlp train``'s training feedback (issues 9 and 11): one ``fit`` call whose callbacks
report each epoch, --progress, --plot, class labels given to fit, the resolved backend."""
import io
import os
import re
import sys

import numpy as np
import pytest

import fastmlp as fm
from helpers import run_cli
from fastmlp import cli, datasets
from fastmlp.backends import resolve

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


run = run_cli


def blobs_csv(tmp_path, n=60, seed=0, labels=("no", "yes")):
    """A separable table with one class per blob, class labels ``labels``."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(labels), n)
    X = rng.normal(size=(n, 3)) + 3.0 * y[:, None]
    lines = ["f1,f2,f3,species"] + [f"{a:.4f},{b:.4f},{c:.4f},{labels[t]}"
                                    for (a, b, c), t in zip(X, y)]
    path = tmp_path / "blobs.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def fit_calls(monkeypatch):
    """Every Model.fit call's (args, kwargs), the real fit still running."""
    calls = []
    real_fit = fm.Model.fit

    def counting_fit(self, *args, **kwargs):
        calls.append((args, kwargs))
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(fm.Model, "fit", counting_fit)
    return calls


def epoch_lines(out):
    return re.findall(r"^epoch +\d+/\d+ .*$", out, re.M)


# -- one fit call ---------------------------------------------------------------------------

@pytest.mark.parametrize("task", ["classification", "regression"])
def test_train_is_one_fit_call(capsys, tmp_path, backend, fit_calls, task):
    """Issue 9: the command called fit(epochs=1) once per epoch, re-validating X each time."""
    # regression: the last-but-one column, numeric, as the target
    path = blobs_csv(tmp_path, labels=("1", "2", "3") if task == "classification" else ("0", "1"))
    argv = ["--target", "f3"] if task == "regression" else []
    code, out, err = run(capsys, "train", "--data", str(path), "--epochs", "7",
                         "--backend", backend, *argv)
    assert code == 0, err
    # (the first numba model of a process also runs fastmlp.warmup's tiny fits)
    calls = [c for c in fit_calls if len(c[0][0]) == 48]
    assert len(calls) == 1
    _, kwargs = calls[0]
    assert kwargs["epochs"] == 7 and kwargs["callbacks"]
    assert len(epoch_lines(out)) == 7
    scores = r"accuracy [\d.]+" if task == "classification" else r"RMSE [\d.e+-]+  R\^2 [\d.-]+"
    assert all(re.search(rf"loss [\d.]+  held-out {scores}  [\d,]+ samples/s$", line)
               for line in epoch_lines(out))
    assert re.search(r"^training: 7 epochs x 48 rows in [\d.]+ s = [\d,]+ samples/s$", out, re.M)


def test_one_fit_prints_what_one_fit_per_epoch_printed(tmp_path, backend):
    """The numbers are those of the old structure: one fit(epochs=1) per epoch on the class
    indices, scoring the held-out rows after each (fit draws one permutation per epoch from
    the model's generator either way)."""
    path = blobs_csv(tmp_path, n=120, labels=("a", "b", "c"))
    args = cli.make_parser().parse_args(["train", "--data", str(path), "--epochs", "6",
                                         "--backend", backend, "--batch-size", "16"])
    out = io.StringIO()
    result = cli.run_train(args, out=out)
    printed = [line.rsplit("  ", 1)[0] for line in epoch_lines(out.getvalue())]

    X_train, _, y_train, _ = datasets.train_test_split(result.data.X, result.data.y, 0.2, 0)
    mean, scale = datasets.standardization(X_train)
    model = fm.Model([fm.Dense(64, "relu"), fm.Dense(3, "softmax")], input_dim=3,
                     loss="cross_entropy", optimizer=fm.Adam(lr=3e-3), backend=backend, seed=0)
    model.set_input_scaling(mean, scale)
    expected = []
    for epoch in range(1, 7):
        loss = model.fit(X_train, y_train, epochs=1, batch_size=16).history["loss"][0]
        acc = np.mean(model.predict(result.X_test).argmax(axis=1) == result.y_test)
        expected.append(f"epoch {epoch}/6  loss {loss:.4f}  held-out accuracy {acc:.4f}")
    assert printed == expected


def test_digits_accuracy_is_unchanged_by_the_one_fit_structure(capsys):
    """The README's main job on the reference backend: 98.05 % before and after."""
    code, out, err = run(capsys, "train", "--backend", "numpy")
    assert code == 0, err
    assert "held-out accuracy: 98.05 % (352/359 rows)" in out


def test_vehicles_is_one_fit_call(capsys, fit_calls):
    code, out, err = run(capsys, "vehicles", "--backend", "numpy")
    assert code == 0, err
    assert len(fit_calls) == 1


# -- class labels ----------------------------------------------------------------------------

def test_fit_gets_the_class_indices_and_the_file_keeps_the_labels(capsys, tmp_path,
                                                                  fit_calls):
    """fit trains on the class indices 0..k-1 and the model gets its labels after (round 12:
    the label of every row, as NumPy text, cost rows x the longest label x 4 bytes)."""
    path, saved = blobs_csv(tmp_path), tmp_path / "m.fastmlp"
    code, out, err = run(capsys, "train", "--data", str(path), "--epochs", "20",
                         "--save", str(saved))
    assert code == 0, err
    (X, Y), _ = fit_calls[0]
    assert sorted(set(np.asarray(Y).tolist())) == [0, 1]
    model = fm.load(saved)
    assert model.classes_.tolist() == ["no", "yes"]
    raw = datasets.read_csv(path, "species")
    assert np.mean(model.predict_classes(raw.X) == np.asarray(raw.cells)) > 0.9


def test_numeric_labels_keep_their_numeric_order(tmp_path):
    """classes_ in the data's order (1, 2, 10, not the names' '1' < '10' < '2'), the order the
    output units always had."""
    path = blobs_csv(tmp_path, n=90, labels=("1", "2", "10"))
    args = cli.make_parser().parse_args(["train", "--data", str(path), "--epochs", "20"])
    result = cli.run_train(args, out=open(os.devnull, "w"))
    assert result.model.classes_.dtype == np.int64   # the labels themselves (integers)
    assert result.model.classes_.tolist() == [1, 2, 10]
    labels = result.model.predict_classes(result.X_test)
    assert np.mean(labels == result.model.classes_[result.y_test]) > 0.9


def test_a_class_without_training_rows_still_trains(tmp_path):
    """fit is given the model's classes first: a label seen only in the held-out rows is
    still one of the model's outputs (fit alone would find 2 labels for 3 outputs)."""
    path = blobs_csv(tmp_path, n=40)
    X, y = np.zeros((40, 1)), np.arange(40)
    held_out_row = datasets.train_test_split(X, y, 0.2, 0)[3][0]
    lines = path.read_text().splitlines()
    lines[1 + held_out_row] = lines[1 + held_out_row].rsplit(",", 1)[0] + ",rare"
    path.write_text("\n".join(lines) + "\n")
    args = cli.make_parser().parse_args(["train", "--data", str(path), "--epochs", "2"])
    result = cli.run_train(args, out=open(os.devnull, "w"))
    assert result.model.classes_.tolist() == ["no", "rare", "yes"]
    assert result.predictions.shape == (8, 3)


def test_labels_that_print_alike_stay_distinct(tmp_path):
    """%g prints 0.1234561 and 0.1234562 both as 0.123456; the model maps labels to output
    units by name, so the names keep every digit then."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    lines = ["x,y"] + [f"{3 * t + rng.normal():.4f},{0.1234561 + 1e-7 * t:.7f}" for t in y]
    path = tmp_path / "close.csv"
    path.write_text("\n".join(lines) + "\n")
    args = cli.make_parser().parse_args(["train", "--data", str(path), "--epochs", "30",
                                         "--task", "classification"])
    result = cli.run_train(args, out=open(os.devnull, "w"))
    assert result.model.classes_.tolist() == ["0.1234561", "0.1234562"]
    assert np.mean(result.predictions.argmax(axis=1) == result.y_test) > 0.9


# -- the resolved backend -----------------------------------------------------------------------

@pytest.mark.parametrize("argv", [[], ["--backend", "auto"]])
def test_model_line_names_the_resolved_backend(capsys, tmp_path, argv):
    path = blobs_csv(tmp_path)
    code, out, err = run(capsys, "train", "--data", str(path), "--epochs", "1", *argv)
    assert code == 0, err
    assert f", backend {resolve('auto')}, float32;" in out and "backend auto" not in out
    code, out, err = run(capsys, "vehicles", "--epochs", "1", *argv)
    assert f"backend {resolve('auto')}, float32" in out and "backend auto" not in out


def test_explicit_backend_is_named(capsys, tmp_path, backend):
    code, out, err = run(capsys, "train", "--data", str(blobs_csv(tmp_path)), "--epochs", "1",
                         "--backend", backend)
    assert code == 0, err
    assert f", backend {backend}, float32;" in out


def test_a_header_row_of_numbers_is_noted(capsys, tmp_path):
    """Round 28: a CSV without a header row lost its first row to the column names, with
    exit 0 and no word (pandas does the same, silently). A header whose every name is a
    number is noted, once, on stderr; a header of words is not."""
    headerless = tmp_path / "nohdr.csv"
    headerless.write_text("".join(f"{i * 0.1 + 0.5:.3f},{(i % 7) * 0.3:.3f},{i % 2}\n"
                                  for i in range(40)))
    code, out, err = run(capsys, "train", "--data", str(headerless), "--epochs", "1")
    assert code == 0, err
    assert err.count("header row is a number (0.500, 0.000): the first row is read as the "
                     "names") == 1, err
    assert "39 rows" in out
    iris = tmp_path / "iris.csv"   # the target's name a class label (round 29)
    iris.write_text("".join(f"{5 + i * 0.1:.1f},{3 + (i % 7) * 0.1:.1f},"
                            f"{'Iris-setosa' if i % 2 else 'Iris-virginica'}\n"
                            for i in range(40)))
    code, out, err = run(capsys, "train", "--data", str(iris), "--epochs", "1")
    assert code == 0 and err.count("header row is a number (5.0, 3.0)") == 1, err
    for header, target in [("f1,f2,f3,species", []), ("0,1,2,species", []),
                           ("1,2,3,species", []), ("0,1,2,3", ["--target", "1"]),
                           ("nan,inf,2,species", [])]:
        named = blobs_csv(tmp_path)   # column names, or pandas' indices of unnamed columns
        rows = named.read_text().split("\n", 1)[1]
        if target:   # the labels in the second column (round 30: the indices' note)
            rows = "\n".join(",".join([r.split(",")[0], r.split(",")[3], *r.split(",")[1:3]])
                             for r in rows.strip().split("\n")) + "\n"
        named.write_text(header + "\n" + rows)
        code, out, err = run(capsys, "train", "--data", str(named), "--epochs", "1", *target)
        assert code == 0 and "header row" not in err, (header, err)


# -- --progress ----------------------------------------------------------------------------------

def test_progress_shows_one_bar_instead_of_the_epoch_lines(capsys, tmp_path):
    pytest.importorskip("tqdm")
    code, out, err = run(capsys, "train", "--data", str(blobs_csv(tmp_path)), "--epochs", "5",
                         "--progress")
    assert code == 0, err
    assert epoch_lines(out) == [] and "held-out accuracy:" in out
    last = err.split("\r")[-1]   # tqdm redraws one line
    assert re.match(r"epoch 5/5 \|█+\| ", last), err
    assert re.search(r"loss [\d.]+  val_accuracy [\d.]+  [\d,]+ samples/s", last)
    assert err.count("\n") == 1   # one bar, closed once


def test_an_interrupted_progress_bar_ends_before_the_interrupted_line(capsys, tmp_path,
                                                                     monkeypatch):
    """Round 28: a Ctrl-C during `train --progress` printed "interrupted" inside the
    bar's line, and tqdm's close at exit drew the bar again after it: the terminal's last
    line was a bar. The bar is closed (its line ended) before the command's one line."""
    pytest.importorskip("tqdm")
    from fastmlp import _cli_train
    real = _cli_train.EpochReport.on_epoch_end

    def interrupt_at_the_third(self, epoch, logs=None):
        real(self, epoch, logs)
        if epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(_cli_train.EpochReport, "on_epoch_end", interrupt_at_the_third)
    code, out, err = run(capsys, "train", "--data", str(blobs_csv(tmp_path)), "--epochs", "50",
                         "--progress")
    assert code == 130
    assert err.endswith("\nfastmlp train: interrupted\n"), repr(err[-200:])
    assert err.count("fastmlp train: interrupted") == 1


def test_progress_without_tqdm_prints_plain_lines(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("fastmlp.callbacks._import_tqdm", lambda: None)
    code, out, err = run(capsys, "train", "--data", str(blobs_csv(tmp_path)), "--epochs", "4",
                         "--progress")
    assert code == 0, err
    assert epoch_lines(out) == []
    lines = err.splitlines()
    assert len(lines) == 4 and all(re.match(rf"epoch {i + 1}/4  loss [\d.]+  val_accuracy "
                                            r"[\d.]+  [\d,]+ samples/s$", line)
                                   for i, line in enumerate(lines)), err


# -- --plot ----------------------------------------------------------------------------------------

def test_plot_writes_the_format_its_suffix_names(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    pdf = tmp_path / "curves.pdf"
    code, out, err = run(capsys, "train", "--data", str(blobs_csv(tmp_path)), "--epochs", "2",
                         "--plot", str(pdf))
    assert code == 0, err
    with open(pdf, "rb") as f:
        assert f.read(5) == b"%PDF-"   # PNG data under that name before round 55

def test_plot_writes_the_curves_and_gradient_norms(capsys, tmp_path, backend):
    image = pytest.importorskip("matplotlib.image")
    png = tmp_path / "curves.png"
    args = cli.make_parser().parse_args(["train", "--data", str(blobs_csv(tmp_path)),
                                         "--layers", "8,8", "--epochs", "4",
                                         "--backend", backend, "--plot", str(png)])
    out = io.StringIO()
    result = cli.run_train(args, out=out)
    assert f"curves written to {png}" in out.getvalue()
    with open(png, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    # panels: loss (+ val_loss), val_accuracy, gradient norms; 6.4 x 3.2 inches each at 100 dpi
    assert image.imread(png).shape[:2] == (3 * 320, 640)
    history = result.history.history
    assert len(history["grad_norm"]) == 4 and all(len(n) == 3 for n in history["grad_norm"])
    assert len(history["val_loss"]) == len(history["val_accuracy"]) == 4
    printed = [float(a) for a in re.findall(r"held-out accuracy ([\d.]+)", out.getvalue())]
    assert printed == [round(a, 4) for a in history["val_accuracy"]]


def test_plot_without_matplotlib_fails_before_training(capsys, tmp_path, monkeypatch,
                                                      fit_calls):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)   # import raises ImportError
    png = tmp_path / "curves.png"
    code, out, err = run(capsys, "train", "--data", str(blobs_csv(tmp_path)), "--plot", str(png))
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"fastmlp train: error: --plot {png}: needs matplotlib")
    assert "pip install fastmlp[plot]" in err
    assert fit_calls == [] and "epoch" not in out and not png.exists()


@pytest.mark.parametrize("case", ["missing_folder", "directory", "data_file", "save_file",
                                  "suffix"])
def test_bad_plot_path_is_refused_before_training(capsys, tmp_path, fit_calls, case):
    pytest.importorskip("matplotlib")
    data = blobs_csv(tmp_path)
    plot, message, extra = {
        "missing_folder": (tmp_path / "nope" / "c.png", "does not exist", []),
        "directory": (tmp_path, "is a directory", []),
        "data_file": (data, "that is the --data file", []),
        "save_file": (tmp_path / "m.png", "that is the --save file",
                      ["--save", str(tmp_path / "." / "m.png")]),
        # it had written PNG data under any name (round 55)
        "suffix": (tmp_path / "c.out", "the suffix '.out' names no image format", []),
    }[case]
    code, out, err = run(capsys, "train", "--data", str(data), "--plot", str(plot), *extra)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"fastmlp train: error: --plot {plot}: ") and message in err
    assert fit_calls == [] and "epoch" not in out

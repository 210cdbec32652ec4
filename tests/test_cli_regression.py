"""``fastmlp train`` on a numeric target: regression (issue 8.21).

A continuous target with ``--loss mse`` used to become a 214-class classifier
with 0 % accuracy; it now trains a linear-output regressor and reports RMSE and R^2.
"""
import io
import math
import os
import re

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import cli
from helpers import run_cli


run = run_cli


def linear_csv(tmp_path, n=400, seed=0, offset=150.0, noise=0.1, name="linear.csv"):
    """y = offset + 30 x1 - 20 x2 + 5 x3 + noise: an easy target with a large mean."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3)) * [1.0, 2.0, 0.5] + [0.0, 10.0, -3.0]
    y = offset + X @ [30.0, -20.0, 5.0] + noise * 30 * rng.normal(size=n)
    lines = ["x1,x2,x3,y"] + [f"{a:.6f},{b:.6f},{c:.6f},{t:.6f}" for (a, b, c), t in zip(X, y)]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path, X, y


def train(*argv):
    args = cli.make_parser().parse_args(["train", *argv])
    return cli.run_train(args, out=open(os.devnull, "w"))


def test_continuous_target_with_mse_is_regressed(capsys, tmp_path, backend):
    path, _, _ = linear_csv(tmp_path)
    code, out, err = run(capsys, "train", "--data", str(path), "--loss", "mse",
                         "--epochs", "40", "--backend", backend)
    assert code == 0, err
    assert "numeric target (mean" in out and "classes" not in out
    assert "3-64-1 relu -> linear, loss mse" in out
    assert "regression (numeric target and --loss mse)" in out
    epochs = re.findall(r"^epoch +\d+/40 +loss [\d.]+ +held-out RMSE ([\d.e+-]+) +R\^2 ([\d.-]+) ",
                        out, re.M)
    assert len(epochs) == 40
    final = re.search(r"held-out RMSE: ([\d.e+-]+) \(target std ([\d.e+-]+)\), R\^2: ([\d.-]+) "
                      r"\(80 rows\)", out)
    rmse, std, r2 = (float(g) for g in final.groups())
    assert r2 > 0.9 and rmse < 0.3 * std
    assert (rmse, r2) == (float(epochs[-1][0]), float(epochs[-1][1]))


def test_auto_task_rule(tmp_path):
    path, _, _ = linear_csv(tmp_path)
    result = train("--data", str(path), "--epochs", "1")  # no --loss: 400 distinct values
    assert result.data.task == "regression" and "400 distinct values" in result.data.why
    few = tmp_path / "few.csv"
    few.write_text("a,y\n" + "".join(f"{i},{i % 3}\n" for i in range(30)))
    result = train("--data", str(few), "--epochs", "1")
    assert result.data.task == "classification" and result.data.classes == ["0", "1", "2"]
    measured = tmp_path / "measured.csv"  # 12 distinct non-integer values in 15 rows
    measured.write_text("a,y\n" + "".join(f"{i},{(i % 12) / 7:.4f}\n" for i in range(15)))
    result = train("--data", str(measured), "--epochs", "1", "--test-fraction", "0")
    assert result.data.task == "regression" and "non-integer" in result.data.why
    result = train("--data", str(path), "--epochs", "1", "--task", "classification")
    assert result.data.task == "classification" and len(result.data.classes) == 400
    result = train("--data", str(few), "--epochs", "1", "--task", "regression")
    assert result.data.task == "regression" and result.data.why == "--task regression"


def test_printed_scores_are_those_of_the_predictions(tmp_path):
    path, _, _ = linear_csv(tmp_path, noise=0.5)
    args = cli.make_parser().parse_args(["train", "--data", str(path), "--epochs", "20",
                                         "--dtype", "float64"])
    out = io.StringIO()
    result = cli.run_train(args, out=out)
    y, p = result.y_test, result.predictions
    assert p.shape == y.shape and p.dtype == np.float64
    rmse = math.sqrt(np.mean((p - y) ** 2))
    r2 = 1 - np.sum((p - y) ** 2) / np.sum((y - y.mean()) ** 2)
    assert 0.5 < r2 < 0.999  # noisy: a real fit, not a copy of the targets
    assert f"held-out RMSE: {rmse:.6g} (target std " in out.getvalue()
    assert f"R^2: {r2:.4f} (80 rows)" in out.getvalue()


def test_saved_regressor_outputs_the_target_in_its_units(tmp_path, backend, dtype):
    path, _, _ = linear_csv(tmp_path)
    saved = tmp_path / "reg.fastmlp"
    result = train("--data", str(path), "--epochs", "30", "--backend", backend,
                   "--dtype", dtype, "--save", str(saved))
    model = fm.load(saved)
    assert model.net.layers[-1].activation.name == "linear" and model.classes_ is None
    loaded = model.predict(result.X_test)[:, 0]
    rtol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(loaded, result.predictions, rtol=rtol, atol=rtol * 150)
    y = result.y_test
    r2 = 1 - np.sum((loaded - y) ** 2) / np.sum((y - y.mean()) ** 2)
    assert r2 > 0.9


def test_regression_without_held_out_rows_reports_training_scores(capsys, tmp_path):
    path, _, _ = linear_csv(tmp_path)
    code, out, err = run(capsys, "train", "--data", str(path), "--epochs", "5",
                         "--test-fraction", "0")
    assert code == 0, err
    assert re.search(r"^training RMSE: [\d.e+-]+ \(target std [\d.e+-]+\), R\^2: [\d.-]+ "
                     r"\(400 rows, none held out\)$", out, re.M)


@pytest.mark.parametrize("text, argv, message", [
    ("a,y\n1,0.5\n2,1.5\n3,2.5\n", ["--task", "regression", "--loss", "cross_entropy"],
     "--loss cross_entropy: regression trains with mse"),
    ("a,y\n1,0.5\n2,1.5\n3,2.5\n", ["--task", "regression", "--loss", "binary_cross_entropy"],
     "--loss binary_cross_entropy: regression trains with mse"),
    ("a,kind\n1,cat\n2,dog\n3,cat\n", ["--task", "regression"],
     "line 2, target column 'kind': 'cat' is not a finite number"),
])
def test_regression_errors(capsys, tmp_path, text, argv, message):
    path = tmp_path / "pets.csv"
    path.write_text(text)
    code, out, err = run(capsys, "train", "--data", str(path), *argv)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert "epoch" not in out


def test_classification_is_unchanged(capsys, tmp_path):
    """Text labels and a few integer labels stay classes, also with --loss mse on text."""
    lines = ["f,label"] + [f"{i + 0.1 * (i % 7)},{'big' if i >= 20 else 'small'}"
                           for i in range(40)]
    path = tmp_path / "sizes.csv"
    path.write_text("\n".join(lines) + "\n")
    for loss in ("cross_entropy", "mse"):
        code, out, err = run(capsys, "train", "--data", str(path), "--loss", loss,
                             "--epochs", "30", "--test-fraction", "0")
        assert code == 0, err
        assert "2 classes" in out and "classification (text labels in the target column)" in out
        assert float(re.search(r"training accuracy: ([\d.]+) %", out).group(1)) >= 90

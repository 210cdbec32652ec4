"""The README's Python examples run as written and do what their comments say.

Each ```python block of README.md is taken from the file itself (so an edit of the
README is tested, not a copy of it); a block that needs data the README leaves to
the reader (``frame``, ``X``, ``y``) gets it from a small preamble here. Blocks
needing MPI or a GPU are covered by their own suites (test_distributed*.py,
test_cuda*.py) and only checked to be there.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import fastmlp as fm
from fastmlp.datasets import load_digits

README = Path(__file__).resolve().parent.parent / "README.md"
# Each README block by a piece of its text: those run here, then those tested elsewhere.
QUICK_START, LABELS, FEEDBACK, SKLEARN = ("model = fm.Model(\n    [fm.Dense(4",
                                         "model.fit(frame, species", "EarlyStopping(",
                                         "GridSearchCV(")
ELSEWHERE = ("distributed.fit(", 'backend="cuda"')   # test_distributed*.py, test_cuda*.py


def _python_blocks():
    """Every ```python block of the README, in order."""
    text = README.read_text(encoding="utf-8")
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)


def _block(first_line_part):
    """The one README block containing ``first_line_part``."""
    found = [b for b in _python_blocks() if first_line_part in b]
    assert len(found) == 1, f"README: {len(found)} python blocks contain {first_line_part!r}"
    return found[0]


def _run(code, namespace, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the examples save files in the working directory
    exec(compile(code, str(README), "exec"), namespace)
    return namespace


def test_every_block_is_covered_here():
    """A new README example must be added to this file (or to the list of blocks
    tested elsewhere), so none goes untested."""
    markers = [QUICK_START, LABELS, FEEDBACK, SKLEARN, *ELSEWHERE]
    blocks = _python_blocks()
    assert len(blocks) == len(markers)
    for marker in markers:
        assert sum(marker in b for b in blocks) == 1, marker


@pytest.mark.skipif("numba" not in fm.available_backends(), reason="the example uses numba")
def test_quick_start(tmp_path, monkeypatch):
    ns = _run(_block(QUICK_START), {}, tmp_path, monkeypatch)
    history, model, X, Y = ns["history"], ns["model"], ns["X"], ns["Y"]
    losses = history.history["loss"]
    assert losses[-1] <= 1e-3 and len(losses) < 2000           # "stopped early"
    assert model.predict(X).shape == (6, 2)
    assert isinstance(model.evaluate(X, Y), float)
    assert [w.shape for w in model.get_weights()] == [(3, 4), (4,), (4, 2), (2,)]
    assert (tmp_path / "vehicles.fastmlp").is_file()
    assert model.backend == "numba" and model.dtype == np.float32   # the loaded one
    np.testing.assert_array_equal(model.predict(X), fm.load(tmp_path / "vehicles.fastmlp").predict(X))
    assert model.predict(X).argmax(1).tolist() == [0, 0, 0, 1, 1, 1]    # cars, then bikes


def test_labels_and_feature_names(tmp_path, monkeypatch):
    pd = pytest.importorskip("pandas")
    datasets = pytest.importorskip("sklearn.datasets")
    iris = datasets.load_iris(as_frame=True)
    frame = iris.data
    species = pd.Series(iris.target_names[iris.target])
    ns = _run("import fastmlp as fm\n" + _block(LABELS),
              {"frame": frame, "species": species}, tmp_path, monkeypatch)
    model = ns["model"]
    assert model.classes_.tolist() == ["setosa", "versicolor", "virginica"]
    assert model.predict_classes(frame[:2]).tolist() == ["setosa", "setosa"]
    assert list(model.feature_names_in_) == list(frame.columns)


def test_training_feedback(tmp_path, monkeypatch):
    X, y = load_digits()
    X, y = X[:400] / 16.0, y[:400]
    model = fm.Model([fm.Dense(32, "relu"), fm.Dense(10, "softmax")], input_dim=X.shape[1],
                     loss="cross_entropy", optimizer=fm.Adam(0.01), seed=0)
    ns = _run(_block(FEEDBACK), {"model": model, "X": X, "y": y}, tmp_path, monkeypatch)
    logs = ns["history"].history
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(logs)
    assert (tmp_path / "best.fastmlp").is_file()
    assert fm.load(tmp_path / "best.fastmlp").predict(X[:3]).shape == (3, 10)


@pytest.mark.filterwarnings("ignore:Stochastic optimizer")  # max_iter=50, as the README
def test_scikit_learn(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    X, y = load_digits()
    X, y = X[:300], y[:300]
    ns = _run(_block(SKLEARN), {"X": X, "y": y}, tmp_path, monkeypatch)
    search = ns["search"]
    assert search.best_params_["mlpclassifier__hidden_layer_sizes"] in [(32,), (64, 32)]
    assert search.score(X, y) > 0.9

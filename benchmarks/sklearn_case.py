"""The scikit-learn rows: fastmlp.sklearn.MLPClassifier against scikit-learn's own
MLPClassifier, the estimator a scikit-learn user would pick instead.

The digits set (1,797 × 64, 10 classes), standardised, as a scikit-learn user passes it
(float64). Both estimators get the same settings: one hidden layer of 64 relu units,
Adam (learning_rate_init=1e-3), batch_size 200 ("auto"), alpha 1e-4, shuffling, and
exactly EPOCHS epochs (tol=0 with an n_iter_no_change no run reaches, so neither stops
early). Timed calls: ``fit`` (the whole call, a new model each time), ``predict_proba``
of all rows, ``predict`` of one row, and ``partial_fit`` of a 64-row batch (one Adam
step of a streaming fit, after a first call given ``classes``); the last two also as a
pandas user makes them ("frame" rows: estimators fitted on a DataFrame with column
names, then given a 1-row DataFrame, or a 64-row DataFrame and a Series of labels).

The same work, checked: both run EPOCHS epochs over every row (n_iter_ and t_ equal)
and both fit the training rows (accuracy >= MIN_ACCURACY); a partial_fit trains one
step on STREAM_ROWS rows in each (t_ + STREAM_ROWS; batch_size "auto", so the batch is
one step in both). Their weights cannot match:
each library draws its own initial weights and shuffles with its own generator.
fastmlp computes in float32 by default and scikit-learn in the dtype of X (here
float64); the "cython float64" column runs fastmlp in float64 too.
"""
from __future__ import annotations

import functools
import warnings

import numpy as np

EPOCHS = 20
MIN_ACCURACY = 0.9
SETTINGS = dict(hidden_layer_sizes=(64,), activation="relu", solver="adam",
                learning_rate_init=1e-3, alpha=1e-4, batch_size=200, max_iter=EPOCHS,
                tol=0.0, n_iter_no_change=10 ** 6, shuffle=True, random_state=0)
# (column, what builds its estimator)
COLUMNS = ("scikit-learn", "cython", "numba", "cython float64")
CALLS = ("fit", "predict_proba", "predict-1", "partial_fit-64", "predict-1 frame",
         "partial_fit-64 frame")
STREAM_ROWS = 64


def available():
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return False
    return True


def data():
    """(X (1797, 64) float64 standardised, y (1797,) int labels 0..9)."""
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    X = (X - X.mean(axis=0)) / np.where(X.std(axis=0) > 0, X.std(axis=0), 1.0)
    return np.ascontiguousarray(X), y


def estimator(column):
    """A new, unfitted estimator for ``column``; None if that backend is missing here."""
    if column == "scikit-learn":
        from sklearn.neural_network import MLPClassifier
        return MLPClassifier(**SETTINGS)
    from fastmlp.sklearn import MLPClassifier
    backend, _, dtype = column.partition(" ")
    if not _available(backend):
        return None
    return MLPClassifier(backend=backend, dtype=dtype or "float32", **SETTINGS)


@functools.lru_cache(maxsize=None)
def _available(backend):
    """Whether fastmlp's ``backend`` imports here, asked once: the timed ``fit`` builds its
    estimator each time, and fm.available_backends() tries every backend's import again
    (the cuda backend's failing one took 6 ms of each 22 ms fit where Python writes no
    bytecode cache)."""
    from fastmlp import backends
    return backends.imports(backend)


class Case:
    """One column's estimator, fitted once; ``calls[name]()`` runs one timed call."""

    def __init__(self, column, X, y):
        import pandas as pd
        self.column, self.X, self.y = column, X, y
        self.fitted = self.fit()
        self.streaming = self.stream(X, y)
        batch = X[STREAM_ROWS:2 * STREAM_ROWS], y[STREAM_ROWS:2 * STREAM_ROWS]
        # the same data as a pandas user has it: named columns, a Series of labels
        names = [f"pixel_{i}" for i in range(X.shape[1])]
        self.frame = frame = pd.DataFrame(X, columns=names)
        labels = pd.Series(y, name="digit")
        self.fitted_frame = self.fit(frame, labels)
        self.streaming_frame = self.stream(frame, labels)
        one, one_frame = X[:1], frame.iloc[:1]
        rows = slice(STREAM_ROWS, 2 * STREAM_ROWS)
        batch_frame = frame.iloc[rows], labels.iloc[rows]
        self.calls = {"fit": self.fit,
                      "predict_proba": lambda: self.fitted.predict_proba(X),
                      "predict-1": lambda: self.fitted.predict(one),
                      "partial_fit-64": lambda: self.streaming.partial_fit(*batch),
                      "predict-1 frame": lambda: self.fitted_frame.predict(one_frame),
                      "partial_fit-64 frame":
                          lambda: self.streaming_frame.partial_fit(*batch_frame)}

    def fit(self, X=None, y=None):
        with warnings.catch_warnings():   # max_iter reached, on purpose
            warnings.simplefilter("ignore")
            return estimator(self.column).fit(self.X if X is None else X,
                                              self.y if y is None else y)

    def stream(self, X, y):
        """An estimator after a first partial_fit on X's first STREAM_ROWS rows."""
        return estimator(self.column).set_params(batch_size="auto").partial_fit(
            X[:STREAM_ROWS], y[:STREAM_ROWS], classes=np.unique(y))

    def check(self):
        """The same work as the other columns: EPOCHS epochs over every row, the rows fitted
        (from the array and from the frame), and one step per partial_fit."""
        accuracies = []
        for est, X in ((self.fitted, self.X), (self.fitted_frame, self.frame)):
            assert est.n_iter_ == EPOCHS and est.t_ == EPOCHS * len(self.X), \
                f"{self.column}: n_iter_ {est.n_iter_}, t_ {est.t_}"
            accuracies.append(float(np.mean(est.predict(X) == self.y)))
        assert min(accuracies) >= MIN_ACCURACY, \
            f"{self.column}: training accuracy {accuracies}"
        for stream, call in ((self.streaming, "partial_fit-64"),
                             (self.streaming_frame, "partial_fit-64 frame")):
            rows = stream.t_
            self.calls[call]()
            assert stream.t_ == rows + STREAM_ROWS, \
                f"{self.column}: {call} went from t_ {rows} to {stream.t_}"
        return accuracies[0]


def measure(min_time, rounds, timer):
    """{column: {"accuracy": a, call: seconds per call}} for the columns that run here;
    ``timer(run, seconds)`` -> (median, fastest) seconds per call (report.measure)."""
    import time
    X, y = data()
    cases = {}
    for column in COLUMNS:
        if estimator(column) is not None:
            cases[column] = Case(column, X, y)
    out = {column: {"accuracy": case.check()} for column, case in cases.items()}
    for _ in range(max(1, rounds)):
        for column, case in cases.items():
            for call in CALLS:
                time.sleep(0.1)   # let the last library's spinning threads go to sleep
                fastest = timer(case.calls[call], min_time / rounds)[1]
                out[column][call] = min(out[column].get(call, np.inf), fastest)
    return out


def table(results):
    """Markdown lines: seconds per call and × scikit-learn for each column."""
    if not results:
        return []
    names = list(results)
    out = ["", f"scikit-learn: `fastmlp.sklearn.MLPClassifier` against scikit-learn's own "
           f"`MLPClassifier`, digits (1,797 × 64, standardised float64), 64 relu units, Adam, "
           f"batch 200, {EPOCHS} epochs per `fit` (tol=0: no early stop); time per call "
           "(× scikit-learn)", "",
           "| call | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    base = results.get("scikit-learn")
    for call in CALLS:
        cells = []
        for name in names:
            seconds = results[name][call]
            shown = (f"{seconds * 1e3:,.2f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:,.1f} µs")
            if base is not None and name != "scikit-learn":
                shown += f" ({base[call] / seconds:.2f}×)"
            cells.append(shown)
        out.append(f"| {call} | " + " | ".join(cells) + " |")
    out.append("| training accuracy after fit | " + " | ".join(
        f"{results[n]['accuracy']:.3f}" for n in names) + " |")
    out += ["", "Each column trains the same epochs over the same rows (checked: n_iter_ and "
            "t_); weights differ (each library draws its own start and shuffles). fastmlp "
            "columns are float32 unless named float64; scikit-learn computes in float64."]
    return out


if __name__ == "__main__":   # the table is report.py's: run it alone there
    import sys

    import report
    report.main(["--only-sklearn", *sys.argv[1:]])

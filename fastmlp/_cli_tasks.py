"""``fastmlp train``'s two tasks: what ``fit`` is given and how the held-out rows are scored.

:class:`Classification` scores accuracy, :class:`Regression` RMSE (in the
target's units) and R^2. Both give ``scores`` as a dict of floats named as
fit's logs name validation metrics (``val_accuracy``; ``val_rmse``, ``val_r2``),
so they go into the history, the progress bar and the --plot curves as they are.
"""
from __future__ import annotations

import math

import numpy as np

from fastmlp import datasets


def _not_finite(P, which):
    """Why rows' scores are undefined, or None: the outputs P (m, k) of some rows are not
    finite (a feature value the model can hold once standardized, 4e39 in float32, can
    still overflow its first layer). Such a row is no class (predict_classes refuses it)
    and has no error: its scores are NaN, as fm.metrics gives them, not a guess."""
    bad = int(np.count_nonzero(~np.isfinite(P).all(axis=1)))
    if not bad:
        return None
    return (f"the model's outputs are not finite for {bad} of the {len(P)} {which} rows (a "
            "feature value too large for the model overflows its first layer: rescale the "
            "column, e.g. divide it by a power of ten, or use --dtype float64)")


class Classification:
    """A classifier: fit takes the class labels (cross_entropy), their one-hot rows (the
    sigmoid losses), or, for two classes with binary_cross_entropy, 0/1 (one sigmoid unit);
    it is scored by accuracy."""

    def __init__(self, data, loss):
        self.classes = np.asarray(data.classes)    # names (k,), in the data's class order
        # the model's classes_: the labels' own values (int64 integers, else the names)
        self.labels = self.classes if data.labels is None else np.asarray(data.labels)
        # Two classes with binary_cross_entropy: one sigmoid unit, P(the second class), as
        # Keras and scikit-learn build a binary classifier. One unit per class made a
        # multi-label model, whose saved predict_classes gave indicator rows ([0, 0],
        # [1, 1]) rather than labels.
        self.binary = loss == "binary_cross_entropy" and len(self.classes) == 2
        self.n_out = 1 if self.binary else len(self.classes)
        self.loss = loss
        self.summary = f"{len(self.classes)} classes"

    def check_savable(self, dtype):
        """Nothing to check before training: save checks the classes it stores."""

    def prepare(self, model):
        """Give the model its classes before fit: for cross_entropy the class indices
        0..k-1 while it trains (fit takes the indices themselves: the labels of every row,
        as NumPy text, cost rows x the longest label x 4 bytes, 915 MiB for 2,400 rows
        of one 100,000-character label), then :meth:`finish` gives it the labels; for the
        sigmoid losses the labels themselves, in the data's order (a class may have no
        training row; numeric labels sort as numbers, unlike their names)."""
        model.classes_ = (np.arange(len(self.labels)) if self.loss == "cross_entropy"
                          else self.labels)

    def finish(self, model):
        """After fit: the model's classes_ are the labels (what predict_classes returns and
        --save stores)."""
        model.classes_ = self.labels

    def targets(self, y):
        """What fit takes for class indices y (n,): the indices for cross_entropy (its
        classes_ are 0..k-1 while it trains: see prepare), the indices as 0/1 targets (n, 1)
        for one sigmoid unit (not the labels: a Y of numeric labels all in [0, 1] is read as
        targets), one-hot rows (n, k) for several sigmoid outputs."""
        if self.loss == "cross_entropy":
            return y
        if self.binary:
            return y.astype(np.float64)[:, None]
        return np.eye(self.n_out)[y]

    def scores(self, model, X, y):
        """{"val_accuracy": fraction of rows X whose most probable class is y (for one
        sigmoid unit: the second class when its output is > 0.5, as predict_classes)}."""
        return self._scored(model.predict(X), y)

    def _scored(self, P, y):
        """scores' dict for the model's outputs P (m, k)."""
        if not np.isfinite(P).all():   # (argmax took a NaN row for class 0)
            return {"val_accuracy": math.nan}
        guess = (P[:, 0] > 0.5).astype(np.int64) if self.binary else P.argmax(axis=1)
        return {"val_accuracy": float(np.mean(guess == y))}

    def describe(self, scores):
        return f"accuracy {scores['val_accuracy']:.4f}"

    def report(self, model, X, y, held_out):
        P = model.predict(X)
        acc = self._scored(P, y)["val_accuracy"]
        if math.isnan(acc):
            why = _not_finite(P, "held-out" if held_out else "training")
            return f"{'held-out' if held_out else 'training'} accuracy: undefined: {why}"
        if not held_out:
            return f"training accuracy: {100 * acc:.2f} % (no rows held out)"
        return f"held-out accuracy: {100 * acc:.2f} % ({int(round(acc * len(y)))}/{len(y)} rows)"

    def predictions(self, model, X):
        """Class probabilities (m, k); for one sigmoid unit, P(the second class) (m, 1)."""
        return model.predict(X)

    def prepare_to_save(self, model, X, y):
        """Nothing to change; returns what the saved model outputs."""
        names = [datasets.shown_name(n) for n in self.classes.tolist()]
        if self.binary:
            return (f"outputs the probability of the class {names[1]} (one sigmoid unit; "
                    f"predict_classes gives {names[0]} or {names[1]})")
        shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        return f"outputs are the probabilities of the classes {shown}"

    def check_plottable(self, plot):
        """Nothing to check before training: accuracy lies in [0, 1]."""


# The coarsest spacing of the model dtype's values near the target that --save accepts,
# as a fraction of the target's std: rounding to it changes a prediction by at most
# std / 32 (the saved model's R^2 by about 1e-3 at most). Finer rounding that still
# moves the reported rows' RMSE is told on the save line (prepare_to_save): refusing at
# std / 256 refused runs whose saved model scored within 0.1 % of the run.
TARGET_SPACING = 2.0 ** -4


def _r2_text(r2, short=False, why="the targets scored are all one value"):
    """R^2 as the run prints it; NaN said in words, ``why`` (by default targets all one
    value: no variance to explain; ``short``: in an epoch's line)."""
    if not math.isnan(r2):
        return f"{r2:.4f}"
    return "undefined" if short else f"undefined ({why})"


class Regression:
    """A regressor's targets y float64 (n,), standardized in float64 for training (so the
    linear output unit starts at the right scale), and scores (RMSE, R^2)."""

    def __init__(self, data, y_train, y_test):
        self.target = data.target
        (self.mean,), (self.scale,) = datasets.standardization(y_train[:, None], [data.target])
        self.constant = not np.ptp(y_train) > 0   # (scale is then a stand-in 1)
        datasets.check_standardizable(y_test[:, None], self.mean, self.scale, [data.target])
        self.n_out = 1
        # a constant target's std is 0, whatever scale stands in for it
        std = "0: constant" if self.constant else f"{self.scale:.6g}"
        self.summary = f"numeric target (mean {self.mean:.6g}, std {std})"

    def prepare(self, model):
        """Nothing to set before fit (a regressor has no classes)."""

    def finish(self, model):
        """Nothing to set after fit."""

    def check_savable(self, dtype):
        """Before training: --save folds the target's mean and scale into the output layer
        (prepare_to_save), which cannot be done in ``dtype`` when they overflow it, nor
        when the dtype's values near the mean are too far apart to tell the target's
        values apart: the saved model's outputs are rounded to that spacing (a target of
        1e9 + a few units in float32, whose values there are 64 apart, saved a model that
        answered 1e9 for every row while the run reported R^2 0.999)."""
        dtype = np.dtype(dtype)
        big = np.finfo(dtype).max
        if not (abs(self.mean) < big and self.scale < big):
            raise ValueError(f"--save: the target's values (mean {self.mean:.6g}, std "
                             f"{self.scale:.6g}) are too large for a {dtype.name} "
                             "model; use --dtype float64")
        spacing = self._spacing(dtype)
        if spacing > self.scale * TARGET_SPACING and not self.constant:
            advice = ("use --dtype float64" if dtype != np.float64 else
                      "subtract a constant near the mean from the target column")
            raise ValueError(
                f"--save: the saved model outputs the target in its own units, and "
                f"{dtype.name} values near the target's mean ({self.mean:.6g}) are "
                f"{spacing:.3g} apart, too coarse for its std ({self.scale:.6g}): its "
                f"predictions would be rounded to that spacing; {advice}")

    def check_plottable(self, plot):
        """Before training, for --plot ``plot`` with held-out rows: the RMSE curve is in the
        target's units, and a plot's axes span values up to fastmlp.plot.DRAWABLE (1e300).
        A model that predicts about the mean has an RMSE about the target's std, so a std
        beyond that made the plot fail after the whole training (the model saved, no PNG).
        (An RMSE beyond it from a smaller std is reported after saving: see run_train.)"""
        from fastmlp.plot import DRAWABLE   # numpy only: matplotlib is imported to draw
        if not self.scale <= DRAWABLE:
            raise ValueError(f"--plot {plot}: the target's std ({self.scale:.6g}) is beyond "
                             f"the {DRAWABLE:g} a plot's axis can span, and so is its RMSE "
                             "curve; rescale the target (e.g. divide it by a power of ten) "
                             "or drop --plot")

    def targets(self, y):
        """The standardized targets (n, 1) fit takes for y (n,)."""
        return ((y - self.mean) / self.scale)[:, None]

    def scores(self, model, X, y):
        """{"val_rmse": RMSE in the target's units, "val_r2": R^2}, computed in standardized
        units (no overflow for huge targets). R^2 uses y's own mean, as sklearn's r2_score
        does; NaN if y is constant."""
        return self._scored(model.predict(X), y)

    def _scored(self, P, y):
        """scores' dict for the model's outputs P (m, 1)."""
        t = (y - self.mean) / self.scale
        sse = float(np.sum((P[:, 0].astype(np.float64) - t) ** 2))
        sst = float(np.sum((t - t.mean()) ** 2))
        return {"val_rmse": math.sqrt(sse / len(t)) * self.scale,
                "val_r2": 1.0 - sse / sst if sst > 0 else math.nan}

    def describe(self, scores):
        return f"RMSE {scores['val_rmse']:.6g}  R^2 {_r2_text(scores['val_r2'], short=True)}"

    def report(self, model, X, y, held_out):
        P = model.predict(X)   # (once: scored, and checked for outputs not finite)
        scores = self._scored(P, y)
        which, rows = ("held-out", f"{len(y)} rows") if held_out else \
            ("training", f"{len(y)} rows, none held out")
        std = 0.0 if self.constant else self.scale   # (1 stands in for a constant's 0)
        why = _not_finite(P, which)
        if why is not None:   # (not "the targets scored are all one value")
            return f"{which} RMSE and R^2: undefined: {why}"
        return (f"{which} RMSE: {scores['val_rmse']:.6g} (target std {std:.6g}), "
                f"R^2: {_r2_text(scores['val_r2'])} ({rows})")

    def predictions(self, model, X):
        """Targets float64 (m,), in the target's units."""
        return model.predict(X)[:, 0].astype(np.float64) * self.scale + self.mean

    def _spacing(self, dtype):
        """The spacing of ``dtype``'s values near the target's largest magnitudes."""
        return float(np.spacing(np.dtype(dtype).type(abs(self.mean) + 4 * self.scale)))

    def prepare_to_save(self, model, X, y):
        """Fold y = mean + scale * output into the linear output layer, so the saved model
        outputs the target in its own units, to the output dtype's spacing near the
        target, which check_savable has held below std * TARGET_SPACING. Then score the
        folded model on the rows the run reported (X, y): where its rounding moved the
        RMSE by more than 1 % (a fit far better than std / 32: a 1e6-offset target
        fitted to 3e-6 saved a model 0.02 off), the line says so, with its own scores."""
        before = self.scores(model, X, y)
        weights = model.get_weights()
        W, b = weights[-2].astype(np.float64), weights[-1].astype(np.float64)
        weights[-2], weights[-1] = W * self.scale, b * self.scale + self.mean
        with np.errstate(over="ignore"):   # overflow is this check's own message
            fits = all(np.isfinite(np.asarray(w, dtype=model.dtype)).all()
                       for w in weights[-2:])
        if not fits:
            raise ValueError(f"--save: the target's values are too large for a "
                             f"{model.dtype.name} model; use --dtype float64")
        model.set_weights(weights)
        outputs = f"outputs the target {self.target!r} in its own units"
        saved = model.predict(X)[:, 0].astype(np.float64)
        rmse = math.sqrt(float(np.mean((saved - y) ** 2)))
        if rmse > 1.01 * before["val_rmse"] + 1e-300:   # (rounding may also help)
            sst = float(np.sum((y - y.mean()) ** 2))
            r2 = f", R^2 {1.0 - rmse ** 2 * len(y) / sst:.4f}" if sst > 0 else ""
            outputs += (f"; rounded to {model.dtype.name} near the target (values "
                        f"{self._spacing(model.dtype):.3g} apart), its outputs score RMSE "
                        f"{rmse:.6g}{r2} on those rows, not the run's "
                        f"{before['val_rmse']:.6g}: --dtype float64 keeps them")
        return outputs

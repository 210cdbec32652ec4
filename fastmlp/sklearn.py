"""scikit-learn estimators over :class:`fastmlp.Model`: ``MLPClassifier`` and ``MLPRegressor``.

They take scikit-learn's ``sklearn.neural_network`` parameters where those
exist, plus ``backend`` and ``dtype``, and pass ``check_estimator``:

>>> from fastmlp.sklearn import MLPClassifier
>>> clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=50, random_state=0)  # doctest: +SKIP
>>> clf.fit(X, y).predict_proba(X)                                               # doctest: +SKIP

Differences from scikit-learn, and why:

* ``alpha`` (L2) becomes the optimiser's weight decay, which adds wd * theta to
  the gradient of the batch's mean loss. scikit-learn's step adds alpha / rows *
  W to its gradient, so ``weight_decay = alpha / batch_size`` (times 2 for the
  regressor, for any number of outputs: fastmlp's mse gradient is twice
  scikit-learn's, whose backprop takes out - y; only the loss it reports
  halves the mean over the outputs). ``batch_size`` is that of each ``fit`` or
  ``partial_fit`` call (``min(200, rows)`` for "auto"), so every
  ``partial_fit`` decays by its own rows, as scikit-learn does; within an
  epoch the last, smaller batch keeps the decay of the full ones. The biases
  are decayed too, which scikit-learn leaves alone. It must come out below 1.
* ``loss_curve_`` and ``best_loss_`` are on scikit-learn's scale, without its L2
  term: the classifier's is fastmlp's cross-entropy (a mean over the rows of a sum over
  the outputs), the regressor's fastmlp's mse divided by 2 x outputs (half the mean
  squared error over rows and outputs, scikit-learn's squared loss).
* ``solver`` is "adam" or "sgd" with a constant learning rate (no "lbfgs",
  ``learning_rate`` schedules or ``warm_start``). SGD's Nesterov momentum is
  PyTorch's form; Adam's ``epsilon`` is added after the bias corrections, as in
  PyTorch and Keras (scikit-learn adds it to sqrt(v) before them: a larger epsilon).
* No ``sample_weight`` (refused, saying so); ``partial_fit`` takes ``classes`` by
  keyword only (scikit-learn 1.9's MLP takes ``sample_weight`` third).
* ``momentum`` must be below 1 (scikit-learn takes 1.0); the early-stopping split is
  stratified for two classes only, as scikit-learn's.
* ``activation`` is any fastmlp hidden activation; scikit-learn's "identity"
  and "logistic" mean "linear" and "sigmoid".
* Early stopping restores the best epoch's whole training state (weights,
  optimiser state, generator), so a later ``partial_fit`` continues from there
  (scikit-learn refuses it), on all the rows given and tracking ``best_loss_``
  (None after the fit, as in scikit-learn) from its first epoch.
* An estimator with ``backend="auto"`` (the default) picks its backend again
  when unpickled, so it loads where the one it trained on does not import;
  an explicit backend stays that backend, and raises where it is missing.
"""
from __future__ import annotations

import numpy as np

from fastmlp import validation
from fastmlp.labels import exactly_comparable, refuse_nan_outputs

try:  # absolute imports: `sklearn` is scikit-learn, not this module
    from sklearn.base import ClassifierMixin, RegressorMixin
    from sklearn.utils.multiclass import (check_classification_targets, type_of_target,
                                          unique_labels)
    from sklearn.utils.validation import column_or_1d

    from fastmlp._sklearn_base import BaseMLP, resolve_backend
except ImportError as exc:  # validate_data and __sklearn_tags__ need scikit-learn >= 1.6
    raise ImportError("fastmlp.sklearn needs scikit-learn >= 1.6: "
                      "pip install fastmlp[sklearn]") from exc

__all__ = ["MLPClassifier", "MLPRegressor", "expected_failed_checks", "resolve_backend"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))   # native byte order only


def r2(T, P):
    """scikit-learn's ``r2_score(T, P)`` (outputs averaged uniformly, force_finite) for
    targets and predictions of one float dtype, shapes (n >= 2, outputs): the same
    arithmetic, bit for bit (tested), without its input checks, which cost about 200 us
    an epoch of early stopping (6x a small regressor's fit)."""
    numerator = np.sum((T - P) ** 2, axis=0)
    denominator = np.sum((T - np.mean(T, axis=0)) ** 2, axis=0)
    scores = np.ones(T.shape[1], dtype=numerator.dtype)
    # a perfect prediction scores 1, a constant target's imperfect one 0 (not -inf)
    valid = (denominator != 0) & (numerator != 0)
    scores[valid] = 1 - numerator[valid] / denominator[valid]
    scores[(numerator != 0) & (denominator == 0)] = 0.0
    return float(np.mean(scores))


def expected_failed_checks(estimator):
    """The scikit-learn estimator checks that cannot pass for ``estimator``, with the reason.

    For ``check_estimator(est, expected_failed_checks=expected_failed_checks(est))``
    and ``parametrize_with_checks(..., expected_failed_checks=expected_failed_checks)``.
    """
    if np.dtype(estimator.dtype) != np.float32:   # "float32" or np.float32
        return {}
    return {"check_methods_subset_invariance":
            "float32 predictions of one row can differ from the same row's in the full "
            "batch in the last bits, on every backend, the NumPy reference included: "
            "BLAS's float32 matrix product sums in an order that depends on the number of "
            "rows in the call (and a predict of at most rules.PREDICT_SMALL_ROWS rows "
            "runs the compiled backends' own loops, in another order again). The check "
            "allows 1e-7 + 1e-7 * |output|, one or two float32 ulps; float64 passes"}


def _check_classes(classes):
    """Refuse what scikit-learn refuses as partial_fit's ``classes``: none, NaN or inf (np.unique
    would keep NaN as a class of its own), labels of mixed or unknown type (numbers and
    strings, None, continuous values such as 0.5), with scikit-learn's own words."""
    values = np.asarray(classes, dtype=object)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"classes must be a non-empty list of labels, got {classes!r:.200}")
    bad = [v for v in values.tolist() if isinstance(v, (float, np.floating, complex))
           and not np.isfinite(v)]
    if bad:
        raise ValueError(f"classes must not hold NaN or inf, got {_short(values.tolist())}")
    try:
        unique_labels(classes)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"classes: {str(exc):.300}") from None


def _short(labels, limit=10):
    """``labels`` for an error message: the first ``limit``, then how many more."""
    values = list(labels)
    more = f" ... ({len(values)} in all)" if len(values) > limit else ""
    return f"{values[:limit]}{more}"


class MLPClassifier(ClassifierMixin, BaseMLP):
    """Multi-layer perceptron classifier on fastmlp (scikit-learn's parameters).

    Labels may be of any kind (strings, any integers, bools); ``classes_``
    holds them sorted. Two classes train one sigmoid unit with
    binary_cross_entropy, more a softmax layer with cross_entropy, and a 2-D
    0/1 indicator ``y`` (multilabel) one sigmoid unit per column.
    """

    # scikit-learn's rule: stratified for two classes only (one output unit)
    _stratify = property(lambda self: not self._multilabel and len(self.classes_) == 2)

    def partial_fit(self, X, y, *args, classes=None, **fit_params):
        """One epoch over (X, y), continuing from the current weights. The first call
        needs ``classes`` (by keyword), every label y will ever hold; for a multilabel
        (indicator) y it must be given too, and classes_ is then the column indices 0..k-1."""
        if args and not fit_params and len(args) == 1:
            # scikit-learn 1.9's MLPClassifier.partial_fit(X, y, sample_weight, classes):
            # a third value may be weights or classes, and weights such as arange(n) pass
            # every check of classes (a model of n classes trained without a word)
            raise TypeError("MLPClassifier.partial_fit() takes classes by keyword: "
                            "partial_fit(X, y, classes=[...]) (a third positional argument is "
                            "sample_weight in scikit-learn's MLPClassifier, and fastmlp's "
                            "estimators take no sample_weight)")
        self._refuse(args, fit_params, "partial_fit")
        return self._fit(X, y, incremental=True, classes=classes)

    def _check_call(self, incremental, classes):
        """partial_fit's classes= (under the training lock: whether this is the first
        call is decided once)."""
        if not incremental:
            return
        if classes is not None:
            _check_classes(classes)
        if not hasattr(self, "model_") and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit")
        if hasattr(self, "model_") and classes is not None and not np.array_equal(
                np.unique(classes), self.classes_):
            raise ValueError(f"classes={_short(classes)} differs from the classes of the "
                             f"first call, {_short(self.classes_.tolist())}")

    def _targets(self, y, first, classes):
        """Encode labels: T float (n, units) in the model dtype, and (units, activation, loss)."""
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        kind = type_of_target(y)
        if kind == "multiclass-multioutput":
            raise ValueError("multiclass-multioutput targets are not supported: use one "
                             "classifier per output, or a 0/1 indicator matrix (multilabel)")
        if first:
            self._multilabel = kind == "multilabel-indicator"
            if self._multilabel:
                if classes is not None and not np.array_equal(np.unique(classes),
                                                              np.arange(y.shape[1])):
                    raise ValueError(f"classes={classes!r}: for a multilabel (indicator) y "
                                     f"the classes are its column indices, "
                                     f"{list(range(y.shape[1]))}")
                self.classes_, self._y_dtype = np.arange(y.shape[1]), y.dtype
            else:
                self.classes_ = np.unique(y if classes is None else classes)
            if len(self.classes_) < 2:
                raise ValueError(f"MLPClassifier needs samples of at least 2 classes, got 1 "
                                 f"class: {self.classes_[0].item()!r}")
        elif self._multilabel != (kind == "multilabel-indicator") or (
                self._multilabel and y.shape[1] != len(self.classes_)):
            raise ValueError(f"y is {kind}, which does not match the targets this model was "
                             "first trained on")
        if self._multilabel:
            T = np.ascontiguousarray(y, dtype=self._data_dtype(first))
            return T, (len(self.classes_), "sigmoid", "binary_cross_entropy")
        # (compared exactly: an int64 class beyond 2**53 against a float label, as float64,
        # had taken 2.0**53 for the class 2**53 + 1)
        y_exact, classes = exactly_comparable(y, self.classes_)
        unknown = ~np.isin(y_exact, classes)
        if unknown.any():
            raise ValueError(f"y contains labels not in classes_ "
                             f"{_short(self.classes_.tolist())}: "
                             f"{_short(np.unique(y[unknown]).tolist())}")
        return self._encoded(np.searchsorted(classes, y_exact), self._data_dtype(first))

    def _ready_targets(self, y):
        """What _targets makes of labels y (n,) of classes_'s own kind (integers, strings,
        floats, bools, or objects that are all exactly str, as a pandas column's), every one
        in classes_ (single-label); else None, and the full checks run (and name any
        label not in classes_). Also None where scikit-learn's check could warn that many
        distinct labels look like a regression (over 20 rows, more than half of them
        classes), so that warning is not lost."""
        classes = self.classes_
        n, k = len(y), len(classes)
        if (self._multilabel or y.ndim != 1 or y.dtype.kind != classes.dtype.kind
                or y.dtype.kind not in "biufUO" or (n > 20 and k > round(0.5 * n))):
            return None
        if y.dtype.kind == "O" and set(map(type, y.tolist())) != {str}:
            return None   # objects other than str (a 0-d array, None, NaN): the full checks
        try:
            codes = np.searchsorted(classes, y)
            np.minimum(codes, k - 1, out=codes)
            known = np.array_equal(classes.take(codes), y)
        except TypeError:   # objects that do not compare with the classes (None, NaN, pd.NA)
            return None
        return self._encoded(codes, self.model_.dtype) if known else None

    def _encoded(self, codes, dtype):
        """(T, output) for the class indices ``codes`` (n,) into classes_ (single-label), T
        in ``dtype``: one sigmoid unit for two classes, else one-hot rows for a softmax."""
        k = len(self.classes_)
        if k == 2:
            return codes.astype(dtype).reshape(-1, 1), (1, "sigmoid", "binary_cross_entropy")
        return (validation.index_targets(codes, len(codes), k, dtype),
                (k, "softmax", "cross_entropy"))

    def _validation_score(self, X_val, T_val):
        """Accuracy on held-out rows (exact match of all labels for multilabel)."""
        P = self.model_.predict(X_val)
        if P.shape[1] == 1 or self._multilabel:
            return float(np.mean(np.all((P > 0.5) == (T_val > 0.5), axis=1)))
        return float(np.mean(P.argmax(1) == T_val.argmax(1)))

    def predict_proba(self, X):
        """Class probabilities, float64 (n, n_classes), columns in ``classes_`` order."""
        P = self._outputs(X)
        if P.shape[1] == 1 and not self._multilabel:
            P = np.hstack([1 - P, P])
        return P

    def predict_log_proba(self, X):
        """log of :meth:`predict_proba`."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X):
        """Predicted labels (n,); for multilabel a 0/1 matrix (n, n_classes) of y's dtype."""
        P = self.predict_proba(X)
        refuse_nan_outputs(P)
        if self._multilabel:
            return (P > 0.5).astype(self._y_dtype)
        return self.classes_[P.argmax(axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, BaseMLP):
    """Multi-layer perceptron regressor on fastmlp: linear outputs, mse loss.

    ``y`` may be 1-D or 2-D (n, n_outputs); predictions of one output are 1-D (n,)
    whatever y's shape, as scikit-learn's MLPRegressor returns them."""

    _stratify = False

    def partial_fit(self, X, y, *args, **fit_params):
        """One epoch over (X, y), continuing from the current weights."""
        self._refuse(args, fit_params, "partial_fit")
        return self._fit(X, y, incremental=True)

    def _targets(self, y, first, classes):
        """T float (n, n_outputs) in the model dtype, and (n_outputs, "linear", "mse")."""
        if y.ndim == 2 and y.shape[1] == 1:
            # one output either way; scikit-learn's MLPRegressor warns that it ravels y
            column_or_1d(y, warn=True)
        # checked before the cast, so 1e300 for float32 is named too large (as Model.fit
        # names it), not cast to inf with an overflow warning and called "inf"
        T = validation.as_finite(y.reshape(len(y), -1), "Y", self._data_dtype(first))
        if not first and T.shape[1] != self.n_outputs_:
            shape = "a 1-D y" if y.ndim == 1 else f"y of shape {y.shape}"
            raise ValueError(f"{shape} has {T.shape[1]} output(s), but this regressor was "
                             f"fitted with {self.n_outputs_} (n_outputs_); partial_fit "
                             "continues the same outputs (fit starts again)")
        return T, (T.shape[1], "linear", "mse")

    def _ready_targets(self, y):
        """What _targets makes of a y (n,) or (n, outputs) of integers, or of float32 or
        float64 values all finite; else None (the full checks run)."""
        if not (y.ndim == 1 or (y.ndim == 2 and y.shape[1] > 0)):
            return None
        if not (y.dtype.kind in "iu" or (y.dtype in _FLOATS and validation.finite(y))):
            return None
        return self._targets(y, False, None)

    def _scikit_learn_loss(self, loss):
        # scikit-learn's squared loss is the mean over rows AND outputs, halved
        return loss / (2 * self.model_.layers[-1].units)

    def _validation_score(self, X_val, T_val):
        return r2(T_val, self.model_.predict(X_val))

    def predict(self, X):
        """Predictions, float64: (n,) for one output (also when fit saw y of shape
        (n, 1): scikit-learn's rule, so y - predict(X) never broadcasts to (n, n)), else
        (n, n_outputs)."""
        P = self._outputs(X)
        return P.ravel() if P.shape[1] == 1 else P

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

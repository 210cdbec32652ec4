"""The shared part of fastmlp.sklearn's estimators: parameters, model building, the epoch loop.

Private: import the estimators from :mod:`fastmlp.sklearn`, which also says how
scikit-learn's parameters map onto fastmlp's.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import math
import re
import threading
import warnings
from numbers import Integral, Real

import numpy as np
from scipy.sparse import issparse
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import (Interval, Options, StrOptions,
                                            validate_parameter_constraints)
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

import fastmlp as fm
from fastmlp import backends as fm_backends
from fastmlp import _frames, validation
from fastmlp._signals import UNDO_FAILED, UNDO_SIGNALS, run_whole, signals_deferred
from fastmlp.activations import ACTIVATIONS
from fastmlp.network import MAX_UNITS

_SKLEARN_NAMES = {"identity": "linear", "logistic": "sigmoid"}
_HIDDEN_ACTIVATIONS = (set(ACTIVATIONS) - {"softmax"}) | set(_SKLEARN_NAMES)
# the __getstate__ key that holds model_ re-resolved on unpickling (backend="auto")
_PORTABLE_MODEL = "_model_state_any_backend"
_LOCK = "_fit_lock"   # the estimator's training lock, in its __dict__ (never pickled)
# the parameter values scikit-learn's check last passed (BaseMLP._validate_params), in its
# __dict__ (never pickled)
_VALIDATED = "_validated_params"
_PARAM_NAMES = {}     # estimator class -> its parameter names (inspect costs ~40 us a call)
# values no one can change in place: the same object is the same value
_UNCHANGING = (type(None), bool, int, float, str, bytes, np.generic, np.dtype, type,
               np.random.RandomState)   # (a RandomState passes whatever its state)


def _param_names(cls):
    names = _PARAM_NAMES.get(cls)
    if names is None:
        names = _PARAM_NAMES[cls] = tuple(cls._get_param_names())
    return names


def _unchanging(value):
    if isinstance(value, tuple):
        return all(_unchanging(item) for item in value)
    return isinstance(value, _UNCHANGING)


def resolve_backend(name):
    """"auto" -> the fastest backend that imports here; other names are checked."""
    if not isinstance(name, str):
        raise ValueError(f"backend must be 'auto' or one of {fm.available_backends()}, "
                         f"got {name!r:.60}")
    if name == "auto":   # what fm.Model's "auto" picks, so both mean one thing
        return fm_backends.resolve("auto")
    if fm_backends.imports(name):    # that one only: available_backends() imported every
        return name                  # backend on each fit (numba for a cython estimator)
    available = fm.available_backends()
    if name not in available:
        raise ValueError(f"backend {name!r} is not available here; choose 'auto' or one of "
                         f"{available}")
    return name


# scikit-learn's MLP parameters these estimators do not take (see the README)
_SKLEARN_ONLY = frozenset({"learning_rate", "power_t", "warm_start", "max_fun"})


# fastmlp's optimiser settings by the estimators' parameter names
_ESTIMATOR_WORDS = {"lr": "learning_rate_init", "beta1": "beta_1", "beta2": "beta_2",
                    "eps": "epsilon"}


@contextlib.contextmanager
def _in_estimator_words():
    """An optimiser's or model's refusal (TypeError, ValueError) said with the estimator's
    parameter names: "learning_rate_init=1e-50 is 0.0 in float32", not "lr=1e-50"."""
    try:
        yield
    except (TypeError, ValueError) as exc:
        words = re.sub(r"\b(" + "|".join(_ESTIMATOR_WORDS) + r")\b",
                       lambda m: _ESTIMATOR_WORDS[m.group(1)], str(exc))
        raise type(exc)(words) from None


@functools.cache
def _init_parameters(cls):
    """(every parameter, those also taken by position) of ``cls.__init__``, self left out
    (scikit-learn's get_params reads the signature)."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return (frozenset(p.name for p in params),
            [p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD])


class BaseMLP(BaseEstimator):
    """What both estimators share: parameters, model building and the epoch loop.

    Subclasses define ``_targets(y, first, classes)`` (the float targets T and
    the output layer), ``_validation_score(X_val, T_val)``, ``_stratify`` (split
    the validation rows by label) and prediction.
    """

    _parameter_constraints = {
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "activation": [StrOptions(_HIDDEN_ACTIVATIONS)],
        "solver": [StrOptions({"adam", "sgd"})],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "tol": [Interval(Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "momentum": [Interval(Real, 0, 1, closed="left")],
        "nesterovs_momentum": ["boolean"],
        "early_stopping": ["boolean"],
        # 0 as in scikit-learn: refused only with early_stopping (_split)
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "beta_1": [Interval(Real, 0, 1, closed="left")],
        "beta_2": [Interval(Real, 0, 1, closed="left")],
        "epsilon": [Interval(Real, 0, None, closed="neither")],
        # inf as in scikit-learn: never stop on tol
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left"),
                             Options(Real, {np.inf})],
        "backend": [StrOptions({"auto", "numpy", "numba", "cython"})],
        # as a string or as NumPy's scalar type (np.float32), as fm.Model takes it
        "dtype": [StrOptions({"float32", "float64"}), Options(type, {np.float32, np.float64}),
                  Options(np.dtype, {np.dtype(np.float32), np.dtype(np.float64)})],
    }

    def __new__(cls, *args, **params):
        """Refuse, naming the estimator, a parameter scikit-learn's MLPs take and these do
        not (warm_start, learning_rate, ...): Python's own error named the private base
        class. (Not in __init__, whose signature scikit-learn reads for get_params.)"""
        taken, positional = _init_parameters(cls)
        unknown = [name for name in params if name not in taken]
        if unknown:
            name = unknown[0]
            why = (f": fastmlp's estimators do not support scikit-learn's {name!r} (see the "
                   "README's scikit-learn section)" if name in _SKLEARN_ONLY else "")
            raise TypeError(f"{cls.__name__}() got an unexpected keyword argument "
                            f"{name!r}{why}")
        if len(args) > len(positional):
            raise TypeError(f"{cls.__name__}() takes {' and '.join(positional)} by position, "
                            f"the rest by keyword; got {len(args)} positional arguments")
        return super().__new__(cls)

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate_init=0.001, max_iter=200,
                 shuffle=True, random_state=None, tol=1e-4, verbose=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10,
                 backend="auto", dtype="float32"):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.backend = backend
        self.dtype = dtype

    # the class's signature is __init__'s (inspect.signature(cls) prefers __new__'s)
    __new__.__signature__ = inspect.signature(__init__)

    # -- training ----------------------------------------------------------------
    def fit(self, X, y, *args, **fit_params):
        """Train a new model for up to ``max_iter`` epochs; returns self."""
        self._refuse(args, fit_params, "fit")
        return self._fit(X, y, incremental=False)

    def set_params(self, **params):
        """scikit-learn's set_params; it waits for a fit or partial_fit running in another
        thread, so every call trains with the parameters it checked (set between the
        check and their use, a value never checked was used: max_iter=0 returned an
        untrained model, batch_size=0 raised ZeroDivisionError)."""
        with self._training_lock():
            return super().set_params(**params)

    def _validate_params(self):
        """scikit-learn's check of every parameter, skipped when each is the very object
        it checked last time and of a type that cannot change in place (a number, a
        string, a tuple of them): a later partial_fit then pays a tuple of getattr, not
        the 90 us the check costs."""
        names = _param_names(type(self))
        values = tuple(getattr(self, name) for name in names)
        last = self.__dict__.get(_VALIDATED)
        if last is not None and len(last) == len(values) and all(
                a is b for a, b in zip(last, values)):
            return
        # the values read above, not read again (scikit-learn's own _validate_params reads
        # them through get_params: another thread's set_params in between had a value
        # never checked taken as checked, for good)
        validate_parameter_constraints(self._parameter_constraints, dict(zip(names, values)),
                                       caller_name=type(self).__name__)
        if all(_unchanging(value) for value in values):
            self.__dict__[_VALIDATED] = values
        else:
            self.__dict__.pop(_VALIDATED, None)

    def _refuse(self, args, fit_params, method):
        """A clear TypeError for arguments scikit-learn's MLPs take and these do not
        (sample_weight, by keyword or third; Python's own error named the private base
        class). Not in the signature, so that scikit-learn's checks and metadata routing
        do not take sample_weight for supported."""
        if args or fit_params:
            given = (f"{len(args)} positional argument(s) more than it takes" if args else
                     f"unexpected keyword argument(s) {', '.join(sorted(fit_params))}")
            raise TypeError(f"{type(self).__name__}.{method}() got {given}: "
                            "fastmlp's estimators take no sample_weight (every row weighs the "
                            "same; repeat or resample rows to weight them)")

    def _training_lock(self):
        """This estimator's lock, held by every fit and partial_fit and by pickling.
        Made on first use (scikit-learn's __init__ may set only the parameters); the
        dict's setdefault is atomic, so two threads' first calls get the same lock."""
        return self.__dict__.setdefault(_LOCK, threading.RLock())

    def _fit(self, X, y, incremental, classes=None):
        # Under the estimator's lock, which set_params also takes: the parameters checked
        # are those the call trains with, and two first partial_fit calls cannot each
        # build a model_ (one would be lost with the steps trained on it).
        with self._training_lock():
            self._validate_params()
            # scikit-learn's Interval takes 10**400 (a Python int compares with its
            # bounds), which float arithmetic then refuses with a raw OverflowError
            for name in ("alpha", "tol", "learning_rate_init", "epsilon"):
                if not math.isfinite(validation.as_float(getattr(self, name))):
                    raise ValueError(f"The '{name}' parameter of {type(self).__name__} must "
                                     f"be finite, got {validation.shown(getattr(self, name))}")
            self._check_call(incremental, classes)
            return self._fit_locked(X, y, incremental, classes)

    def _check_call(self, incremental, classes):
        """The subclass's checks of a call's own arguments (the classifier's classes=),
        after the parameters', under the training lock."""

    def _fit_locked(self, X, y, incremental, classes):
        first = not (incremental and hasattr(self, "model_"))
        fitted = dict(self.__dict__)
        try:
            X, X_val, T, T_val, early, batch_size, decay = self._prepare(X, y, first,
                                                                         incremental, classes)
        except BaseException:
            # A refit refused (or interrupted) before its model was built learnt nothing:
            # the new classes_ beside the old model_ predicted the new labels from the old
            # network (['apple', 'pear'] from a cat/dog model). One store, no call (a
            # signal lands only at a call's start or a loop's jump back): cleared and
            # refilled in two calls, a timeout between them left the estimator empty,
            # parameters and model_ gone (hostile round 47).
            self.__dict__ = fitted
            raise
        best = [None]   # the best state seen with early stopping, kept by _count_new
        interrupted = None
        try:
            # One hold of the model's lock for the decay and the epochs it applies to:
            # another thread's partial_fit setting its own decay in between trained steps
            # of this call with the other call's decay.
            with self.model_._lock:
                try:
                    if not first:   # scikit-learn decays by alpha / the rows of each call's batches
                        self.model_._set_weight_decay(decay)
                    self._epochs(X, X_val, T, T_val, early, batch_size, incremental, best)
                finally:
                    # The best restored whatever ends the epochs (a Ctrl-C, an error, their
                    # end), whole: a signal landing as run_whole begins, before its own
                    # deferral, runs it again (inline: any call's start is such a point); a
                    # timeout's exception then is raised once the best is back (it skipped
                    # the restore, or was lost behind the Ctrl-C's warning: hostile round 45)
                    late, tries = None, 0   # (no call before the try: a signal after it escaped)
                    while early and tries < UNDO_SIGNALS:
                        tries += 1
                        try:
                            run_whole(lambda: self._restore_best(best[0]))
                            break
                        except KeyboardInterrupt as signalled:
                            interrupted = interrupted or signalled
                        except BaseException as signalled:
                            if UNDO_FAILED in signalled.__dict__:   # (the restore's own; no call)
                                raise
                            # (kept's rule, no call: a Ctrl-C gives way to what follows)
                            late = (signalled if late is None
                                    or late.__class__ is KeyboardInterrupt else late)
                    if late is not None:
                        raise late
        except KeyboardInterrupt as exc:
            interrupted = exc
        if interrupted is not None:
            # Ctrl-C ends fit as scikit-learn's MLP does, wherever it lands once the model
            # is built (before the first epoch, or as the best is restored, too; a
            # Ctrl-C there had come out of fit, the best not restored)
            warnings.warn("Training interrupted by user.")
        return self

    def _restore_best(self, best_state):
        """Early stopping's end: the best state seen (None: none scored) back in model_."""
        if best_state is not None:
            self.model_.set_state(best_state)
        self.best_loss_ = None   # scikit-learn's convention with early stopping

    def _prepare(self, X, y, first, incremental, classes):
        """Validate X and y, learn what a first call learns (n_features_in_, classes_, a new
        model_ and empty curves); returns (X, X_val, T, T_val, early, batch_size, decay)."""
        ready = None if first else self._ready_batch(X, y)
        if ready is not None:
            X, T, output = ready
        else:
            X, y = validation.refuse_masked(X, "X"), validation.refuse_masked(y, "y")
            X, y = validate_data(self, X, y, reset=first, multi_output=True, order="C",
                                 dtype=self._data_dtype(first),
                                 y_numeric=isinstance(self, RegressorMixin))
            if issparse(y):   # validate_data passes a sparse y (a multilabel indicator, say):
                y = y.toarray()   # dense as the targets are, as scikit-learn's MLP takes it
            T, output = self._targets(y, first, classes)
        # (a later partial_fit draws nothing from it: a RandomState seeded per call cost
        # a small batch's partial_fit a tenth of its time)
        rng = check_random_state(self.random_state) if first else None
        early = self.early_stopping and not incremental   # (a first call: fit's)
        X_val = T_val = None
        if early:
            X, X_val, T, T_val = self._split(X, T, y, rng)
        batch_size = self._batch_size(len(X))
        decay = self._weight_decay(output, batch_size, incremental)
        if first:
            self.model_ = self._build(output, decay, rng.randint(np.iinfo(np.int32).max))
            self.loss_curve_, self.n_iter_, self.t_ = [], 0, 0
            self.best_loss_, self._no_improvement = np.inf, 0
            self.validation_scores_ = [] if early else None
            self.best_validation_score_ = -np.inf if early else None
        return X, X_val, T, T_val, early, batch_size, decay

    def _plain_rows(self, X):
        """X as the plain 2-D ndarray of numbers, as wide as the training data, that
        scikit-learn's checks would make of it with no more than a conversion to the
        model's dtype: X itself, a plain ndarray given to an estimator fitted without
        feature names; or a pandas DataFrame's values, its columns the fitted feature
        names and all of NumPy number dtypes (_frames.frame_rows). Else None: what predict
        and a later partial_fit may take past those checks."""
        if type(X) is not np.ndarray:
            model = self.__dict__.get("model_")
            return None if model is None else _frames.frame_rows(
                X, self.__dict__.get("feature_names_in_"), model.dtype)
        if (X.ndim == 2 and X.dtype.kind in "fiub"
                and X.shape[1] == self.__dict__.get("n_features_in_")
                and self.__dict__.get("feature_names_in_") is None):
            return X
        return None

    def _data_dtype(self, first):
        """The dtype X and the targets are made in: the ``dtype`` parameter's on a first
        call (which builds model_ in it), model_'s on a later one (the parameter may have
        been set since: converting to it first rounded the data twice, and a batch the
        checks skip was converted once)."""
        return np.dtype(self.dtype) if first else self.model_.dtype

    def _ready_batch(self, X, y):
        """(X, T, output) for a later partial_fit's batch that scikit-learn's checks would
        pass unchanged but for X's conversion to the model's dtype: X what _plain_rows
        takes (a plain ndarray, or a DataFrame of the fitted feature names), finite in
        that dtype; y a plain ndarray, or a pandas Series of a NumPy or string dtype, that
        the subclass encodes directly (_ready_targets). Else None: the full checks run,
        and name any problem in scikit-learn's words. (Those checks, pandas and polars
        detection and type_of_target among them, were over 90 % of a 32-row
        partial_fit.)"""
        X, y = self._plain_rows(X), _frames.plain_labels(y)
        if X is None or y is None or y.ndim == 0 or len(y) != len(X):
            return None
        dtype = self.model_.dtype
        with np.errstate(over="ignore", invalid="ignore"):   # an inf made here: refused below
            X = validation.c_copy(X, dtype)   # (a DataFrame's Fortran order: tiled)
        if not validation.ready(X, self.n_features_in_, dtype):
            return None
        ready = self._ready_targets(y)
        return None if ready is None else (X, *ready)

    def _epochs(self, X, X_val, T, T_val, early, batch_size, incremental, best):
        """The training epochs (one for partial_fit), with scikit-learn's stopping rules;
        ``best``: [the best state seen with early stopping], updated.

        Without early stopping, scikit-learn's rule (stop once the training loss has not
        improved by tol for more than n_iter_no_change epochs in a row) cannot stop
        before that many epochs have passed without improvement: so many epochs run as
        one Model.fit (on small data one compiled call) and are counted after it, the
        same epochs as one at a time (fit(1) + fit(1) = fit(2)), without the Python
        around each. With early stopping each epoch's weights are scored, one at a time.

        Ctrl-C ends them as scikit-learn's MLP does: the epochs done kept (an interrupted
        one is undone by Model.fit), then the caller restores the best state with early
        stopping, warns and returns the estimator. Every epoch Model.fit kept is counted
        whole (n_iter_, t_, loss_curve_, its validation score), also when an interrupt
        or a TrainingDiverged comes before it was counted."""
        last = getattr(self.model_, "history", None)
        counted = [last, len(last.epoch) if last is not None else 0]   # (History, epochs)
        left = 1 if incremental else self.max_iter
        try:
            while left > 0:
                run = 1 if incremental or early else max(
                    1, min(left, self.n_iter_no_change + 1 - self._no_improvement))
                self.model_.fit(X, T, epochs=run, batch_size=batch_size, shuffle=self.shuffle)
                with signals_deferred():
                    self._count_new(counted, len(X), early, X_val, T_val, best)
                left -= run
                if incremental:
                    break
                if self._no_improvement > self.n_iter_no_change:
                    what = "Validation score" if early else "Training loss"
                    if self.verbose:
                        print(f"{what} did not improve more than tol={self.tol} for "
                              f"{self.n_iter_no_change} consecutive epochs. Stopping.")
                    break
            else:
                if not incremental:
                    warnings.warn(f"Stochastic optimizer: maximum iterations ({self.max_iter}) "
                                  "reached and the optimization hasn't converged yet.",
                                  ConvergenceWarning)
        except BaseException:
            with signals_deferred():   # the epochs Model.fit kept before it raised
                self._count_new(counted, len(X), early, X_val, T_val, best)
            raise

    def _count_new(self, counted, rows, early, X_val, T_val, best):
        """Count the epochs of model_.history not counted yet; ``counted`` is [the History
        last counted from, how many of its epochs were], updated."""
        history = getattr(self.model_, "history", None)
        if history is None:
            return
        if history is not counted[0]:   # a new fit's
            counted[:] = [history, 0]
        for loss in history.history["loss"][counted[1]:]:
            counted[1] += 1   # (first: an epoch whose count fails is not counted twice)
            self._count(loss, rows, early, X_val, T_val, best)

    def _count(self, loss, rows, early, X_val, T_val, best):
        """Record one epoch Model.fit trained (its mean loss): counters, loss curve,
        validation score."""
        loss = self._scikit_learn_loss(loss)
        self.n_iter_ += 1
        self.t_ += rows
        self.loss_curve_.append(loss)
        if self.verbose:
            print(f"Iteration {self.n_iter_}, loss = {loss:.8f}", flush=True)
        if early:
            score = self._validation_score(X_val, T_val)
            if self._record_validation(score):
                best[0] = self.model_.get_state()
            if self.verbose:
                print(f"Validation score: {score:.6f}", flush=True)
        else:
            self._record_loss(loss)

    def _scikit_learn_loss(self, loss):
        """fit's epoch loss on scikit-learn's scale (loss_curve_, best_loss_, and what tol is
        compared with). Its cross-entropies are fastmlp's (a mean over the rows of a sum
        over the outputs); scikit-learn also adds the L2 penalty, which is left out."""
        return loss

    def _record_loss(self, loss):
        # scikit-learn's rule: no improvement unless the loss beats the best by tol.
        # best_loss_ is None after a fit with early stopping (scikit-learn's convention).
        # A partial_fit after it continues (scikit-learn >= 1.3 refuses it) and tracks the
        # training loss from its own first epoch.
        best = np.inf if self.best_loss_ is None else self.best_loss_
        self._no_improvement = 0 if loss <= best - self.tol else self._no_improvement + 1
        self.best_loss_ = min(best, loss)

    def _record_validation(self, score):
        """Append a validation score; True when it is the best so far."""
        self.validation_scores_.append(score)
        best = self.best_validation_score_
        self._no_improvement = 0 if score >= best + self.tol else self._no_improvement + 1
        if score > best:
            self.best_validation_score_ = score
            return True
        return False

    def _split(self, X, T, y, rng):
        """scikit-learn's held-out split (stratified by label for binary classifiers, as
        scikit-learn's: not for more classes, nor multilabel or regression)."""
        # train_test_split's own rounding of the held-out rows: up
        n_val = math.ceil(float(self.validation_fraction) * len(X))
        if n_val < 2:
            raise ValueError(f"The validation set is too small: {n_val} sample(s) with "
                             f"validation_fraction={self.validation_fraction}; increase it "
                             "or use early_stopping=False")
        try:
            X, X_val, T, T_val = train_test_split(X, T, random_state=rng,
                                                  stratify=y if self._stratify else None,
                                                  # (a NumPy float refused there)
                                                  test_size=float(self.validation_fraction))
        except ValueError as exc:   # (it named its own test_size and train_size)
            raise ValueError(f"early_stopping cannot hold out validation_fraction="
                             f"{self.validation_fraction} of the {len(X)} rows: {exc}") from None
        return np.ascontiguousarray(X), np.ascontiguousarray(X_val), T, T_val

    def _batch_size(self, n):
        if self.batch_size == "auto":
            return min(200, n)
        size = int(self.batch_size)   # (True, which scikit-learn's check passes: 1)
        if size > n:
            warnings.warn(f"Got batch_size={self.batch_size} larger than the {n} samples; "
                          "it is clipped to the sample size")
        return min(size, n)

    def _weight_decay(self, output, batch_size, incremental):
        """alpha as fastmlp's weight decay for batches of ``batch_size`` rows.

        scikit-learn's step adds alpha * W / rows to the gradient of its loss. For
        the cross-entropies that gradient is fastmlp's; for mse fastmlp's is twice it
        (squared errors summed over the outputs, where scikit-learn's backprop takes
        out - y; only the loss it reports halves their mean), whatever the outputs."""
        scale = 2 if output[2] == "mse" else 1
        decay = self.alpha * scale / batch_size
        if decay >= 1:
            more = " or more rows per partial_fit call" if incremental else ""
            raise ValueError(f"alpha={self.alpha} gives a weight decay of {decay:.3g} per "
                             f"step for batches of {batch_size} rows, which must be < 1: "
                             f"use a smaller alpha, a larger batch_size{more}")
        return decay

    def _build(self, output, decay, seed):
        units, act, loss = output
        sizes = self.hidden_layer_sizes
        sizes = [sizes] if isinstance(sizes, Integral) else list(sizes)
        if any(isinstance(s, bool) or not isinstance(s, Integral) or not 1 <= s <= MAX_UNITS
               for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be positive integers below 2**31, "
                             f"got {self.hidden_layer_sizes!r}")
        hidden = _SKLEARN_NAMES.get(self.activation, self.activation)
        layers = [fm.Dense(int(s), activation=hidden) for s in sizes] + [fm.Dense(units, act)]
        # Real parameters as floats, as scikit-learn's arithmetic takes them (True is 1.0);
        # the optimiser's refusals (a rate that is 0 in float32, say) in these names
        rate, momentum = float(self.learning_rate_init), float(self.momentum)
        with _in_estimator_words():
            if self.solver == "adam":
                opt = fm.Adam(lr=rate, beta1=float(self.beta_1), beta2=float(self.beta_2),
                              eps=float(self.epsilon), weight_decay=decay)
            else:
                opt = fm.SGD(lr=rate, momentum=momentum,
                             nesterov=bool(self.nesterovs_momentum) and momentum > 0,
                             weight_decay=decay)
            model = fm.Model(layers, input_dim=self.n_features_in_, loss=loss, optimizer=opt,
                             backend=resolve_backend(self.backend), dtype=self.dtype,
                             seed=seed)
        if hasattr(self, "feature_names_in_"):
            model.feature_names_in_ = np.asarray(self.feature_names_in_, dtype=str)
        classes = getattr(self, "classes_", None)
        if classes is not None and not self._multilabel:
            # the Model keeps numbers or unicode strings (what fm.save can write)
            if classes.dtype.kind in "biufU":
                model.classes_ = classes.copy()
            elif all(isinstance(c, str) and not c.endswith("\0") for c in classes):
                # (a NumPy str array drops trailing NULs: 'x\0' and 'x' would merge there,
                # so such classes stay the estimator's own, as labels save cannot write)
                model.classes_ = classes.astype(str)
        return model

    # -- pickling ----------------------------------------------------------------
    # One snapshot, taken under the training lock (a pickle, copy or deepcopy made
    # during fit waits for it to end): the attributes, the lists they hold and model_'s
    # own pickled state (what fm.save writes: weights, optimiser state, generator,
    # classes_, feature names) are all of one moment. model_ is rebuilt from that state:
    # on the backend "auto" picks where it is unpickled (a Model pickles its concrete
    # backend, which may not import there), or on its own explicit backend, whose
    # absence keeps its clear error. So a copy never shares model_ with the original.
    def __getstate__(self):
        with self._training_lock():
            state = dict(super().__getstate__())
            state.pop(_LOCK, None)
            state.pop(_VALIDATED, None)
            for name, value in state.items():
                if isinstance(value, list):   # loss_curve_, validation_scores_
                    state[name] = list(value)
            if "model_" in state:
                state[_PORTABLE_MODEL] = state.pop("model_").__getstate__()
        return state

    def __setstate__(self, state):
        portable = state.pop(_PORTABLE_MODEL, None)
        super().__setstate__(state)
        if portable is not None:
            config = portable["config"]
            if self.backend == "auto":
                config = dict(config, backend=resolve_backend("auto"))
            model = fm.Model.__new__(fm.Model)
            model.__setstate__(dict(portable, config=config))
            self.model_ = model

    # scikit-learn's fitted network attributes, read from model_ (copies, as scikit-learn's
    # arrays are the estimator's own). Not fitted: AttributeError, so hasattr is False.
    _OUT_ACTIVATIONS = {"linear": "identity", "sigmoid": "logistic", "softmax": "softmax"}

    def _fitted_model(self, name):
        model = self.__dict__.get("model_")
        if model is None:
            raise AttributeError(f"{type(self).__name__} has no {name} before it is fitted")
        return model

    def _layer_pieces(self, piece):
        model = self._fitted_model(("coefs_", "intercepts_")[piece])
        weights = model.get_weights()
        pieces, at = [], 0
        for layer in model.layers:
            pieces.append(weights[at + piece])
            at += 3 if layer.activation.name == "prelu" else 2
        return pieces

    @property
    def coefs_(self):
        """[W (n_in, n_out) per layer], model_'s weights (copies), as scikit-learn's MLP."""
        return self._layer_pieces(0)

    @property
    def intercepts_(self):
        """[b (n_out,) per layer], model_'s biases (copies), as scikit-learn's MLP."""
        return self._layer_pieces(1)

    @property
    def n_layers_(self):
        """Layers counted as scikit-learn counts them: input, hidden ones, output."""
        return len(self._fitted_model("n_layers_").layers) + 1

    @property
    def n_outputs_(self):
        return self._fitted_model("n_outputs_").layers[-1].units

    @property
    def out_activation_(self):
        """The output activation under scikit-learn's name ("identity", "logistic", "softmax")."""
        name = self._fitted_model("out_activation_").layers[-1].activation.name
        return self._OUT_ACTIVATIONS.get(name, name)

    def _outputs(self, X):
        """Network outputs (n, outputs) as float64, after scikit-learn's input checks.

        What _plain_rows takes (a plain ndarray as wide as the training data for an
        estimator fitted without feature names, or a DataFrame of the fitted feature names
        and NumPy number columns) goes straight to model_.predict, whose own checks
        (finiteness as its kernel reads, the width, the conversion to the model dtype)
        take what validate_data would: scikit-learn's checks cost a 1-row predict about
        70 us (pandas and polars detection), over 500 us for a DataFrame. Anything
        model_.predict refuses is then checked by scikit-learn, whose words the error
        has."""
        model = self.__dict__.get("model_")
        rows = None if model is None else self._plain_rows(X)
        if rows is not None:
            try:
                return model.predict(rows).astype(np.float64)
            except ValueError:
                pass   # refused: scikit-learn's checks below say why in its words
        check_is_fitted(self, "model_")
        # scikit-learn's checks drop a mask and would predict from the hidden values
        # (in the layout the checks give, as the shortcut keeps pandas': predict reads a
        # Fortran-ordered X where it lies)
        # dtype "numeric" first, as scikit-learn's MLP predicts: text is refused in its
        # words (the model's float dtype alone had parsed "1_0" as 10); then the cast, whose
        # check names a value too large for the dtype in its words too
        X = validate_data(self, validation.refuse_masked(X, "X"), reset=False,
                          dtype="numeric")
        X = check_array(X, dtype=self.model_.dtype, input_name="X")
        return self.model_.predict(X).astype(np.float64)



"""The ``Model``: a thin Python API over one backend.

The model owns the flat parameter vector, the optimiser state and the random
generator; the backend does the arithmetic. Inputs are validated and converted
here, once per call, so the backends never see a bad shape. ``fit`` and its epochs
are :class:`fastmlp._fitting.Fitting`'s, a base class; the snapshots that undo
training are fastmlp._undo's.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import threading
import warnings
import weakref

import numpy as np

from . import activations as act
from . import io, labels, optimizers, rules, validation
from ._fitting import Fitting, History, TrainingDiverged  # noqa: F401 (History: fastmlp.model's)
from ._signals import UNDO_FAILED, UNDO_SIGNALS, raise_after_undo, run_whole, signals_deferred
from ._undo import Snapshot, SnapshotLease
from .backends import get_backend
from .backends import resolve as resolve_backend
from .losses import CROSS_ENTROPY
from ._aligned import CACHE_LINE, aligned_copy, aligned_zeros
from .network import Network, param_too_large, slope_vanishes

_DTYPES = {"float32": np.float32, "float64": np.float64}


def _feature_names(X):
    """Column names of a DataFrame-like X (as a unicode array, read-only: it may become
    feature_names_in_ and the names cached for the frame's Index), else None."""
    columns = getattr(X, "columns", None)
    if columns is None or not hasattr(X, "shape"):
        return None
    # a list first: a pandas Index yields its items one call at a time (0.2 us each: 175 us
    # for 784 columns, which a frame built per request pays on every call)
    listed = columns.tolist() if hasattr(columns, "tolist") else list(columns)
    names = np.asarray([c if type(c) is str else str(c) for c in listed])
    names.flags.writeable = False
    return names


def _same_names(names, known):
    """np.array_equal(names, known): by their bytes when both are str arrays of one width
    (1.3 us for 784 names, where array_equal's string comparison takes 7 us)."""
    if (type(known) is np.ndarray and known.dtype == names.dtype
            and known.shape == names.shape):
        return names.tobytes() == known.tobytes()
    return np.array_equal(names, known)


def distinct_names(names):
    """``names`` (X's columns as str), refused unless distinct: names that repeat (or that
    only str() makes equal, such as 1 and "1") cannot show that a later frame's columns are
    in the trained order, so recording them would let predict read columns swapped."""
    values, counts = np.unique(names, return_counts=True)
    if (counts > 1).any():
        twice = values[counts > 1].tolist()[:5]
        raise ValueError(f"X's column names must be distinct (as strings) for the model to "
                         f"check a later frame's columns: {twice} appear more than once; "
                         "rename the columns or pass X.to_numpy()")
    return names


def _optimizer_for(optimizer, dtype):
    """optimizers.get(optimizer), refused where a setting means nothing in ``dtype``."""
    optimizer = optimizers.get(optimizer)
    problem = optimizers.problem_in(optimizer, dtype)
    if problem:
        raise ValueError(problem)
    return optimizer


def _whole(call, *args):
    """call(*args) with a Ctrl-C held until it returns (raised then)."""
    with signals_deferred():
        return call(*args)


def _generator(seed):
    """np.random.default_rng(seed), with NumPy's error (same type) reworded to name seed.

    A Generator or bit generator other than PCG64 (MT19937, Philox, a RandomState, ...)
    seeds one of PCG64 with its next numbers: get_state, set_state, copies and files hold
    PCG64's state (another one could be neither restored nor loaded: a saved file refused)."""
    try:
        rng = np.random.default_rng(seed)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"seed must be None or an integer >= 0 (or a sequence of them), "
                        f"got {seed!r} ({exc})") from None
    if type(rng.bit_generator) is not np.random.PCG64:   # also a bare MT19937(0)
        return np.random.default_rng(rng.integers(2**63, size=4))
    return rng


def _shares_memory(a, *others):
    """Whether ``a`` may overlap one of ``others`` (bounds only: O(1))."""
    return any(np.may_share_memory(a, o) for o in others)


def _own(a, *model_arrays):
    """``a``, or a copy when it may share memory with one of the model's own arrays:
    the model would write those before it has read all of ``a`` (pieces set one by
    one; momentum scaled before the gradient is read)."""
    return a.copy() if _shares_memory(a, *model_arrays) else a


def _own_arrays(state, dtype, same_kind, what_at):
    """(theta, buffers) of a live model's get_state dict for a new model of ``dtype``
    (``what_at``: validation.as_finite's, naming theta's parameters in a refusal):
    the dict's own arrays where they are of that dtype, else converted once (a weight the
    dtype cannot hold refused, as set_state refuses it); buffers None (zeros) for an
    optimiser of another kind. (Through set_state a conversion held the new dtype's
    arrays twice: to(dtype="float64") of a 24 MiB float32 Adam state peaked at 139 MiB.)"""
    theta, buffers = state["theta"], state["opt_buffers"] if same_kind else None
    if theta.dtype != dtype:
        # cast once, straight into memory on a cache line (as _taken wants theta)
        cast = aligned_copy(theta, dtype)
        if not validation.finite(cast):
            # refused, naming the value and which parameter it is
            validation.as_finite(theta, "theta", dtype, what_at=what_at)
        theta = cast
        if buffers is not None:
            buffers = validation.as_finite(buffers, "opt_buffers", dtype)
    return theta, buffers


def _taken(array, shape, dtype):
    """``array`` itself if it is a C-contiguous, aligned, writable ``dtype`` array of
    ``shape`` (a restored model takes it as its own); a copy in that form if not; zeros
    for None. A 1-D array (theta) must also start on a cache line (fastmlp._aligned: a
    file's is read so, a pickle's is copied)."""
    if array is not None:
        flags = array.flags
        if (array.dtype == dtype and array.shape == shape and flags.c_contiguous
                and flags.aligned and flags.writeable
                and (len(shape) > 1 or array.ctypes.data % CACHE_LINE == 0)):
            return array
    owned = (aligned_zeros(shape[0], dtype) if len(shape) == 1
             else np.zeros(shape, dtype=dtype))
    if array is not None:
        owned[...] = array
    return owned


def _nothing():
    """pull and push of a backend whose parameters live in the host arrays."""


def _dtype(dtype):
    try:
        key = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    except (TypeError, ValueError):  # not a dtype at all: an array, a list
        key = None
    if key not in _DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return np.dtype(_DTYPES[key])


class Model(Fitting):
    """A multilayer perceptron: Dense layers, a loss, an optimiser and a backend.

    Parameters
    ----------
    layers : list of fm.Dense
    input_dim : int, number of input features.
    loss : "mse", "cross_entropy" (softmax output) or "binary_cross_entropy" (sigmoid output).
    optimizer : fm.SGD or fm.Adam (default SGD(lr=0.01)).
    backend : "auto" (default: the fastest available, cython, then numba, then numpy) or a
        name from fm.available_backends(); ``model.backend`` is the one chosen.
    dtype : "float32" (default) or "float64", kept end to end.
    seed : None, an int >= 0 or a sequence of them, or a NumPy SeedSequence or Generator
        (a PCG64 one used as given); makes initialisation and shuffling reproducible.

    >>> import numpy as np, fastmlp as fm
    >>> m = fm.Model([fm.Dense(4, activation="tanh"), fm.Dense(1)], input_dim=2, seed=0)
    >>> m.predict(np.zeros((3, 2))).shape
    (3, 1)
    """

    # Networks up to this many parameters take train_on_batch's one-call checked step on
    # every backend (above it, only where that step copies nothing: see _build).
    _CHECKED_STEP_PARAMS = 16384

    def __init__(self, layers, input_dim, loss="mse", optimizer=None, backend="auto",
                 dtype="float32", seed=None):
        self._build(layers, input_dim, loss, optimizer, backend, dtype, seed, draw=True)

    @classmethod
    def _to_restore(cls, layers, input_dim, loss, optimizer, backend, dtype, seed,
                    arrays=None):
        """A model whose state is restored at once (load, unpickling, copying): built with
        zero weights instead of drawing initial ones that restoring overwrites anyway
        (a third of the time of copying a 784-256-128-10 model). ``arrays``: (theta,
        opt_buffers), checked by the caller (load), taken as the model's own where they are
        C-contiguous, aligned and writable in its dtype (else copied)."""
        model = cls.__new__(cls)
        model._build(layers, input_dim, loss, optimizer, backend, dtype, seed, draw=False,
                     arrays=arrays)
        return model

    def _build(self, layers, input_dim, loss, optimizer, backend, dtype, seed, draw,
               arrays=None, strict=False):
        self._net = Network(layers, input_dim, loss)
        self._dtype = _dtype(dtype)
        problem = param_too_large(self._net.layers, self._dtype)
        if problem:
            raise ValueError(problem)
        self._rng = _generator(seed)
        self._optimizer = optimizers.get(optimizer)
        meaningless = (slope_vanishes(self._net.layers, self._dtype)
                       or optimizers.problem_in(self._optimizer, self._dtype))
        if meaningless and (draw or strict):   # a new model, or to() with new settings
            raise ValueError(meaningless)
        if meaningless:
            # A file or pickle made before these settings were refused (a model that
            # trained nothing, or diverged) still loads: no saved model is lost.
            warnings.warn(f"this saved model's settings mean nothing in {self._dtype.name}: "
                          f"{meaningless}. It predicts as saved; to train it, give it a new "
                          "optimizer (model.optimizer = ...)", RuntimeWarning, stacklevel=4)
        self._backend = resolve_backend(backend)
        backend_class = get_backend(self._backend)
        self._seed = seed
        n = self._net.n_params
        theta, buffers = arrays if arrays is not None else (None, None)
        self._theta = (self._net.init_params(self._rng, self._dtype) if draw
                       else _taken(theta, (n,), self._dtype))
        self._state = optimizers.OptimizerState.new(self._optimizer, n, self._dtype,
                                                    _taken(buffers, (2, n), self._dtype))
        self._bind_engine(backend_class)
        self._scaling = None          # (mean, scale) float64 (input_dim,), applied by every call
        self.classes_ = None          # class labels, when fit was given labels
        self.feature_names_in_ = None
        self.stop_training = False    # a callback's "stop after this epoch" (each fit resets
        # it), there from the start, as in Keras (code reading it before a fit found none)
        self._columns_seen = None     # (pandas Index, its names): the last frame's
        # Training mutates theta, the optimiser state and the generator under _lock, which
        # the copies of them take too (get_state, get_weights: save, pickle, copy); a fit
        # owns the model for its whole run (_fit_owner: other threads' training calls wait
        # for its end) but holds _lock only while it trains, so copies run between its
        # epochs. predict, evaluate and gradients take neither.
        self._lock = threading.RLock()
        self._fit_over = threading.Condition(self._lock)
        self._fit_owner = None        # the thread ident of the fit under way
        self._fit_waiters = 0         # threads in _wait_for_fit (changed under the lock)
        self._snapshot = None         # the rollback copy (_rollback), made on first use
        # the leases (SnapshotLease) of the training calls under way; weak, so that one whose
        # __exit__ a signal cut short (the with statement then never removed it: every
        # later fit made a new snapshot) goes once its frame is freed (hostile round 43)
        self._leases = weakref.WeakSet()
        self._unit_targets = self._net.loss.output is not None  # cross-entropies: t in [0, 1]
        # layers through which no gradient flows (warned of by every fit)
        self._dead_layers = [i + 1 for i, layer in enumerate(self._net.layers)
                             if layer.activation.code in (act.STEP, act.SIGN)]
        # a softmax's Y may be class indices (n,): labels.is_labels' first case
        self._index_labels = self._net.loss.code == CROSS_ENTROPY and self._net.output_dim > 1
        self._index_bytes = labels.index_classes(self._net.output_dim).tobytes()
        self._sorted_classes = None   # (classes_'s dtype and bytes, argsort, sorted)
        # On a device the backup of the checked step is a device copy, and a backend whose
        # guarded step proves its update finite before writing copies nothing: cheap at any
        # size. Elsewhere the step's backup copy pays only on small networks.
        self._width = (self._net.input_dim, self._net.output_dim)   # ints, read per call
        self._checked_step = (self._on_device
                              or getattr(backend_class, "guarded_step_is_free", False)
                              or self._net.n_params <= self._CHECKED_STEP_PARAMS)
        # The reference backend computes with NumPy, whose overflow warnings become one
        # TrainingDiverged; compiled kernels raise none, so they skip the errstate cost.
        self._quiet = (functools.partial(np.errstate, over="ignore", invalid="ignore",
                                         divide="ignore")
                       if self._backend == "numpy" else contextlib.nullcontext)
        # Plain SGD never touches the optimiser buffers: nothing there to check.
        self._check_state = rules.buffers_in_use(self._state) > 0

    def _bind_engine(self, backend_class):
        """A new backend object over theta and the optimiser state (made at build, and
        again when a new optimiser changes what a backend chooses once: rules.sgd_fold_rows)."""
        # The backend owns views of theta and the state: every call passes only data.
        self._engine = backend_class(self._net, self._dtype, self._theta, self._state)
        # A backend that keeps theta and the state on a device (see fastmlp.backends)
        # copies them to the host arrays before the Model reads them (pull) and back
        # after the Model writes them (push); CPU backends work on the host arrays.
        self._pull = getattr(self._engine, "pull", _nothing)
        self._push = getattr(self._engine, "push", _nothing)
        self._ready_to_train = getattr(self._engine, "ready_to_train", None)
        self._to_device = getattr(self._engine, "to_device", None)
        self._on_device = self._to_device is not None
        # train_on_batch's guarded step, one compiled call on the CPU; on a device many
        # Python calls (launches, then the host's step count and "device newer" marks),
        # where a Ctrl-C left the model between them: there it runs whole, Ctrl-C after.
        checked = self._engine.train_step_checked
        self._checked_step_call = (functools.partial(_whole, checked) if self._on_device
                                   else checked)

    @property
    def optimizer(self):
        """The optimiser, fm.SGD or fm.Adam (immutable). Assign a new one of the same kind
        to train on with other settings, a learning-rate schedule say (``model.optimizer =
        fm.SGD(lr=0.01, momentum=0.9)``): the step count and the momentum or Adam buffers
        are kept, as when PyTorch's param_groups' lr changes. Another kind is refused (its
        state would start from nothing: ``model.to(optimizer=...)`` makes a new model)."""
        return self._optimizer

    @optimizer.setter
    def optimizer(self, optimizer):
        optimizer = _optimizer_for(optimizer, self._dtype)
        if type(optimizer) is not type(self._optimizer):
            raise TypeError(f"this model trains with {type(self._optimizer).__name__}: it "
                            f"cannot change to {type(optimizer).__name__}, whose state would "
                            "start from nothing; model.to(optimizer=...) gives a new "
                            "model with it, this one's weights, input scaling and labels, "
                            "and a fresh optimiser state")
        with self._lock:   # not between another thread's fit steps
            self._wait_for_fit()   # (a Ctrl-C may end the wait: before the deferral)
            with signals_deferred():    # whole
                self._pull()
                self._cover_leases()   # a callback's: its fit's undo keeps them
                folds = rules.sgd_fold_rows(self._state)
                self._optimizer = optimizer
                self._state.hyper[:] = optimizer.hyper()   # the kernels read it at every call
                self._check_state = rules.buffers_in_use(self._state) > 0
                if rules.sgd_fold_rows(self._state) != folds:  # momentum turned on or off
                    self._bind_engine(type(self._engine))
                self._push()                           # a device backend copies it again

    # -- inspection --------------------------------------------------------------
    @property
    def engine(self):
        """The backend object, for benchmarks and advanced use: it owns this model's
        parameters and optimiser state, and its methods (see fastmlp.backends) take
        data only, already validated: C-contiguous, aligned arrays of the model dtype
        with the right shapes. Anything else is undefined; use the Model's methods."""
        return self._engine

    @property
    def net(self):
        """The network's description (fastmlp.network.Network: layers, input_dim, loss,
        the parameter layout), fixed once the model is built."""
        return self._net

    @net.setter
    def net(self, value):
        raise AttributeError("a model's network is fixed once it is built (its parameters "
                             "and kernels are laid out for it): a different network is a "
                             "new Model")

    @property
    def seed(self):
        """The seed the model was built with (None: fresh entropy); the generator itself
        moves on with training and is part of get_state()."""
        return self._seed

    @seed.setter
    def seed(self, value):
        raise AttributeError(f"a model's seed is the one it was built with (this one's is "
                             f"{self._seed!r}): a new fm.Model(..., seed={value!r}) draws its "
                             "weights and shuffles from that seed; this model's generator, "
                             "moved on by training, is get_state()['rng_state'] (set_state "
                             "takes another's)")

    @property
    def dtype(self):
        """The NumPy dtype of the weights and of every computation, fixed once the model
        is built (its parameters, optimiser state and kernels are in it); another dtype
        is a new Model: ``model.to(dtype=...)``."""
        return self._dtype

    @dtype.setter
    def dtype(self, value):
        try:
            value = np.dtype(value).name
        except Exception:   # noqa: BLE001 -- only for the message: shown as given
            pass
        raise AttributeError(f"a model's dtype is fixed once it is built (this one is "
                             f"{self._dtype.name}): model.to(dtype={value!r}) gives a new "
                             "model in that dtype with everything this one has")

    @property
    def backend(self):
        """The backend's name ("numpy", "numba", "cython", "cuda"), fixed once the model is
        built (its engine is that backend's); ``model.to(backend=...)``,
        fm.load(path, backend=...) or pickling rebuilds a model on another."""
        return self._backend

    @backend.setter
    def backend(self, value):
        raise AttributeError(f"a model's backend is fixed once it is built (this one is "
                             f"{self._backend!r}): model.to(backend={value!r}) gives a new "
                             "model on that backend with everything this one has (or "
                             f"fm.load(path, backend={value!r}) for a saved one)")

    @property
    def layers(self):
        """The model's fm.Dense layers, a tuple: fixed once the model is built (its
        parameters and kernels are laid out for them); a different network is a new Model."""
        return self._net.layers

    @layers.setter
    def layers(self, value):
        raise AttributeError("a model's layers are fixed once it is built (its parameters "
                             "and kernels are laid out for them): a different network is a "
                             "new Model")

    @property
    def loss(self):
        return self._net.loss.name

    @property
    def n_params(self):
        return self._net.n_params

    def __repr__(self):
        return (f"Model({list(self._net.layers)}, input_dim={self._net.input_dim}, loss={self.loss!r}, "
                f"optimizer={self.optimizer!r}, backend={self._backend!r}, dtype={self._dtype.name!r})")

    def get_weights(self):
        """Copies of [W1 (in, out), b1 (out,), (prelu alpha1 (out,)), W2, b2, ...],
        all of one step: taken under the model's lock, which training calls hold."""
        with self._lock:
            self._pull()
            return [v.copy() for v in self._net.split(self._theta)]

    def set_weights(self, weights):
        """Replace all parameters; shapes must match :meth:`get_weights`."""
        weights = list(weights)
        if len(weights) != len(self._net.shapes):
            raise ValueError(f"set_weights: expected {len(self._net.shapes)} arrays, got "
                             f"{len(weights)} (weight shapes {self._net.shapes})")
        new = []
        for i, (w, shape) in enumerate(zip(weights, self._net.shapes)):
            w = validation.as_array(w, f"weight {i}")
            if w.shape != shape:
                raise ValueError(f"weight {i} has shape {w.shape}, expected {shape}")
            new.append(validation.as_finite(w, f"weight {i}", self._dtype).ravel())
        # One new theta (so also an argument that views this model's theta is read whole
        # before any is written), copied in by one C call: copied layer by layer, a Ctrl-C
        # left some layers new and the rest old.
        theta = np.concatenate(new)
        with self._lock:
            self._wait_for_fit()   # (a Ctrl-C may end the wait: before the deferral)
            # Written and pushed (the guarded step's bounds forgotten) whatever a signal
            # does, as _install: a timeout landing as push began skipped it, and the
            # guarded step kept the old weights' bounds (hostile round 47)
            with signals_deferred():
                self._pull()   # the host copy of the optimiser state must stay current
                try:
                    np.copyto(self._theta, theta)
                finally:
                    self._push()

    def get_state(self):
        """Copies of everything training changes: a dict with "theta" (n_params,),
        "opt_buffers" (2, n_params), "opt_step" int64 (1,), "rng_state" (the generator's
        bit_generator.state) and "optimizer" (the name of the optimiser whose buffers
        these are, "sgd" or "adam"). :meth:`set_state` restores it exactly.
        Taken under the model's lock (save, pickle and copy call this), so never a
        step's update half written by another thread's training call; from another
        thread during a fit, the state of its last epoch."""
        with self._lock:
            self._pull()
            return {"theta": aligned_copy(self._theta),
                    "opt_buffers": self._state.buffers.copy(),
                    "opt_step": self._state.step.copy(),
                    "rng_state": self._rng.bit_generator.state,
                    "optimizer": self._optimizer.config()["name"]}

    def set_state(self, state):
        """Restore a :meth:`get_state` dict (shapes and dtypes checked; values finite).
        A state of another optimiser's model is refused: its buffers mean something else
        (Adam's first moment is no momentum). (A dict without "optimizer", as get_state
        made them before it said whose state it was, is taken as this model's.)"""
        keys = ("theta", "opt_buffers", "opt_step", "rng_state")
        if not isinstance(state, dict) or not all(k in state for k in keys):
            have = (f"a dict with keys {sorted(map(str, state))}" if isinstance(state, dict)
                    else type(state).__name__)
            raise ValueError(f"state must be a dict from get_state() with keys {list(keys)}, "
                             f"got {have}")
        mine = self._optimizer.config()["name"]
        theirs = state.get("optimizer", mine)
        if not isinstance(theirs, str):
            raise ValueError(f"state['optimizer'] must be the name get_state() gives "
                             f"('sgd' or 'adam'), got {type(theirs).__name__} {theirs!r:.60}")
        if theirs != mine:
            raise ValueError(f"state is of a model trained with {theirs!r}, and this model "
                             f"trains with {mine!r}: the optimiser's buffers would mean "
                             "something else; copy the weights instead "
                             "(model.set_weights(other.get_weights()))")
        theta = np.asarray(state["theta"])
        buffers, step = np.asarray(state["opt_buffers"]), np.asarray(state["opt_step"])
        if theta.shape != self._theta.shape or buffers.shape != self._state.buffers.shape:
            raise ValueError(f"state does not match this model: theta {theta.shape} and "
                             f"opt_buffers {buffers.shape}, expected {self._theta.shape} "
                             f"and {self._state.buffers.shape}")
        # below io.MAX_STEP, as load requires: a step near 2**63 wrapped around in the
        # compiled counters (Adam then stopped moving the weights) and could not be saved
        if (step.shape != (1,) or not np.issubdtype(step.dtype, np.integer)
                or not 0 <= int(step[0]) < io.MAX_STEP):
            raise ValueError(f"opt_step must be one integer in [0, 2**53), got {step!r}")
        theta = validation.as_finite(theta, "theta", self._dtype,
                                     what_at=self._net.parameter_at)
        buffers = validation.as_finite(buffers, "opt_buffers", self._dtype)
        if self._state.code == optimizers.ADAM_CODE and (buffers[1] < 0).any():
            # sqrt(v) of Adam's step would be NaN (fastmlp.load refuses such files too)
            raise ValueError("opt_buffers[1] is Adam's second-moment estimate and must be "
                             ">= 0; it has negative values")
        self._install(self._generator_from(state["rng_state"]), step, theta, buffers)

    def _generator_from(self, rng_state):
        """A new generator in ``rng_state`` (a model's own: a seed=Generator given to the
        model is the caller's, whose draws elsewhere must not be rewound)."""
        rng = np.random.default_rng()
        try:   # NumPy's own errors ("state must be a dict") do not say whose state
            rng.bit_generator.state = rng_state
            # as load reads it back: NumPy's setter takes has_uint32 = 5 (a file load then
            # refused) and truncates 1.5
            if rng.bit_generator.state != rng_state:
                raise ValueError("NumPy would store another state than the one given")
            io.check_rng_state(rng.bit_generator.state)
        except (TypeError, ValueError, KeyError, OverflowError) as exc:
            raise ValueError(f"rng_state is not a state of this model's generator "
                             f"({type(self._rng.bit_generator).__name__}): {exc}") from None
        return rng

    def _cover_leases(self):
        """Before optimiser-buffer rows are put in use or written: the snapshots of the
        training calls under way save them as they are (Snapshot.cover), so that their
        undo puts them back."""
        for lease in list(self._leases):
            lease.snapshot.cover()

    def _install(self, rng, step, theta=None, buffers=None):
        """Write checked state: the generator, the step count, and theta and the optimiser
        buffers unless None (load built the model on its own). All written, then push
        (the guarded step's bounds forgotten), whatever a Ctrl-C does: landing between
        them it left new weights with the old generator, and skipping push it left
        bounds of the old weights (a step then wrote -inf unchecked)."""
        with self._lock:
            self._wait_for_fit()   # (a Ctrl-C may end the wait: before the deferral)
            with signals_deferred():
                try:
                    if theta is not None:
                        self._cover_leases()   # (a callback's set_state)
                        self._theta[...] = theta
                        self._state.buffers[...] = buffers
                    self._state.step[...] = step
                    self._rng = rng
                finally:
                    self._push()

    @property
    def input_scaling(self):
        """None, or (mean, scale): float64 (input_dim,) arrays; every call then uses
        (X - mean) / scale, computed in float64 before the cast to the model dtype."""
        return None if self._scaling is None else tuple(a.copy() for a in self._scaling)

    def _set_weight_decay(self, weight_decay):
        """The optimiser's weight decay changed, everything else kept (weights, optimiser
        buffers and step, generator): for the scikit-learn estimators, whose decay follows
        each partial_fit call's rows. The same decay: nothing."""
        if weight_decay != self._optimizer.weight_decay:
            self.optimizer = optimizers.from_config(dict(self._optimizer.config(),
                                                         weight_decay=weight_decay))

    def set_input_scaling(self, mean, scale):
        """Standardise inputs inside the model ((X - mean) / scale in float64);
        ``set_input_scaling(None, None)`` clears it.

        Keeping the scaler apart from the weights keeps large offsets exact (a
        Unix time of 1.7e9 has a float32 spacing of 128: folded into float32
        weights its signal would be lost)."""
        if mean is None and scale is None:
            scaling = None
        else:
            scaling = self._checked_scaling(mean, scale)
        # Under the lock, after another thread's fit, as the other writes of what training
        # reads (a fit's training and validation rows were scaled apart, one each way);
        # calls that do not lock read it once (a big predict read it per block of rows
        # and scaled its rows two ways)
        with self._lock:
            self._wait_for_fit()
            self._scaling = scaling

    def _checked_scaling(self, mean, scale):
        """(mean, scale) as set_input_scaling keeps them: float64 (input_dim,) copies."""
        d = self._net.input_dim
        mean = validation.as_finite(validation.as_array(mean, "mean"), "mean", np.float64)
        scale = validation.as_finite(validation.as_array(scale, "scale"), "scale", np.float64)
        if mean.shape != (d,) or scale.shape != (d,):
            raise ValueError(f"mean and scale must have shape ({d},), got {mean.shape} "
                             f"and {scale.shape}")
        if not (scale > 0).all():
            raise ValueError("scale must be > 0 everywhere (use 1 for constant features)")
        return mean.copy(), scale.copy()

    def __getstate__(self):
        # The backend engine is rebuilt on unpickling.
        held = self._held()
        step = int(held["state"]["opt_step"][0])
        if step >= io.MAX_STEP:   # (set_state and load refuse it: a pickle no one can load)
            raise ValueError(f"cannot pickle this model: its optimiser step count {step} is "
                             "not below 2**53, as a model's state must be (load, set_state "
                             "and unpickling refuse it); set_state a smaller opt_step first")
        return held

    def _held(self):
        """What a pickle, a copy and save hold (io.save writes it; a subclass's own
        __getstate__ is not save's): the configuration, get_state, the input scaling and
        the labels, copied (copy.copy(model) shared the label arrays, so relabelling the
        copy in place relabelled the original). Read at one moment, under the lock: the
        optimiser's settings read before it held those of one step and the state of a
        later one, beside a partial_fit setting its weight decay (hostile round 33)."""
        with self._lock:
            return {"config": self._config(), "state": self.get_state(),
                    "input_scaling": self._scaling, "classes_": copy.copy(self.classes_),
                    "feature_names_in_": copy.copy(self.feature_names_in_)}

    def __setstate__(self, pickled):
        self._restore(pickled)

    def __copy__(self):
        return self._copy()

    def __deepcopy__(self, memo):
        return self._copy(memo)

    def _copy(self, memo=None):
        """copy.copy (memo None) and copy.deepcopy: a model that shares nothing with this
        one. A Model takes get_state's copy of theta and the optimiser buffers as its own:
        through pickling's protocol deepcopy copied them twice more (the state dict
        deep-copied, then set_state), and a 2048-4096-4096-10 Adam model's copy peaked at
        three copies of its 289 MiB state and took 1.7 s. A subclass with a __getstate__
        or __setstate__ of its own is copied through them, as pickling copies it."""
        cls = type(self)
        model = cls.__new__(cls)
        if memo is not None:
            memo[id(self)] = model
        # (a copy is of this process: _held, where __getstate__ is Model's, copies a model
        # whose step count a pickle cannot hold)
        pickled = self._held() if cls.__getstate__ is Model.__getstate__ else \
            self.__getstate__()
        if cls.__getstate__ is Model.__getstate__ and cls.__setstate__ is Model.__setstate__:
            model._restore(pickled, own=True)
        else:
            model.__setstate__(pickled if memo is None else copy.deepcopy(pickled, memo))
        return model

    def _restore(self, pickled, backend=None, dtype=None, optimizer=None, own=False):
        """Build this (new) model from a __getstate__ dict, on ``backend``, in ``dtype`` and
        with ``optimizer`` where given (see :meth:`to`). ``own``: the dict's theta and
        optimiser buffers are this process's fresh copies (a live model's get_state), taken
        as the new model's own, or converted once to another dtype (_own_arrays)."""
        cfg = pickled["config"]
        state = pickled["state"]
        # settings the dtype cannot hold are refused where the caller gives a dtype or an
        # optimiser (to()); a pickle, copy or move to another backend of a model loaded with
        # such settings warns, as load does
        strict = (dtype, optimizer) != (None, None)
        kept = optimizers.from_config(cfg["optimizer"])
        optimizer = kept if optimizer is None else optimizers.get(optimizer)
        same_kind = type(optimizer) is type(kept)
        arrays = None
        if own:   # a live model's checked state: taken, or converted once, as the new one's
            arrays = _own_arrays(   # (its Network built only for a refusal's words)
                state, _dtype(cfg["dtype"] if dtype is None else dtype), same_kind,
                lambda i: Network(Network.layers_from_config(cfg["network"]),
                                  cfg["network"]["input_dim"],
                                  cfg["network"]["loss"]).parameter_at(i))
        self._build(Network.layers_from_config(cfg["network"]), cfg["network"]["input_dim"],
                    cfg["network"]["loss"], optimizer,
                    cfg["backend"] if backend is None else backend,
                    cfg["dtype"] if dtype is None else dtype, cfg["seed"], draw=False,
                    strict=strict, arrays=arrays)
        step = state["opt_step"] if same_kind else np.zeros(1, dtype=np.int64)
        if arrays is not None:
            self._install(self._generator_from(state["rng_state"]), step)
        elif same_kind:
            self.set_state(state)
        else:   # another kind of optimiser: its state starts from nothing
            self.set_state({"theta": state["theta"], "opt_step": step,
                            "opt_buffers": np.zeros_like(self._state.buffers),
                            "rng_state": state["rng_state"]})
        scaling = pickled["input_scaling"]
        if scaling is not None:
            self.set_input_scaling(*scaling)
        self.classes_ = pickled["classes_"]
        self.feature_names_in_ = pickled["feature_names_in_"]

    def to(self, *, backend=None, dtype=None, optimizer=None):
        """A new Model: this one on another ``backend`` ("auto" too), in another ``dtype``
        or with another ``optimizer`` (each kept where not given). It has everything this
        one has: the weights (converted to the dtype), optimiser buffers and step,
        shuffling generator, input scaling, ``classes_`` and ``feature_names_in_``
        (``set_state(get_state())`` carries only what training changes). An optimiser of
        another kind starts its buffers and step from nothing. The model itself is
        unchanged; a weight the new dtype cannot hold is refused (ValueError)."""
        if backend is not None:
            get_backend(resolve_backend(backend))   # a bad name: the caller's error first
        if dtype is not None:
            dtype = _dtype(dtype)
        if optimizer is not None:
            optimizer = optimizers.get(optimizer)
        # one moment's state, never between another thread's steps; from another thread
        # during a fit, its last epoch's, as a copy's (a callback handing to() to a
        # worker and waiting for it waited forever while to() waited for the fit's end)
        pickled = self._held()
        model = Model.__new__(Model)
        model._restore(pickled, backend, dtype, optimizer, own=True)
        return model

    def _config(self):
        """What rebuilds this model (architecture, optimiser, dtype, backend, seed) as JSON types."""
        seed = self._seed
        return {"network": self._net.config(), "optimizer": self.optimizer.config(),
                "dtype": self._dtype.name, "backend": self._backend,
                "seed": int(seed) if isinstance(seed, (int, np.integer))
                and not isinstance(seed, bool) else None}

    # -- computing ---------------------------------------------------------------
    def predict(self, X):
        """Network outputs (n, outputs) for inputs X (n, input_dim).

        One backend call writes into one preallocated output, taking X in chunks
        of rows (fastmlp.rules.predict_rows), so memory stays bounded by the
        output plus one chunk's activations, however many rows X has. A Fortran-ordered
        X in the model's dtype (a DataFrame's values) is read where it lies by the
        backends that read columns (all but cuda); any other X (a float64 DataFrame,
        say), and every X of a model with input scaling, is converted and scaled a block
        of rows at a time (fastmlp.rules.convert_rows), one backend call per block (on
        the compiled backends, a plain array into one buffer reused for every block).
        Safe to call from several threads at once.

        On the "cuda" backend X may also be a device array (anything with
        ``__cuda_array_interface__``: a Numba device array, a CuPy array, a PyTorch
        CUDA tensor) of the model dtype: it is read where it is, without a copy, and
        the outputs come back as a Numba device array.

        A DataFrame must have the columns the model was trained with, in the same order
        (``feature_names_in_``), as for every other call.
        """
        if self._on_device and self._engine.is_device_array(X):
            return self._predict_on_device(X)
        scaling = self._scaling   # read once: another thread may set it meanwhile
        ready = self._small_ready(X, scaling)
        if ready is None and getattr(X, "columns", None) is not None:
            # a DataFrame (a row of one, often): its names checked, its values taken once
            self._checked_feature_names(X)
            X = validation.frame_values(X, "X")
            ready = self._small_ready(X, scaling)
        if (ready is None and scaling is None
                and getattr(self._engine, "reads_columns", False)
                and validation.laid_out_columns(X, self._width[0], self._dtype)):
            ready = X   # Fortran order (a DataFrame's values): read where it lies
        if ready is not None:
            # Checked as it is computed (the backend reads X anyway), so a ready array
            # costs no validation pass: all a 1-row predict can afford.
            out = np.empty((ready.shape[0], self._width[1]), dtype=self._dtype)
            checked = getattr(self._engine, "predict_checked", None)
            if checked is not None:
                if checked(ready, out):
                    return out
            elif validation.finite(ready):
                return self._engine.predict(ready, out)
            # not finite: check_inputs raises the usual message, naming the first one
        self._checked_feature_names(X)
        arr = validation.as_array(validation.frame_values(X, "X"), "X")
        rows = rules.convert_rows(self._net, self._dtype)
        # a Fortran-ordered X is cast and scaled down its columns, where a copy into rows
        # crosses them (tiled, it was 6.5 of the 8.8 ms of a 784-16-10 net's predict of
        # 8,192 rows of 784 float32 columns)
        major = validation.column_major(arr)
        columns = major and getattr(self._engine, "reads_columns", False)
        checked = getattr(self._engine, "predict_checked", None)
        if (checked is not None and validation.plain_numbers(arr, self._width[0])
                and (columns or not major)):
            return self._predict_converted(arr, rows, scaling, columns, checked)
        if arr.ndim != 2 or len(arr) <= rows:
            X = validation.check_inputs(arr, self._net.input_dim, self._dtype, scaling,
                                        columns=columns)
            out = np.empty((len(X), self._net.output_dim), dtype=self._dtype)
            return self._engine.predict(X, out)
        # Converted (and scaled) a block of rows at a time, not copied whole
        out = np.empty((len(arr), self._net.output_dim), dtype=self._dtype)
        for start in range(0, len(arr), rows):
            block = validation.check_inputs(arr[start:start + rows], self._net.input_dim,
                                            self._dtype, scaling, first_row=start,
                                            columns=columns)
            self._engine.predict(block, out[start:start + rows])
        return out

    def _predict_converted(self, arr, rows, scaling, columns, checked):
        """predict of a plain 2-D ndarray of numbers that is not laid out (another dtype, or
        input scaling): converted (and scaled) a block of ``rows`` rows (rules.convert_rows)
        at a time into one buffer, reused, in the order of arr's rows or, with ``columns``, of
        its columns; each block predicted by the checked kernel, which finds NaN, inf and
        values too large for the dtype as it reads, and the full checks then name them.
        (A fresh array per block, then a pass to check it: 8.6 ms against 5.6 for a
        predict of 8,192 float64 rows on a 784-16-10 float32 net.) The outputs of the full
        checks' conversion, bit for bit: the same values, chunked alike."""
        n = len(arr)
        order = "F" if columns else "C"
        out = np.empty((n, self._net.output_dim), dtype=self._dtype)
        buffer = np.empty((min(rows, n), arr.shape[1]), dtype=self._dtype, order=order)
        for start in range(0, n, rows):
            part = arr[start:start + rows]
            if len(part) == len(buffer):
                block = buffer
            elif columns:   # the last, shorter block: Fortran-ordered itself
                block = np.empty(part.shape, dtype=self._dtype, order=order)
            else:
                block = buffer[:len(part)]
            validation.convert_into(block, part, scaling)
            if not checked(block, out[start:start + rows]):
                # not finite: the full checks name the first value that is not
                block = validation.check_inputs(part, self._net.input_dim, self._dtype,
                                                scaling, first_row=start, columns=columns)
                self._engine.predict(block, out[start:start + rows])
        return out

    def _small_ready(self, X, scaling):
        """X as predict's checked kernel takes it (scaled by ``scaling``, the model's input
        scaling as the caller read it) when X is laid out already, or small and plain
        (validation.small_real_copy); else None. Not yet checked for finiteness: the
        kernel checks as it reads."""
        if scaling is None:
            return X if validation.laid_out(X, self._width[0], self._dtype) else \
                validation.small_real_copy(X, self._width[0], self._dtype)
        # (every model `fastmlp train --save` writes has input scaling)
        return validation.small_scaled_copy(X, self._width[0], self._dtype, scaling)

    def _predict_on_device(self, X):
        """predict for a device array X (n, input_dim): checked where it lies."""
        X = self._engine.as_device(X)
        shape, dtype = tuple(X.shape), np.dtype(X.dtype)
        if len(shape) != 2 or shape[1] != self._net.input_dim:
            raise ValueError(f"X must have shape (n, {self._net.input_dim}), got {shape}")
        if dtype != self._dtype:
            raise TypeError(f"a device array X must be {self._dtype.name} like the model, got "
                            f"{dtype.name}: convert it on the device first")
        if not X.is_c_contiguous():
            raise ValueError("a device array X must be C-contiguous")
        if shape[0] == 0:   # as for a host X: the same data, the same answer
            raise ValueError("X is empty: it has 0 rows")
        if self._scaling is not None:
            raise ValueError("this model standardises its inputs (set_input_scaling), which "
                             "is done on the host: pass X as a NumPy array")
        if not self._engine.all_finite(X):
            raise ValueError("X contains NaN or inf")
        return self._engine.predict(X)

    def evaluate(self, X, Y):
        """Mean loss over (X, Y), a float. Safe to call from several threads at once."""
        blocks = self._index_blocks(X, Y)
        if blocks is not None:
            return self._blocked_loss(*blocks)
        X, T = self._data(X, Y)
        return float(self._engine.evaluate(X, T))

    def gradients(self, X, Y):
        """(loss, grads): the mean loss and its gradient, in get_weights() order. No update.
        Safe to call from several threads at once."""
        grad = np.empty(self._net.n_params, dtype=self._dtype)
        blocks = self._index_blocks(X, Y)
        if blocks is not None:
            return self._blocked_loss(*blocks, grad), self._net.split(grad)
        X, T = self._data(X, Y)
        loss = self._engine.loss_and_gradient(X, T, grad)
        return float(loss), self._net.split(grad)

    # Class indices whose one-hot targets (n, k) would pass _ONE_HOT_BYTES are taken by
    # evaluate, gradients and gradient_vector about _ONE_HOT_BLOCK_BYTES of targets at a
    # time, in whole workspaces of rows (the kernels take float targets only: 200,000
    # indices of 1,000 classes peaked at 766 MB, made one-hot in one piece).
    _ONE_HOT_BYTES = 64 << 20
    _ONE_HOT_BLOCK_BYTES = 16 << 20

    def _index_blocks(self, X, Y):
        """(X, Y, rows) for _blocked_loss when Y is class indices of a softmax model
        (classes_ unset or 0..k-1: validation.class_indices) whose one-hot targets would
        pass _ONE_HOT_BYTES: X checked as the kernels take it, Y (n,) and the rows of
        a block; else None (the usual path: one array of targets, or the error)."""
        k, itemsize = self._width[1], self._dtype.itemsize
        if not (self._index_labels and type(Y) is np.ndarray and Y.ndim in (1, 2)
                and len(Y) * k * itemsize > self._ONE_HOT_BYTES
                and self._classes_are_indices()):
            return None
        indices = validation.class_indices(Y, len(Y), k)
        if indices is None:
            return None
        self._checked_feature_names(X)   # (a DataFrame's columns, as _data checks them)
        X = validation.check_inputs(X, self._width[0], self._dtype, self._scaling)
        if len(X) != len(indices):
            return None   # (_data names the mismatch)
        step = rules.TRAIN_ROWS   # whole chunks of the kernels' own
        rows = max(step, self._ONE_HOT_BLOCK_BYTES // (k * itemsize) // step * step)
        return X, indices, rows

    def _blocked_loss(self, X, indices, rows, grad=None):
        """The mean loss over X (n, input_dim) and class ``indices`` (n,), ``rows`` at a
        time (their one-hot targets made per block), and its gradient written into
        ``grad`` (n_params,) when given: the blocks' means weighted by their rows, summed
        in float64."""
        n, k = len(X), self._width[1]
        loss, total = 0.0, None if grad is None else np.zeros(len(grad))
        for start in range(0, n, rows):
            block = X[start:start + rows]
            T = validation.index_targets(indices[start:start + rows], len(block), k,
                                         self._dtype)
            share = len(block) / n
            if grad is None:
                loss += share * float(self._engine.evaluate(block, T))
            else:
                loss += share * float(self._engine.loss_and_gradient(block, T, grad))
                total += share * grad
            del T   # (before the next block's targets are made: one block's at a time)
        if grad is not None:
            grad[...] = total
        return loss

    def prepare(self, X, Y):
        """(X, T): inputs and targets validated and converted once, as the methods above
        do on every call (labels become class indices and are recorded in classes_), for
        loops that call ``model.engine`` directly (see fastmlp.distributed)."""
        return self._data(X, Y, learn=True)

    def permutation(self, n):
        """The next epoch's order of n rows, drawn from the model's generator exactly as
        ``fit`` draws it (int64 (n,)), so a custom training loop shuffles the same way.
        A training call: it waits for another thread's fit (whose generator it would move).
        ``n``: an integer >= 0 (NumPy's permutation would shuffle an array or list given
        instead, and take True for 1), checked before the generator moves; at most the
        largest array length (NumPy's gave an empty order for n >= 2**63)."""
        n = validation.check_count(n, "n", maximum=np.iinfo(np.intp).max)
        with self._lock:
            self._wait_for_fit()
            return self._rng.permutation(n).astype(np.int64, copy=False)

    def gradient_vector(self, X, Y, out=None):
        """(loss, grad): the mean loss over (X, Y) and its gradient as ONE flat vector
        (n_params,) in get_weights() order, written into ``out`` when given (a
        C-contiguous array of the model dtype). No update. For data-parallel training:
        sum the vectors of several workers, then :meth:`apply_gradient`."""
        blocks = self._index_blocks(X, Y)
        X, T = blocks[:2] if blocks is not None else self._data(X, Y)   # (T: indices)
        if out is None:
            out = np.empty(self._net.n_params, dtype=self._dtype)
        elif (not isinstance(out, np.ndarray) or out.shape != (self._net.n_params,)
              or out.dtype != self._dtype or not out.flags.c_contiguous or not out.flags.writeable):
            raise ValueError(f"out must be a writeable C-contiguous {self._dtype.name} array of "
                             f"shape ({self._net.n_params},)")
        # Filled through a new array when out is unaligned (a view into a byte buffer: the
        # compiled kernels take aligned arrays only) or may overlap X, Y or the model's
        # own arrays (the kernels write the later layers' gradient before they read the
        # first layer's X; the reference zeroes out first).
        clear = out.flags.aligned and not _shares_memory(out, X, T, self._theta,
                                                         self._state.buffers)
        into = out if clear else np.empty_like(out)
        loss = (self._engine.loss_and_gradient(X, T, into) if blocks is None
                else self._blocked_loss(*blocks, into))
        if into is not out:
            out[...] = into
        return float(loss), out

    def apply_gradient(self, grad):
        """One optimiser step with a given flat gradient (n_params,) (e.g. the mean of
        several workers'); a step that makes the weights non-finite is undone and raises
        TrainingDiverged."""
        if (isinstance(grad, tuple) and len(grad) == 2 and np.ndim(grad[0]) == 0
                and isinstance(grad[1], np.ndarray) and grad[1].ndim == 1):
            raise TypeError("apply_gradient takes the gradient vector, not gradient_vector's "
                            "(loss, grad) pair: pass its second item")
        layers = grad[1] if isinstance(grad, tuple) and len(grad) == 2 else grad
        if isinstance(layers, list) and layers and all(isinstance(g, np.ndarray) for g in layers) \
                and len({g.shape for g in layers}) > 1:   # gradients()'s, or its second item
            raise TypeError("apply_gradient takes one flat gradient vector (n_params,), not "
                            "gradients()'s per-layer arrays: use gradient_vector(X, Y)[1], or "
                            "np.concatenate([g.ravel() for g in grads])")
        grad = validation.as_finite(validation.as_array(grad, "grad"), "grad", self._dtype)
        if grad.shape != (self._net.n_params,):
            raise ValueError(f"grad must have shape ({self._net.n_params},), got {grad.shape}")
        grad = self._unshared(grad)
        with self._lock:
            self._wait_for_fit()
            with self._rollback() as snapshot:
                snapshot.save()
                try:
                    with np.errstate(over="ignore", invalid="ignore"):
                        optimizers.update(self._theta, grad, self._state)
                    self._push()
                    self._check_finite(0.0, "in apply_gradient", "the model was left as it "
                                       "was before the step")
                except BaseException as exc:
                    late, tries = None, 0   # (no call before the try: a signal after it escaped)
                    while tries < UNDO_SIGNALS:   # again after a second signal (see run_whole)
                        tries += 1
                        try:
                            run_whole(snapshot.restore)
                            break
                        except BaseException as signalled:   # a Ctrl-C's or a timeout's
                            if UNDO_FAILED in signalled.__dict__:   # (the undo's own; no call)
                                raise
                            # (kept's rule, no call: a Ctrl-C gives way to what follows)
                            late = (signalled if late is None
                                    or late.__class__ is KeyboardInterrupt else late)
                    raise_after_undo(exc, late)

    def train_on_batch(self, X, Y):
        """One optimiser step on (X, Y); returns the batch loss before the step.

        A step whose loss, weights or optimiser state is not finite is undone
        (the model is left exactly as before it) and TrainingDiverged says which.
        """
        with self._lock:
            if self._fit_owner is not None:   # (inline: the call, ~25 ns, is 1.5 % of a 6-row step)
                self._wait_for_fit()
            # Arrays already as the backends take them: one compiled call checks them and
            # steps, guarded (train_step_checked), on a small network or where that costs
            # no copy (a device; guarded_step_is_free). On larger networks of other
            # backends the checks below (BLAS dots) and np.copyto beat the kernel's
            # scalar loops, and the Python around them no longer matters.
            status = None   # the guarded call has not run
            if self._checked_step:
                if self._scaling is None and validation.laid_out_xy(
                        X, Y, self._width[0], self._width[1], self._dtype):
                    pair, indices = (X, Y), False
                else:
                    pair, indices = self._small_pair(X, Y)
                if pair is not None:
                    loss, status = self._checked_step_call(*pair)
                    if not status:
                        if indices:   # learnt, as _data learns them
                            self._learn_index_classes()
                        return float(loss)
                # 1: X or Y not finite, or targets outside [0, 1]: nothing ran, and the
                # checks below raise the exact message. 2: the step diverged and was
                # undone: it runs once more below, to say what went bad, and is undone.
            # A first call compiles the training kernel before labels are learnt: a
            # Ctrl-C held back through that compile (seconds) left classes_ with no step
            if self._ready_to_train is not None:
                self._ready_to_train(guarded=self._checked_step)
            learnt = self.classes_, self.feature_names_in_
            # learn: labels found here become classes_, so later calls map them alike
            X, T = self._data(X, Y, learn=True)
            if self._checked_step and status is None:
                # converted (labels, float64 X, scaling): the same one guarded call, not a
                # backup copy and a finiteness pass over theta around an unguarded step
                loss, status = self._checked_step_call(X, T)
                if not status:
                    return float(loss)
                # diverged and undone: the step below says what went bad, and undoes it
            with self._rollback() as snapshot:
                snapshot.save()
                try:
                    with self._quiet():
                        loss = float(self._engine.train_step(X, T))
                    self._check_finite(loss, "in this train_on_batch step", "the model was "
                                       "left as it was before the step")
                except BaseException as exc:  # ... with nothing learnt either
                    def undo():
                        snapshot.restore()
                        self.classes_, self.feature_names_in_ = learnt
                    late, tries = None, 0   # (no call before the try: a signal after it escaped)
                    while tries < UNDO_SIGNALS:   # again after a second signal (see run_whole)
                        tries += 1
                        try:
                            run_whole(undo)
                            break
                        except BaseException as signalled:   # a Ctrl-C's or a timeout's
                            if UNDO_FAILED in signalled.__dict__:   # (the undo's own; no call)
                                raise
                            # (kept's rule, no call: a Ctrl-C gives way to what follows)
                            late = (signalled if late is None
                                    or late.__class__ is KeyboardInterrupt else late)
                    raise_after_undo(exc, late)
        return loss

    def predict_classes(self, X):
        """Class labels (n,) for X: ``classes_[argmax]`` for a softmax, > 0.5 for one
        sigmoid unit (indices when the model was never given labels); several sigmoid
        units give a 0/1 indicator (n, k)."""
        return labels.decode(self.predict(X), self._net, self.classes_)

    def to_onnx(self, path, opset=None):
        """Write the model as an ONNX graph (needs the ``onnx`` extra); see fastmlp.onnx_export."""
        from .onnx_export import to_onnx
        return to_onnx(self, path, opset=opset)

    # -- saving ------------------------------------------------------------------
    def save(self, path):
        """Write the model to one file, atomically (see fastmlp.io)."""
        io.save(self, path)

    # -- helpers -----------------------------------------------------------------
    def _unshared(self, a):
        """``a``, or a copy where it may share memory with this model's theta or
        optimiser state (_own; bounds only, O(1))."""
        return _own(a, self._theta, self._state.buffers)

    def _data(self, X, Y, learn=False):
        """(X, T) as the backends take them. Labels of any kind become class indices;
        ``learn`` (training calls) records classes_ and feature names the first time."""
        net = self._net
        if self.feature_names_in_ is not None and getattr(X, "columns", None) is not None:
            # a DataFrame of the columns learnt (refused here otherwise): its values taken
            # once, as predict takes them, and a Series of int or str labels as the array
            # np.asarray makes, so that a small batch takes the shortcuts below
            self._checked_feature_names(X)
            X, labels_given = validation.frame_values(X, "X"), validation.series_values(Y)
            if labels_given is not None and labels_given.dtype.kind in "iuO":
                Y = labels_given   # (floats stay as given: labels.exact reads them again)
        scaling = self._scaling   # read once: another thread may set it meanwhile
        # X laid out already (itself, no copy), or small and plain (copied, scaled): with
        # ready targets or class indices, O(1) Python work and one finiteness pass
        ready = self._small_ready(X, scaling)
        if ready is not None and validation.finite(ready):
            # float targets in another dtype or layout (np.eye(k)[y] is float64) copied;
            # not ready (a value too large for the dtype, say): the full checks name it
            targets = self._small_float_targets(Y)
            targets = Y if targets is None else targets
            if ((validation.ready_unit(targets, net.output_dim, self._dtype) if self._unit_targets
                 else validation.ready(targets, net.output_dim, self._dtype))
                    and len(targets) == len(ready)):
                return ready, targets
            if self._index_labels and self._classes_are_indices():
                # class indices 0..k-1 (what a softmax model learns from most often): one
                # gather, not the label machinery's dozen passes (5x a 6-row step)
                T = validation.index_targets(Y, len(ready), net.output_dim, self._dtype)
                if T is not None:
                    if learn:
                        self._learn_index_classes()
                    return ready, T
            elif self._index_labels:
                # string labels the model knows: their indices by one sorted search
                codes = self._known_string_codes(Y, len(ready))
                if codes is not None:
                    return ready, validation.index_targets(codes, len(ready), net.output_dim,
                                                           self._dtype)
        names, Y_given = self._checked_feature_names(X), Y
        if learn and names is not None and self.feature_names_in_ is None:
            distinct_names(names)
        X = validation.check_inputs(X, self._net.input_dim, self._dtype, scaling)
        Y = validation.as_array(Y, "Y")
        if self._unit_targets:   # a cross-entropy: Y may hold labels
            Y = labels.exact(Y, Y_given)
        if Y.ndim and len(Y) != len(X):  # before labels: their errors would mislead
            raise ValueError(f"Y has {len(Y)} rows but X has {len(X)}")
        # read once: another thread may set classes_ meanwhile (read twice, a label map
        # found here was then refused as found "with no classes_")
        classes, known = None, self.classes_
        if labels.is_labels(Y, self._net, known):
            Y, classes = labels.encode(Y, self._net, known, learn)
            if not learn and known is None and not labels.are_indices(classes):
                # found from this call's labels alone, they could map a label to another
                # unit in the next call (labels {1, 2} are indices, {1, 2, 3} are not)
                raise ValueError(f"Y holds labels {classes.tolist()[:10]} that are not class "
                                 "indices and this model has no classes_ to map them: train "
                                 "it on them first (fit and train_on_batch record classes_) "
                                 "or set model.classes_")
        T = validation.check_targets(Y, len(X), self._net, self._dtype)
        if learn:  # only once every check has passed
            if classes is not None and self.classes_ is None:
                self.classes_ = classes
            if names is not None and not (self.feature_names_in_ is not None
                                          and np.array_equal(names, self.feature_names_in_)):
                # (kept when equal: the column-name check's cache holds the array itself)
                self.feature_names_in_ = names
        return X, T

    def _small_pair(self, X, Y):
        """((X, T), indices) for train_on_batch's guarded kernel, from a small plain batch
        in another dtype or layout, or a model that scales its inputs: X as predict takes
        it (_small_ready), and float targets Y (n, outputs) laid out or copied
        (validation.small_real_copy), or class indices Y (n,) as one-hot targets (indices
        True: classes_ is then learnt). (None, False) for anything else: the full checks
        take it. The kernel finds what is not finite, or targets outside [0, 1]."""
        if (type(Y) is not np.ndarray or type(X) is not np.ndarray or Y.ndim == 0
                or X.ndim == 0 or len(Y) != len(X)):
            return None, False
        indices = Y.dtype.kind in "iu"
        if indices:   # class labels, taken here when they are their own indices
            if not (self._index_labels and self._classes_are_indices()):
                return None, False
        elif Y.dtype.kind != "f":
            return None, False
        X = self._small_ready(X, self._scaling)   # (under the lock: set_input_scaling waits)
        if X is None:
            return None, False
        T = (validation.index_targets(Y, len(X), self._width[1], self._dtype) if indices
             else self._small_float_targets(Y))
        return (None, False) if T is None else ((X, T), indices)

    def _small_float_targets(self, Y):
        """Float targets Y (n, outputs) as the backends take them: Y itself when laid out
        already, else a copy in the model's dtype when Y is small and plain
        (validation.small_real_copy), integer or bool one-hot rows included; None for
        anything else (the full checks take it). A 1-D float Y of a one-output model is
        that column (n, 1), as the full checks read it (13x faster than taking them)."""
        if (type(Y) is np.ndarray and Y.ndim == 1 and self._width[1] == 1
                and Y.dtype.kind == "f"):
            Y = Y.reshape(-1, 1)
        if (type(Y) is not np.ndarray or Y.ndim != 2 or Y.shape[1] != self._width[1]
                or not (Y.dtype.kind == "f" or Y.dtype.kind in "iub" and Y.shape[1] > 1)):
            return None   # (integers in one column may be labels: labels.is_labels)
        if validation.laid_out(Y, self._width[1], self._dtype):
            return Y
        return validation.small_real_copy(Y, self._width[1], self._dtype)

    def _known_string_codes(self, Y, rows):
        """The class indices (int64 (rows,)) of string labels Y, a plain 1-D str ndarray,
        when every label is one of a softmax model's str classes_; else None
        (the full path: unknown labels named, other kinds of label). The sorted classes
        are kept with the bytes of the classes_ they were sorted from, compared on every
        call: classes_ is a public, mutable array."""
        classes = self.classes_
        if type(Y) is np.ndarray and Y.dtype.kind == "O" and Y.ndim == 1 and rows:
            values = Y.tolist()
            if set(map(type, values)) != {str} or "\0" in "".join(values):
                return None   # (a str array drops trailing NULs: 'x\0' would pass as 'x')
            Y = np.array(values)   # str objects (a pandas str column's): the same labels
        if (type(Y) is not np.ndarray or Y.ndim != 1 or len(Y) != rows or rows == 0
                or Y.dtype.kind != "U" or type(classes) is not np.ndarray
                or classes.dtype.kind != "U" or classes.shape != (self._width[1],)):
            return None
        key, sorted_classes = (classes.dtype, classes.tobytes()), self._sorted_classes
        if sorted_classes is None or sorted_classes[0] != key:
            # sorted from a copy of the bytes compared: classes_ sorted where it lies, edited
            # in place by another thread meanwhile, kept one classes_'s order under
            # another's bytes, and mapped labels to the wrong units from then on
            try:
                order, ranked = labels.sorted_classes(np.frombuffer(key[1], dtype=key[0]))
            except ValueError:
                return None   # a label twice: the full path refuses it
            self._sorted_classes = sorted_classes = (key, order, ranked)
        _, order, ranked = sorted_classes
        at, known = labels.find(Y, ranked)
        return order.take(at) if known.all() else None

    def _learn_index_classes(self):
        """classes_ = 0..k-1 (labels.index_classes) when unset: what a model first trained
        on class indices records, on the shortcuts as through the label machinery."""
        if self.classes_ is None:
            self.classes_ = labels.index_classes(self._width[1])

    def _classes_are_indices(self):
        """classes_ is None or the int64 0..k-1 that class indices give (labels.are_indices,
        in O(1) for the array the model itself records): labels are then their own
        indices. Compared by value on every call: classes_ is a public, mutable array."""
        classes = self.classes_
        return classes is None or (type(classes) is np.ndarray and classes.dtype == np.int64
                                   and classes.shape == (self._width[1],)
                                   and classes.tobytes() == self._index_bytes)

    def _checked_feature_names(self, X):
        """X's column names (a DataFrame's), or None; refused unless they are the ones the
        model was trained with: the same columns in another order would be read wrongly."""
        columns, known = getattr(X, "columns", None), self.feature_names_in_
        seen = self._columns_seen
        if seen is not None and seen[0].is_(columns):
            # the same (immutable) pandas Index, or a view of it (Index.is_: the columns of
            # df.iloc[i:i + 1]): its names as found then
            names = seen[1]
        else:
            names = _feature_names(X)
            if names is not None and type(columns).__module__.startswith("pandas"):
                # str() of every name cost a 1-row predict of a 784-column frame 0.25 ms
                self._columns_seen = (columns, names)
        # compared by value unless they are the read-only names found here: anyone may
        # write into a feature_names_in_ of their own (an identity check let a frame with
        # the old columns through after an edit in place, and read it with columns swapped)
        if (names is not None and known is not None
                and not (names is known and not known.flags.writeable)
                and not _same_names(names, known)):
            raise ValueError(f"X has feature names {names.tolist()[:8]} but the model was "
                             f"trained with {np.asarray(known).tolist()[:8]}")
        return names

    def _wake_waiters(self):
        with self._lock:
            self._fit_over.notify_all()

    def _wait_for_fit(self):
        """With the lock held: wait while another thread's fit owns the model. A fit holds
        the lock only while it trains: between its epochs copies of the state go in,
        other training calls wait here. The wait looks again every 50 ms: a wake-up lost
        to an exception (a handler's, as the fit ended) costs that, not a hang."""
        if self._fit_owner is None:
            return
        me = threading.get_ident()
        self._fit_waiters += 1
        try:
            while self._fit_owner is not None and self._fit_owner != me:
                self._fit_over.wait(0.05)
        finally:
            self._fit_waiters -= 1

    def _rollback(self):
        """A context giving a :class:`Snapshot`, saved before a step or epoch and restored
        if it goes wrong; only used with the lock held. The model's one (made on first use),
        unless a training call is under way: a callback's ``fit`` or ``apply_gradient`` gets
        its own (sharing one, its save replaced the epoch start its fit's Ctrl-C then
        restored)."""
        return SnapshotLease(self)

    def _new_snapshot(self):
        # the model's pull and push as they are when called: a new optimiser may have
        # given the model a new backend object since (its guard's bounds are its own)
        return Snapshot(self._theta, self._state, lambda: self._pull(), lambda: self._push())

    def _check_finite(self, loss, where, kept):
        """Raise TrainingDiverged, saying truly what went non-finite, unless all is finite."""
        bad = []
        self._pull()
        if not validation.finite(self._theta):
            bad = [i + 1 for i, (W, b, alpha) in enumerate(self._net.layer_views(self._theta))
                   if not (np.isfinite(W).all() and np.isfinite(b).all()
                           and (alpha is None or np.isfinite(alpha).all()))]
        # An inf in Adam's v (g^2 overflowed) freezes weights silently: also divergence.
        state_bad = self._check_state and not validation.finite(self._state.buffers)
        if np.isfinite(loss) and not bad and not state_bad:
            return
        what = []
        if not np.isfinite(loss):
            what.append(f"the loss became {loss}")
        if bad:  # name the first layer whose weights went bad, also when the loss did
            what.append(f"layer {bad[0]}'s weights became NaN or inf")
        if state_bad:
            what.append("the optimiser state became NaN or inf (gradients overflowed)")
        raise TrainingDiverged(f"training diverged {where}: {' and '.join(what)}; {kept} "
                               "(try a smaller learning rate or rescale the data)")

    def _warn_if_untrainable(self):
        dead = self._dead_layers
        if dead:
            warnings.warn(f"layer(s) {dead} use step/sign, whose derivative is 0: no gradient "
                          "flows through them, so the layers before them cannot learn",
                          RuntimeWarning, stacklevel=3)


def load(path, backend=None):
    """Read a model written by :meth:`Model.save` (never unpickles; see fastmlp.io).

    ``backend`` overrides the saved backend name (a model saved on "numba" can be
    loaded on "numpy"; "auto", as in Model, the fastest here). Damaged, truncated,
    foreign, pickled or crafted files raise ValueError; the file is never modified.
    """
    header, arrays, backend = io.read(path, backend)
    try:   # (the model takes the arrays read, checked by io.read, as its own)
        model = Model._to_restore(header["layers"], header["input_dim"], header["loss"],
                                  header["optimizer"], backend, header["dtype"],
                                  header["seed"], (arrays["theta"], arrays["opt_buffers"]))
    except (TypeError, ValueError) as exc:  # e.g. softmax on a hidden layer
        raise io.bad_file(path, f"invalid header ({exc})") from None
    model._install(model._generator_from(header["rng_state"]), arrays["opt_step"])
    if "input_mean" in arrays:
        model.set_input_scaling(arrays["input_mean"], arrays["input_scale"])
    for attr, name in (("classes_", "classes"), ("feature_names_in_", "feature_names")):
        if name in arrays:
            setattr(model, attr, arrays[name])
    return model

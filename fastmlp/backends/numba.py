"""The ``"numba"`` backend: JIT-compiled fused kernels, one compiled call per operation.

A thin adaptor: it keeps the kernels' description of the network (the plan of
:meth:`fastmlp.network.Network.plan`, which carries the rules of
:mod:`fastmlp.rules`) and one training workspace per model, grown to the
largest batch seen (up to ``rules.train_rows`` rows; bigger batches are
processed in chunks), and forwards each contract call to one ``@njit``
function in :mod:`fastmlp.kernels.numba_train`: every training call (train_step
and train_step_checked too, with the guard record) to ``run``, which checks
finiteness and tol in compiled code; predict and predict_checked to ``predict``
(which, as the Cython backend does, runs a chunk of at most rules.PREDICT_SMALL_ROWS
rows through the C GEMV loops of kernels/_gemv.h: kernels/numba_gemv.py).
Kernels compile on first use per dtype, each once (they call one another by
name: kernels/numba_link.py), and are cached on disk (``cache=True``), so later
processes load them instead of recompiling; a damaged cache entry compiles again and
is rewritten, and a cache write that fails leaves the kernel compiled, uncached, each
said in one line (numba_link.guard_cache).

Calls skip Numba's dispatcher (see :mod:`._numba_entry`): each kernel has ONE
signature per dtype, X and T typed read-only so that a read-only input (a
memory-mapped file, a broadcast) needs no second compile, and the backend calls
that signature's compiled entry point directly. The dispatcher's type resolution
cost a quarter of the vehicle net's train_on_batch. The backend contract
(fastmlp.backends) guarantees what the types assume: C-contiguous, aligned arrays
of the model dtype with the right number of dimensions; arrays that arrive from
outside the contract's guarantees (a caller's gradient, norms or losses array)
are checked, and anything else goes through the dispatcher, which types it.

Threads: predict and evaluate allocate their buffers per call, and each
loss_and_gradient call takes a spare gradient workspace that no other call is
using (a new one when none is free), so these three may run from many threads
at once, each giving the single-thread result bit for bit. train_step and
train_epoch mutate theta and the optimiser state, so they run one at a time
per model (the Model's lock sees to it); they share a training workspace that
no reader touches, and take no lock of their own: a lock costs 10 % of a
per-sample step of the vehicle net.
"""
from __future__ import annotations

import threading

import numpy as np

try:
    from numba.core import config as _numba_config
except ImportError as exc:  # numba missing
    raise ImportError(f"the Numba kernels need numba and scipy ({exc})") from None
if _numba_config.DISABLE_JIT:
    # the kernels are compiled code calling one another by symbol name: there is no
    # Python fallback to run (importing them failed with an AttributeError on py_func)
    raise ImportError("Numba's JIT is switched off (NUMBA_DISABLE_JIT is set): the numba "
                      "backend runs only compiled kernels; unset it, or use another backend")

try:
    from ..kernels import numba_blas
    from ..kernels import numba_train as kt
    from ..kernels.numba_link import guard_caches
    from ._numba_entry import (entry_point_or_stand_in, fits, ready_entries, signature,
                               will_compile)
except ImportError as exc:  # numba or scipy missing
    raise ImportError(f"the Numba kernels need numba and scipy ({exc})") from None

# every kernel's disk cache: a damaged entry compiles again, a failed write runs uncached
guard_caches()

from .. import rules, warmup
from ..codes import GRADIENT, TRAIN
from ..optimizers import SGD_CODE
from .reference import check_batch_size, check_losses, check_norms

# "none" arrays of the kernels' types: an empty array, never None, so one compiled
# `run` serves every call (None would compile a second specialisation).
# _NO_ORDERS (1, 0): one pass over X as it is. _NO_NORMS is also the "no losses" and
# the "no guard" array.
_NO_ORDERS, _NO_HYPER, _NO_STEP, _NO_NORMS = (np.zeros((1, 0), dtype=np.int64), np.zeros(7),
                                              np.zeros(1, dtype=np.int64), np.zeros(0))
# run's batch_size for "all of X is one batch" (any size >= the rows will do)
_ONE_BATCH = 2 ** 62
# predict's and evaluate's chunks of at most this many rows run the C GEMV loops
_SMALL = rules.PREDICT_SMALL_ROWS
# the kernels' arguments typed read-only (X, T, orders), by position
_RUN_READ_ONLY, _PREDICT_READ_ONLY, _EVALUATE_READ_ONLY = (2, 3, 4), (1,), (1, 2)


# Held by a first call readying its entry point and kernels (NumbaBackend._ready), so that
# one process compiles beside this one at a time (warmup.compile_aside): first predicts
# of 4 models in 4 threads at once had started 4 such processes on 2 CPUs, each compiling
# the same kernels (the compiles here take turns on Numba's own lock anyway). Reentrant:
# a signal handler's predict, run as a first compile ends, readies in the same thread.
_READYING = threading.RLock()


def _named(parts):
    """What the compile notice calls the kernels of ``parts`` (see NumbaBackend._arm):
    the call that needs them (the guard: train_on_batch), else the optimiser's update, else
    the network's layers (an update armed with the guard had been called "layers" too, the
    same words as the layers' own notice)."""
    for part in ("guard", "norms"):
        if part in parts:
            return part
    if all(isinstance(part, tuple) and part[0] == "update" for part in parts):
        return "update"
    return "layers"


class NumbaBackend:
    """Backend contract (see fastmlp.backends) over Numba kernels."""

    name = "numba"
    # predict and predict_checked read a Fortran-ordered X where it lies (kt.predict
    # takes its transpose, C-contiguous: one compiled signature for both layouts)
    reads_columns = True
    # train_step_checked costs what train_step costs (no copy of theta: the kernels keep
    # bounds on theta and the optimiser buffers and prove each update finite before
    # writing it, kt.run's guard), so the Model takes it for every network size.
    guarded_step_is_free = True

    def __init__(self, net, dtype, theta, state):
        # FASTMLP_COMPILE_ASIDE checked now, not only at a call that compiles: a value it
        # refuses had passed unseen with every kernel cached, then stopped a later network
        # in the middle of its run (README audit, 2026-12-07)
        warmup.aside_switch()
        self.net = net
        self.dtype = np.dtype(dtype)
        self._fparams = net.act_params.astype(self.dtype)
        self._no_bufs = np.zeros((0, 0), dtype=self.dtype)  # a gradient needs no state
        self._fold_rows = rules.sgd_fold_rows(state)
        self._predict_rows = rules.predict_rows(net, self.dtype)
        self._outputs = net.output_dim
        # the guarded step's backup of theta and the optimiser buffers (3 * n_params,):
        # allocated once
        self._backup = np.empty(3 * net.n_params, dtype=self.dtype)
        # the guarded step's bounds and counters (kt.G_*), valid for these arrays only
        self._guard = kt.new_guard(net, self.dtype)
        # Workspaces are (plan, ws, grad, cap) tuples, replaced whole, never mutated.
        self._train = self._new_work(1)     # the trainers'
        # which of the kernels the entry points call by address (kt.arm) are compiled and in
        # the plans in use: built, a model compiles none of them; a first predict compiles
        # the forward passes, a first training call the rest and its optimiser's update
        # (("update", code)), a first guarded step the guard, a first asking for gradient
        # norms their kernel ("norms")
        self._armed = set()
        self._spare = []                    # loss_and_gradient's, not in use right now
        # predict and evaluate read only the plan's layer rows, the same for every cap.
        self._plan = self._train[0]
        self._theta, self._state = theta, state
        self._bind()

    # theta and state are the Model's, updated in place (fastmlp.backends); tests swap in
    # others, and then the entry points and the guard's bounds are of other arrays
    @property
    def theta(self):
        return self._theta

    @theta.setter
    def theta(self, theta):
        self._theta = theta
        self._bind()

    @property
    def state(self):
        return self._state

    @state.setter
    def state(self, state):
        self._state = state
        self._bind()

    def _bind(self, keep_bounds=False):
        """Entry points and argument tuples for the arrays held now: theta, the state
        (its buffers, hyper-parameters, step and optimiser code) and the trainers'
        workspace. The guard's bounds are forgotten (they were of the arrays before)
        unless ``keep_bounds``: only the workspace or the optimiser code changed.
        An array not as the Model makes it leaves the kernel to the dispatcher."""
        theta, state = self._theta, self._state
        plan, ws, grad, cap = self._train
        if not keep_bounds:
            self._guard[kt.G_KNOWN] = 0
        X = np.zeros((1, self.net.input_dim), dtype=self.dtype)
        Y = np.zeros((1, self._outputs), dtype=self.dtype)
        theta_ok = fits(theta, 1, self.dtype, True)
        state_ok = (fits(state.buffers, 2, self.dtype, True)
                    and fits(state.hyper, 1, np.float64, True)
                    and fits(state.step, 1, np.int64, True))
        # train_step's run arguments but X and T: all of X is one batch (orders (1, 0),
        # batch_size _ONE_BATCH); the guard record or none
        self._grad = grad
        self._plain = (_NO_ORDERS, _ONE_BATCH, state.buffers, state.hyper, state.step,
                       state.code, ws, plan, TRAIN, _NO_NORMS, -1.0, _NO_NORMS, _NO_NORMS,
                       self._backup)
        self._checked = self._plain[:12] + (self._guard, self._backup)
        # (-1 until the training kernels are armed: train_step's first call arms them
        # through _refresh, which costs that hot path no test of its own)
        self._code, self._cap = state.code, cap if self._can_train() else -1
        self._run = kt.run
        if theta_ok and state_ok:
            self._run = entry_point_or_stand_in(
                self, "_run", kt.run,
                signature((theta, grad, X, Y) + self._checked, _RUN_READ_ONLY,
                          ("run", self.dtype)))
        # predict and evaluate read theta only
        self._predict, self._evaluate = kt.predict, kt.evaluate
        if theta_ok:
            self._predict = entry_point_or_stand_in(
                self, "_predict", kt.predict,
                signature((theta, X, plan, self._fparams, 1, Y, 0, _SMALL, 0), _PREDICT_READ_ONLY,
                          ("predict", self.dtype)))
            self._evaluate = entry_point_or_stand_in(
                self, "_evaluate", kt.evaluate,
                signature((theta, X, Y, plan, self._fparams, 1, _SMALL), _EVALUATE_READ_ONLY,
                          ("evaluate", self.dtype)))

    def _new_work(self, rows):
        """(plan, ws, grad, cap): a workspace for batches of ``rows`` rows (or
        TRAIN_ROWS-row chunks)."""
        cap = rules.train_rows(rows, self.net, self.dtype)
        return (*kt.new_workspace(self.net, self.dtype, cap, self._fold_rows), cap)

    def _train_work(self, rows):
        """The trainers' workspace, grown to hold ``rows`` rows."""
        if rules.train_rows(rows, self.net, self.dtype) > self._train[3]:
            self._train = self._new_work(rows)   # (its plan takes the armed addresses)
            # the step's arguments name the workspace; the bounds are still of theta and
            # the state
            self._bind(keep_bounds=True)
        return self._train

    def _can_train(self):
        """Whether run's kernels for a training call are armed: the network's and the
        update of the optimiser the state has now."""
        return "train" in self._armed and ("update", self._state.code) in self._armed

    def _with_forward(self, parts):
        """``parts`` (of _arm), with "predict" first where they hold "train" and the
        forward passes are not armed yet: run needs them too."""
        if "train" in parts and "predict" not in self._armed:
            return ("predict",) + tuple(parts)
        return tuple(parts)

    def _arm(self, *parts):
        """The kernels of ``parts`` ("predict", "train", "guard", "norms" or ("update",
        code): kt.arm) compiled, or loaded, for this network, and their addresses in every plan
        in use; the first time in a process, with the compile notice."""
        parts = self._with_forward(parts)
        plans = {id(p): p for p in (self._plan, self._train[0])}.values()
        if kt.armed(self.net, self.dtype, parts):
            for plan in plans:
                kt.arm(plan, self.net, self.dtype, parts)
        else:
            with warmup.compiling(_named(parts), self.dtype.name):
                for plan in plans:
                    kt.arm(plan, self.net, self.dtype, parts)
        self._armed.update(parts)

    def _ready_forward(self, entry):
        """The forward passes readied with the entry point ``entry`` ("_predict" or
        "_evaluate": _ready), unless another thread did meanwhile."""
        with _READYING:
            if "predict" not in self._armed:
                self._ready(("predict",), entry)

    def predict(self, X, out=None):
        if "predict" not in self._armed:
            self._ready_forward("_predict")
        if out is None:
            out = np.empty((len(X), self._outputs), dtype=self.dtype)
        if X.flags.c_contiguous:
            self._predict(self._theta, X, self._plan, self._fparams, self._predict_rows, out,
                          0, _SMALL, 0)
        else:
            self._predict_columns(X, out, 0)
        return out

    def predict_checked(self, X, out):
        """predict into out (n, outputs), OVERWRITTEN, checking X (n, inputs) on the way:
        True when every value of X is finite; False when X holds NaN or inf (out is then
        undefined). Each chunk of X is checked just before the first layer reads it, in
        the same compiled call (kt.predict). X Fortran-ordered: see predict."""
        if "predict" not in self._armed:
            self._ready_forward("_predict")
        if X.flags.c_contiguous:
            return self._predict(self._theta, X, self._plan, self._fparams,
                                 self._predict_rows, out, 1, _SMALL, 0)
        return self._predict_columns(X, out, 1)

    def _predict_columns(self, X, out, check):
        """predict (or predict_checked) of a Fortran-ordered X (reads_columns), through its
        transpose, C-contiguous; any other layout is copied so first: the entry point
        unboxes arrays without checking their layout."""
        X = X if X.flags.f_contiguous else np.asfortranarray(X)
        return self._predict(self._theta, X.T, self._plan, self._fparams, self._predict_rows,
                             out, check, _SMALL, 1)

    def evaluate(self, X, T):
        if "predict" not in self._armed:
            self._ready_forward("_evaluate")
        return self._evaluate(self._theta, X, T, self._plan, self._fparams,
                              self._predict_rows, _SMALL)

    def loss_and_gradient(self, X, T, grad):
        if "train" not in self._armed:
            self._ready(("train",))  # (workspaces made from now on take its addresses)
        # list.pop and list.append are atomic: no two calls ever hold one workspace
        try:
            work = self._spare.pop()
        except IndexError:
            work = None
        if work is None or rules.train_rows(len(X), self.net, self.dtype) > work[3]:
            work = self._new_work(len(X))   # none spare, or too small (then dropped)
        run = self._run if fits(grad, 1, self.dtype, True) else kt.run
        try:
            return run(self._theta, grad, X, T, _NO_ORDERS, len(X), self._no_bufs, _NO_HYPER,
                       _NO_STEP, SGD_CODE, work[1], work[0], GRADIENT, _NO_NORMS, -1.0,
                       _NO_NORMS, _NO_NORMS, self._backup)[0]
        finally:
            self._spare.append(work)

    def ready_to_train(self, guarded=False):
        """The training kernel compiled (or loaded), and the guard kernel too if
        ``guarded`` (a train_on_batch), their first call's compile done now: the Model
        calls this before a training call learns labels, so that a Ctrl-C held back
        through the compile leaves nothing learnt (hostile round 49: a first
        train_on_batch of labels, interrupted there, kept its classes_ with no step)."""
        if not self._can_train():
            self._refresh(1, guarded)
        ready_entries(self._run)
        if guarded and "guard" not in self._armed:
            self._arm("guard")

    def _ready(self, parts, entry="_run"):
        """The entry point held in attribute ``entry`` ("_run", "_predict" or "_evaluate")
        compiled (or loaded), then the kernels of ``parts`` armed (_arm). Where the entry point and
        some of those kernels must both compile, those compile in another process
        meanwhile (warmup.compile_aside), and this one then loads them from the disk
        cache. One thread at a time (_READYING)."""
        with _READYING:
            aside = None
            try:
                if parts and will_compile(getattr(self, entry)):
                    aside = warmup.compile_aside(
                        self.dtype,
                        kt.to_compile(self.net, self.dtype, self._with_forward(parts)))
                ready_entries(getattr(self, entry))
                if aside is not None:
                    aside.join(warmup.ASIDE_WAIT_S)
            except BaseException:
                if aside is not None:
                    aside.kill()
                raise
            if parts:
                self._arm(*parts)

    def push(self):
        """The Model wrote theta or the optimiser state (set_weights, set_state, load, a
        rollback, apply_gradient): the guarded step's bounds on them no longer hold."""
        self._guard[kt.G_KNOWN] = 0

    def pull(self):
        """Nothing to do: the kernels work on the host arrays themselves."""

    def guard_paths(self):
        """How train_step_checked wrote its steps so far (for tests): {"proven": on
        bounds alone, "measured": after measuring theta and the buffers, "backed_up":
        with a backup, the update not provably finite}."""
        g = self._guard
        return {"proven": int(g[kt.G_PROVEN]), "measured": int(g[kt.G_MEASURED]),
                "backed_up": int(g[kt.G_BACKED_UP])}

    def train_step(self, X, T):
        if len(X) > self._cap or self._state.code != self._code:
            self._refresh(len(X))
        self._guard[kt.G_KNOWN] = 0  # theta and the state change unguarded
        return self._run(*((self._theta, self._grad, X, T) + self._plain))[0]

    def train_step_checked(self, X, T):
        """One guarded run (see kt.run's guard): (loss, status)."""
        if len(X) > self._cap or self._state.code != self._code:
            self._refresh(len(X), guarded=True)
        if "guard" not in self._armed:
            self._arm("guard")
        # one tuple built (a call written f(*a, X, T, *b) builds a list, then a tuple:
        # 0.1 us more, a tenth of the vehicle net's step)
        return self._run(*((self._theta, self._grad, X, T) + self._checked))

    def _refresh(self, rows, guarded=False):
        """The step's arguments after a batch bigger than the workspace or a change of
        the optimiser code (a test's: a Model never changes it); on the first training
        call with an optimiser, with run and the training kernels ready (_ready), and the
        guard too if ``guarded``."""
        self._train_work(rows)
        if not self._can_train():
            parts = ("train", ("update", self._state.code)) + (("guard",) if guarded else ())
            self._ready(tuple(part for part in parts if part not in self._armed))
            self._bind(keep_bounds=True)
        elif self._state.code != self._code:
            self._bind(keep_bounds=True)

    def train_epoch(self, X, T, perm, batch_size, norms=None):
        batch_size = check_batch_size(batch_size)
        perm = np.ascontiguousarray(perm, dtype=np.int64).reshape(1, -1)
        if norms is None:
            norms = _NO_NORMS
        else:
            check_norms(norms, len(self.net.layers))
            if "norms" not in self._armed:
                self._arm("norms")
        self._refresh(min(batch_size, perm.shape[1]))
        plan, ws, grad, _ = self._train
        state = self._state
        self._guard[kt.G_KNOWN] = 0  # theta and the state change unguarded
        run = self._run if perm.flags.aligned else kt.run
        return run(self._theta, grad, X, T, perm, batch_size, state.buffers, state.hyper,
                   state.step, state.code, ws, plan, TRAIN, norms, -1.0, _NO_NORMS,
                   _NO_NORMS, self._backup)[0]

    def train_epochs(self, X, T, orders, batch_size, tol, losses):
        batch_size = check_batch_size(batch_size)
        k = len(orders)
        check_losses(losses, k)
        if k == 0:
            return 0, 0
        self._refresh(min(batch_size, orders.shape[1]))
        plan, ws, grad, _ = self._train
        state = self._state
        self._guard[kt.G_KNOWN] = 0  # theta and the state change unguarded
        run = self._run
        if not (fits(losses, 1, np.float64, True) and fits(orders, 2, np.int64, False)):
            run = kt.run
        scope = numba_blas.GEMM_SCOPE   # fit's epochs: the extension's float32 GEMM loops
        scoped = scope(True) if scope is not None else False
        try:
            return kt.epochs_result(run(self._theta, grad, X, T, orders, batch_size,
                                        state.buffers, state.hyper, state.step, state.code,
                                        ws, plan, TRAIN, _NO_NORMS, float(tol), losses,
                                        _NO_NORMS, self._backup)[0])
        finally:
            if scope is not None:
                scope(scoped)

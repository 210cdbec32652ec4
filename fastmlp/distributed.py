"""Synchronous data-parallel training over MPI (``pip install "fastmlp[mpi]"``).

Every rank holds a shard of the training rows and an identical copy of the model.
:func:`fit` walks the global batches a single process would use on the
concatenated data; for each, every rank computes its rows' share of the batch's
mean gradient (their summed gradient / the batch's rows) into one flat vector, one
``Allreduce`` adds the shares into the mean, and every rank applies the same
optimiser step to it. The result
equals ``Model.fit`` on the concatenated rows with the same (global) batch size,
up to float re-association::

    mpiexec -n 4 python -m mpi4py train.py      # or: srun -n 4 python -m mpi4py train.py

    # train.py
    from mpi4py import MPI
    from fastmlp import distributed
    comm = MPI.COMM_WORLD
    X_mine, Y_mine = ...          # this rank's rows: rank r holds the r-th block, in rank order
    history = distributed.fit(model, X_mine, Y_mine, comm, epochs=10, batch_size=512)

(``python -m mpi4py`` aborts the whole job when an exception escapes a script
anywhere, also outside ``fit``.)

Rules
-----
* Rank 0's weights, optimiser state, random generator, input scaling,
  ``classes_`` and ``feature_names_in_`` are broadcast at the start; the ranks
  stay identical after that (``check_consistency=True`` compares a hash of the
  whole state every epoch).
  The architecture, optimiser and dtype, and ``epochs``, ``batch_size`` and
  ``shuffle``, must agree on every rank; the backend may differ.
* Every DataFrame shard must have the same columns, in the same order (a rank
  may pass a plain array instead); their names become every rank's
  ``feature_names_in_``, and must equal those the model already has, if any.
* Shards may differ in size (an empty one is allowed); rank r's rows are rows
  offset_r .. offset_r + n_r - 1 of the global data, offsets in rank order.
  String labels are encoded with the union of every rank's labels.
* ``validation_data`` is this rank's shard of the validation rows (None is an
  empty shard): ``val_loss`` is the mean over the union, as one process would
  compute it on the concatenated validation rows. To validate on one rank only,
  pass the data there and None elsewhere.
* Logs, ``History`` and the ``stop_training`` decision are the same on every rank
  (the logs are made of allreduced numbers; rank 0's ``stop_training`` is
  broadcast after the callbacks of each epoch).
* Callbacks run on every rank, except those that write files or the terminal,
  which run on rank 0 only: :class:`~fastmlp.callbacks.ModelCheckpoint`,
  :class:`~fastmlp.callbacks.ProgressBar` (``verbose=1``), and any callback with
  an attribute ``rank_zero_only = True``. ``verbose=2`` prints on rank 0 only.
* Failures end the job on every rank, never a hang: an exception on one rank is
  carried by the next collective (an error flag in the gradient buffer, or the
  agreement after each phase: setup, each epoch, its callbacks, on_train_end),
  and every rank raises :class:`DistributedError` naming the failing ranks and
  their errors (TrainingDiverged when every rank diverged). A failure while
  training an epoch first restores every rank's model to the start of that epoch,
  as Model.fit does. Anything that cannot be agreed on (an exception inside MPI,
  KeyboardInterrupt) prints the error and calls ``comm.Abort``.
* The ranks stay identical because every rank applies the same update to the
  same reduced gradient; that needs an allreduce that gives every rank the same
  bits (the default algorithms of MPICH and Open MPI do), which
  ``check_consistency`` verifies.

Communication: one ``Allreduce`` per step, after the whole backward pass, of
n_params + 2 numbers (gradient, summed loss, error flag). It is not overlapped
with the backward pass because the backends compute every layer's gradient in
one compiled call (there is no point to start layer k's reduction from), and
because MPICH progresses a non-blocking reduction only inside MPI calls, so with
one thread per rank an ``Iallreduce`` would not advance while the kernels run.
On W3 (784-256-128-10, 235k float32 parameters, 940 KB per step) the reduction
measures 0.12 ms of a 1.5 ms step at 2 ranks (benchmarks/mpi_scaling.py): 8 %, which
bounds what overlap could win. After the reduction every rank runs the same update
as Model.fit (``optimizers.update``), and, like Model.fit, checks the weights once
per epoch.
"""
from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
import traceback

import numpy as np

from . import labels, optimizers, validation
from .callbacks import ModelCheckpoint, ProgressBar, check_monitors, format_logs
from ._signals import run_whole
from ._fitting import (_NOBODY, History, TrainingDiverged, _hook, _logged,
                       validation_data_errors)
from .model import _feature_names, distinct_names

# Callbacks that write files or the terminal: one writer per job, rank 0.
RANK_ZERO_ONLY = (ModelCheckpoint, ProgressBar)
# seconds between the message of a one-rank exception and the job's abort (see fit)
ABORT_GRACE_S = 0.5


class DistributedError(RuntimeError):
    """Raised on every rank when one or more ranks failed, or the ranks disagree.

    ``failures`` maps each failing rank to its error, ``"TypeName: message"``."""

    def __init__(self, message, failures=None):
        super().__init__(message)
        self.failures = dict(failures or {})


def fit(model, X_local, Y_local, comm, epochs=1, batch_size=32, shuffle=True,
        validation_data=None, callbacks=None, verbose=0, check_consistency=False):
    """Train ``model`` on the rows of every rank together; returns the :class:`History`
    (the same on every rank). Collective: every rank of ``comm`` must call it.

    X_local (n_r, input_dim), Y_local (n_r, outputs) or labels (n_r,): this rank's rows.
    comm: an mpi4py communicator (``MPI.COMM_WORLD``). batch_size: rows per GLOBAL
    batch (None: all rows); each step uses the rows of that batch on every rank.
    Other arguments as in :meth:`Model.fit`; see the module docstring for the rules.
    """
    try:
        from mpi4py import MPI   # the optional [mpi] extra: imported only here
    except ImportError as exc:
        raise ImportError(f"fastmlp.distributed needs mpi4py and an MPI library: "
                          f"pip install 'fastmlp[mpi]' ({exc})") from None
    if not all(hasattr(comm, name) for name in ("Get_rank", "Get_size", "Allreduce",
                                                "allgather", "bcast")):
        raise TypeError(f"comm must be an mpi4py communicator such as MPI.COMM_WORLD, "
                        f"got {type(comm).__name__}")
    if getattr(comm, "Is_inter", None) is not None and comm.Is_inter():
        # (its collectives join two groups: every rank waited in the first bcast forever)
        raise TypeError("comm is an intercommunicator; fastmlp.distributed trains over the "
                        "ranks of one group: pass an intracommunicator (comm.Merge())")
    run = _Run(model, comm, MPI)
    # The model owned for the whole run, as Model.fit owns it (the same plain stores, no
    # call between them that a signal handler's exception could split): another thread's
    # train_on_batch ran between the epochs on one rank, and the ranks ended different.
    previous, me = _NOBODY, threading.get_ident()
    try:
        with model._lock:
            model._wait_for_fit()
            previous = model._fit_owner
            model._fit_owner = me
        return run.fit(X_local, Y_local, epochs, batch_size, shuffle, validation_data,
                       callbacks, verbose, check_consistency)
    except BaseException as exc:
        if getattr(exc, "_raised_on_every_rank", False) or run.size == 1:
            raise
        # Raised on this rank alone, where the others cannot hear of it: they would wait
        # in the next collective forever. Say what happened, then end the whole job.
        try:
            print(f"fastmlp.distributed: rank {run.rank} of {run.size} stopped by an "
                  f"exception the other ranks cannot be told about; aborting the MPI "
                  f"job:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
            # mpiexec forwards a rank's stderr through a pipe and kills every process on
            # an abort: without a moment for the forwarding, the message was lost once on
            # a loaded machine (the job ended with no word of why)
            time.sleep(ABORT_GRACE_S)
        except KeyboardInterrupt:   # a second Ctrl-C: abort now (it skipped the abort,
            pass                    # and the other ranks waited in their next collective)
        finally:
            comm.Abort(1)
        raise
    finally:
        if previous is not _NOBODY:
            model._fit_owner = previous
            if previous is None and model._fit_waiters:
                model._wake_waiters()


def _everywhere(exc):
    """Mark ``exc`` as raised at the same point on every rank (so no Abort is needed)."""
    exc._raised_on_every_rank = True
    return exc


def _ranks(ranks):
    return f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {', '.join(map(str, ranks))}"


def _whose_labels(label_sets, candidates, net, error):
    """Whose labels make their union fail to encode with ``error`` (each rank's,
    ``label_sets`` in rank order, None for none): the ranks whose own labels fail alone
    with an error of that type, else all of them together, with each rank's kinds of
    label (float labels on rank 1 alone read "ranks 0, 1 failed", naming no one).
    ``candidates``: each rank's values read as labels because another rank's are (0/1
    targets beside a rank's labels), or None: their kinds are named too."""
    bad, kinds = [], []
    for rank, (found, candidate) in enumerate(zip(label_sets, candidates)):
        joined = found if found is not None else candidate
        if joined is not None:
            kinds.append(f"rank {rank}: "
                         f"{', '.join(sorted(labels.kinds_of(np.asarray(joined))))}")
        if found is None:
            continue
        try:
            labels.encode(np.asarray(found, dtype=object), net, None)
        except (ValueError, TypeError) as exc:
            if type(exc) is type(error):   # (not a rank's too few classes, say)
                bad.append(rank)
    # labels of one kind on each rank but different kinds across them name each rank's
    return (f"in the Y of {_ranks(bad)}" if bad
            else f"the ranks' labels together ({'; '.join(kinds)})")


def _short(value, width=100):
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def _difference(a, b, where=""):
    """(where, a's part, b's part) of the first place a and b differ: dict keys, and the
    indices of lists of dicts (a config's layers), are followed, so a long config shows
    the one field that differs; a list of plain values is shown whole."""
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        for key in a:
            if a[key] != b[key]:
                return _difference(a[key], b[key], f"{where}[{key!r}]")
    if (isinstance(a, list) and isinstance(b, list) and len(a) == len(b)
            and all(isinstance(x, dict) for x in a + b)):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return _difference(x, y, f"{where}[{i}]")
    return where, a, b


def _begins_epochs(cb):
    """Whether ``cb`` has an on_epoch_begin that does something (not Callback's no-op)."""
    from .callbacks import Callback
    hook = getattr(type(cb), "on_epoch_begin", None)
    return (hook is not None and hook is not Callback.on_epoch_begin) or (
        "on_epoch_begin" in getattr(cb, "__dict__", {}))


def _describe(exc):
    return None if exc is None else f"{type(exc).__name__}: {exc}"


def _state_digest(model):
    """sha256 of everything training changes (weights, optimiser buffers and step, and
    the generator: moved on one rank, it drew other batches there while the weights
    still agreed)."""
    state = model.get_state()
    digest = hashlib.sha256()
    for key in ("theta", "opt_buffers", "opt_step"):
        digest.update(np.ascontiguousarray(state[key]).tobytes())
    digest.update(json.dumps(state["rng_state"], sort_keys=True, default=int).encode())
    return digest.hexdigest()


def _batch_rows(perm, offset, n_local, batch_size):
    """This rank's rows in each global batch perm[s:s + batch_size].

    Returns (rows, bounds): batch k uses local rows rows[bounds[k]:bounds[k + 1]],
    in the order the batch lists them. perm int64 (n_global,)."""
    local = perm - offset
    mine = (local >= 0) & (local < n_local)
    before = np.concatenate(([0], np.cumsum(mine)))     # my rows among perm[:i]
    edges = np.append(np.arange(0, len(perm), batch_size), len(perm))
    return local[mine], before[edges]


class _Run:
    """One call of :func:`fit`: the communicator, this rank and the agreement steps."""

    def __init__(self, model, comm, MPI):
        self.model, self.comm, self.MPI = model, comm, MPI
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        # some rank's Y, or Y_val, holds labels (_take): a shard of 0/1 values is labels
        self.labelled = self.val_labelled = False

    # -- agreement ---------------------------------------------------------------
    def agree(self, error, when, extra=None):
        """Collective: every rank's (error, extra); raises on every rank if any failed.

        Returns the list of every rank's ``extra``, in rank order."""
        reports = self.comm.allgather((_describe(error), extra))
        failures = {r: text for r, (text, _) in enumerate(reports) if text is not None}
        if failures:
            raise _everywhere(self._failure(failures, error, when)) from error
        return [extra for _, extra in reports]

    def _failure(self, failures, error, when):
        if len(failures) == self.size and isinstance(error, TrainingDiverged):
            return TrainingDiverged(str(error))   # a divergence, the same on every rank
        by_text = {}
        for r, text in failures.items():   # one line per distinct error, not per rank
            by_text.setdefault(text, []).append(r)
        what = "; ".join(f"{_ranks(ranks)}: {text}" for text, ranks in by_text.items())
        return DistributedError(f"distributed fit: {_ranks(list(failures))} of {self.size} "
                                f"failed {when}: {what}", failures)

    @staticmethod
    def check_same(values, what):
        """Raise on every rank unless every value equals the first.

        values: every rank's value in rank order, or {rank: value} for some ranks."""
        by_rank = values if isinstance(values, dict) else dict(enumerate(values))
        first, *others = sorted(by_rank)
        differ = [r for r in others if by_rank[r] != by_rank[first]]
        if differ:
            r = differ[0]
            where, mine, theirs = _difference(by_rank[first], by_rank[r])
            part = f": {where} is " if where else " ("
            end = "" if where else ")"
            raise _everywhere(DistributedError(
                f"distributed fit: {what} differs between rank {first} and rank {r}{part}"
                f"{_short(mine)} on rank {first} and {_short(theirs)} on rank {r}{end}; "
                "every rank must agree"))

    # -- setting up --------------------------------------------------------------
    def fit(self, X, Y, epochs, batch_size, shuffle, validation_data, callbacks, verbose,
            check_consistency):
        model = self.model
        error, facts = None, None
        try:
            epochs = validation.check_count(epochs, "epochs")
            shuffle = validation.check_flag(shuffle, "shuffle")
            check_consistency = validation.check_flag(check_consistency, "check_consistency")
            if batch_size is not None:
                validation.check_batch_size(batch_size, 1)
            callbacks = [cb for cb in model._callbacks(callbacks, verbose)
                         if self.rank == 0 or not self._rank_zero_only(cb)]
            cfg = model._config()
            same = {"the model's network": cfg["network"],
                    "the model's optimizer": cfg["optimizer"],
                    "the model's dtype": cfg["dtype"],
                    "(epochs, batch_size, shuffle, check_consistency)":
                    (epochs, batch_size, shuffle, check_consistency)}
            found, candidates = self._labels(Y)
            facts = {"same": same, "rows": self._row_count(X), "labels": found,
                     "candidates": candidates, "names": self._names(X),
                     "val_labels": self._holds_labels(validation_data)}
        except Exception as exc:
            error = exc
        facts = self.agree(error, "checking the arguments and labels", facts)
        for key in facts[0]["same"]:   # what every rank must have been given alike
            self.check_same([f["same"][key] for f in facts], key)
        # as Model.fit refuses a frame whose columns are not the model's: rows of shards
        # with other columns (or another order) are not rows of one data set
        names = {r: f["names"] for r, f in enumerate(facts) if f["names"] is not None}
        if names:
            self.check_same(names, "the list of feature names (DataFrame columns, in order)")
        counts = [f["rows"] for f in facts]
        self.n_global, self.offset = sum(counts), sum(counts[:self.rank])
        if self.n_global == 0:
            raise _everywhere(ValueError("distributed fit: every rank's X is empty (0 rows)"))
        self.batch_size = validation.check_batch_size(batch_size, self.n_global)

        shared = (model.get_state(), model.input_scaling, model.classes_,
                  model.feature_names_in_) if self.rank == 0 else None
        shared = self.comm.bcast(shared, root=0)
        # A fit refused from here on learns nothing, as Model.fit: this rank's own model
        # back (rank 0's weights, classes_ and names had stayed on every rank)
        own = model._held()
        try:
            self._prepare(shared, facts, names, X, Y, validation_data, callbacks)
        except BaseException:
            run_whole(lambda: self._give_back(own))
            raise
        return self.train(epochs, bool(shuffle), callbacks, verbose, check_consistency)

    def _prepare(self, shared, facts, names, X, Y, validation_data, callbacks):
        """Take rank 0's model, encode the data, check the callbacks: every rank agreeing."""
        model = self.model
        error = None
        try:
            self._take(shared, [f["labels"] for f in facts], [f["candidates"] for f in facts],
                       next(iter(names.values()), None))
            self.val_labelled = any(f["val_labels"] for f in facts)
            self.X, self.T = self._data(X, Y, "X", "Y")
            self.val = self._validation(validation_data)
            if self.rank == 0:   # once per job; as an error (-W error) it is agreed on
                model._warn_if_untrainable()
        except Exception as exc:
            error = exc
        val_rows = self.agree(error, "preparing the data",
                              0 if error is not None or self.val is None else len(self.val[0]))
        self.n_val = sum(val_rows)
        error = None
        try:   # before any step, as Model.fit: a monitor no epoch logs is known now
            check_monitors(callbacks, _logged((), self.n_val > 0, False), takes_metrics=False)
        except Exception as exc:
            error = exc
        self.agree(error, "checking the callbacks")

    def _give_back(self, own):
        """This rank's model as it was before a refused fit took rank 0's (``own``: its
        Model._held() then; rank 0 kept its weights and scaling)."""
        model = self.model
        if self.rank != 0:
            model.set_state(own["state"])
            model.set_input_scaling(*(own["input_scaling"] or (None, None)))
        model.classes_, model.feature_names_in_ = own["classes_"], own["feature_names_in_"]

    @staticmethod
    def _rank_zero_only(cb):
        return isinstance(cb, RANK_ZERO_ONLY) or getattr(cb, "rank_zero_only", False) is True

    @staticmethod
    def _row_count(X):
        X = validation.as_array(X, "X")
        if X.ndim == 0:
            raise ValueError("X must be 2-D (samples, features), got a scalar")
        return int(X.shape[0])

    @staticmethod
    def _names(X):
        """X's column names as a list when X is a DataFrame, else None."""
        names = _feature_names(X)
        return None if names is None else distinct_names(names).tolist()

    def _labels(self, Y):
        """(the distinct labels of Y when Y holds labels, else None; its values that are
        labels if another rank's are: labels.label_candidates), for the union over
        ranks."""
        Y = labels.exact(validation.as_array(Y, "Y"), Y)   # (then model._data's Y alike)
        if Y.ndim == 0 or len(Y) == 0:
            return None, None
        if not labels.is_labels(Y, self.model.net, part=True):   # (rank 0's classes_ rule)
            return None, labels.label_candidates(Y, self.model.net)
        flat = labels._as_labels(Y.reshape(-1))
        if np.issubdtype(flat.dtype, np.floating) and not np.isfinite(flat).all():
            # here, so the error names this rank rather than every rank's union
            raise ValueError(f"Y contains NaN or inf (first at row "
                             f"{int(np.argmin(np.isfinite(flat)))})")
        return np.unique(flat), None

    def _holds_labels(self, validation_data):
        """Whether this rank's validation Y holds labels (read alone, as _labels reads
        it): the validation rows of every rank together are labels when one rank's are,
        as one process reads them. False for anything _validation refuses later."""
        try:
            return self._labels(validation_data[1])[0] is not None
        except Exception:   # (no validation data, or data _validation names the problem of)
            return False

    def _take(self, shared, label_sets, candidates, names):
        """Start from rank 0's model; classes_ from every rank's labels when unset (and
        from every rank's label candidates, when some rank holds labels: the rows
        together hold labels, as one process reads them).

        names: the agreed column names of the DataFrame shards (None without any): a
        rank given a plain array takes them too, so every rank records the same.
        When the model has names already, preparing a frame checks them."""
        state, scaling, classes, model_names = shared
        model = self.model
        if self.rank != 0:
            model.set_state(state)
            model.set_input_scaling(*(scaling or (None, None)))
            model.classes_ = classes
            model.feature_names_in_ = None if model_names is None else model_names.copy()
        found = [s for s in label_sets if s is not None]
        # some rank holds labels: so do the ranks whose values all lie in [0, 1]
        self.labelled = bool(found)
        if found:
            found += [c for c in candidates if c is not None]
        if model.classes_ is None and found:
            # as objects: int64 labels beside uint64 ones concatenated to float64 (2**64 - 1
            # became 2**64); labels.encode types them as one process would
            union = np.concatenate([np.asarray(f, dtype=object) for f in found])
            try:
                _, model.classes_ = labels.encode(union, model.net, None)
            except (ValueError, TypeError) as exc:   # every rank fails alike: say whose
                whose = _whose_labels(label_sets, candidates, model.net, exc)
                raise type(exc)(f"{exc} ({whose})") from None
        if model.feature_names_in_ is None and names is not None:
            model.feature_names_in_ = np.asarray(names)

    def _data(self, X, Y, x_name, y_name):
        """(X, T) as the backend takes them; an empty shard stays empty."""
        model, net = self.model, self.model.net
        x_shape, y_shape = (validation.as_array(a, name).shape for a, name in ((X, x_name),
                                                                              (Y, y_name)))
        n_x, n_y = x_shape[:1], y_shape[:1]
        if n_x and n_y and n_x != n_y:   # before labels are looked at: a clear message
            raise ValueError(f"{y_name} has {n_y[0]} rows but {x_name} has {n_x[0]}")
        if n_x != (0,):
            if self.labelled if y_name == "Y" else self.val_labelled:
                Y = self._as_unit_targets(Y)
            # validation rows learn nothing, as Model.fit's (labels there taught the rank
            # holding them alone a classes_, and the ranks ended with different ones)
            return model.prepare(X, Y) if y_name == "Y" else model._data(X, Y)
        # (0, 9) for a model of 5 inputs: another data set's shard, or a bug of the caller
        if len(x_shape) > 2 or x_shape[1:] not in ((), (net.input_dim,)):
            raise ValueError(f"{x_name} is empty with shape {x_shape}; this model takes "
                             f"{net.input_dim} features: (0, {net.input_dim})")
        if len(y_shape) > 2 or y_shape[1:] not in ((), (1,), (net.output_dim,)):
            raise ValueError(f"{y_name} is empty with shape {y_shape}; this model has "
                             f"{net.output_dim} outputs: (0, {net.output_dim}) or (0,)")
        return (np.empty((0, net.input_dim), model.dtype),
                np.empty((0, net.output_dim), model.dtype))

    def _as_unit_targets(self, Y):
        """Y of a shard whose values all lie in [0, 1] (label_candidates), beside shards
        of labels: as the 0/1 targets of its labels (class indices of classes_), which
        is how one process reads their rows together; any other Y as it is. (Read alone,
        a shard of 1s beside a shard of 1s and 2s was the target 1, class 2, while the
        other rank's 1s were class 1.)"""
        flat = labels.unit_values(validation.as_array(Y, "Y"), self.model.net)
        if flat is None:
            return Y
        if np.any(flat != np.round(flat)):
            # soft targets beside other ranks' labels: one process refuses their rows
            raise ValueError("Y holds targets in [0, 1] that are no class labels, while "
                             "another rank's Y holds labels: give every rank labels, or "
                             "every rank targets")
        # (n, 1) class indices, 0 or 1: the targets; an unknown label named as one process
        # names it
        return labels.encode(flat, self.model.net, self.model.classes_)[0]

    def _validation(self, validation_data):
        if validation_data is None:
            return None
        validation.check_pair(validation_data, "validation_data must be a tuple (X_val, "
                              "Y_val) of this rank's validation rows, or None;")
        with validation_data_errors():
            return self._data(*validation_data, "X_val", "Y_val")

    # -- training ----------------------------------------------------------------
    def train(self, epochs, shuffle, callbacks, verbose, check_consistency):
        model = self.model
        n = model.n_params
        # One buffer per step: the gradient, then the summed loss, then the error flag.
        self.buf = np.zeros(n + 2, dtype=model.dtype)
        model.history = history = History()
        model.stop_training = False
        error = None
        try:
            for cb in callbacks:   # every set_model before any on_train_begin, as Keras
                _hook(cb, "set_model", model)
            for cb in callbacks:
                _hook(cb, "on_train_begin", {"epochs": epochs, "initial_epoch": 0,
                                             "samples": self.n_global,
                                             "batch_size": self.batch_size})
        except Exception as exc:
            error = exc
        # on_epoch_begin's errors are agreed on too, by every rank, when any rank has one
        begins = any(self.agree(error, "in on_train_begin",
                                any(_begins_epochs(cb) for cb in callbacks)))
        logs = {}
        for epoch in range(epochs):
            if begins:
                error = None
                try:
                    for cb in callbacks:
                        _hook(cb, "on_epoch_begin", epoch, {})
                except Exception as exc:
                    error = exc
                self.agree(error, f"in on_epoch_begin of epoch {epoch + 1}")
            logs = self.epoch(epoch, shuffle)
            error = None
            try:   # a print can fail too (a closed stdout) and is agreed on like a callback
                if verbose == 2 and self.rank == 0:   # Model.fit's line
                    print(f"epoch {epoch + 1}/{epochs}  {format_logs(logs)}", flush=True)
                for cb in callbacks:
                    _hook(cb, "on_epoch_end", epoch, logs)
            except Exception as exc:
                error = exc
            self.end_of_phase(error, f"the callbacks of epoch {epoch + 1}",
                              check_consistency)
            history.record(epoch, logs)   # after the callbacks, as Model.fit
            if model.stop_training:
                break
        error = None
        try:
            for cb in callbacks:
                _hook(cb, "on_train_end", logs)
        except Exception as exc:
            error = exc
        # Rank 0's end state on every rank, before it is checked: a callback given on
        # rank 0 alone (an EarlyStopping restoring the best weights) left the ranks with
        # other models
        state = self.comm.bcast(model.get_state() if self.rank == 0 else None, root=0)
        if self.rank != 0 and error is None:
            try:
                model.set_state(state)
            except Exception as exc:
                error = exc
        self.end_of_phase(error, "on_train_end", check_consistency)
        return history

    def end_of_phase(self, error, phase, check_consistency):
        """Agree on errors, rank 0's stop_training and (optionally) the model state."""
        model = self.model
        digest = _state_digest(model) if check_consistency and error is None else None
        reports = self.agree(error, f"in {phase}", (model.stop_training, digest))
        model.stop_training = bool(reports[0][0])
        if check_consistency:
            self.check_same([d for _, d in reports], "the sha256 of the model state (weights, "
                            f"optimiser and generator) after {phase}")

    def epoch(self, epoch, shuffle):
        """Train one epoch; returns its logs (the same on every rank)."""
        model = self.model
        # One trainer at a time per model, as in Model.fit (the epoch's start saved and its
        # order drawn after another thread's fit, not before); the lock held until the
        # ranks agree and a failed epoch is undone, so that a copy from another thread
        # (get_state, save) never sees the epoch half trained
        with model._lock:
            model._wait_for_fit()
            saved = model.get_state()
            start = time.perf_counter()
            error, rows, bounds = None, None, None
            try:
                perm = (model.permutation(self.n_global) if shuffle
                        else np.arange(self.n_global, dtype=np.int64))
                rows, bounds = _batch_rows(perm, self.offset, len(self.X), self.batch_size)
            except Exception as exc:
                error = exc
            error, loss = self.steps(epoch, rows, bounds, error)
            seconds = time.perf_counter() - start
            val_sum = 0.0
            if error is None and self.val is not None and len(self.val[0]):
                try:
                    val_sum = float(model.engine.evaluate(*self.val)) * len(self.val[0])
                except Exception as exc:
                    error = exc
            try:
                reports = self.agree(error, f"in epoch {epoch + 1}", (val_sum, seconds))
            except BaseException:
                model.set_state(saved)   # never leave the model half an epoch updated
                raise
        logs = {"loss": loss}
        if self.n_val:
            logs["val_loss"] = sum(v for v, _ in reports) / self.n_val
        slowest = max(s for _, s in reports)
        logs["samples_per_s"] = self.n_global / slowest if slowest > 0 else float("inf")
        return logs

    def steps(self, epoch, rows, bounds, error):
        """One reduction and one optimiser step per global batch; (error, mean loss).

        After a local error this rank sends the error flag instead of a gradient, and
        every rank stops at that step. Like Model.fit, the weights are checked once per
        epoch (a NaN weight after an update is reported as TrainingDiverged, and the
        caller restores the epoch's start); the per-step snapshot of
        Model.apply_gradient would cost 10 times the SGD update itself (0.39 against
        0.04 ms on W3), every step, on every rank."""
        model, n, buf = self.model, self.model.n_params, self.buf
        grad, loss_sum = buf[:n], 0.0   # after the reduction: the batch's mean gradient
        # Written here, outside the backend: tell it (a device copies theta back; a
        # copy-free guarded step drops the bounds it keeps on theta).
        push = getattr(model.engine, "push", lambda: None)
        for k, first in enumerate(range(0, self.n_global, self.batch_size)):
            batch_rows = min(self.batch_size, self.n_global - first)
            if error is None:
                try:
                    self.local_gradient(rows[bounds[k]:bounds[k + 1]], batch_rows)
                except Exception as exc:
                    error = exc
            if error is not None:   # tell every rank, in this step's reduction
                buf[:] = 0
                buf[n + 1] = 1
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
            if buf[n + 1] != 0:     # the same integer on every rank: all stop here
                break
            try:
                loss_sum += float(buf[n])
                if not np.isfinite(buf[n]):
                    raise TrainingDiverged(f"training diverged in epoch {epoch + 1}: the loss "
                                           f"became {float(buf[n])}; the weights of the "
                                           "last finite epoch were kept (try a smaller "
                                           "learning rate or rescale the data)")
                with np.errstate(over="ignore", invalid="ignore"):
                    optimizers.update(model.engine.theta, grad, model.engine.state)
                push()
            except Exception as exc:
                error = exc          # sent with the next step's reduction, or agreed below
        loss = loss_sum / self.n_global
        if error is None:
            try:
                model._check_finite(loss, f"in epoch {epoch + 1}", "the weights of the last "
                                    "finite epoch were kept")
            except TrainingDiverged as exc:
                error = exc
        return error, loss

    def local_gradient(self, rows, batch_rows):
        """Into the buffer: this rank's share of the batch's mean gradient, (sum of the
        gradients over ``rows``) / batch_rows, and the summed loss over ``rows``; zeros
        when the batch has none of this rank's rows. The reduction then sums the
        shares into the batch mean, with no second pass over the gradient."""
        model, buf, n = self.model, self.buf, self.model.n_params
        m = len(rows)
        if m == 0:
            buf[:] = 0
            return
        grad = buf[:n]
        loss = model.engine.loss_and_gradient(self.X[rows], self.T[rows], grad)
        grad *= m / batch_rows        # the backend gives the mean over this rank's m rows
        buf[n] = loss * m
        buf[n + 1] = 0

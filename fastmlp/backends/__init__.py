"""Backends: one contract, several implementations, one test suite.

A backend is a class built once per model as ``Backend(net, dtype, theta, state)``:
``net`` a :class:`fastmlp.network.Network`, ``theta`` the model's flat parameter vector
(n_params,) and ``state`` its :class:`fastmlp.optimizers.OptimizerState`. The backend
keeps them and updates them in place, so each call passes only data. It never
validates: the Model hands it C-contiguous, aligned arrays of the model dtype with
matching shapes, ``T`` targets as floats (n, outputs). It follows the rules of
:mod:`fastmlp.rules` (fused output gradients, when plain SGD folds into the GEMM,
training and predict chunk sizes) and, when compiled, runs on the layout of
:meth:`fastmlp.network.Network.plan`. It must provide:

``predict(X, out=None) -> out``             out (n, outputs) OVERWRITTEN with the outputs
    and returned; ``out`` is caller-allocated (C-contiguous, the model dtype) or
    None for a new array. X is taken in chunks of ``rules.predict_rows`` rows,
    once, inside the backend, so memory stays bounded by out plus one chunk.
``evaluate(X, T) -> float``                 mean loss
``loss_and_gradient(X, T, grad) -> float``  grad (n_params,) OVERWRITTEN
``train_step(X, T) -> float``               one update of theta and state; batch loss before it
``train_step_checked(X, T) -> (loss, status)``
    train_step, guarded, in ONE call (compiled: no Python inside): status 1 when X
    or T is not finite, or, for a cross-entropy (``net.loss.output`` set), T is
    outside [0, 1]: nothing ran or changed, loss NaN (the Model then raises the
    exact message). Otherwise theta, the optimiser buffers in use (plain SGD: none,
    momentum: v, Adam: m and v) and state.step are copied to a backup the backend
    owns (allocated once, never per call) and the step runs, bit for bit train_step's;
    if the loss, theta or those buffers are then not finite, they are restored from
    the backup (the model exactly as before) and status is 2; else status 0.
``train_epoch(X, T, perm, batch_size, norms=None) -> float``
    one train_step per batch of rows perm[i:i + batch_size] (the last may be
    short); returns sum(batch loss * batch rows) / n.
    norms: None, or a writable C-contiguous float64 array (n_layers,) to which
    every step ADDS, for each layer l, ||dE/dW_l||_F^2 (the batch's mean-loss
    gradient with respect to W_l alone, before weight decay), summed inside the
    step as the gradient is formed; plain SGD is then not folded into the GEMM
    (see ``rules.sgd_fold_rows``).

``train_epochs(X, T, orders, batch_size, tol, losses) -> (epochs_done, status)``
    train_epoch once per row of orders, int64 (k, n) C-contiguous (row e is epoch
    e's order), all in ONE call (compiled: no Python between epochs), each epoch
    bit for bit what train_epoch gives. losses, a writable aligned C-contiguous float64
    array (k,) (anything else is refused before training: reference.check_losses), is
    OVERWRITTEN with each epoch's loss as it finishes. Each epoch's loss is checked to be finite, and
    theta and the optimiser buffers in use (plain SGD: none, momentum: v, Adam: m and
    v) after the last epoch run, at least (the compiled backends check them only
    there: a pass over them per epoch cost up to 5 % of a big net's small epoch; the
    reference and cuda after every epoch). It stops with status 2 at an epoch whose
    loss is not finite, or whose check of theta and the buffers fails: that epoch's
    loss written, epochs_done counting the epochs before it, theta and state left as
    that epoch made them. Checked only at the end, theta or the buffers may have gone
    non-finite in an earlier epoch, with a finite loss (Adam's v overflowing freezes
    the weights): a call of one epoch (k = 1) always names the first bad epoch, which
    is how Model.fit finds it. Otherwise it stops after an epoch whose loss is <= tol
    (tol < 0: none) with status 1, or runs all k: status 0, epochs_done = k.

``predict``, ``evaluate`` and ``loss_and_gradient`` must be safe from several threads at
once on one model, each giving the single-thread result bit for bit; ``train_step``,
``train_step_checked``, ``train_epoch`` and ``train_epochs`` run one at a time per model
(the Model holds its lock around them).

Optional, for a compiled backend (``"cython"``, ``"numba"``); the Model uses it when present:

``predict_checked(X, out) -> bool``          predict into out (n, outputs), OVERWRITTEN,
    checking X on the way: True when every value of X is finite, False when X holds NaN
    or inf (out is then undefined, and the Model raises its usual message). The check
    runs inside the compiled call, on each chunk just before the first layer reads it,
    so a ready array costs the Model no separate validation pass. The caller still
    guarantees the layout (C-contiguous, aligned, the model dtype and width).
``reads_columns = True``                     predict (and predict_checked) also take X
    Fortran-ordered (aligned, the model dtype and width, at least 2 rows and 2 columns),
    reading it where it lies: the Model then passes a DataFrame's values, and a cast or
    scaled copy of them, without turning them into rows. The outputs agree with those
    of the same values in rows to rounding (BLAS may sum a transposed operand in
    another order).

Optional, for a backend whose parameters live on a device (``"cuda"``); the Model uses
each one that is present (``getattr``) and otherwise works on the host arrays:

``pull()``                 make the host ``theta`` and ``state`` (the arrays given to
    ``__init__``) current; the Model calls it before every host read of them
    (get_weights, get_state, save, a rollback snapshot, ...). Cheap when nothing changed.
``push()``                 the Model wrote the host theta / state (set_weights, set_state,
    load, a rollback restore, a changed hyper-parameter): copy them to the device before
    the next kernel. Every pull/push pair brackets the host access, under the Model's lock.
``to_device(X, T) -> (X, T)``  the training set where training reads it: copied to the
    device once (fit calls it once per fit, and once for validation data), device arrays
    passed through, or the host arrays themselves (to be streamed batch by batch) when
    they exceed the backend's memory budget. What it returns goes to ``train_epoch``,
    ``train_epochs`` and ``evaluate`` as X and T.
``all_finite(X) -> bool``  every element of X (a device or host array) finite: predict's
    input check for device arrays, without a copy to the host.
``is_device_array(x) -> bool``  x is an array this backend reads on the device
    (``__cuda_array_interface__``); ``predict`` then takes it without a copy to the host
    and returns a device array.
``as_device(x)``           the backend's own view of such an array, no copy.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import warnings
from pathlib import Path

# name -> "module:Class"; a backend is available when its module imports.
_REGISTRY = {
    "numpy": "fastmlp.backends.reference:NumpyBackend",
    "numba": "fastmlp.backends.numba:NumbaBackend",
    "cython": "fastmlp.backends.cython:CythonBackend",
    # an NVIDIA GPU through numba-cuda; its import fails, saying why, without one
    "cuda": "fastmlp.backends.cuda:CudaBackend",
}
_import_errors: dict[str, str] = {}
# name -> a module whose presence means the backend is installed here, so that its failing
# to import is a fault to report, not an absent option ("numpy" is always there)
_INSTALLED_IF = {
    "numba": "numba",
    "cython": "fastmlp.kernels._cython_mlp_base",  # the build made wherever Cython builds
}


def _load(name):
    module, cls = _REGISTRY[name].split(":")
    imported = sys.modules.get(module)
    if imported is not None and not getattr(imported.__spec__, "_initializing", True):
        # Imported already: an exception from a signal handler (a SIGALRM timeout) landing
        # in import_module's Python frames was reported as a backend that does not import.
        return getattr(imported, cls)
    if name != "numpy" and KERNELS_ELSEWHERE:   # (the reference uses no compiled kernels)
        raise ImportError(KERNELS_ELSEWHERE)
    before = set(sys.modules)
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        raise ImportError(_explain(exc)) from None
    except BaseException as exc:
        _drop_orphans(set(sys.modules) - before)
        if not isinstance(exc, Exception):
            raise
        raise ImportError(f"importing it raised {type(exc).__name__}: {exc}") from None


def _drop_orphans(added):
    """Forget the modules in ``added`` whose package is no longer imported.

    Interrupted (Ctrl-C) or broken half-way, an import removes the packages it was still
    running but keeps their finished submodules: a retry then fails inside numba ("module
    'numba' has no attribute 'core'", or a type registered twice) for the rest of the
    process. Without those orphans a retry imports the package afresh. Compiled
    extension modules stay, orphans or not: some register types with NumPy, which a
    second import would repeat ("DType ... appears already registered")."""
    for name in added:
        parts = name.split(".")
        orphan = any(".".join(parts[:i]) not in sys.modules for i in range(1, len(parts)))
        if orphan and not _compiled(sys.modules.get(name)):
            sys.modules.pop(name, None)


def _compiled(module):
    origin = getattr(getattr(module, "__spec__", None), "origin", None) or ""
    return origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def _explain(exc):
    """The import error, or what is really wrong when a source tree shadows the install:
    then the package fastmlp.kernels itself is missing (it lives in ../kernels, which only
    an install maps), not merely one of its modules failing (an unknown
    FASTMLP_CYTHON_ISA, a build that does not load), which is reported as it is."""
    package = Path(__file__).resolve().parents[1]
    source_tree = (package.parent / "kernels").is_dir() and (package.parent / "setup.py").is_file()
    if source_tree and importlib.util.find_spec("fastmlp.kernels") is None:
        return (f"fastmlp is imported from its source tree ({package}), which has no compiled "
                "kernels: that folder shadows the installed package. Install the clone with "
                "`pip install -e .`, or run from another folder")
    return str(exc)


def _kernels_elsewhere():
    """Why the compiled kernels must not load, or "": fastmlp.kernels found in another
    tree than this fastmlp's (installed: fastmlp/kernels; editable or a source tree:
    ../kernels), as when an editable install of one clone answers for the kernels of a
    second clone put on sys.path: that clone's code would drive the first one's kernels."""
    try:
        spec = importlib.util.find_spec("fastmlp.kernels")
    except (ImportError, ValueError):
        return ""
    if spec is None or not spec.submodule_search_locations:
        return ""   # no kernels at all: the import says so (_explain)
    package = Path(__file__).resolve().parents[1]
    found = Path(list(spec.submodule_search_locations)[0]).resolve()
    if found in (package / "kernels", package.parent / "kernels"):
        return ""
    return (f"fastmlp is imported from {package} but its compiled kernels from {found}, "
            "another copy of fastmlp (an editable install of another clone answers for "
            "fastmlp.kernels): install this copy (`pip install -e .` in its folder), or "
            "import the installed one")


# Set once, as fastmlp is imported (it calls keep_out_kernels_elsewhere first of all).
KERNELS_ELSEWHERE = ""


def keep_out_kernels_elsewhere():
    """When the kernels found are another copy's (_kernels_elsewhere), keep every import
    of fastmlp.kernels out (validation's C layout tests and set_num_threads' GEMV pool
    loaded that copy's extension, for the numpy backend too): each falls back to its
    Python or says why (a compiled backend names both folders)."""
    global KERNELS_ELSEWHERE
    KERNELS_ELSEWHERE = _kernels_elsewhere()
    if KERNELS_ELSEWHERE:
        sys.modules.setdefault("fastmlp.kernels", None)   # import raises ImportError


def _imports(name):
    """Whether backend ``name`` imports here; if not, why is kept in _import_errors."""
    try:
        _load(name)
    except ImportError as exc:
        _import_errors[name] = str(exc)
        return False
    return True


def imports(name):
    """Whether backend ``name`` imports here, importing it alone (False for a name that
    is no backend's)."""
    return isinstance(name, str) and name in _REGISTRY and _imports(name)


def available_backends():
    """Names of the backends that import on this machine, e.g. ["numpy", "numba"]."""
    return [name for name in _REGISTRY if _imports(name)]


# What backend="auto" picks: the fastest CPU backend that imports here ("cuda" is asked
# for by name: a GPU pays off only for large batches, and moves where the data live).
AUTO_ORDER = ("cython", "numba", "numpy")


def resolve(name):
    """The backend name that ``name`` means here: "auto" -> the first of AUTO_ORDER that imports.

    A faster backend that is installed but does not import (a bad FASTMLP_CYTHON_ISA, a
    numba that fails against this NumPy) is passed over with a RuntimeWarning saying why:
    silently falling back could cost a user a large factor in speed."""
    if not (isinstance(name, str) and name == "auto"):  # get_backend refuses the others
        return name
    # In order, stopping at the first that imports: the others are not imported at all
    # (numba and numba.cuda took a second of a first Model() that ran on cython).
    for i, chosen in enumerate(AUTO_ORDER):
        if not _imports(chosen):
            continue
        for skipped in AUTO_ORDER[:i]:
            if _installed(skipped):
                warnings.warn(f"backend='auto' uses {chosen!r}: the faster {skipped!r} backend "
                              f"is installed but does not import ({_import_errors[skipped]})",
                              RuntimeWarning, stacklevel=3)
        return chosen
    raise ImportError(f"no backend imports here: {_import_errors}")


def _installed(name):
    """Whether the module that ``name``'s backend is built from is present here."""
    try:
        return importlib.util.find_spec(_INSTALLED_IF[name]) is not None
    except (ImportError, ValueError):  # a parent package missing, or broken
        return False


def get_backend(name):
    """The backend class for ``name``; a clear error if unknown or not importable."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; choose 'auto' or one of {sorted(_REGISTRY)}")
    try:
        return _load(name)
    except ImportError as exc:
        raise ValueError(f"backend {name!r} is not available here: {exc}") from None

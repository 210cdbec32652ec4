"""Calling compiled Numba kernels without the dispatcher (the numba backend's hot path).

Numba's dispatcher types every argument on every call, then picks the compiled
signature: a quarter of the vehicle net's train_on_batch. The numba backend
compiles each kernel for ONE signature per dtype (its inputs typed read-only, so a
read-only or memory-mapped input needs no second compile) and calls that
signature's entry point, the C function the dispatcher itself calls once it has
typed the arguments. The entry point unboxes its arguments with no type check
beyond the item size, so a caller passes exactly those types: :func:`fits` says
whether an array does, and anything else goes through the dispatcher.
"""
from __future__ import annotations

import threading

import numba
import numpy as np

from .. import warmup
from ..kernels.numba_link import compile_for, in_disk_cache

_ENTRIES = {}   # (kernel, signature) -> its compiled entry point, shared by every model
_ENTRIES_LOCK = threading.Lock()


def fits(a, ndim, dtype, write):
    """Whether ``a`` is what a kernel's signature types it as: a plain C-contiguous,
    aligned ndarray of ``dtype`` with ``ndim`` dimensions (writeable if ``write``)."""
    if type(a) is not np.ndarray:
        return False
    flags = a.flags
    return (a.ndim == ndim and a.dtype == dtype and flags.c_contiguous and flags.aligned
            and (flags.writeable or not write))


_SIGNATURES = {}   # key -> signature, for templates whose types the key determines


def signature(template, read_only, key=None):
    """The Numba types of a template call's arguments, those at positions ``read_only``
    typed read-only: a writeable array passes where a read-only one is typed, and the
    kernel never writes them, so a read-only input needs no second compile.

    ``key`` (hashable), when given, stands for every argument's type: the caller's
    promise that two templates with one key type alike (arrays it made itself, of one
    dtype, checked by :func:`fits`). Their signature is then typed once per process:
    ``numba.typeof`` costs about 4 us an argument, some 220 us per new model."""
    if key is not None and key in _SIGNATURES:
        return _SIGNATURES[key]
    types = [numba.typeof(a) for a in template]
    for i in read_only:
        types[i] = types[i].copy(readonly=True)
    if key is not None:
        _SIGNATURES[key] = tuple(types)
    return tuple(types)


def entry_point(kernel, signature):
    """``kernel``'s compiled code for ``signature`` (compiled, or loaded from the disk
    cache, on first use), as the C function Numba's dispatcher calls once it has typed
    the arguments: it unboxes them with no type check beyond the item size, so callers
    pass arguments of exactly those types."""
    key = (kernel, signature)
    entry = _ENTRIES.get(key)
    if entry is None:
        with _ENTRIES_LOCK:
            if key not in _ENTRIES:
                with warmup.compiling(kernel.__name__, str(signature[0].dtype)):
                    compile_for(kernel, signature)
                _ENTRIES[key] = kernel.overloads[signature].entry_point
            entry = _ENTRIES[key]
    return entry


def entry_point_or_stand_in(owner, name, kernel, signature):
    """``kernel``'s entry point for ``signature`` if it is known, else a stand-in that
    finds it on its first call and puts it in ``owner.name`` (the first predict
    compiles predict, not the model's construction)."""
    entry = _ENTRIES.get((kernel, signature))
    if entry is not None:
        return entry

    def ready():
        entry = entry_point(kernel, signature)
        if getattr(owner, name) is first_call:
            setattr(owner, name, entry)
        return entry

    def first_call(*args):
        return ready()(*args)

    def compiles():
        return ((kernel, signature) not in _ENTRIES and signature not in kernel.overloads
                and not in_disk_cache(kernel, signature))

    first_call.ready = ready   # compiles (or loads) it without a call: see ready_entries
    first_call.compiles = compiles   # see will_compile
    return first_call


def will_compile(entry):
    """Whether ``entry`` is a stand-in whose first call compiles its kernel: compiled
    neither in this process nor in the disk cache."""
    compiles = getattr(entry, "compiles", None)
    return compiles is not None and compiles()


def ready_entries(*entries):
    """Compile (or load) those of ``entries`` that are stand-ins still, calling nothing."""
    for entry in entries:
        ready = getattr(entry, "ready", None)
        if ready is not None:
            ready()

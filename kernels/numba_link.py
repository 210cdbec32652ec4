"""Calls between separately compiled Numba kernels, linked by name, as a C linker would.

When one ``@njit`` function calls another, Numba copies the callee's whole
compiled module into the caller's and runs LLVM's full optimisation and code
generation over the copy again. LLVM inlines none of the kernels' big callees
(checked in their optimised IR: every such call stays a call), so all that work
only repeats itself: ``train_step`` re-optimised all of ``run``, which
re-optimised the layer and activation kernels, and the first compile of the
kernels took 13-15 s per dtype. ``separate(f)`` is a stand-in for ``f`` inside
``@njit`` code that emits the same native call, but to a symbol named after f
and its argument types, bound to f's compiled code when the caller is compiled
or loaded from the cache. Each kernel's code is then optimised once.

The call is Numba's own (``call_internal``: return value, status and exception
propagate exactly as for an ordinary call), so a kernel behaves the same
whether its callees are linked in or not. On a cache load the caller's
``reload_init`` hook compiles or loads the callee and binds the symbol before
the caller's machine code is linked, so an unresolved symbol cannot happen.
Bindings are by argument types only: after changing a kernel's return type,
delete ``kernels/__pycache__/*.nb[ic]`` (as after any edit of a callee's file).

``Late`` is the other way to call a kernel: through an address read at run time (from
the plan), so that the caller's compile neither compiles nor links it. The per-network
kernels (each activation's passes and the loss, compiled for one code, the optimiser's
update, the guarded step's guard and the gradient norms) are called so, and compiled at
the first call of a model that needs them.

Numba's disk cache, made safe for these kernels (``guard_cache``, set on every kernel
``separate`` links and every one ``compile_for`` compiles, and by the numba backend on
every kernel module; ``guarded_cfunc`` for the C callbacks numba_blas and numba_gemv
compile): a damaged entry (a file emptied or cut short, as a power loss
can leave it: Numba writes without fsync) is a cache miss, said in one line naming the
file, and the kernel compiles again and rewrites it; a cache write that fails (a full
disk) leaves the kernel compiled, uncached, said in one line naming the folder;
processes saving into one folder at once each keep their entries whole (a lock per
folder: _CheckedCacheFile.save), and an entry holding code for other argument types is
a miss. Only these kernels' dispatchers change, not Numba's; a Ctrl-C still
propagates, once the compile it arrived in is over (see _compiled_whole).
"""
from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib
import inspect
import itertools
import os
import sys
import threading
import time

import llvmlite.binding as llvm
from numba import types
from numba.core import caching, cgutils, config, sigutils
from numba.core.errors import TypingError
from numba.core.dispatcher import Dispatcher
from numba.extending import intrinsic

from fastmlp._npz import raised_by_caller
from fastmlp._signals import say, signal_held_back, signals_deferred

_NOTICES_LOCK = threading.Lock()
_NOTICED = set()
# cache folder -> "ErrorType: message" of the first cache write that failed there in this
# process (`fastmlp warmup` fails naming it: the next process compiles those kernels again)
CACHE_WRITE_FAILURES = {}


def _notice_once(key, message):
    with _NOTICES_LOCK:
        if key in _NOTICED:
            return
        _NOTICED.add(key)
    say(f"fastmlp: {message}")   # (nothing where stderr is gone: a notice is only a notice)


def _why(exc):
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _damaged(what, exc):
    _notice_once(("damaged", what), f"Numba's {what} is damaged or unreadable ({_why(exc)}); "
                 "compiling that kernel again and rewriting the entry")


# the file in a cache folder whose lock makes each save there whole (_CheckedCacheFile.save)
SAVE_LOCK_NAME = "fastmlp-save.lock"


# How long a save waits for another process's save lock (a save holds it well under a
# second) before the kernel stays uncached (SaveLockHeld)
SAVE_LOCK_WAIT = 30.0


class SaveLockHeld(Exception):
    """The cache folder's save lock stayed taken (its holder stopped: Ctrl-Z, a debugger,
    a lock hung on a network file system), or a signal the compile holds back (Ctrl-C, a
    timeout) came while waiting for it."""


@contextlib.contextmanager
def _folder_locked(folder):
    """The block run holding ``folder``'s save lock (flock: released when the process
    dies), or without it where there is none to take (no fcntl, as on Windows; a folder
    that cannot be written, where the save itself then fails and says so). The wait is
    bounded: flock without a limit hung every other first compile for as long as a
    stopped process held the lock, and the Ctrl-C the compile announced never came."""
    try:
        import fcntl
        fd = os.open(os.path.join(folder, SAVE_LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o666)
    except (ImportError, OSError):
        fd = None
    try:
        if fd is not None:
            _lock_within(fd, fcntl, SAVE_LOCK_WAIT)
        yield
    finally:
        if fd is not None:
            os.close(fd)      # (and the lock with it)


def _lock_within(fd, fcntl, seconds):
    """flock(fd, LOCK_EX) within ``seconds``, or SaveLockHeld: sooner where a signal the
    compile holds back has come (_signals.signal_held_back)."""
    deadline = time.monotonic() + seconds
    pause = 0.001
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        except OSError:   # a file system without locks: Numba's own, unlocked save
            return
        if signal_held_back():
            raise SaveLockHeld("a signal (Ctrl-C, a timeout) came while it waited for "
                               "another process's save lock")
        if time.monotonic() >= deadline:
            raise SaveLockHeld(f"another process held its save lock, {SAVE_LOCK_NAME}, "
                               f"for {seconds:g} s: stopped (Ctrl-Z, a debugger) or a "
                               "lock hung on a network file system")
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


class _CheckedCacheFile(caching.IndexDataCacheFile):
    """Numba's index and data files of one kernel, where a damaged file is a miss and
    saves from several processes at once are each kept whole (save)."""

    def save(self, key, data):
        """Numba's save (the entry's data file, and the index naming it), made safe for
        processes saving at once (two first compiles, `fastmlp warmup`'s dtypes side by
        side). Numba's reads the index, picks a data file and writes both, unlocked: of
        4 processes saving 30 entries each into one index, 33 entries survived, 32 of
        them naming another entry's data, so a kernel would have loaded code compiled
        for other argument types. Here the folder's lock is held throughout, and the
        data is written before the index names it."""
        with _folder_locked(self._cache_path):
            overloads = self._load_index()
            data_name = overloads.get(key)
            if data_name is None:
                taken = set(overloads.values())
                data_name = next(name for name in map(self._data_name, itertools.count(1))
                                 if name not in taken)
            self._save_data(data_name, data)
            if overloads.get(key) != data_name:
                overloads[key] = data_name
                self._save_index(overloads)

    def _load_index(self):
        try:
            return super()._load_index()
        except Exception as exc:  # pickle's EOFError, UnpicklingError, ...; OSError
            _damaged(f"cache file {self._index_path}", exc)
            return {}             # a miss; the next save writes a new index

    def _load_data(self, name):
        try:
            return super()._load_data(name)
        except OSError:
            raise                 # Numba's load: a data file removed, a miss
        except Exception as exc:
            _damaged(f"cache file {self._data_path(name)}", exc)
            return None           # a miss; the compile's save overwrites the file


def _raise_if_not_the_files(exc):
    """Raise what ``exc`` holds that says nothing of the cache's files (a signal handler's
    TimeoutError: _npz.raised_by_caller, the one rule for load and these hooks alike)."""
    caller = raised_by_caller(exc, None)
    if caller is not None:
        raise caller from None


def _load_overload(load, cache, sig, target_context):
    """Numba's ``Cache._load_overload``, an entry that unpickles but cannot be rebuilt
    (damaged machine code) a miss too."""
    try:
        loaded = load(sig, target_context)
    except Exception as exc:
        _raise_if_not_the_files(exc)
        _damaged(f"cache entry of {cache._py_func.__qualname__} in {cache.cache_path}", exc)
        return None
    # an entry holding code compiled for other argument types (an index written by
    # processes saving at once, unlocked: _CheckedCacheFile.save) is a miss, not a crash
    found = getattr(getattr(loaded, "signature", None), "args", None)
    if found is not None and tuple(found) != tuple(sigutils.normalize_signature(sig)[0]):
        _damaged(f"cache entry of {cache._py_func.__qualname__} in {cache.cache_path}",
                 TypeError(f"it holds code for the argument types {tuple(found)}"))
        return None
    return loaded


def _save_overload(save, cache, sig, data):
    """Numba's ``Cache.save_overload``; a write that fails (a full disk, a folder made
    read-only) leaves the kernel compiled and in use, uncached, said once per folder.
    So does a kernel whose object code Numba never received: an exception raised in
    llvmlite's object-cache callback (a ctypes callback: Python prints it, "Exception
    ignored on calling ctypes callback", and goes on) leaves the kernel compiled and
    working, and Numba's save then raised "no compiled object yet" out of the call that
    compiled it."""
    try:
        save(sig, data)
    except SaveLockHeld as exc:
        _unsaved(cache, exc, "the kernel is compiled and in use in this process")
    except OSError as exc:
        _raise_if_not_the_files(exc)
        _unsaved(cache, exc, "free space there or set NUMBA_CACHE_DIR to a writable folder")
    except RuntimeError as exc:
        if "no compiled object yet" not in str(exc):
            raise
        _unsaved(cache, exc, "the error that stopped it is printed above")


def _unsaved(cache, exc, advice):
    folder = cache.cache_path
    CACHE_WRITE_FAILURES.setdefault(folder, _why(exc))
    _notice_once(("unwritable", folder), f"Numba could not write its cache in {folder} "
                 f"({_why(exc)}), so kernels it could not save compile again in the next "
                 f"process; {advice}")


# What a Ctrl-C held back by a compile says (see _compiled_whole)
CTRL_C_NOTICE = ("fastmlp: Ctrl-C: stopping once Numba has finished compiling this kernel "
                 "(stopping LLVM midway can crash Python)")


# Numba's levels, outermost first, that the compiles in progress (one thread's, nested:
# each holds the compiler lock) found and put back: the first is the process's own
_LEVELS_FOUND = []


def _as_level(value):
    """``value`` as Numba's level type (config.OPT; a user may have assigned an int)."""
    level_type = getattr(config, "_OptLevel", None)
    if level_type is None or isinstance(value, level_type):
        return value
    return level_type(value)


def compile_level(dispatcher, process=None):
    """The LLVM optimisation level ``dispatcher`` compiles at: the process's (``process``,
    else NUMBA_OPT as Numba holds it now), or, for an entry point or a helper
    (``llvm_opt`` set: numba_math.entry, helper), the lower of that and its own, unless
    the process's is "max" (the user trading compile time for speed)."""
    process = _as_level(config.OPT if process is None else process)
    own = getattr(dispatcher, "llvm_opt", None)
    if own is None or getattr(process, "is_opt_max", False) or own >= process:
        return process
    return _as_level(own)


@contextlib.contextmanager
def _optimised_at(dispatcher):
    """The block run with Numba's codegen at ``dispatcher``'s LLVM optimisation level
    (compile_level; Numba's passes read config.OPT as each function and module is
    optimised), holding Numba's compiler lock so that no other thread's compile runs at
    it. Numba reads a NUMBA_* variable changed since at a compile's start, so it is read
    first here: read inside, its level was put back by the old one, for good."""
    from numba.core.compiler_lock import global_compiler_lock
    from numba.core.registry import cpu_target
    with global_compiler_lock:
        config.reload_config()
        # the codegen made first, so that its target machine keeps the process's level
        cpu_target.target_context.codegen()
        found = config.OPT
        process = _LEVELS_FOUND[0] if _LEVELS_FOUND else found
        _LEVELS_FOUND.append(found)
        config.OPT = compile_level(dispatcher, process)
        try:
            yield
        finally:
            config.OPT = _LEVELS_FOUND.pop()


def _compiled_whole(compile, dispatcher=None):
    """``compile`` (a dispatcher's or a C callback's) with every signal that has a Python
    handler (Ctrl-C, a SIGALRM timeout) held back until it returns, then handled
    (_signals.signals_deferred). A KeyboardInterrupt raised inside llvmlite between an
    LLVM call that takes a module over (linking it into another, adding it to the JIT)
    and the line that marks the module so freed the module twice when it was collected:
    Python crashed with a segmentation fault; raised in Numba's typing, it left the
    typing registry half made (predict could not compile again in that process). 2 of
    17 runs with a Ctrl-C at a random moment of the first compile failed so; none of 40
    since. A timeout's exception did the same, or was swallowed by llvmlite's
    object-cache callback (the timeout lost, or reported as a Ctrl-C).
    The wait is the rest of the compile: 1.3-7.9 s measured (the training kernel
    compiles with the kernels it calls), once per environment; the disk cache then
    loads it. A ``dispatcher``'s compile runs at its level (compile_level)."""
    if getattr(compile, "whole", False):
        return compile

    @functools.wraps(compile)
    def compile_whole(*args):
        with signals_deferred(CTRL_C_NOTICE):
            if dispatcher is None:
                return compile(*args)
            with _optimised_at(dispatcher):
                return compile(*args)
    compile_whole.whole = True
    return compile_whole


def guard_cache(dispatcher):
    """Make ``dispatcher``'s disk cache (if it has one) treat a damaged entry as a miss
    and a failed write as uncached (see the module docstring), and its compiles hold a
    Ctrl-C back until they are done (_compiled_whole). Idempotent; anything that is not a
    Numba dispatcher is left alone."""
    if not isinstance(dispatcher, Dispatcher):
        return
    if not getattr(dispatcher.compile, "whole", False):
        # Numba's own calls go through the instance's attribute (self.compile), the
        # compile for a call's argument types and the one a caller's typing asks for alike
        dispatcher.compile = _compiled_whole(dispatcher.compile, dispatcher)
    _guard(getattr(dispatcher, "_cache", None))


def guarded_cfunc(signature, body, cache):
    """``numba.cfunc(signature, cache=cache)(body)``, its disk cache guarded as
    ``guard_cache`` guards a kernel's: ``cfunc`` compiles (or loads) as it decorates,
    before a guard could be set on what it returns."""
    from numba.core.ccallback import CFunc
    callback = CFunc(body, sigutils.normalize_signature(signature), locals={}, options={})
    if cache:
        callback.enable_caching()
        _guard(callback._cache)
    _compiled_whole(callback.compile)()
    return callback


def _guard(cache):
    if not isinstance(cache, caching.Cache):
        return
    cache_file = getattr(cache, "_cache_file", None)
    if type(cache_file) is not caching.IndexDataCacheFile:
        return  # done already (or a cache file this code does not know)
    cache_file.__class__ = _CheckedCacheFile
    cache._load_overload = functools.partial(_load_overload, cache._load_overload, cache)
    cache.save_overload = functools.partial(_save_overload, cache.save_overload, cache)
    _say_if_not_in_the_folder_asked_for(cache.cache_path)


def _say_if_not_in_the_folder_asked_for(path):
    """One line when NUMBA_CACHE_DIR is set but the cache is elsewhere: Numba passes over a
    folder it cannot write (a read-only mount, a typo under /proc) to the next it can,
    the package's own __pycache__ say, without a word."""
    asked = config.CACHE_DIR
    if not asked:
        return
    asked = os.path.abspath(asked)
    if os.path.commonpath([asked, os.path.abspath(path)]) != asked:
        _notice_once(("elsewhere", asked), f"NUMBA_CACHE_DIR={asked} cannot be written, so "
                     f"Numba keeps the kernels' cache where it can: {path}")


def guard_caches():
    """``guard_cache`` on every Numba dispatcher of the kernel modules imported so far."""
    package = __name__.rpartition(".")[0]
    for name, module in list(sys.modules.items()):
        if module is not None and name.startswith(f"{package}.numba_"):
            for value in list(vars(module).values()):
                guard_cache(value)


def _symbol(module, name, argtypes):
    key = hashlib.sha1(repr(argtypes).encode()).hexdigest()[:16]
    return f"fastmlp.{module}.{name}.{key}"


def in_disk_cache(dispatcher, argtypes):
    """Whether ``dispatcher``'s disk cache holds an entry for ``argtypes`` (as compile_for
    is given them), valid for the source as it is: compile_for would then load it, not
    compile (an entry found damaged only then compiles after all). False where the
    dispatcher has no disk cache. Reads the kernel's index, a few hundred bytes."""
    cache = getattr(dispatcher, "_cache", None)
    if not isinstance(cache, caching.Cache) or not getattr(cache, "_enabled", False):
        return False
    guard_cache(dispatcher)   # (a damaged index is a miss, said once)
    key = cache._index_key(tuple(argtypes), dispatcher.targetctx.codegen())
    return key in cache._cache_file._load_index()


def compile_for(dispatcher, argtypes):
    """``dispatcher.compile(argtypes)``, its disk cache and compiles guarded (guard_cache)."""
    guard_cache(dispatcher)
    return dispatcher.compile(argtypes)


def bind(module, name, argtypes):
    """Compile (or load) ``module.name`` for ``argtypes`` and bind its symbol; its
    compile result. Also the cache-load hook: a module-level function, so it pickles."""
    dispatcher = getattr(importlib.import_module(module), name)
    compile_for(dispatcher, argtypes)
    cres = dispatcher.overloads[argtypes]
    llvm.add_symbol(_symbol(module, name, argtypes),
                    cres.library.get_pointer_to_function(cres.fndesc.mangled_name))
    return cres


def _argtype(t, read_only):
    """The type ``dispatcher`` is compiled for, for an argument typed ``t`` at a call."""
    t = types.unliteral(t)
    if read_only and isinstance(t, types.Array) and t.mutable:
        t = t.copy(readonly=True)  # a writeable array passes where a read-only one is typed
    return t


def separate(dispatcher, read_only=False):
    """``dispatcher`` to be called from @njit code without compiling its code into
    the caller's (see the module docstring). Call it with the arguments of
    ``dispatcher``, positionally. ``read_only``: the kernel writes none of its array
    arguments; it is compiled for them typed read-only, so writeable and read-only
    arrays share one compile (each signature is a compile of its own)."""
    guard_cache(dispatcher)
    module = dispatcher.py_func.__module__
    # the module attribute that holds it (bind looks it up again on a cache load)
    name = next(k for k, v in vars(importlib.import_module(module)).items() if v is dispatcher)

    def typer(*args):
        argtypes = tuple(_argtype(a, read_only) for a in args)
        cres = bind(module, name, argtypes)
        fndesc = copy.copy(cres.fndesc)
        fndesc.mangled_name = _symbol(module, name, argtypes)
        reload = functools.partial(bind, module, name, argtypes)

        def codegen(context, builder, signature, llargs):
            context.active_code_library._reload_init.add(reload)
            cast = [context.cast(builder, v, t, u)
                    for v, t, u in zip(llargs, signature.args, argtypes)]
            return context.call_internal(builder, fndesc, cres.signature, cast)

        return cres.signature.return_type(*args), codegen

    # @intrinsic needs the parameters named: the callee's, forwarded to typer
    params = ", ".join(inspect.signature(dispatcher.py_func).parameters)
    scope = {"typer": typer}
    exec(f"def call(typingctx, {params}):\n    return typer({params})\n", scope)
    call = intrinsic(scope["call"])
    call.__name__ = call.__qualname__ = f"separate_{name}"
    return call


# "module.function" of each Late's dispatcher -> that Late: how another process is told
# which to compile (fastmlp.warmup.compile_aside)
LATE = {}


class Late:
    """``dispatcher`` called from @njit code through an address known only at run time,
    so that the caller's compile neither compiles nor links it. ``call(address, *args)``
    (an intrinsic) runs the code at ``address``: :meth:`address` of ``(dtype, code)``,
    ``dispatcher`` compiled for ``argtypes_of(dtype)`` with argument ``literal`` typed
    as the literal integer ``code`` (an integer literal passes as an int64). So a kernel
    specialised on a code (an activation's) compiles for the codes a network has, when
    a network first asks for them, and its caller, which passes that argument as an
    int64, serves every code. The call is Numba's own, as :func:`separate`'s (return
    value ``restype``, status, exceptions). ``literal`` None: no code, one compile per
    dtype, when first asked for (``code`` 0). ``args`` must have exactly the types
    ``argtypes_of(dtype)`` names, ``dtype`` the first argument's (an array): else a
    typing error naming both, as code compiled for other types would be called wrongly.
    """

    def __init__(self, dispatcher, argtypes_of, literal, restype):
        guard_cache(dispatcher)
        self.dispatcher, self.argtypes_of = dispatcher, argtypes_of
        self.literal, self.restype = literal, restype
        self._addresses = {}
        self._lock = threading.Lock()
        self.call = self._intrinsic()
        self.name = f"{dispatcher.py_func.__module__}.{dispatcher.py_func.__name__}"
        LATE[self.name] = self

    def argtypes(self, dtype, code):
        """The types ``dispatcher`` is compiled for, for ``code`` in ``dtype``."""
        argtypes = list(self.argtypes_of(dtype))
        if self.literal is not None:
            argtypes[self.literal] = types.IntegerLiteral(int(code))
        return tuple(argtypes)

    def ready(self, dtype, code):
        """Whether :meth:`address` of ``(dtype, code)`` is known (nothing to compile)."""
        return (dtype, int(code)) in self._addresses

    def cached(self, dtype, code):
        """Whether :meth:`address` of ``(dtype, code)`` would load it from the disk cache
        (in_disk_cache), not compile it."""
        return in_disk_cache(self.dispatcher, self.argtypes(dtype, code))

    def known(self, dtype, code):
        """:meth:`address` of ``(dtype, code)`` if it is known, else 0 (compiling nothing)."""
        return self._addresses.get((dtype, int(code)), 0)

    def address(self, dtype, code):
        """The address of ``dispatcher``'s code for ``code`` and the dtype ``dtype`` (a
        Numba type), compiled or loaded on the first request (compile_for), then kept:
        the code lives as long as the dispatcher, for the process."""
        key = (dtype, int(code))
        with self._lock:   # one compile per key, however many threads ask
            if key not in self._addresses:
                argtypes = self.argtypes(dtype, code)
                compile_for(self.dispatcher, argtypes)
                cres = self.dispatcher.overloads[argtypes]
                if cres.signature.return_type != self.restype:
                    raise TypeError(f"{self.dispatcher.py_func.__name__} returns "
                                    f"{cres.signature.return_type}, not {self.restype}")
                self._addresses[key] = cres.library.get_pointer_to_function(
                    cres.fndesc.mangled_name)
            return self._addresses[key]

    def _intrinsic(self):
        name, restype = self.dispatcher.py_func.__name__, self.restype

        def typer(address, *args):
            want = tuple(self.argtypes_of(args[0].dtype))
            # a writeable array passes where a read-only one is declared (one data model)
            argtypes = tuple(_argtype(a, isinstance(w, types.Array) and not w.mutable)
                             for a, w in zip(args, want))
            if argtypes != want:
                raise TypingError(f"{name} is called by address with {argtypes}, but its "
                                  f"addresses are of {want}")

            def codegen(context, builder, signature, llargs):
                at = context.cast(builder, llargs[0], signature.args[0], types.int64)
                fnty = context.call_conv.get_function_type(restype, argtypes)
                fn = builder.inttoptr(at, fnty.as_pointer())
                status, res = context.call_conv.call_function(builder, fn, restype,
                                                              argtypes, list(llargs[1:]))
                with cgutils.if_unlikely(builder, status.is_error):
                    context.call_conv.return_status_propagate(builder, status)
                return res

            return restype(address, *argtypes), codegen

        params = ", ".join(inspect.signature(self.dispatcher.py_func).parameters)
        scope = {"typer": typer}
        exec(f"def call(typingctx, address, {params}):\n"
             f"    return typer(address, {params})\n", scope)
        call = intrinsic(scope["call"])
        call.__name__ = call.__qualname__ = f"late_{name}"
        return call

"""Numba's first compile, made visible and movable.

The Numba kernels compile on first use per dtype and are then cached on disk, so later
processes load them in a fraction of a second. Each of a numba model's three entry
points compiles (or loads) at its first call, with the kernels it links
(kernels/numba_link.py): ``predict`` at the first predict, ``run`` (every training call
and ``gradients``) at the first of those, ``evaluate`` at the first evaluate; one line goes
to stderr when one takes more than a second (:func:`compiling`). So a model that only
predicts never waits for the training kernels (a third of the time, against all of it
when a model's construction compiled everything). ``python -m fastmlp warmup`` compiles
them all ahead of time for both dtypes (:func:`numba_kernels`), side by side in processes
of their own where there are CPUs for them (:func:`start_elsewhere`): Numba compiles on
one core.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time

import numpy as np

from ._cgroup import cpu_limit
from ._signals import raise_if_signalled, say
from .network import Dense
from .optimizers import Adam

_ready = set()          # dtypes whose kernels this process has compiled or loaded
_lock = threading.RLock()  # the tiny model built while holding it asks again
_quiet = [0]   # numba_kernels runs (they say it once, or not at all): compiling says nothing
NOTICE_AFTER_S = 1.0

# what a user knows an entry point as, for the notice
_CALLS = {"run": "fit, train_on_batch and gradients", "predict": "predict",
          "evaluate": "evaluate", "layers": "this network's layers",
          "guard": "train_on_batch", "norms": "gradient norms",
          "update": "the optimiser's update"}


def compiling(kernel, dtype):
    """A numba model's first call of entry point ``kernel`` (its name) for ``dtype`` (its
    name) compiling or loading it: one line on stderr once that has taken NOTICE_AFTER_S,
    unless :func:`numba_kernels` is running (it says so itself, or is asked not to)."""
    if _quiet[0]:
        return contextlib.nullcontext()
    return _noticed(dtype, _CALLS.get(kernel, kernel))


@contextlib.contextmanager
def _noticed(dtype, calls=None):
    """The block, with :func:`_notice` printed once it has taken NOTICE_AFTER_S."""
    timer = threading.Timer(NOTICE_AFTER_S, _notice, args=(dtype, calls))
    timer.daemon = True
    try:   # (started inside: a signal as start() returned left it to print, nothing compiling)
        try:
            timer.start()
        except RuntimeError:   # no thread to be had (a process limit): no notice, that is all
            pass
        yield
    finally:
        timer.cancel()


def numba_kernels(dtype, notice=True, model_class=None, complete=False):
    """Compile or load the Numba kernels of fit, predict, gradients and train_on_batch for
    ``dtype``; seconds it took (0 if done before). ``model_class``: fastmlp.Model (passed
    in, so that this module does not import it). ``complete``: evaluate's kernel too,
    as ``fastmlp warmup`` wants everything, and all of it in the disk cache: ValueError,
    naming the folder and the error, where Numba could not write a kernel there (a full
    disk) in this process, so that the next process would compile it again (the kernels
    work here all the same)."""
    dtype = np.dtype(dtype)
    seconds = _ready_kernels(dtype, notice, model_class, complete)
    if complete:
        from .kernels.numba_link import CACHE_WRITE_FAILURES
        for folder, why in list(CACHE_WRITE_FAILURES.items())[:1]:  # the first, if any
            raise ValueError(f"the kernels compiled, but Numba could not write its cache in "
                             f"{folder} ({why}), so the next process compiles them again: "
                             "free space there or set NUMBA_CACHE_DIR to a writable folder")
    return seconds


def _ready_kernels(dtype, notice, model_class, complete):
    with _lock:
        if dtype in _ready:
            return 0.0
        _ready.add(dtype)  # first, so the tiny model built below does not recurse here
        start = time.perf_counter()
        _quiet[0] += 1
        try:
            with _noticed(dtype) if notice else contextlib.nullcontext():
                _exercise(dtype, model_class, complete)
        except BaseException:
            _ready.discard(dtype)
            raise
        finally:
            _quiet[0] -= 1
        return time.perf_counter() - start


def _notice(dtype, calls=None):
    # (it shows after a second: a first use compiling, or a cache load on a busy machine)
    name = np.dtype(dtype).name
    which = f" used by {calls}" if calls else ""
    say(f"fastmlp: loading or compiling the Numba kernels for {name}{which} (compiling, "
        "once per environment, takes a few seconds; the disk cache then loads them; "
        "`python -m fastmlp warmup` compiles ahead of time)...")


def _exercise(dtype, Model, complete=False):
    """Every call a Model makes into the Numba kernels (but evaluate unless ``complete``),
    once, with the argument types it uses."""
    m = Model([Dense(3, "prelu"), Dense(2, "softmax")], input_dim=2, loss="cross_entropy",
              optimizer=Adam(), backend="numba", dtype=dtype.name, seed=0)
    X = np.zeros((4, 2), dtype=dtype)
    T = np.tile(np.eye(2, dtype=dtype), (2, 1))
    m.predict(X)
    m.gradients(X, T)
    m.train_on_batch(X, T)
    m.fit(X, T, epochs=1, batch_size=2)
    m.fit(X, T, epochs=1, batch_size=2, gradient_norms=True, shuffle=False)
    if complete:
        m.evaluate(X, T)
    # every activation's passes, every loss and every optimiser's update, which compile
    # per code for the networks that use them (numba_train.arm)
    from .activations import BY_CODE
    from .kernels.numba_activations import BACKWARD, FORWARD, numba_dtype
    from .kernels.numba_layers import LOSS
    from .kernels.numba_train import UPDATES
    from .losses import BY_CODE as LOSS_CODES
    for late, codes in ((FORWARD, BY_CODE), (BACKWARD, BY_CODE), (LOSS, LOSS_CODES),
                        *((update, [0]) for update in UPDATES.values())):
        for code in sorted(codes):
            late.address(numba_dtype(dtype), code)


def usable_cpus():
    """The CPUs this process may run on (its affinity where the system says, else all),
    fewer where its cgroup allows it less CPU time (a container's `--cpus`): the whole
    CPUs of that quota, at least one."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = cpu_limit()
    return max(1, min(cpus, int(quota))) if quota is not None else cpus


def _busy(cpus):
    """Whether the machine's last minute kept ``cpus`` CPUs busy or more (its load
    average; False where the system does not say)."""
    try:
        return os.getloadavg()[0] >= cpus
    except (AttributeError, OSError):
        return False


# The warmup of one dtype in another process (for a JSON job, compile_job's kernels). It
# imports fastmlp by the import path of the process that started it (`python -I`: nothing
# of the working folder's, then that path: _import_path), and stops, saying why (exit 1),
# where that is not this fastmlp; a working folder holding another copy made `-c`'s import
# fail with a traceback. It stops as at a Ctrl-C (once the kernel compiling is done: no
# file torn) when its lifeline, a pipe whose other end the process that started it holds,
# closes: that process has ended, interrupted or killed.
_ELSEWHERE = """import json, os, signal, sys, threading
signal.signal(signal.SIGINT, signal.default_int_handler)   # (its starter's may ignore it,
if hasattr(signal, "pthread_sigmask"):                     # or block it: both inherited)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
lifeline = int(sys.argv[4])
def orphaned():
    while os.read(lifeline, 1):
        pass
    os.kill(os.getpid(), signal.SIGINT)
if lifeline >= 0:
    threading.Thread(target=orphaned, daemon=True).start()
sys.path[:] = json.loads(sys.argv[5])
try:
    import fastmlp, fastmlp.kernels
    same = [fastmlp.__file__, fastmlp.kernels.__file__] == sys.argv[2:4]
except Exception as exc:
    sys.exit(f"fastmlp: cannot import fastmlp there ({type(exc).__name__}: {exc})")
if not same:
    sys.exit(f"fastmlp: that Python imports another fastmlp ({fastmlp.__file__})")
if sys.argv[1].startswith("["):
    from fastmlp.warmup import compile_job
    sys.exit(compile_job(sys.argv[1]))
from fastmlp.cli import main
sys.exit(main(["warmup", "--dtype", sys.argv[1], "--jobs", "1"]))
"""


def compile_job(job):
    """What a process of :func:`compile_aside` runs, its exit status: the kernels of
    ``job`` (JSON: [dtype, [[Late.name, code], ...]]) compiled into the disk cache."""
    dtype, kernels = json.loads(job)
    from .kernels import numba_train  # noqa: F401 (it imports every module naming a Late)
    from .kernels.numba_activations import numba_dtype
    from .kernels.numba_link import LATE
    nb = numba_dtype(np.dtype(dtype))
    for name, code in kernels:
        LATE[name].address(nb, code)
    return 0


# How long an interrupted warmup waits for the process it started to stop (its kernel's
# compile to end) before killing it
STOP_WAIT_S = 15.0


class Elsewhere:
    """`fastmlp warmup` of one dtype running in a process of its own (start_elsewhere):
    ``process``, a subprocess.Popen whose output is captured, and ``lifeline``, the end
    of its lifeline this process holds (None: it has none)."""

    def __init__(self, dtype, process, lifeline=None):
        self.dtype, self.process, self.lifeline = dtype, process, lifeline

    def finish(self):
        """(seconds it said it took, whether it failed), once it has ended; what it wrote
        to stderr is written to this one's, and a failure says so in a line of its own
        (the caller then compiles the dtype itself)."""
        said, err = self.process.communicate()
        self._let_go()
        if err:
            say(err.rstrip("\n"))
        found = re.search(r"ready in ([0-9.]+) s", said)
        if self.process.returncode == 0 and found:
            return float(found.group(1)), False
        say(f"fastmlp: the process compiling the {self.dtype} kernels ended with status "
            f"{self.process.returncode}; compiling them here")
        return None, True

    def join(self, timeout):
        """Whether it ended well, waiting for it at most ``timeout`` s (then it is killed:
        the caller compiles what it was compiling). A failure says so in a line of its
        own, after what it wrote to stderr. (Ended well, what it said is not repeated: a
        notice of the cache, say, this process gives itself where it applies here.)
        Interrupted while waiting, it is killed."""
        try:
            _, err = self.process.communicate(timeout=timeout)
            ended = f"ended with status {self.process.returncode}"
        except subprocess.TimeoutExpired:
            self.kill()
            err, ended = "", f"had not ended after {timeout:g} s"
        except BaseException:   # a Ctrl-C
            self.kill()
            raise
        finally:
            self._let_go()
        if self.process.returncode == 0:
            return True
        if err:
            say(err.rstrip("\n"))
        say(f"fastmlp: the process compiling {self.dtype} kernels beside this one {ended}; "
            "compiling them here")
        return False

    def kill(self):
        """Kill it now if it still runs, and collect it (a kernel it was saving is lost,
        not torn: Numba writes each cache file whole, then renames it)."""
        self._let_go()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()

    def stop(self):
        """Stop it if it still runs (this warmup was interrupted): as at a Ctrl-C, once
        its kernel has compiled, or killed after STOP_WAIT_S."""
        self._let_go()
        if self.process.poll() is None:
            try:
                self.process.wait(timeout=STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __del__(self):   # (dropped unjoined: a signal between its start and the caller's try)
        try:
            self._let_go()
        except Exception:   # (at exit, os may be gone)
            pass

    def _let_go(self):
        if self.lifeline is not None:
            os.close(self.lifeline)
            self.lifeline = None


def _lifeline():
    """(read end, write end) of a new pipe, both descriptors 3 or above, or (-1, None)
    where there is none (not POSIX, or no descriptor left). With stdout or stderr closed,
    os.pipe handed out 1 or 2, which the child's own stdout or stderr pipe then replaced:
    its lifeline gone (a traceback, and it outlived a killed warmup)."""
    if os.name != "posix":
        return -1, None
    import fcntl
    try:
        low = os.pipe()
    except OSError:
        return -1, None
    high = []
    try:
        for end in low:
            high.append(fcntl.fcntl(end, fcntl.F_DUPFD_CLOEXEC, 3))
    except OSError:
        for end in high:
            os.close(end)
        return -1, None
    finally:
        for end in low:
            os.close(end)
    return high[0], high[1]


def _python():
    """This process's Python interpreter, to run another, or None: no executable known,
    or one that is not Python (a frozen app, an application server embedding Python,
    whose own options `-I -c` are not Python's)."""
    if getattr(sys, "frozen", False) or not sys.executable:
        return None
    name = os.path.basename(sys.executable).lower()
    return sys.executable if re.fullmatch(r"python[0-9.]*[a-z]?(\.exe)?", name) else None


def _import_path():
    """The import path for a process of :func:`start_elsewhere`: this one's absolute
    folders (a pathlib.Path or bytes entry as text; other entries dropped, as imports
    skip them), then the folders this process's fastmlp, NumPy and Numba came from. A
    relative entry ('' for `python -c` or a REPL) names the working folder, which may
    have changed since those were imported: there the other process ran a numpy.py of
    the new folder."""
    found = []
    for entry in sys.path:
        try:
            entry = os.fsdecode(entry)
        except Exception as exc:   # (not a path; or its __fspath__ failed)
            raise_if_signalled(exc)
            continue
        if os.path.isabs(entry):
            found.append(entry)
    for name in ("fastmlp", "numpy", "numba", "llvmlite"):
        file = getattr(sys.modules.get(name), "__file__", None)
        if file:
            found.append(os.path.dirname(os.path.dirname(os.path.abspath(file))))
    return list(dict.fromkeys(found))


def _environment():
    """The other process's environment: this one's, with the Numba cache folder this
    process's Numba read at its import (NUMBA_CACHE_DIR set or unset since leaves this
    one's kernels where they were: the other's would be in a folder this one never
    reads)."""
    from numba.core import config
    environment = dict(os.environ)
    environment.pop("NUMBA_CACHE_DIR", None)
    if config.CACHE_DIR:
        environment["NUMBA_CACHE_DIR"] = config.CACHE_DIR
    return environment


def start_elsewhere(job, what=None, own_session=False):
    """An :class:`Elsewhere` running ``job`` in a process of this Python (a dtype's name:
    `fastmlp warmup` of that dtype alone; JSON: :func:`compile_job`), or None where none
    starts (no Python to run, say when embedded). ``what``: the dtype it is said to compile
    (default ``job``). ``own_session``: in a session of its own (POSIX), so that a Ctrl-C
    at the terminal reaches only this process, which then stops it."""
    from . import kernels
    import fastmlp
    python = _python()
    if python is None:
        return None
    theirs, ours = _lifeline()
    try:
        process = subprocess.Popen(
            [python, "-I", *["-O"] * sys.flags.optimize, "-c", _ELSEWHERE, job,
             fastmlp.__file__, kernels.__file__, str(theirs), json.dumps(_import_path())],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, errors="backslashreplace",
            pass_fds=(theirs,) if ours is not None else (), env=_environment(),
            start_new_session=own_session and os.name == "posix")
    except OSError:
        process = None
    except BaseException:   # a Ctrl-C as it started: its lifeline's end closed, it stops
        if ours is not None:
            os.close(ours)
        raise
    finally:
        if ours is not None:
            os.close(theirs)   # (the child's copy is its own)
    if process is None:
        if ours is not None:
            os.close(ours)
        return None
    return Elsewhere(what or job, process, ours)


# How long a first call (training, predict, evaluate) waits for the process compiling
# its kernels beside it (compile_aside), once its own compile is done, before compiling
# them itself
ASIDE_WAIT_S = 60.0
# compile_aside's switch: automatic, never, or whatever the CPUs and the load
ASIDE_ENV, ASIDE_CHOICES = "FASTMLP_COMPILE_ASIDE", ("auto", "0", "1")


def aside_switch():
    """``FASTMLP_COMPILE_ASIDE``: "auto" (the default; also when empty), "0" (never) or "1"
    (whatever the CPUs and the load); anything else is a ValueError."""
    value = os.environ.get(ASIDE_ENV, "auto").strip().lower() or "auto"
    if value not in ASIDE_CHOICES:
        raise ValueError(f"{ASIDE_ENV} must be one of {ASIDE_CHOICES}, got "
                         f"{os.environ[ASIDE_ENV]!r}")
    return value


def compile_aside(dtype, kernels):
    """An :class:`Elsewhere` compiling ``kernels`` ([(Late.name, code)]:
    numba_train.to_compile) for ``dtype`` into the disk cache, in a process of its own,
    while this one compiles an entry point (the training kernel, predict or evaluate:
    Numba compiles on one core, one compile at a time per process); this process then
    loads them (join them first). The first fit of a new user's 3-4-2 net took 5.6 s,
    and 4.3 s so. None where it does not start:
    nothing to compile, no disk cache to pass them through, MPI started (MPI libraries
    warn of processes started under them), no Python to run, :func:`numba_kernels`
    running (`fastmlp warmup` runs its dtypes side by side), FASTMLP_COMPILE_ASIDE=0, or,
    unless FASTMLP_COMPILE_ASIDE=1, fewer than two CPUs to use (affinity, cgroup quota)
    or a load average as high as their number."""
    from .kernels import numba_math
    switch = aside_switch()
    if (not kernels or _quiet[0] or not numba_math.CACHE or switch == "0"
            or "mpi4py.MPI" in sys.modules):
        return None
    if switch == "auto":   # (1: whatever the CPUs and the load)
        cpus = usable_cpus()
        if cpus < 2 or _busy(cpus):
            return None
    name = np.dtype(dtype).name
    job = json.dumps([name, [list(k) for k in dict.fromkeys(kernels)]])
    return start_elsewhere(job, name, own_session=True)

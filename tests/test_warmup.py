"""Numba's first compile: a one-line notice when it is slow, and `fastmlp warmup`."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import cli, warmup

needs_numba = pytest.mark.skipif("numba" not in fm.available_backends(),
                                 reason="the numba backend does not import here")


def test_slow_first_compile_prints_one_line(monkeypatch, capsys):
    monkeypatch.setattr(warmup, "_ready", set())
    monkeypatch.setattr(warmup, "NOTICE_AFTER_S", 0.01)
    monkeypatch.setattr(warmup, "_exercise", lambda dtype, cls, complete: time.sleep(0.3))
    seconds = warmup.numba_kernels("float32")
    err = capsys.readouterr().err
    assert seconds >= 0.3
    assert err.count("\n") == 1 and "loading or compiling the Numba kernels for float32" in err
    assert warmup.numba_kernels("float32") == 0.0  # once per process


def test_fast_load_prints_nothing(monkeypatch, capsys):
    monkeypatch.setattr(warmup, "_ready", set())
    monkeypatch.setattr(warmup, "_exercise", lambda dtype, cls, complete: None)
    warmup.numba_kernels("float64")
    assert capsys.readouterr().err == ""


def test_a_failed_warmup_is_retried(monkeypatch):
    monkeypatch.setattr(warmup, "_ready", set())

    def boom(dtype, cls, complete):
        raise RuntimeError("no compiler")
    monkeypatch.setattr(warmup, "_exercise", boom)
    with pytest.raises(RuntimeError):
        warmup.numba_kernels("float32", notice=False)
    assert np.dtype("float32") not in warmup._ready


@needs_numba
def test_warmup_command_readies_both_dtypes(capsys):
    assert cli.main(["warmup"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == ["numba kernels for float32",
                                                     "numba kernels for float64"]
    assert {np.dtype("float32"), np.dtype("float64")} <= warmup._ready



# --- `fastmlp warmup`'s dtypes side by side, each in a process of its own ----------------

class _Ended:
    """A stand-in for the process of warmup.start_elsewhere: ended, with its output."""

    def __init__(self, status, out="", err=""):
        self.returncode, self._said = status, (out, err)

    def communicate(self):
        return self._said

    def poll(self):
        return self.returncode


def _ended(dtype, status, out="", err=""):
    return warmup.Elsewhere(dtype, _Ended(status, out, err))


def _both_ready(monkeypatch):
    """Both dtypes marked compiled in this process, so that a warmup here compiles nothing."""
    monkeypatch.setattr(warmup, "_ready", {np.dtype("float32"), np.dtype("float64")})


@needs_numba
def test_warmup_runs_the_second_dtype_elsewhere_and_loads_it(monkeypatch, capsys):
    _both_ready(monkeypatch)
    started = []

    def start(dtype):
        started.append(dtype)
        return _ended(dtype, 0, f"numba kernels for {dtype}: ready in 12.5 s\n",
                      "a notice\n")
    monkeypatch.setattr(warmup, "start_elsewhere", start)
    assert cli.main(["warmup", "--jobs", "2"]) == 0
    captured = capsys.readouterr()
    assert started == ["float64"]
    assert captured.out.splitlines() == ["numba kernels for float32: ready in 0.0 s",
                                         "numba kernels for float64: ready in 12.5 s"]
    assert captured.err == "a notice\n"   # (the other process's stderr, passed on)


@needs_numba
def test_a_failed_warmup_elsewhere_compiles_here_and_says_so(monkeypatch, capsys):
    _both_ready(monkeypatch)
    monkeypatch.setattr(warmup, "start_elsewhere", lambda dtype: _ended(dtype, 1, "", "boom\n"))
    assert cli.main(["warmup", "--jobs", "2"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[1] == "numba kernels for float64: ready in 0.0 s"
    assert "boom" in captured.err
    assert ("the process compiling the float64 kernels ended with status 1; compiling them "
            "here") in captured.err


@needs_numba
def test_warmup_of_one_dtype_and_one_job_starts_no_process(monkeypatch, capsys):
    _both_ready(monkeypatch)
    monkeypatch.setattr(warmup, "start_elsewhere", lambda dtype: pytest.fail("started"))
    assert cli.main(["warmup", "--dtype", "float64"]) == 0
    assert cli.main(["warmup", "--jobs", "1"]) == 0
    assert [line.split(":")[0] for line in capsys.readouterr().out.splitlines()] == [
        "numba kernels for float64", "numba kernels for float32", "numba kernels for float64"]


@pytest.mark.parametrize("argv, wording", [
    (["--jobs", "0"], "a positive integer"),
    (["--dtype", "int8"], "unknown dtype 'int8'; choose one of")])
def test_warmup_refuses_bad_options(argv, wording, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["warmup", *argv])
    assert exited.value.code == 2 and wording in capsys.readouterr().err


@needs_numba
def test_the_process_elsewhere_refuses_another_fastmlp():
    done = subprocess.run([sys.executable, "-I", "-c", warmup._ELSEWHERE, "float32",
                           "/elsewhere/a", "/elsewhere/b", "-1", json.dumps(sys.path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "imports another fastmlp" in done.stderr


@needs_numba
def test_warmup_elsewhere_imports_this_fastmlp_whatever_the_working_folder(tmp_path,
                                                                             monkeypatch):
    """A working folder holding another copy of fastmlp (its -c put that folder first)."""
    (tmp_path / "fastmlp").mkdir()
    (tmp_path / "fastmlp" / "__init__.py").write_text("raise ImportError('the other copy')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    child = warmup.start_elsewhere("float64")
    try:
        seconds, failed = child.finish()
    finally:
        child.stop()
    assert not failed and seconds >= 0


@needs_numba
def test_a_warmup_elsewhere_stops_when_asked(tmp_path, monkeypatch):
    """stop() (the warmup that started it interrupted): it stops as at a Ctrl-C, once the
    kernel it is compiling is done, well before its compile would have ended."""
    from numba.core import config   # (the folder this process's Numba read is passed on)
    monkeypatch.setattr(config, "CACHE_DIR", str(tmp_path))   # (empty: it compiles, 20 s)
    child = warmup.start_elsewhere("float64")
    time.sleep(3)
    start = time.perf_counter()
    child.stop()
    assert time.perf_counter() - start < warmup.STOP_WAIT_S
    assert child.process.returncode == 130   # `fastmlp warmup: interrupted`



@needs_numba
@pytest.mark.parametrize("closed", [1, 2], ids=["stdout closed", "stderr closed"])
def test_warmup_side_by_side_with_stdout_or_stderr_closed(closed):
    """os.pipe handed the lifeline descriptor 1 or 2, which the other process's own stdout
    or stderr pipe then replaced: a traceback (stdout closed), or a crash with the second
    dtype never reported (stderr closed: sys.stderr is None)."""
    done = subprocess.run([sys.executable, "-m", "fastmlp", "warmup", "--jobs", "2"],
                          text=True,
                          stdout=None if closed == 1 else subprocess.PIPE,
                          stderr=subprocess.PIPE if closed == 1 else None,
                          preexec_fn=lambda: os.close(closed), timeout=900)
    assert done.returncode == 0
    if closed == 1:
        assert "Traceback" not in done.stderr and "Bad file descriptor" not in done.stderr, \
            done.stderr
    else:
        assert [line.split(":")[0] for line in done.stdout.splitlines()] == [
            "numba kernels for float32", "numba kernels for float64"]

_STARTS_ONE_AND_DIES = """
import os, sys
from fastmlp import warmup
child = warmup.start_elsewhere("float64")
print(child.process.pid, flush=True)
os._exit(1)   # as if killed: no finally runs
"""


def _running(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] != "Z"
    except OSError:
        return False


@needs_numba
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc to watch the process")
def test_a_warmup_elsewhere_stops_when_its_starter_dies(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", _STARTS_ONE_AND_DIES], env=env,
                          capture_output=True, text=True, timeout=300)
    pid = int(done.stdout.split()[0])
    deadline = time.monotonic() + 60
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _running(pid)


@needs_numba
def test_warmup_side_by_side_fills_the_cache_for_a_later_process(tmp_path):
    """Two processes compiling into one empty cache at once (their saves meet in the same
    index files: numba_link._CheckedCacheFile.save), then later processes load every
    kernel, both dtypes, compiling none."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "fastmlp", "warmup", "--jobs", "2"], env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "compiling them here" not in done.stderr
    for role in ("loaded", "loaded64"):
        assert _fresh_process(tmp_path, role)[1] == "0"


# Run in fresh processes with an empty cache: the first compiles the kernels, the second
# loads them. It prints the results of one model, the cache misses (kernels compiled, not
# loaded) and, for each entry point, which fastmlp kernels its compiled module defines.
_FRESH_PROCESS = """
import re, sys
import numpy as np
import fastmlp as fm
from fastmlp import warmup
from fastmlp.kernels import numba_activations, numba_layers, numba_train
from numba.core.dispatcher import Dispatcher
dtype = "float64" if sys.argv[1].endswith("64") else "float32"
warmup.numba_kernels(dtype, notice=False, model_class=fm.Model)
m = fm.Model([fm.Dense(5, "tanh"), fm.Dense(3, "softmax")], input_dim=4,
             loss="cross_entropy", optimizer=fm.Adam(), backend="numba", seed=1, dtype=dtype)
X = np.random.default_rng(0).random((20, 4), dtype=dtype)
T = np.eye(3, dtype=dtype)[np.arange(20) % 3]
m.fit(X, T, epochs=2, batch_size=8)
m.train_on_batch(X, T)
print(repr(np.concatenate([m.predict(X).ravel(), [m.evaluate(X, T)]]).tolist()))
kernels = [d for mod in (numba_activations, numba_layers, numba_train) for d in vars(mod).values()
           if isinstance(d, Dispatcher) and d.py_func.__module__ == mod.__name__]
print(sum(sum(d.stats.cache_misses.values()) for d in kernels))
if sys.argv[1] == "compiled":
    for d in (numba_train.run, numba_train.predict):
        names = set()
        for ir in d.inspect_llvm().values():
            names |= set(re.findall(r"^define .*@\\"?_ZN7fastmlp7kernels\\d+(\\w+?)B", ir, re.M))
        print(d.__name__, *sorted(names))
"""


def _fresh_process(cache_dir, role):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    done = subprocess.run([sys.executable, "-c", _FRESH_PROCESS, role], env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.fixture(scope="module")
def compiled_from_empty(tmp_path_factory):
    """(cache folder, output) of _FRESH_PROCESS "compiled" in an empty cache, which
    compiles every kernel: one such process for the tests comparing with it."""
    folder = tmp_path_factory.mktemp("compiled")
    return folder, _fresh_process(folder, "compiled")


@needs_numba
def test_kernels_compile_once_and_later_processes_load_them(compiled_from_empty):
    cache_dir, compiled = compiled_from_empty
    # each entry point's module holds its own code only: the kernels it calls are linked
    # by name (kernels/numba_link), not compiled into it again
    assert compiled[2:] == ["run numba_train3run", "predict numba_train7predict"]
    assert int(compiled[1]) > 0
    loaded = _fresh_process(cache_dir, "loaded")
    assert loaded[0] == compiled[0]   # the same numbers, bit for bit
    assert loaded[1] == "0"           # nothing compiled again


# Ctrl-C one second into the first compile (an empty cache: it takes several seconds),
# then the same model again in the same process, as a user re-running a notebook cell.
_INTERRUPTED_PROCESS = """
import os, signal, threading
import numpy as np
import fastmlp as fm
X = np.random.default_rng(0).random((20, 4), dtype=np.float32)
T = np.eye(3, dtype=np.float32)[np.arange(20) % 3]
def run():
    m = fm.Model([fm.Dense(5, "tanh"), fm.Dense(3, "softmax")], input_dim=4,
                 loss="cross_entropy", optimizer=fm.Adam(), backend="numba", seed=1)
    m.fit(X, T, epochs=2, batch_size=8)
    m.train_on_batch(X, T)
    return repr(np.concatenate([m.predict(X).ravel(), [m.evaluate(X, T)]]).tolist())
threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
try:
    run()
    print("not interrupted")
except KeyboardInterrupt:
    print("interrupted")
print(run())
"""


@needs_numba
def test_ctrl_c_during_the_first_compile_leaves_nothing_broken(tmp_path, compiled_from_empty):
    """The retry in the interrupted process, and a later process loading what the cache
    then holds, give the numbers of an uninterrupted run, bit for bit."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "interrupted"))
    done = subprocess.run([sys.executable, "-c", _INTERRUPTED_PROCESS], env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    interrupted, retried = done.stdout.splitlines()
    # A Ctrl-C that lands in one of llvmlite's ctypes callbacks can be swallowed there
    # whole (the compile then finishes): rare, and outside fastmlp; both are fine here.
    assert interrupted in ("interrupted", "not interrupted")
    clean = compiled_from_empty[1]   # an empty cache: it compiled it all
    assert retried == clean[0]
    later = _fresh_process(tmp_path / "interrupted", "loaded")
    assert later[0] == clean[0]
    # the retry cached what it compiled; a kernel whose save the Ctrl-C cut short (see
    # test_a_ctrl_c_swallowed_by_llvmlite_is_raised) is compiled again, the rest load
    assert int(later[1]) < int(clean[1])


# An exception raised inside llvmlite's object-cache callback (a ctypes callback: Python
# prints it and goes on; a MemoryError copying the object code, say) leaves the kernel
# compiled but its object code unknown to Numba, whose cache save then raised "no
# compiled object yet" out of the call that compiled it.
_KERNEL = """
from numba import njit

@njit(cache=True)
def add_one(x):
    return x + 1
"""

_CALLBACK_RAISES = """
import sys
from numba.core import codegen
hook = codegen.JITCodeLibrary._object_compiled_hook
armed = False

def failing(cls, ll_module, buf):
    if armed:
        raise MemoryError("raised in llvmlite's object-cache callback")
    return hook(ll_module, buf)

codegen.JITCodeLibrary._object_compiled_hook = classmethod(failing)
sys.path.insert(0, ".")
import kernel
from fastmlp.kernels import numba_link
if sys.argv[1] == "guarded":
    numba_link.guard_cache(kernel.add_one)
armed = sys.argv[2] == "armed"
try:
    print(kernel.add_one(41))
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}")
print(sorted(numba_link.CACHE_WRITE_FAILURES))
"""


@needs_numba
def test_an_error_swallowed_by_llvmlites_callback_leaves_the_kernel_working_uncached(tmp_path):
    (tmp_path / "kernel.py").write_text(_KERNEL)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))

    def run(*argv):
        done = subprocess.run([sys.executable, "-c", _CALLBACK_RAISES, *argv], env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=300,
                              check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines(), done.stderr

    out, _ = run("unguarded", "armed")     # Numba alone: the call fails, cryptically
    assert out[0].startswith("RuntimeError: no compiled object yet"), out
    out, err = run("guarded", "armed")
    assert out[0] == "42" and out[1] != "[]", out   # works; warmup would say it is uncached
    assert "MemoryError: raised in llvmlite's object-cache callback" in err
    notices = [line for line in err.splitlines() if line.startswith("fastmlp:")]
    assert len(notices) == 1 and "could not write its cache" in notices[0], err
    assert "compile again in the next process" in notices[0], err
    out, err = run("guarded", "unarmed")   # the next process compiles and caches it
    assert out == ["42", "[]"] and "fastmlp:" not in err, (out, err)
    assert any(name.endswith(".nbc") for _, _, files in os.walk(tmp_path / "cache")
               for name in files)


_GUARDED_KERNEL = """
import sys
sys.path.insert(0, ".")
import kernel
from fastmlp.kernels import numba_link
numba_link.guard_cache(kernel.add_one)
print(kernel.add_one(41))
"""


@needs_numba
def test_a_numba_cache_dir_that_cannot_be_written_is_named(tmp_path):
    # Numba passes over it to the next folder it can write (here the kernel's own
    # __pycache__) without a word: the user's setting was ignored silently
    (tmp_path / "kernel.py").write_text(_KERNEL)
    (tmp_path / "a file").write_text("")
    asked = tmp_path / "a file" / "cache"   # no folder can be made inside a file
    done = subprocess.run([sys.executable, "-c", _GUARDED_KERNEL], cwd=tmp_path,
                          env=dict(os.environ, NUMBA_CACHE_DIR=str(asked)),
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0 and done.stdout == "42\n", done.stderr
    notices = [line for line in done.stderr.splitlines() if line.startswith("fastmlp:")]
    assert notices == [f"fastmlp: NUMBA_CACHE_DIR={asked} cannot be written, so Numba keeps "
                       f"the kernels' cache where it can: {tmp_path / '__pycache__'}"], \
        done.stderr
    writable = subprocess.run([sys.executable, "-c", _GUARDED_KERNEL], cwd=tmp_path,
                              env=dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "c")),
                              capture_output=True, text=True, timeout=300, check=False)
    assert writable.stdout == "42\n" and "fastmlp:" not in writable.stderr, writable.stderr


# A read-only install whose user has no writable home: Numba finds no folder for the
# kernels' cache (no locator), which made every kernel's cache=True decoration raise and
# the numba backend unavailable. Simulated by leaving Numba no locator to try.
_NO_CACHE_FOLDER = """
from numba.core import caching
(getattr(caching, "CacheImpl", None) or caching._CacheImpl)._locator_classes = []
import numpy as np
import fastmlp as fm
m = fm.Model([fm.Dense(5, "tanh"), fm.Dense(3, "softmax")], input_dim=4,
             loss="cross_entropy", optimizer=fm.Adam(), backend="numba", seed=1)
X = np.random.default_rng(0).random((20, 4), dtype=np.float32)
T = np.eye(3, dtype=np.float32)[np.arange(20) % 3]
m.fit(X, T, epochs=2, batch_size=8)
print(repr(m.predict(X).ravel().tolist()))
"""


@needs_numba
def test_no_writable_cache_folder_compiles_uncached_and_says_so(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    done = subprocess.run([sys.executable, "-c", _NO_CACHE_FOLDER], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    assert "NUMBA_CACHE_DIR" in done.stderr and "compiles them again" in done.stderr
    m = fm.Model([fm.Dense(5, "tanh"), fm.Dense(3, "softmax")], input_dim=4,
                 loss="cross_entropy", optimizer=fm.Adam(), backend="numba", seed=1)
    X = np.random.default_rng(0).random((20, 4), dtype=np.float32)
    m.fit(X, np.eye(3, dtype=np.float32)[np.arange(20) % 3], epochs=2, batch_size=8)
    assert done.stdout.strip() == repr(m.predict(X).ravel().tolist())  # the cached kernels'


@needs_numba
def test_warmup_command_says_when_nothing_can_be_cached(monkeypatch, capsys):
    from fastmlp.kernels import numba_math
    monkeypatch.setattr(numba_math, "CACHE", False)
    assert cli.main(["warmup"]) == 2
    assert "set NUMBA_CACHE_DIR to a writable folder" in capsys.readouterr().err


# A Ctrl-C in the middle of a compile: raised inside llvmlite between an LLVM call that
# took a module over and the line marking it so, it freed the module twice (a segfault
# when collected); raised in Numba's typing, it left the typing registry half made (every
# later compile of predict failed: "Unknown attribute 'shape' of type readonly array").
# The compiles of fastmlp's kernels now hold it back until they are done. Here the
# Ctrl-C is sent from inside the compile, by an intrinsic's typer, every time.
_CTRL_C_IN_A_COMPILE = """
import os, signal
import numba
from numba.extending import intrinsic
from fastmlp.kernels.numba_link import guard_cache

@intrinsic
def ctrl_c_while_typing(typingctx, x):
    os.kill(os.getpid(), signal.SIGINT)
    def codegen(context, builder, signature, args):
        return args[0]
    return x(x), codegen

@numba.njit(cache=False)
def kernel(x):
    return ctrl_c_while_typing(x) + 1

guard_cache(kernel)
try:
    kernel(41)
    print("not interrupted")
except KeyboardInterrupt:
    print("interrupted after", len(kernel.overloads), "compile")
print(kernel(41))
"""


def _signalled_in_a_compile(script):
    """The stderr of ``script`` (a signal sent from inside a compile) run in a subprocess,
    once it printed what a signal raised after one whole compile, then a working retry."""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["interrupted after 1 compile", "42"]
    return done.stderr


@needs_numba
def test_a_ctrl_c_in_a_compile_is_raised_once_the_compile_is_done():
    stderr = _signalled_in_a_compile(_CTRL_C_IN_A_COMPILE)
    from fastmlp.kernels.numba_link import CTRL_C_NOTICE
    assert stderr.count(CTRL_C_NOTICE) == 1


def test_deferred_blocks_nest_and_say_so_once(capsys):
    from fastmlp._signals import signals_deferred
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("Python runs signal handlers in the main thread only")
    ran = []
    with pytest.raises(KeyboardInterrupt):
        with signals_deferred("held back"):
            with signals_deferred("again"):   # the outer block's: no note or raise of its own
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)
                ran.append("inner")
            ran.append("outer")
    assert ran == ["inner", "outer"]
    assert capsys.readouterr().err == "held back\n"


# The same with a timeout: a SIGALRM handler raising TimeoutError, from inside the
# compile. Raised there it was lost in llvmlite's callback, reported as a Ctrl-C, or left
# Numba's typing half made; held back, it is raised once the compile is done.
_TIMEOUT_IN_A_COMPILE = _CTRL_C_IN_A_COMPILE.replace(
    "import os, signal\n", "import os, signal\n"
    "def timeout(signum, frame):\n    raise TimeoutError('my time limit')\n"
    "signal.signal(signal.SIGALRM, timeout)\n").replace(
    "os.kill(os.getpid(), signal.SIGINT)", "os.kill(os.getpid(), signal.SIGALRM)").replace(
    "except KeyboardInterrupt:", "except TimeoutError:")


@needs_numba
def test_a_timeout_in_a_compile_is_raised_once_the_compile_is_done():
    stderr = _signalled_in_a_compile(_TIMEOUT_IN_A_COMPILE)
    assert "fastmlp: Ctrl-C" not in stderr   # the notice is Ctrl-C's only


def test_signals_held_back_run_their_own_handlers_after_the_block(monkeypatch):
    from fastmlp._signals import signals_deferred
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("Python runs signal handlers in the main thread only")
    ran = []

    def timeout(signum, frame):
        ran.append("timeout")
        raise TimeoutError("my time limit")

    def hangup(signum, frame):
        ran.append("hangup")

    previous = signal.signal(signal.SIGALRM, timeout), signal.signal(signal.SIGHUP, hangup)
    try:
        with pytest.raises(TimeoutError):
            with signals_deferred("held"):
                for signum in (signal.SIGALRM, signal.SIGHUP, signal.SIGALRM):
                    os.kill(os.getpid(), signum)
                ran.append("block")
        assert ran == ["block", "timeout", "hangup"]   # in the order they came, once each
        assert signal.getsignal(signal.SIGALRM) is timeout
        assert signal.getsignal(signal.SIGHUP) is hangup
        with pytest.raises(KeyboardInterrupt):     # Ctrl-C: held back, then raised
            with signals_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                ran.append("second block")
        assert ran[-1] == "second block"
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGALRM, previous[0])
        signal.signal(signal.SIGHUP, previous[1])


# A fresh process, an empty cache: building a numba model compiles nothing, and its
# first predict compiles its layers' forward passes (tanh's and softmax's, each for its
# own code) and predict's kernels alone, each saying so once (a model that only predicts
# never waits for the training kernels, the derivatives, the loss or the guard).
_PREDICT_ONLY = """
import numpy as np
import fastmlp as fm
from fastmlp import warmup
from fastmlp.kernels import numba_activations, numba_train
warmup.NOTICE_AFTER_S = 0.0
m = fm.Model([fm.Dense(5, "tanh"), fm.Dense(3, "softmax")], input_dim=4,
             loss="cross_entropy", backend="numba", seed=1)
print(len(numba_train.predict.overloads), len(numba_train.run.overloads))
m.predict(np.ones((2, 4), dtype=np.float32))
m.predict(np.ones((3, 4), dtype=np.float32))
print(len(numba_train.predict.overloads), len(numba_train.run.overloads))
codes = sorted(str(s[3]) for s in numba_activations.bias_act_forward.signatures)
print(*codes, len(numba_activations.act_backward.signatures), len(numba_train._guard.overloads))
"""


@needs_numba
def test_each_entry_point_compiles_at_its_first_call(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", _PREDICT_ONLY], env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() + lines[1].split() == ["0", "0", "1", "0"]
    from fastmlp.activations import get
    tanh, softmax = get("tanh").code, get("softmax").code
    assert lines[2].split() == [f"Literal[int]({c})" for c in sorted([tanh, softmax], key=str)] \
        + ["0", "0"]
    notices = [line for line in done.stderr.splitlines() if line.startswith("fastmlp:")]
    assert len(notices) == 2
    # predict's kernel first, then the layers' (compiled meanwhile in another process
    # where warmup.compile_aside starts one, else here), loaded or compiled
    assert "for float32 used by predict (" in notices[0]
    assert "for float32 used by this network's layers (" in notices[1]

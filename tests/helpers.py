"""What several test modules share: finite differences, a thread runner, and ways to
watch or interrupt a model's backend through its public ``engine``."""
import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np

H = 1e-6  # central-difference step, for float64 models


def numeric_gradients(model, X, Y, h=H):
    """Central differences of model.evaluate, one weight at a time, in get_weights() order."""
    weights = model.get_weights()
    grads = []
    for k, w in enumerate(weights):
        g = np.empty_like(w)
        for idx in np.ndindex(w.shape):
            values = []
            for step in (h, -h):
                moved = [v.copy() for v in weights]
                moved[k][idx] += step
                model.set_weights(moved)
                values.append(model.evaluate(X, Y))
            g[idx] = (values[0] - values[1]) / (2 * h)
        grads.append(g)
    model.set_weights(weights)
    return grads


def run_in_threads(fns, timeout=300):
    """Call every fn in its own thread, all released at once; their results in order."""
    barrier = threading.Barrier(len(fns))
    results, errors = [None] * len(fns), []

    def work(i, fn):
        try:
            barrier.wait()
            results[i] = fn()
        except BaseException as exc:  # surfaced below, not lost in the thread
            errors.append(exc)

    # daemon: a hung thread fails the test below instead of hanging the interpreter's exit
    threads = [threading.Thread(target=work, args=(i, fn), daemon=True)
               for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]
    return results


ENGINE_METHODS = ("predict", "evaluate", "loss_and_gradient", "train_step", "train_epoch")


def spy_on_engine(engine):
    """Record, in the returned list, the name of every backend method called from now on."""
    called = []
    for name in ENGINE_METHODS:
        real = getattr(engine, name)

        def wrapped(*args, _name=name, _real=real, **kwargs):
            called.append(_name)
            return _real(*args, **kwargs)
        setattr(engine, name, wrapped)
    return called


def interrupt_epoch(monkeypatch, engine, on_call):
    """Make the engine's train_epoch number ``on_call`` (1-based) run, then raise
    KeyboardInterrupt, as Ctrl-C arriving at the end of that epoch would."""
    real, calls = engine.train_epoch, []

    def train_epoch(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        if len(calls) == on_call:
            raise KeyboardInterrupt
        return loss
    monkeypatch.setattr(engine, "train_epoch", train_epoch)
    # fit's quiet path trains a chunk of epochs in one train_epochs call, where Ctrl-C is
    # seen only between chunks: hidden, so that fit takes its one-call-per-epoch path
    monkeypatch.setattr(engine, "train_epochs", None, raising=False)


def traced_peak(call):
    """(call(), the peak of memory tracemalloc saw Python allocate during it, bytes)."""
    import tracemalloc
    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def run_cli(capsys, *argv):
    """(exit status, stdout, stderr) of the fastmlp command; usage errors exit via argparse."""
    from fastmlp import cli
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def saved_arrays(path):
    """The members of a saved model file, as arrays (never unpickled)."""
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def saved_header(arrays):
    """The JSON header of a saved model file's members."""
    return json.loads(arrays["header"].tobytes().decode("utf-8"))


@contextlib.contextmanager
def gemv_copy(kernels, nbytes):
    """Run the Cython extension ``kernels``' small-batch GEMV copy of ``nbytes`` bytes
    (16, 32 or 64), skipping the test when this processor has none; the widest again
    after."""
    import pytest
    width = kernels._use_gemv(nbytes)
    try:
        if width != nbytes:
            pytest.skip(f"this processor has no {nbytes}-byte GEMV copy")
        yield width
    finally:
        kernels._use_gemv(64)


@contextlib.contextmanager
def pool_threads(kernels, n):
    """At most ``n`` threads for the Cython extension ``kernels``' worker pool (the
    GEMV's, which predict's and the GEMM loops' split use too), as before afterwards."""
    was = kernels.gemv_threads(0)
    kernels.gemv_threads(n)
    try:
        yield
    finally:
        kernels.gemv_threads(was)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(*parts, timeout=120, env=None):
    """Run the code parts (each dedented, joined by newlines) in a fresh interpreter,
    cwd the repository, os.environ updated with ``env``; its CompletedProcess (text).
    A hang fails the test (TimeoutExpired kills the child)."""
    code = "\n".join(textwrap.dedent(part) for part in parts)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


def wait_for_child(pid, seconds):
    """The exit code of the forked child ``pid``; kills it (and fails the test) if it
    has not exited within ``seconds``."""
    import pytest
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.005)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail(f"the forked child hung (> {seconds} s)")


def without_backend(monkeypatch, name):
    """Make backend ``name`` fail to import for the rest of the test, as on a machine
    without it."""
    from fastmlp import backends
    real = backends._load

    def load(backend):
        if backend == name:
            raise ImportError(f"{backend} removed for this test")
        return real(backend)

    monkeypatch.setattr(backends, "_load", load)
    if name in backends._INSTALLED_IF:  # not installed, so "auto" passes it over in silence
        monkeypatch.setitem(backends._INSTALLED_IF, name, "fastmlp_tests_no_such_module")


# -- signals at chosen moments: Python runs a handler at a call's start (a profile hook's
#    "call" event), after a call returns and at a loop's jump back

def signal_at(first, then, nth, signum=signal.SIGALRM):
    """A profile hook: once ``first`` (a code object) is called, a signal at the start of
    the ``nth`` call after it, of one of the code objects ``then`` (Python functions) or,
    when ``then`` is None, of a C function; at ``first``'s own start when nth is 0. (One
    signal: the hook is unset when it raises.)"""
    state = {"armed": False, "left": nth}

    def profile(frame, event, arg):
        if not state["armed"]:
            if event != "call" or frame.f_code is not first:
                return
            state["armed"] = True
        elif event != ("c_call" if then is None else "call") \
                or (then is not None and frame.f_code not in then):
            return
        state["left"] -= 1
        if state["left"] < 0:
            sys.setprofile(None)
            signal.raise_signal(signum)
    return profile


def signal_at_start_of(code, signum):
    """A profile hook raising ``signum`` as a function with ``code`` begins, once."""
    return signal_at(code, None, 0, signum)


def signalling(function, budget, signum=signal.SIGALRM):
    """``function`` with a signal at its start while ``budget[0]`` > 0 (one used a call)."""
    def wrapper(*args, **kwargs):
        if budget[0] > 0:
            budget[0] -= 1
            signal.raise_signal(signum)
        return function(*args, **kwargs)
    return wrapper


def ctrl_c_at_line(code, text, then, signum):
    """Trace ``code``: as its line containing ``text`` runs, a Ctrl-C, and a profile hook
    raising ``signum`` as the code object ``then`` next begins (its undo, say). The caller
    unsets both hooks (sys.settrace(None), sys.setprofile(None)) afterwards."""
    lines = open(code.co_filename).readlines()

    def trace(frame, event, arg):
        if frame.f_code is code and event == "line" and text in lines[frame.f_lineno - 1]:
            sys.settrace(None)
            sys.setprofile(signal_at_start_of(then, signum))
            signal.raise_signal(signal.SIGINT)
        return trace
    sys.settrace(lambda frame, event, arg: trace if frame.f_code is code else None)


@functools.lru_cache(maxsize=None)
def numba_passes():
    """(forward, backward): @njit functions calling the Numba backend's activation passes
    for any code, bias_act_forward(Z, b, A, code, p, alpha, want_max) and act_backward(G,
    Z, A, code, p, alpha, galpha, beta, want_max): kernels, which have no Python entry
    point (numba_math.kernel). Built at the first call, so that importing this module
    needs no numba."""
    from numba import njit
    from fastmlp.kernels import numba_activations as na

    @njit
    def forward(Z, b, A, code, p, alpha, want_max):
        return na.bias_act_forward(Z, b, A, code, p, alpha, want_max)

    @njit
    def backward(G, Z, A, code, p, alpha, galpha, beta, want_max):
        return na.act_backward(G, Z, A, code, p, alpha, galpha, beta, want_max)

    return forward, backward

"""Numba's disk cache when it is damaged or cannot be written (kernels/numba_link.guard_cache).

A cache entry that a power loss left empty or cut short (Numba writes without fsync) is a
cache miss: the kernel compiles again, the entry is rewritten, one line says so, and no
traceback. A cache write that fails (a full disk, here a file size limit) leaves the kernel
compiled and in use, uncached, with one line naming the folder; `fastmlp warmup` fails
saying so. Each case runs in a fresh process with its own NUMBA_CACHE_DIR (Numba tries that
folder first), copied from one float64 cache compiled once for the module.
"""
import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import fastmlp as fm

pytestmark = pytest.mark.skipif("numba" not in fm.available_backends(),
                                reason="the numba backend does not import here")

_TIMEOUT = 600

# The model of every case: float64 (so one dtype's kernels are compiled for the module),
# trained, then its predictions and loss; and how many kernels were compiled, not loaded.
_USE = """
import json, sys
import numpy as np
import fastmlp as fm
from fastmlp.kernels import numba_activations, numba_layers, numba_math, numba_train
from numba.core.dispatcher import Dispatcher
X = np.random.default_rng(0).random((20, 4))
T = np.eye(3)[np.arange(20) % 3]
m = fm.Model([fm.Dense(5, "tanh"), fm.Dense(3, "softmax")], input_dim=4, loss="cross_entropy",
             optimizer=fm.Adam(), backend="numba", dtype="float64", seed=1)
m.fit(X, T, epochs=2, batch_size=8)
m.train_on_batch(X, T)
kernels = [d for mod in (numba_activations, numba_layers, numba_math, numba_train)
           for d in vars(mod).values()
           if isinstance(d, Dispatcher) and d.py_func.__module__ == mod.__name__]
print(json.dumps({"out": np.concatenate([m.predict(X).ravel(), [m.evaluate(X, T)]]).tolist(),
                  "compiled": sum(sum(d.stats.cache_misses.values()) for d in kernels)}))
"""

_FILE_LIMIT = ("import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
               "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, resource.RLIM_INFINITY))\n")

# After _USE under the file size limit: `fastmlp warmup`, float32 marked ready so that it
# compiles nothing more (it checks the cache writes of the whole process)
_WARMUP_AFTER = """
from fastmlp import cli, warmup
warmup._ready.add(np.dtype("float32"))
print(json.dumps({"warmup": cli.main(["warmup"])}))
"""


def _run(cache, code):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=_TIMEOUT, check=False)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    result = {}
    for line in done.stdout.splitlines():
        result.update(json.loads(line))
    return result, done.stderr


def _expected():
    backend = "cython" if "cython" in fm.available_backends() else "numpy"
    X = np.random.default_rng(0).random((20, 4))
    T = np.eye(3)[np.arange(20) % 3]
    m = fm.Model([fm.Dense(5, "tanh"), fm.Dense(3, "softmax")], input_dim=4,
                 loss="cross_entropy", optimizer=fm.Adam(), backend=backend, dtype="float64",
                 seed=1)
    m.fit(X, T, epochs=2, batch_size=8)
    m.train_on_batch(X, T)
    return np.concatenate([m.predict(X).ravel(), [m.evaluate(X, T)]])


@pytest.fixture(scope="module")
def float64_cache(tmp_path_factory):
    """A cache holding every float64 kernel (compiled once for the module)."""
    cache = tmp_path_factory.mktemp("numba_cache") / "complete"
    result, _ = _run(cache, _USE)
    assert result["compiled"] > 0
    return cache


def _empty(path):
    open(path, "wb").close()


def _truncate(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 2])


def _zero_middle(path):
    data = bytearray(open(path, "rb").read())
    start = len(data) // 3
    data[start:start + 2000] = bytes(len(data[start:start + 2000]))
    open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("kernel, suffix, damage", [
    ("numba_activations._softmax_backward", ".1.nbc", _empty),
    ("numba_layers.adam_update", ".1.nbc", _truncate),
    ("numba_layers.loss_forward_backward", ".1.nbc", _zero_middle),   # unpickles, or not; then LLVM
    ("numba_activations._softmax_forward", ".nbi", _empty),
], ids=["emptied", "truncated", "zeroed", "emptied-index"])
def test_a_damaged_entry_compiles_again_and_is_rewritten(float64_cache, tmp_path, kernel,
                                                         suffix, damage):
    cache = tmp_path / "cache"
    shutil.copytree(float64_cache, cache)
    [victim] = glob.glob(os.path.join(cache, "*", f"{kernel}-*{suffix}"))
    before = open(victim, "rb").read()
    damage(victim)
    result, err = _run(cache, _USE)
    np.testing.assert_allclose(result["out"], _expected(), rtol=0, atol=1e-6)
    assert result["compiled"] >= 1
    # one line naming the damaged file (or, damage found when rebuilding, the kernel)
    notices = [line for line in err.splitlines() if "damaged" in line]
    assert len(notices) == 1, err
    assert os.path.basename(victim) in notices[0] or kernel.split(".")[1] in notices[0]
    # rewritten: whole again, and the next process loads everything
    rewritten = open(victim, "rb").read()
    assert len(rewritten) > len(before) // 2
    again, err = _run(cache, _USE)
    assert "damaged" not in err, err
    assert again["compiled"] == 0
    assert again["out"] == result["out"]


def test_a_cache_that_cannot_be_written_runs_uncached_and_says_so(tmp_path):
    cache = tmp_path / "full"
    result, err = _run(cache, _FILE_LIMIT + _USE + _WARMUP_AFTER)
    np.testing.assert_allclose(result["out"], _expected(), rtol=0, atol=1e-6)
    notices = [line for line in err.splitlines() if "could not write its cache" in line]
    assert len(notices) == 2, err   # the kernels' notice, once, and warmup's error
    assert str(cache) in notices[0] and "File too large" in notices[0]
    assert notices[1].startswith("fastmlp warmup: error: ") and str(cache) in notices[1]
    assert result["warmup"] == 2


_NOT_WRITABLE = """
from numba.core import caching
caching.CacheImpl._locator_classes = [caching.UserProvidedCacheLocator]
import fastmlp.kernels.numba_math as m
print('{"cache": %s}' % str(m.CACHE).lower())
"""


def test_an_unwritable_numba_cache_dir_is_named(tmp_path):
    """NUMBA_CACHE_DIR set to a folder that cannot be made (under a regular file), and no
    other folder for Numba to fall back on: the notice names the folder that was set."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    result, err = _run(blocker / "numba", _NOT_WRITABLE)
    assert result["cache"] is False
    assert f"NUMBA_CACHE_DIR={blocker / 'numba'}" in err and "Not a directory" in err, err
    assert err.count("\n") == 1


# --- the guard itself, in this process ------------------------------------------------

def test_only_fastmlp_kernels_are_guarded():
    import fastmlp.backends.numba  # noqa: F401  (guards every kernel's cache)
    from numba import njit
    from numba.core import caching
    from fastmlp.kernels import numba_train
    from fastmlp.kernels.numba_link import _CheckedCacheFile
    assert type(numba_train.run._cache._cache_file) is _CheckedCacheFile

    def other():
        return 1
    other = njit(cache=True)(other)
    assert type(other._cache._cache_file) is caching.IndexDataCacheFile


def test_a_ctrl_c_while_loading_still_propagates(tmp_path, monkeypatch):
    from numba.core import caching
    from fastmlp.kernels.numba_link import _CheckedCacheFile, _load_overload
    cache_file = _CheckedCacheFile(str(tmp_path), "k", source_stamp=1)
    cache_file.save("key", b"data")
    assert cache_file.load("key") == b"data"

    def interrupted(self, *args):
        raise KeyboardInterrupt
    monkeypatch.setattr(caching.IndexDataCacheFile, "_load_data", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cache_file.load("key")
    monkeypatch.setattr(caching.IndexDataCacheFile, "_load_index", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cache_file.load("key")
    with pytest.raises(KeyboardInterrupt):
        _load_overload(lambda sig, ctx: interrupted(None), None, None, None)


# --- the C callbacks the kernels compile: the 1-row stand-in when the Cython extension does
# not load (kernels/numba_gemv.py), the BLAS narrowing shim on an LP64 BLAS (numba_blas.py)

_NO_CYTHON = "import sys; sys.modules['fastmlp.kernels.cython_mlp'] = None\n"
_BOUND = "from fastmlp.kernels import numba_gemv; print(json.dumps({'bound': numba_gemv.BOUND}))\n"


@pytest.fixture(scope="module")
def no_cython_cache(tmp_path_factory):
    """(cache, its process's output): a cache filled by a process without the Cython
    extension, whose GEMV is then Numba's C callback (compiled once for the module)."""
    cache = tmp_path_factory.mktemp("numba_cache") / "no_cython"
    first, _ = _run(cache, _NO_CYTHON + _USE + _BOUND)
    return cache, first


@pytest.mark.parametrize("damage", [_empty, _truncate], ids=["emptied", "truncated"])
def test_a_damaged_c_callback_entry_compiles_again(no_cython_cache, tmp_path, damage):
    cache = tmp_path / "cache"
    shutil.copytree(no_cython_cache[0], cache)
    first = no_cython_cache[1]
    assert first["bound"] == "fallback"
    victims = glob.glob(os.path.join(cache, "*", "numba_gemv._fallback_body-*.nbc"))
    assert len(victims) == 2   # float32, float64
    for victim in victims:
        damage(victim)
    result, err = _run(cache, _NO_CYTHON + _USE + _BOUND)  # no traceback (_run checks)
    assert result["out"] == first["out"]
    notices = [line for line in err.splitlines() if "damaged" in line]
    assert notices and all("_fallback_body" in line for line in notices), err
    again, err = _run(cache, _NO_CYTHON + _USE + _BOUND)
    assert "damaged" not in err, err
    assert again["out"] == first["out"]


def test_c_callbacks_are_guarded():
    from numba.core import caching
    from fastmlp.kernels.numba_link import _CheckedCacheFile, guarded_cfunc

    def body(x):
        return x + 1
    callback = guarded_cfunc("float64(float64)", body, True)
    assert type(callback._cache._cache_file) is _CheckedCacheFile
    assert callback.ctypes(2.0) == 3.0
    assert type(guarded_cfunc("float64(float64)", body, False)._cache) is not caching.Cache


# --- processes saving into one cache at once (two first compiles; `fastmlp warmup`'s
# dtypes side by side): each entry kept, each naming its own data

def _save_entries(folder, worker, delay):
    import time
    from fastmlp.kernels.numba_link import _CheckedCacheFile

    class Slow(_CheckedCacheFile):
        def _save_index(self, overloads):   # widens the window between reading and writing
            time.sleep(delay)
            super()._save_index(overloads)
    cache_file = Slow(folder, "kernel", source_stamp=1)
    for i in range(15):
        cache_file.save((worker, i), {"key": (worker, i)})


def test_processes_saving_at_once_keep_every_entry_whole(tmp_path):
    import multiprocessing
    from fastmlp.kernels.numba_link import SAVE_LOCK_NAME, _CheckedCacheFile
    if not hasattr(os, "fork"):
        pytest.skip("needs fork, to start the savers quickly")
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_save_entries, args=(str(tmp_path), w, 0.002))
               for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=_TIMEOUT)
        assert w.exitcode == 0
    cache_file = _CheckedCacheFile(str(tmp_path), "kernel", source_stamp=1)
    index = cache_file._load_index()
    # (Numba's own unlocked save kept 33 of 120 here, 32 naming another entry's data)
    assert sorted(index) == [(w, i) for w in range(4) for i in range(15)]
    assert all(cache_file._load_data(name)["key"] == key for key, name in index.items())
    assert (tmp_path / SAVE_LOCK_NAME).exists()


def test_an_entry_holding_other_argument_types_is_a_miss(tmp_path, capsys):
    """An index naming the data of another signature (as unlocked saves at once leave it):
    the kernel compiles again, and no code for the wrong types is called."""
    import pickle
    from numba import njit
    from fastmlp.kernels.numba_link import guard_cache
    source = tmp_path / "swapped_kernel.py"
    source.write_text("def total(a):\n    s = 0.0\n    for x in a:\n        s += x\n"
                      "    return s\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import swapped_kernel
    finally:
        sys.path.remove(str(tmp_path))

    def compiled():
        kernel = njit(cache=True)(swapped_kernel.total)
        guard_cache(kernel)
        return kernel
    first = compiled()
    a32, a64 = np.arange(4, dtype=np.float32), np.arange(4, dtype=np.float64)
    assert first(a32) == first(a64) == 6.0
    index_path = first._cache._cache_file._index_path
    with open(index_path, "rb") as f:
        version = pickle.load(f)
        stamp, overloads = pickle.loads(f.read())
    k32, k64 = overloads
    overloads[k32], overloads[k64] = overloads[k64], overloads[k32]
    with open(index_path, "wb") as f:
        pickle.dump(version, f, protocol=-1)
        f.write(pickle.dumps((stamp, overloads)))
    capsys.readouterr()
    again = compiled()
    assert again(a32) == 6.0 and again(a64) == 6.0
    assert sum(again.stats.cache_misses.values()) == 2   # both compiled again, not loaded
    assert "holds code for the argument types" in capsys.readouterr().err
    third = compiled()   # the entries were rewritten: now both load, each its own code
    assert third(a32) == 6.0 and third(a64) == 6.0
    assert sum(third.stats.cache_hits.values()) == 2

"""A first training call compiles its per-network kernels in another process while it
compiles the training kernel (fastmlp.warmup.compile_aside), then loads them."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import warmup

needs_numba = pytest.mark.skipif("numba" not in fm.available_backends(),
                                 reason="the numba backend does not import here")

# A new user's first fit (or first call named by argv[1]), in a process of its own: the
# processes it started, whether the late kernels compiled here or loaded, and the result
_FIRST_CALL = textwrap.dedent("""
    import json, subprocess, sys
    started = []
    class Counted(subprocess.Popen):
        def __init__(self, *args, **kwargs):
            started.append(args[0][4] if len(args[0]) > 4 else "?")
            super().__init__(*args, **kwargs)
    subprocess.Popen = Counted
    import numpy as np
    from fastmlp import Model, Dense
    from fastmlp.kernels import numba_train as kt
    from fastmlp.kernels.numba_link import LATE
    X = np.random.default_rng(0).random((6, 3)); Y = X[:, :2].copy()
    m = Model([Dense(4, "tanh"), Dense(2, "sigmoid")], input_dim=3, loss="mse",
              backend="numba", dtype="float64", seed=0)
    call = sys.argv[1]
    if call == "fit":
        m.fit(X, Y, epochs=3, batch_size=6)
    elif call == "train_on_batch":
        m.train_on_batch(X, Y)
    elif call == "gradients":
        m.gradients(X, Y)
    elif call == "predict":
        out = m.predict(X)
    else:
        out = m.evaluate(X, Y)
    entry = {"predict": kt.predict, "evaluate": kt.evaluate}.get(call, kt.run)
    def stats(dispatcher):
        s = dispatcher.stats
        return sum(s.cache_hits.values()), sum(s.cache_misses.values())
    late = [LATE["fastmlp.kernels.numba_activations.bias_act_forward"].dispatcher]
    if entry is kt.run:
        late.append(LATE["fastmlp.kernels.numba_activations.act_backward"].dispatcher)
        late.append(LATE["fastmlp.kernels.numba_layers.loss_forward_backward"].dispatcher)
        out = m.get_weights()
    print(json.dumps({"started": started, "run": stats(entry),
                      "late": [stats(d) for d in late],
                      "weights": np.asarray(out).tolist() if entry is not kt.run
                      else [w.tolist() for w in out]}))
""")


def _empty_cache_beside(folder, monkeypatch):
    """The processes started from now on use ``folder`` for their Numba cache: they are
    given the folder this process's Numba read at its import (warmup._environment)."""
    from numba.core import config
    monkeypatch.setattr(config, "CACHE_DIR", str(folder))


def _first_call(cache, call="fit", **env):
    """(FASTMLP_COMPILE_ASIDE=1: whatever the load, CI's two suites side by side say)"""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), **{"FASTMLP_COMPILE_ASIDE": "1", **env})
    done = subprocess.run([sys.executable, "-c", _FIRST_CALL, call], capture_output=True,
                          text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1]), done.stderr


@needs_numba
@pytest.mark.skipif(warmup.usable_cpus() < 2, reason="compile_aside needs two CPUs")
@pytest.mark.parametrize("call", ["fit", "train_on_batch", "gradients", "predict",
                                  "evaluate"])
def test_a_first_call_compiles_its_kernels_aside_then_loads_them(tmp_path, call):
    """(the training kernel, or predict's or evaluate's, here: "run" below)"""
    result, err = _first_call(tmp_path / "cache", call)
    assert len(result["started"]) == 1 and result["started"][0].startswith('["float64"')
    assert result["run"] == [0, 1]                  # compiled here, meanwhile ...
    for hits, misses in result["late"]:             # ... these there, loaded here
        assert hits >= 1 and misses == 0
    assert "beside this one" not in err, err
    # the same weights as compiling everything here, which starts nothing
    alone, _ = _first_call(tmp_path / "alone", call, FASTMLP_COMPILE_ASIDE="0")
    assert alone["started"] == [] and alone["run"] == [0, 1]
    assert all(misses >= 1 for _, misses in alone["late"])
    assert alone["weights"] == result["weights"]
    # the next process loads everything: it starts nothing
    again, _ = _first_call(tmp_path / "cache", call)
    assert again["started"] == [] and again["run"] == [1, 0]
    assert again["weights"] == result["weights"]


@needs_numba
def test_a_process_aside_that_fails_is_said_and_its_kernels_compile_here(capsys):
    aside = warmup.start_elsewhere(json.dumps(["float64", [["no.such.kernel", 0]]]),
                                   "float64", own_session=True)
    assert aside is not None
    assert not aside.join(300)
    err = capsys.readouterr().err
    assert "KeyError: 'no.such.kernel'" in err
    assert err.rstrip().endswith("the process compiling float64 kernels beside this one "
                                 "ended with status 1; compiling them here")


@needs_numba
def test_a_process_aside_that_outlasts_the_wait_is_killed(tmp_path, monkeypatch, capsys):
    _empty_cache_beside(tmp_path, monkeypatch)   # (it compiles, seconds)
    from fastmlp.kernels.numba_activations import BACKWARD
    aside = warmup.start_elsewhere(json.dumps(["float64", [[BACKWARD.name, 1]]]), "float64",
                                   own_session=True)
    assert not aside.join(0.2)
    assert aside.process.returncode == -signal.SIGKILL
    assert "had not ended after 0.2 s; compiling them here" in capsys.readouterr().err


class _Interrupted(BaseException):
    pass


@needs_numba
@pytest.mark.skipif(warmup.usable_cpus() < 2, reason="compile_aside needs two CPUs")
def test_an_interrupted_first_call_kills_the_process_aside(tmp_path, monkeypatch):
    """The training kernel's compile interrupted (a Ctrl-C, held back until that compile
    is over, then raised): the process compiling beside it is killed, not left."""
    from fastmlp import Dense, Model
    from fastmlp.backends import numba as numba_backend
    from fastmlp.kernels.numba_activations import BACKWARD
    _empty_cache_beside(tmp_path, monkeypatch)   # (it compiles, seconds)
    monkeypatch.setenv("FASTMLP_COMPILE_ASIDE", "1")       # (whatever the load)
    started = []
    real = warmup.compile_aside

    def aside(dtype, kernels):
        started.append(real(dtype, kernels))
        return started[-1]

    def interrupted(*entries):
        raise _Interrupted

    monkeypatch.setattr(warmup, "compile_aside", aside)
    monkeypatch.setattr(numba_backend, "will_compile", lambda entry: True)
    monkeypatch.setattr(numba_backend.kt, "to_compile",
                        lambda net, dtype, parts: [(BACKWARD.name, 1)])
    monkeypatch.setattr(numba_backend, "ready_entries", interrupted)
    m = Model([Dense(3, "elu"), Dense(2, "softplus")], input_dim=2, loss="mse",
              backend="numba", dtype="float32", seed=0)
    with pytest.raises(_Interrupted):
        m.train_on_batch(np.zeros((2, 2), np.float32), np.zeros((2, 2), np.float32))
    [child] = started
    assert child.process.returncode == -signal.SIGKILL and child.lifeline is None


@pytest.mark.parametrize("why", ["nothing to compile", "switched off", "one CPU", "MPI",
                                 "not Python", "frozen"])
def test_no_process_aside_where_it_is_not_worth_it(why, monkeypatch):
    kernels = [("fastmlp.kernels.numba_activations.act_backward", 1)]
    monkeypatch.delenv("FASTMLP_COMPILE_ASIDE", raising=False)
    monkeypatch.setattr(warmup, "start_elsewhere",
                        lambda *args, **kwargs: pytest.fail("started"))
    if why == "nothing to compile":
        kernels = []
    elif why == "switched off":
        monkeypatch.setenv("FASTMLP_COMPILE_ASIDE", "0")
    elif why == "one CPU":
        monkeypatch.setattr(warmup, "usable_cpus", lambda: 1)
    elif why == "MPI":
        monkeypatch.setitem(sys.modules, "mpi4py.MPI", object())
    else:
        monkeypatch.undo()
        if why == "not Python":
            monkeypatch.setattr(sys, "executable", "/usr/local/bin/uwsgi")
        else:
            monkeypatch.setattr(sys, "frozen", True, raising=False)
        assert warmup._python() is None
        assert warmup.start_elsewhere("float32") is None
        return
    pytest.importorskip("numba")
    assert warmup.compile_aside(np.float32, kernels) is None


@pytest.mark.parametrize("name, runs", [("python", True), ("python3", True),
                                        ("python3.11", True), ("python3.13t", True),
                                        ("python.exe", True), ("uwsgi", False),
                                        ("blender", False), ("", False)])
def test_only_a_python_interpreter_is_run(name, runs, monkeypatch):
    monkeypatch.setattr(sys, "executable", f"/opt/bin/{name}" if name else "")
    assert (warmup._python() is not None) == runs


# hostile round 51: the process beside a first training call

_AFTER_CHDIR = textwrap.dedent("""
    import os, sys
    import numpy as np
    from fastmlp import Model, Dense
    os.chdir(sys.argv[1])   # a folder holding a numpy.py, after numpy was imported
    X = np.random.default_rng(0).random((6, 3)); Y = X[:, :2].copy()
    m = Model([Dense(4, "elu"), Dense(2, "sigmoid")], input_dim=3, loss="mse",
              backend="numba", dtype="float64", seed=0)
    m.fit(X, Y, epochs=2, batch_size=6)
    print("fitted")
""")


@needs_numba
@pytest.mark.skipif(warmup.usable_cpus() < 2, reason="compile_aside needs two CPUs")
def test_the_process_beside_runs_nothing_of_a_working_folder_changed_since(tmp_path):
    """`python -c` puts '' on sys.path: the other process took it too, and resolved it
    against the folder the first process had moved to since, running its numpy.py."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    marker = tmp_path / "ran"
    (folder / "numpy.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                     "raise ImportError('the numpy of the working folder')\n")
    done = subprocess.run([sys.executable, "-c", _AFTER_CHDIR, str(folder)],
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"),
                                   FASTMLP_COMPILE_ASIDE="1",
                                   PYTHONPATH=os.pathsep.join(p for p in sys.path if p)))
    assert done.returncode == 0 and done.stdout.strip() == "fitted", done.stderr
    assert not marker.exists()
    assert "beside this one" not in done.stderr, done.stderr


def test_the_import_path_passed_on_is_absolute_text(monkeypatch, tmp_path):
    import pathlib
    monkeypatch.setattr(sys, "path", ["", "relative/dir", pathlib.Path(tmp_path), b"/b/dir",
                                      None, str(tmp_path)] + sys.path)
    path = warmup._import_path()
    assert path[:2] == [str(tmp_path), "/b/dir"]
    assert all(isinstance(p, str) and os.path.isabs(p) for p in path)
    json.dumps(path)
    # the folders this process's own fastmlp and numpy came from are on it
    assert os.path.dirname(os.path.dirname(os.path.abspath(fm.__file__))) in path
    assert os.path.dirname(os.path.dirname(os.path.abspath(np.__file__))) in path


@needs_numba
@pytest.mark.skipif(warmup.usable_cpus() < 2, reason="compile_aside needs two CPUs")
def test_a_path_object_on_sys_path_does_not_stop_a_first_fit(tmp_path):
    """json.dumps(sys.path) raised TypeError out of every cold first fit, every process."""
    script = ("import pathlib, sys; sys.path.insert(0, pathlib.Path('/nowhere'))\n"
              + _FIRST_CALL)
    done = subprocess.run([sys.executable, "-c", script, "fit"], capture_output=True,
                          text=True, timeout=600,
                          env=dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path),
                                   FASTMLP_COMPILE_ASIDE="1"))
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout.splitlines()[-1])["started"]) == 1


@needs_numba
@pytest.mark.parametrize("how", ["ignored", "blocked"])
def test_a_process_beside_stops_when_its_starter_dies_with_sigint_off(how, tmp_path,
                                                                      monkeypatch):
    """SIGINT ignored (`cmd &` from a script) or blocked is inherited: the lifeline's
    SIGINT did nothing, and an orphan compiled on to its end."""
    _empty_cache_beside(tmp_path, monkeypatch)   # (it compiles, seconds)
    from fastmlp.kernels.numba_activations import BACKWARD, FORWARD
    kernels = [[late.name, code] for late in (FORWARD, BACKWARD) for code in range(12)]
    if how == "ignored":
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    else:
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        aside = warmup.start_elsewhere(json.dumps(["float64", kernels]), "float64",
                                       own_session=True)
    finally:
        if how == "ignored":
            signal.signal(signal.SIGINT, previous)
        else:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    try:
        import time
        time.sleep(2)
        stopped = time.perf_counter()
        aside._let_go()   # as when its starter dies
        aside.process.wait(timeout=60)
        assert time.perf_counter() - stopped < 10
        assert aside.process.returncode != 0
    finally:
        aside.kill()


def test_a_failure_beside_says_nothing_on_stdout_with_stderr_gone(monkeypatch, capfd):
    class Failed:
        returncode = 1
        stdout = stderr = None

        def communicate(self, timeout=None):
            return "", "boom\n"

    monkeypatch.setattr(sys, "stderr", None)
    assert not warmup.Elsewhere("float32", Failed()).join(1)
    assert capfd.readouterr().out == ""


def test_cgroup_cpu_quotas_are_read_v1_v2_and_own_cgroup(tmp_path):
    from fastmlp import _cgroup
    root, own = tmp_path / "cgroup", tmp_path / "self_cgroup"
    (root / "cpu" / "job").mkdir(parents=True)
    (root / "cpu.max").write_text("max 100000\n")                  # v2, unlimited
    (root / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")         # v1, unlimited
    own.write_text("1:cpu,cpuacct:/job\n0::/\n")
    assert _cgroup.cpu_limit(str(root), str(own)) is None
    (root / "cpu" / "job" / "cpu.cfs_quota_us").write_text("300000\n")
    (root / "cpu" / "job" / "cpu.cfs_period_us").write_text("100000\n")
    assert _cgroup.cpu_limit(str(root), str(own)) == 3.0
    (root / "cpu.max").write_text("150000 100000\n")                # v2's own, smaller
    assert _cgroup.cpu_limit(str(root), str(own)) == 1.5
    assert _cgroup.cpu_limit(str(tmp_path / "none"), str(tmp_path / "none")) is None


@pytest.mark.parametrize("quota, cpus", [(None, 8), (1.5, 1), (0.5, 1), (4.0, 4), (16.0, 8)])
def test_usable_cpus_heed_the_cgroup_quota(quota, cpus, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(warmup, "cpu_limit", lambda: quota)
    assert warmup.usable_cpus() == cpus


@needs_numba
@pytest.mark.parametrize("switch", ["", "auto", "1"])
def test_no_process_beside_on_a_machine_already_busy_unless_asked(switch, monkeypatch):
    monkeypatch.setenv("FASTMLP_COMPILE_ASIDE", switch)
    monkeypatch.setattr(warmup, "usable_cpus", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (2.0, 1.0, 1.0))
    monkeypatch.setattr(warmup, "start_elsewhere", lambda *args, **kwargs: "started")
    assert warmup.compile_aside(np.float32, [("a.b", 1)]) == (
        "started" if switch == "1" else None)


# hostile round 52

def test_no_thread_for_the_notice_is_no_error(monkeypatch):
    """A process limit (`ulimit -u`) the other process had reached: the notice's timer
    could not start, and that raised out of the first fit."""
    def refused(self):
        raise RuntimeError("can't start new thread")
    monkeypatch.setattr(warmup.threading.Timer, "start", refused)
    with warmup._noticed("float32"):
        pass


def test_a_failure_beside_with_a_broken_stderr_is_no_error(monkeypatch):
    import io
    stream = io.StringIO()
    stream.close()
    monkeypatch.setattr(sys, "stderr", stream)

    class Failed:
        returncode = 1
        stdout = stderr = None

        def communicate(self, timeout=None):
            return "", "boom\n"

    assert not warmup.Elsewhere("float32", Failed()).join(1)


def test_a_path_entry_whose_fspath_fails_is_dropped(monkeypatch):
    class Broken:
        def __fspath__(self):
            raise RuntimeError("no path here")
    monkeypatch.setattr(sys, "path", [Broken(), "/a/dir"] + sys.path)
    assert warmup._import_path()[0] == "/a/dir"


@needs_numba
@pytest.mark.parametrize("optimize", [0, 1, 2])
def test_the_process_beside_runs_with_this_ones_optimisation_flags(optimize, monkeypatch):
    """Under `python -OO` its cache entries were another's: the first process loaded
    none of them and compiled them all again."""
    import types
    started = []

    class Started:
        def __init__(self, args, **kwargs):
            started.append((args, kwargs))

    monkeypatch.setattr(warmup.subprocess, "Popen", Started)
    monkeypatch.setattr(sys, "flags", types.SimpleNamespace(optimize=optimize))
    warmup.start_elsewhere("float32")._let_go()
    [(args, kwargs)] = started
    assert args[1:2 + optimize] == ["-I"] + ["-O"] * optimize and args[2 + optimize] == "-c"


@needs_numba
def test_the_process_beside_uses_the_cache_folder_this_one_read(monkeypatch):
    """NUMBA_CACHE_DIR set after Numba's import: the other process wrote its kernels
    where this one never looks."""
    from numba.core import config
    monkeypatch.setenv("NUMBA_CACHE_DIR", "/set/after/import")
    assert warmup._environment().get("NUMBA_CACHE_DIR") == (config.CACHE_DIR or None)


@pytest.mark.parametrize("value, switch", [(None, "auto"), ("", "auto"), (" Auto ", "auto"),
                                           ("0", "0"), ("1 ", "1"), ("off", None),
                                           ("yes", None)])
def test_the_switch_is_auto_0_or_1(value, switch, monkeypatch):
    if value is None:
        monkeypatch.delenv("FASTMLP_COMPILE_ASIDE", raising=False)
    else:
        monkeypatch.setenv("FASTMLP_COMPILE_ASIDE", value)
    if switch is None:
        with pytest.raises(ValueError, match="FASTMLP_COMPILE_ASIDE must be one of"):
            warmup.aside_switch()
    else:
        assert warmup.aside_switch() == switch


# First predicts and evaluates in 4 threads at once, of one model or of 4, in a process
# of its own
_FIRST_IN_THREADS = textwrap.dedent("""
    import json, subprocess, threading
    started = []
    class Counted(subprocess.Popen):
        def __init__(self, *args, **kwargs):
            started.append(1)
            super().__init__(*args, **kwargs)
    subprocess.Popen = Counted
    import numpy as np
    from fastmlp import Model, Dense
    import copy, sys
    X = np.random.default_rng(0).random((50, 3))
    models = [Model([Dense(4, "tanh"), Dense(2, "sigmoid")], input_dim=3, backend="numba",
                    dtype="float64", seed=0) for _ in range(4 if sys.argv[1] == "4" else 1)]
    outs = [None] * 4
    def first(i):
        m = models[i % len(models)]
        outs[i] = m.predict(X).tolist() if i % 2 == 0 else m.evaluate(X, X[:, :2])
        copy.deepcopy(m._engine)   # (a lock on the backend had made that a TypeError)
    threads = [threading.Thread(target=first, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"started": len(started), "outs": outs}))
""")


@needs_numba
@pytest.mark.skipif(warmup.usable_cpus() < 2, reason="compile_aside needs two CPUs")
@pytest.mark.parametrize("models", ["1", "4"])
def test_first_predicts_in_several_threads_start_one_process_aside(models, tmp_path):
    """(hostile round 53: 4 models' first predicts started 4 processes on 2 CPUs)"""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), FASTMLP_COMPILE_ASIDE="1")
    done = subprocess.run([sys.executable, "-c", _FIRST_IN_THREADS, models],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["started"] == 1   # (each thread had started its own)
    outs = result["outs"]
    assert outs[0] == outs[2] and outs[1] == outs[3]
    reference = fm.Model([fm.Dense(4, "tanh"), fm.Dense(2, "sigmoid")], input_dim=3,
                         backend="numpy", dtype="float64", seed=0)
    X = np.random.default_rng(0).random((50, 3))
    np.testing.assert_allclose(outs[0], reference.predict(X), rtol=1e-12)
    assert outs[1] == pytest.approx(reference.evaluate(X, X[:, :2]), rel=1e-12)


@needs_numba
def test_a_refused_switch_is_refused_when_a_numba_model_is_made(monkeypatch):
    """README audit, 2026-12-07: read only at a call that compiled, a refused value passed
    unseen while every kernel was cached, then stopped a later network mid-run. Another
    backend does not read it."""
    monkeypatch.setenv("FASTMLP_COMPILE_ASIDE", "true")
    with pytest.raises(ValueError, match="FASTMLP_COMPILE_ASIDE must be one of"):
        fm.Model([fm.Dense(2, "sigmoid")], input_dim=3, backend="numba")
    fm.Model([fm.Dense(2, "sigmoid")], input_dim=3, backend="numpy")

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
    else:
        m.gradients(X, Y)
    def stats(dispatcher):
        s = dispatcher.stats
        return sum(s.cache_hits.values()), sum(s.cache_misses.values())
    late = [LATE["fastmlp.kernels.numba_activations." + name].dispatcher
            for name in ("bias_act_forward", "act_backward")]
    late.append(LATE["fastmlp.kernels.numba_layers.loss_forward_backward"].dispatcher)
    print(json.dumps({"started": started, "run": stats(kt.run),
                      "late": [stats(d) for d in late],
                      "weights": [w.tolist() for w in m.get_weights()]}))
""")


def _first_call(cache, call="fit", **env):
    done = subprocess.run([sys.executable, "-c", _FIRST_CALL, call], capture_output=True,
                          text=True, timeout=600,
                          env=dict(os.environ, NUMBA_CACHE_DIR=str(cache), **env))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1]), done.stderr


@needs_numba
@pytest.mark.skipif(warmup.usable_cpus() < 2, reason="compile_aside needs two CPUs")
@pytest.mark.parametrize("call", ["fit", "train_on_batch", "gradients"])
def test_a_first_training_call_compiles_its_kernels_aside_then_loads_them(tmp_path, call):
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
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))   # (empty: it compiles, seconds)
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
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))   # (empty: it compiles, seconds)
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

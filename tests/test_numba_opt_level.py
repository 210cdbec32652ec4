"""The Numba entry points (run, predict, evaluate) compile at LLVM level
numba_math.ENTRY_OPT, every other kernel at the process's NUMBA_OPT
(numba_link.compile_level), and a compile leaves Numba's level as it found it."""
import json
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from numba.core import config  # noqa: E402

from fastmlp.kernels import numba_link, numba_math, numba_train  # noqa: E402
from fastmlp.kernels.numba_activations import FORWARD  # noqa: E402


def _level(value):
    return type(config.OPT)(value)


@pytest.mark.parametrize("process, entry, kernel", [(3, 2, 3), (2, 2, 2), (1, 1, 1),
                                                    (0, 0, 0), ("max", "max", "max")])
def test_entry_points_compile_at_the_lower_level_unless_max(process, entry, kernel):
    # (a user may assign config.OPT an int; "max" is Numba's level type's alone)
    for given in [_level(process)] + ([int(process)] if process != "max" else []):
        for dispatcher in (numba_train.run, numba_train.predict, numba_train.evaluate):
            level = numba_link.compile_level(dispatcher, given)
            assert int(level) == int(_level(entry))
            assert level.is_opt_max == (entry == "max")
        level = numba_link.compile_level(FORWARD.dispatcher, given)
        assert int(level) == int(_level(kernel))
    assert numba_train.run.llvm_opt == numba_math.ENTRY_OPT == 2


def test_the_level_is_set_holding_the_compiler_lock_and_put_back(monkeypatch):
    from numba.core.compiler_lock import global_compiler_lock
    before = config.OPT
    taken = []
    with numba_link._optimised_at(numba_train.run):
        assert int(config.OPT) == min(int(before), 2)
        other = threading.Thread(target=lambda: taken.append(
            global_compiler_lock._lock.acquire(timeout=0.2)))
        other.start()
        other.join()
    assert taken == [False]          # no other thread compiles at that level meanwhile
    assert config.OPT is before
    with pytest.raises(ZeroDivisionError):
        with numba_link._optimised_at(numba_train.run):
            1 / 0
    assert config.OPT is before
    # a kernel compiled inside an entry point's compile: at the process's level
    with numba_link._optimised_at(numba_train.run):
        with numba_link._optimised_at(FORWARD.dispatcher):
            assert config.OPT == before
        assert int(config.OPT) == min(int(before), 2)
    assert config.OPT is before


# Each LLVM module optimised in a first predict and a first train step, with the level it
# was optimised at, in a process of its own with an empty cache
_LEVELS = textwrap.dedent("""
    import json
    import numpy as np
    from numba.core import codegen, config
    seen = []
    optimise = codegen.CPUCodeLibrary._optimize_final_module
    def recorded(self):
        seen.append((self.name, int(config.OPT)))
        return optimise(self)
    codegen.CPUCodeLibrary._optimize_final_module = recorded
    import fastmlp as fm
    X = np.ones((6, 3)); Y = np.zeros((6, 2))
    m = fm.Model([fm.Dense(4, "tanh"), fm.Dense(2, "sigmoid")], input_dim=3,
                 backend="numba", dtype="float64")
    m.predict(X)
    m.train_on_batch(X, Y)
    print(json.dumps({"seen": seen, "after": int(config.OPT)}))
""")


@pytest.mark.parametrize("numba_opt", [None, "1"])
def test_a_first_compile_optimises_entry_points_at_their_level(numba_opt, tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), FASTMLP_COMPILE_ASIDE="0")
    env.pop("NUMBA_OPT", None)
    if numba_opt is not None:
        env["NUMBA_OPT"] = numba_opt
    done = subprocess.run([sys.executable, "-c", _LEVELS], capture_output=True, text=True,
                          timeout=600, env=env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    process = 3 if numba_opt is None else int(numba_opt)
    assert result["after"] == process
    levels = {}
    for name, level in result["seen"]:
        levels.setdefault(name, set()).add(level)
    entry = min(process, numba_math.ENTRY_OPT)
    assert levels["predict"] == levels["run"] == {entry}
    # the kernels the entry points call, compiled inside their compile or after it
    for kernel in ("_forward_rows", "bias_act_forward", "act_backward",
                   "loss_forward_backward", "_guard"):
        assert levels[kernel] == {process}, (kernel, levels)


# hostile round 53: the level a user sets while the process runs (NUMBA_OPT changed, or
# config.OPT assigned an int) is the one their own code compiles at after fastmlp's
_USER_LEVEL = textwrap.dedent("""
    import json, os, sys
    import numba
    import numpy as np
    from numba.core import config
    import fastmlp as fm
    how = sys.argv[1]
    if how == "environment":
        os.environ["NUMBA_OPT"] = "1"          # (%env NUMBA_OPT=1 in a notebook)
    else:
        @numba.njit
        def first(x):
            return x + 1
        first(1)
        config.OPT = 1                          # a plain int
    m = fm.Model([fm.Dense(4, "tanh"), fm.Dense(2, "sigmoid")], input_dim=3,
                 backend="numba", dtype="float32", seed=0)
    out = m.predict(np.zeros((5, 3), np.float32))
    after_fastmlp = repr(config.OPT)
    @numba.njit
    def users(x):
        return x + 2
    users(1)
    print(json.dumps([after_fastmlp, repr(config.OPT), out.tolist()]))
""")


@pytest.mark.parametrize("how", ["environment", "assigned"])
def test_a_level_the_user_sets_meanwhile_is_kept(how, tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), FASTMLP_COMPILE_ASIDE="0")
    env.pop("NUMBA_OPT", None)
    done = subprocess.run([sys.executable, "-c", _USER_LEVEL, how], capture_output=True,
                          text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr
    after_fastmlp, after_users, out = json.loads(done.stdout.splitlines()[-1])
    expected = "_OptLevel(1)" if how == "environment" else "1"
    assert after_fastmlp == after_users == expected   # (it had been put back to 3)
    assert np.asarray(out).shape == (5, 2) and np.isfinite(out).all()

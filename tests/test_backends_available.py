"""A backend that fails to import must fail CI, not silently drop out of every test."""
import os

import pytest

import fastmlp as fm


def test_required_backends_are_available():
    required = [b for b in os.environ.get("FASTMLP_REQUIRE_BACKENDS", "numpy").split(",") if b]
    available = fm.available_backends()
    missing = [b for b in required if b not in available]
    assert not missing, f"backends {missing} failed to import: {fm.backends._import_errors}"


def test_unknown_backend_is_a_clear_error():
    import pytest
    with pytest.raises(ValueError, match="unknown backend 'tensorflow'"):
        fm.Model([fm.Dense(1)], input_dim=1, backend="tensorflow")


def test_source_tree_shadowing_the_install_is_explained(tmp_path):
    """After `pip install .`, running inside the clone imports ./fastmlp, which has no
    compiled kernels: the error says so instead of blaming numba or scipy."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(fm.__file__).resolve().parents[1]
    shutil.copytree(root / "fastmlp", tmp_path / "fastmlp",
                    ignore=shutil.ignore_patterns("__pycache__", "data"))
    (tmp_path / "kernels").mkdir()
    (tmp_path / "setup.py").write_text("")
    # An editable install maps fastmlp.kernels to the clone whatever shadows fastmlp: drop its
    # finder, as a plain `pip install .` has none.
    code = ("import sys\n"
            "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)]\n"
            "import fastmlp as fm\n"
            "print(fm.available_backends())\n"
            "try:\n    fm.Model([fm.Dense(1)], input_dim=1, backend='numba')\n"
            "except ValueError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert "['numpy']" in out.stdout
    assert "imported from its source tree" in out.stdout and "pip install -e ." in out.stdout


def test_kernels_of_another_copy_are_refused(tmp_path):
    """A second copy of fastmlp first on sys.path while an editable install of the first
    answers for fastmlp.kernels: that copy's code would drive the other's kernels. The
    compiled backends are refused, naming both folders; the reference still works."""
    import importlib.util
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(fm.__file__).resolve().parents[1]
    kernels = Path(list(importlib.util.find_spec("fastmlp.kernels")
                        .submodule_search_locations)[0]).resolve()
    if kernels != root / "kernels":
        pytest.skip("fastmlp is not an editable install of a clone here")
    shutil.copytree(root / "fastmlp", tmp_path / "fastmlp",
                    ignore=shutil.ignore_patterns("__pycache__"))
    code = ("import fastmlp as fm\n"
            "print(fm.__file__, fm.available_backends())\n"
            "try:\n    fm.Model([fm.Dense(1)], input_dim=1, backend='cython')\n"
            "except ValueError as e:\n    print(e)\n"
            "print(fm.Model([fm.Dense(1)], input_dim=1, backend='numpy').predict([[1.0]]).shape)\n"
            "import sys, fastmlp.validation as v\n"
            "fm.set_num_threads(1)\n"
            "print('loaded:', [m for m in sys.modules if 'cython_mlp' in m or 'kernels.numba' in m],"
            " v.laid_out is v.python_laid_out)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    assert out.returncode == 0, out.stderr
    assert str(tmp_path) in out.stdout.splitlines()[0] and "['numpy']" in out.stdout
    assert (f"imported from {tmp_path / 'fastmlp'} but its compiled kernels from {kernels}"
            in out.stdout)
    assert "(1, 1)" in out.stdout
    assert "loaded: [] True" in out.stdout   # none of the other copy's compiled code ran


def test_auto_says_when_it_passes_over_an_installed_backend(monkeypatch):
    """backend="auto" falling back from a backend that is installed but does not import (a
    bad FASTMLP_CYTHON_ISA, a numba broken against this NumPy) warns, naming the cause;
    an absent backend is passed over in silence."""
    import warnings

    import pytest

    from fastmlp import backends
    if "numba" not in backends.available_backends():
        pytest.skip("needs the numba backend to fall back to")
    monkeypatch.setitem(backends._REGISTRY, "cython", "fastmlp.backends.no_such_module:X")
    monkeypatch.setitem(backends._INSTALLED_IF, "cython", "numpy")  # "installed"
    with pytest.warns(RuntimeWarning, match=r"backend='auto' uses 'numba': the faster 'cython' "
                      r"backend is installed but does not import \(No module named "
                      r"'fastmlp.backends.no_such_module'\)"):
        assert fm.Model([fm.Dense(1)], input_dim=1).backend == "numba"
    monkeypatch.setitem(backends._INSTALLED_IF, "cython", "fastmlp.no_such_package.x")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fm.Model([fm.Dense(1)], input_dim=1).backend == "numba"


def test_auto_is_silent_when_the_fastest_backend_imports():
    import warnings

    from fastmlp import backends
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        chosen = backends.resolve("auto")
    assert chosen == next(b for b in backends.AUTO_ORDER if b in fm.available_backends())


def test_auto_imports_no_backend_after_the_one_it_picks():
    """backend="auto" tries cython, numba, numpy in order and stops at the first that
    imports: a first Model on cython does not import numba (nor numba.cuda), which cost
    a second of it."""
    import subprocess
    import sys

    import pytest
    if "cython" not in fm.available_backends():
        pytest.skip("needs the cython backend")
    code = ("import sys\nimport fastmlp as fm\n"
            "m = fm.Model([fm.Dense(2)], input_dim=2)\n"
            "print(m.backend, 'numba' in sys.modules)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["cython", "False"]


def test_a_backend_import_interrupted_half_way_can_be_retried():
    """Ctrl-C while numba imports (fastmlp imports it on first use) left its finished
    submodules without their package; every later backend call in that process (a REPL,
    a notebook) failed inside numba with "module 'numba' has no attribute 'core'". The
    interrupt is raised here by an import hook, deep inside numba's own import."""
    import subprocess
    import sys

    import pytest
    if "numba" not in fm.available_backends():
        pytest.skip("needs the numba backend")
    code = """if True:
        import sys
        import fastmlp as fm

        class Interrupt:   # Ctrl-C as numba imports its typing package, after numba.core.config
            def find_spec(self, name, path=None, target=None):
                if name == "numba.core.typing":
                    raise KeyboardInterrupt
        sys.meta_path.insert(0, Interrupt())
        try:
            fm.Model([fm.Dense(2)], input_dim=2, backend="numba")
        except KeyboardInterrupt:
            print("interrupted")
        del sys.meta_path[0]
        print("numba" in fm.available_backends())
        m = fm.Model([fm.Dense(2)], input_dim=2, backend="numba", dtype="float64", seed=0)
        print(m.backend, m.predict([[1.0, 2.0]]).shape)
        """
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split() == ["interrupted", "True", "numba", "(1,", "2)"]


def test_a_backend_whose_import_breaks_is_named_not_raised(monkeypatch, tmp_path):
    # a dependency failing with something other than ImportError (a numba half imported,
    # a library built against another NumPy) makes the backend unavailable, saying why
    import sys

    import pytest
    from fastmlp import backends
    (tmp_path / "broken_backend_mod.py").write_text("import sys\nsys.no_such_thing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(backends._REGISTRY, "broken", "broken_backend_mod:Backend")
    assert "broken" not in fm.available_backends()
    with pytest.raises(ValueError, match="backend 'broken' is not available here: importing "
                                         "it raised AttributeError: .*no_such_thing"):
        backends.get_backend("broken")
    assert "broken_backend_mod" not in sys.modules


def test_numba_with_its_jit_switched_off_says_so():
    """Round 28: NUMBA_DISABLE_JIT=1 (Numba's debugging switch) made the numba backend's
    import fail with an internal AttributeError ('function' object has no attribute
    'py_func'); it is named as the reason, and the other backends still serve."""
    pytest.importorskip("numba")
    import subprocess
    import sys
    code = ("import fastmlp as fm\n"
            "assert 'numba' not in fm.available_backends()\n"
            "assert fm.Model([fm.Dense(2)], input_dim=2).backend != 'numba'\n"
            "try:\n"
            "    fm.Model([fm.Dense(2)], input_dim=2, backend='numba')\n"
            "except ValueError as exc:\n"
            "    print(exc)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, NUMBA_DISABLE_JIT="1"), timeout=300)
    assert res.returncode == 0, res.stderr
    assert "Numba's JIT is switched off (NUMBA_DISABLE_JIT is set)" in res.stdout

"""load under a caller's timeout: a SIGALRM handler raising TimeoutError (the usual way to
time a call out) while a model file is read.

Found by a hostile test timing fm.load out at random moments (4,000 calls): the
TimeoutError came back as "not a readable fastmlp model file: damaged or truncated" (1,800
calls: TimeoutError is an OSError, which load reads as a reading error), as "saved for
backend 'numpy', which is not available here" (18), or as OSError EBADF (30: the except
that closed a fresh descriptor landed after fdopen's file object owned it).
"""
import errno
import gc
import signal
import sys
import zipfile

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import backends


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "m.fastmlp"
    fm.Model([fm.Dense(4, "tanh"), fm.Dense(2)], input_dim=3, backend="numpy", seed=0).save(path)
    return path


def _raising_at_read(monkeypatch, exc, calls_before=0):
    """Every ZipExtFile.read after the first ``calls_before`` raises ``exc``, as a signal
    handler's exception or the disk's error would come out of it."""
    real, calls = zipfile.ZipExtFile.read, []

    def read(self, *args):
        calls.append(1)
        if len(calls) > calls_before:
            raise exc
        return real(self, *args)
    monkeypatch.setattr(zipfile.ZipExtFile, "read", read)


@pytest.mark.parametrize("calls_before", [0, 1, 3, 5])
def test_a_timeout_raised_while_reading_is_the_callers_timeout(saved, monkeypatch, calls_before):
    _raising_at_read(monkeypatch, TimeoutError("my time limit"), calls_before)
    with pytest.raises(TimeoutError, match="my time limit"):
        fm.load(saved)


def test_a_timeout_under_zipfiles_own_error_is_the_callers_timeout(saved, monkeypatch):
    # zipfile reports an OSError of its end-record search as BadZipFile ("File is not a
    # zip file"), which load then called a foreign format.
    def seek(self, *args):
        raise TimeoutError("my time limit")
    real_init = zipfile.ZipFile.__init__

    def init(self, file, *args, **kwargs):
        file.seek = seek.__get__(file)
        return real_init(self, file, *args, **kwargs)
    monkeypatch.setattr(zipfile.ZipFile, "__init__", init)
    with pytest.raises(TimeoutError, match="my time limit"):
        fm.load(saved)


def test_a_damaged_file_loaded_while_handling_a_timeout_is_a_bad_file(saved):
    # "the download timed out: load the cached copy": the chain of contexts reached the
    # caller's TimeoutError, which load then raised again for the damaged file
    data = saved.read_bytes()
    for damaged in (b"not a model file" * 10, data[:len(data) // 2]):
        saved.write_bytes(damaged)
        try:
            raise TimeoutError("the download timed out")
        except TimeoutError:
            with pytest.raises(ValueError, match="is not a readable fastmlp model file"):
                fm.load(saved)


def test_a_reading_error_with_its_number_is_still_the_files(saved, monkeypatch):
    # ETIMEDOUT from a network drive is also a TimeoutError: it carries its number.
    _raising_at_read(monkeypatch, OSError(errno.ETIMEDOUT, "Connection timed out"), 1)
    with pytest.raises(ValueError, match="not a readable fastmlp model file.*timed out"):
        fm.load(saved)


def test_an_imported_backend_is_found_whatever_import_module_raises(saved, monkeypatch):
    fm.load(saved)   # numpy's backend imported

    def import_module(name, *args):
        raise TimeoutError("my time limit")
    monkeypatch.setattr(backends.importlib, "import_module", import_module)
    assert backends.get_backend("numpy") is type(fm.load(saved).engine)


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs signal.setitimer")
def test_loads_timed_out_at_random_moments_raise_the_timeout_or_return(saved):
    """The timeouts land anywhere in load: each call returns a model or raises the caller's
    TimeoutError, never EBADF from a descriptor closed twice (raised by load, or by a file
    object's __del__ closing it again). A timeout may land in some object's __del__,
    which Python reports and ignores: collected here by a hook of the test's own (in
    pytest's, formatting the report, a second timeout failed the test): the handler's
    TimeoutError has no errno, where EBADF would."""
    def on_alarm(signum, frame):
        raise TimeoutError("my time limit")
    rng = np.random.default_rng(0)
    fm.load(saved)
    ignored, hook = [], sys.unraisablehook
    previous = signal.signal(signal.SIGALRM, on_alarm)
    outcomes, others = {"returned": 0, "timeout": 0}, []
    sys.unraisablehook = lambda unraisable: ignored.append(unraisable.exc_value)
    try:
        for _ in range(500):
            try:
                signal.setitimer(signal.ITIMER_REAL, rng.uniform(1e-6, 1.5e-3))
                try:
                    fm.load(saved)
                    outcomes["returned"] += 1
                except TimeoutError:
                    outcomes["timeout"] += 1
                except Exception as exc:   # noqa: BLE001 -- what the test looks for
                    others.append(f"{type(exc).__name__}: {exc}")
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            except TimeoutError:   # landed after the call, in this loop
                outcomes["timeout"] += 1
        gc.collect()   # file objects whose descriptor was closed already: EBADF
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        sys.unraisablehook = hook
    # (a timeout landing in ZipFile.__init__ also leaves it without _writing, which its
    # __del__ then needs: AttributeError, zipfile's own)
    assert not [exc for exc in ignored if isinstance(exc, OSError) and exc.errno], ignored
    # Two rare landings drop the TimeoutError before load sees it, and are let pass: in
    # zipfile's own seek, which zipfile turns into "not a zip file"; in the AST that
    # NumPy's .npy header parser builds (ast.literal_eval), where CPython 3.11 raises
    # "SystemError: AST constructor recursion depth mismatch" instead.
    damaged = [o for o in others if "foreign format" in o or "AST constructor" in o]
    assert len(others) - len(damaged) == 0, others[:5]
    assert len(damaged) <= 12, damaged[:3]
    assert outcomes["timeout"] > 100, outcomes

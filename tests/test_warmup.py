"""Numba's first compile: a one-line notice when it is slow, and `fastmlp warmup`."""
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
    monkeypatch.setattr(warmup, "_exercise", lambda dtype, cls: time.sleep(0.3))
    seconds = warmup.numba_kernels("float32")
    err = capsys.readouterr().err
    assert seconds >= 0.3
    assert err.count("\n") == 1 and "compiling the Numba kernels for float32" in err
    assert warmup.numba_kernels("float32") == 0.0  # once per process


def test_fast_load_prints_nothing(monkeypatch, capsys):
    monkeypatch.setattr(warmup, "_ready", set())
    monkeypatch.setattr(warmup, "_exercise", lambda dtype, cls: None)
    warmup.numba_kernels("float64")
    assert capsys.readouterr().err == ""


def test_a_failed_warmup_is_retried(monkeypatch):
    monkeypatch.setattr(warmup, "_ready", set())

    def boom(dtype, cls):
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

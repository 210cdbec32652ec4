"""Crash-safe files: a save killed at any moment leaves the previous file whole,
killed saves never pile up temporary files, readers never see a half-written file, loading never unpickles, and a saved
model predicts identically in a fresh process on every backend.

(Truncated, byte-flipped, foreign and bad-header files are in test_io.py.)
"""
import json
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import io as fio

TESTS = os.path.dirname(__file__)


def model(seed, backend="numpy", dtype="float32"):
    # ~1.2 MB of parameters and as much optimiser state: a save takes long enough to be hit.
    return fm.Model([fm.Dense(300, activation="relu"), fm.Dense(300, activation="tanh"),
                     fm.Dense(3, activation="softmax")], input_dim=20, loss="cross_entropy",
                    optimizer=fm.Adam(), backend=backend, dtype=dtype, seed=seed)


SAVER = r"""
import os, sys
sys.path.insert(0, sys.argv[2])
from test_files import model
path = sys.argv[1]
models = [model(1), model(2)]
print("ready", flush=True)
i = 0
while True:
    models[i % 2].save(path)
    i += 1
"""


def test_sigkill_while_saving_leaves_a_whole_loadable_file(tmp_path):
    path = tmp_path / "model.npz"
    X = np.random.default_rng(0).normal(size=(50, 20))
    expected = [model(1).predict(X), model(2).predict(X)]
    model(1).save(path)
    rnd = random.Random(1234)
    deadline = time.monotonic() + 60
    kills = landed_mid_save = 0
    while kills < 12 and time.monotonic() < deadline:
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(path), TESTS],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
            time.sleep(rnd.uniform(0.0, 0.25))
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        kills += 1
        loaded = fm.load(path)  # never half a file: one of the two models, whole
        y = loaded.predict(X)
        assert any(y.tobytes() == e.tobytes() for e in expected), f"kill {kills}: unknown model"
        # A killed save may leave its temporary file behind; the next save deletes those of
        # dead writers, so kills never pile them up: at most one, and never anything else.
        temps = [n for n in os.listdir(tmp_path) if n != "model.npz"]
        assert len(temps) <= 1, temps
        assert all(re.fullmatch(r"\.fastmlp-\d+-\w+\.tmp", n) for n in temps), temps
        landed_mid_save += bool(temps)
    assert kills >= 5
    assert landed_mid_save, "no kill landed in the middle of a save"
    model(3).save(path)  # a normal save cleans up after the killed ones
    assert os.listdir(tmp_path) == ["model.npz"]


READER = r"""
import sys, time
sys.path.insert(0, sys.argv[2])
import fastmlp as fm
n, t_end = 0, time.monotonic() + float(sys.argv[3])
while time.monotonic() < t_end:
    fm.load(sys.argv[1]).predict([[0.0] * 20])
    n += 1
print(n)
"""


def test_a_reader_never_sees_a_half_written_file(tmp_path):
    """One process loads in a loop while this one saves in a loop: every load succeeds."""
    path = tmp_path / "shared.npz"
    models = [model(1), model(2)]
    models[0].save(path)
    reader = subprocess.Popen([sys.executable, "-c", READER, str(path), TESTS, "3"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    saves = 0
    while reader.poll() is None:
        models[saves % 2].save(path)
        saves += 1
    out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err[-3000:]
    assert int(out) > 0 and saves > 0


class _Marker:
    """Unpickling this creates a file: proof that a pickle was (not) executed."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _arrays(path):
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


@pytest.mark.parametrize("where", ["theta", "header", "opt_buffers", "extra"])
def test_loading_never_runs_a_pickle(tmp_path, where):
    good = tmp_path / "good.npz"
    model(1).save(good)
    marker = tmp_path / "pwned"
    arrays = _arrays(good)
    arrays[where] = np.array([_Marker(str(marker))], dtype=object)
    evil = tmp_path / "evil.npz"
    with open(evil, "wb") as f:
        np.savez(f, **arrays)  # np.savez pickles object arrays
    # an unknown member is refused by its name, before its contents are looked at
    with pytest.raises(ValueError, match="unknown member" if where == "extra" else "pickle"):
        fm.load(evil)
    assert not marker.exists(), "loading executed a pickle"


def test_a_bare_pickle_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.npz"
    evil.write_bytes(pickle.dumps(_Marker(str(marker))))
    with pytest.raises(ValueError, match="pickles are never loaded"):
        fm.load(evil)
    assert not marker.exists()


def _rewrite_header(src, dst, change):
    arrays = _arrays(src)
    header = json.loads(arrays["header"].tobytes().decode())
    arrays["header"] = np.frombuffer(json.dumps(change(header)).encode(), dtype=np.uint8)
    with open(dst, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize("change,match", [
    (lambda h: dict(h, version=max(fio.READS) + 1), "format version"),
    (lambda h: dict(h, version="1"), "format version"),
    (lambda h: dict(h, network=dict(h["network"], layers=h["network"]["layers"][::2])),
     "parameters have shape"),
    (lambda h: dict(h, network=dict(h["network"], layers=[
        dict(l, units=l["units"] + 1) for l in h["network"]["layers"]])), "parameters have shape"),
    (lambda h: dict(h, dtype="float64"), "dtype"),
])
def test_wrong_version_or_architecture_is_a_clear_error(tmp_path, change, match):
    good = tmp_path / "good.npz"
    model(1).save(good)
    bad = tmp_path / "bad.npz"
    _rewrite_header(good, bad, change)
    with pytest.raises(ValueError, match=f"not a readable fastmlp model file.*{match}"):
        fm.load(bad)


def test_truncated_at_every_64th_byte_is_a_clear_error(tmp_path):
    good = tmp_path / "good.npz"
    fm.Model([fm.Dense(3)], input_dim=2, seed=0).save(good)
    data = good.read_bytes()
    bad = tmp_path / "cut.npz"
    for cut in range(0, len(data), 64):
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="not a readable fastmlp model file"):
            fm.load(bad)


LOADER = r"""
import sys
import numpy as np
import fastmlp as fm
m = fm.load(sys.argv[1])
np.save(sys.argv[3], m.predict(np.load(sys.argv[2])))
print(m.backend, m.dtype.name)
"""


def test_saved_model_predicts_identically_in_a_fresh_process(backend, dtype, tmp_path):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(257, 20))
    m = model(3, backend, dtype)
    m.fit(X, rng.integers(0, 3, size=257), epochs=2, batch_size=32)
    path, xpath, ypath = tmp_path / "m.npz", tmp_path / "x.npy", tmp_path / "y.npy"
    m.save(path)
    np.save(xpath, X)
    out = subprocess.run([sys.executable, "-c", LOADER, str(path), str(xpath), str(ypath)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == [backend, dtype]
    y = np.load(ypath)
    assert y.dtype == np.dtype(dtype) and y.tobytes() == m.predict(X).tobytes()

"""Save and load: identical models back, optimiser state restored, no pickle, atomic
writes, and a clear ValueError for every damaged, foreign or crafted file."""
import json
import os
import pickle

import numpy as np
import pytest

import fastmlp as fm
from helpers import saved_arrays, saved_header
from fastmlp import io as fio


def _model(backend, dtype="float32", optimizer=None, seed=0):
    return fm.Model([fm.Dense(6, "prelu"), fm.Dense(5, "elu", alpha=0.5), fm.Dense(3, "softmax")],
                    input_dim=4, loss="cross_entropy", optimizer=optimizer or fm.Adam(lr=0.01),
                    backend=backend, dtype=dtype, seed=seed)


@pytest.fixture
def data(rng):
    return rng.normal(size=(24, 4)), rng.integers(0, 3, size=24)


@pytest.fixture
def saved(tmp_path, data):
    model = _model("numpy")
    model.fit(*data, epochs=2, batch_size=8)
    path = tmp_path / "model.npz"
    model.save(path)
    return model, path


_arrays, _header = saved_arrays, saved_header


def _with_header(arrays, header):
    return dict(arrays, header=np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8))


def _write(path, arrays):
    with open(path, "wb") as f:  # a file object, so numpy adds no suffix
        np.savez(f, **arrays)


# -- round trips ---------------------------------------------------------------------

def test_load_gives_identical_predictions(backend, dtype, tmp_path, data):
    X, y = data
    model = _model(backend, dtype)
    model.fit(X, y, epochs=2, batch_size=8)
    model.save(tmp_path / "m.npz")
    again = fm.load(tmp_path / "m.npz")
    assert again.backend == backend and again.dtype == np.dtype(dtype)
    assert again.loss == "cross_entropy" and repr(again.optimizer) == repr(model.optimizer)
    assert [l.config() for l in again.layers] == [l.config() for l in model.layers]
    np.testing.assert_array_equal(again.predict(X), model.predict(X))
    for a, b in zip(again.get_weights(), model.get_weights()):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("optimizer", [fm.Adam(lr=0.01), fm.SGD(lr=0.05, momentum=0.9, nesterov=True)],
                         ids=["adam", "nesterov"])
def test_training_resumes_exactly_after_load(backend, dtype, tmp_path, data, optimizer):
    """fit 2 epochs == fit 1, save, load, fit 1: optimiser state and shuffling restored."""
    X, y = data
    straight = _model(backend, dtype, optimizer)
    straight.fit(X, y, epochs=2, batch_size=5)
    first = _model(backend, dtype, optimizer)
    first.fit(X, y, epochs=1, batch_size=5)
    first.save(tmp_path / "half")
    resumed = fm.load(tmp_path / "half")
    resumed.fit(X, y, epochs=1, batch_size=5)
    for a, b in zip(resumed.get_weights(), straight.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_load_on_another_backend(saved, data):
    model, path = saved
    X, _ = data
    for name in fm.available_backends():
        again = fm.load(path, backend=name)
        assert again.backend == name
        np.testing.assert_allclose(again.predict(X), model.predict(X), rtol=2e-4, atol=2e-5)


def test_file_holds_no_pickle(saved):
    _, path = saved
    arrays = _arrays(path)  # allow_pickle=False would raise on any object array
    assert set(fio.REQUIRED) <= set(arrays) <= set(fio.REQUIRED + fio.OPTIONAL)
    assert all(a.dtype != object for a in arrays.values())
    header = _header(arrays)
    # version 1 unless the file holds optional members an older fastmlp would ignore
    version = 2 if set(arrays) - set(fio.REQUIRED) else 1
    assert header["format"] == fio.FORMAT and header["version"] == version
    assert header["dtype"] == "float32" and header["network"]["loss"] == "cross_entropy"


def test_path_without_suffix_keeps_its_exact_name(tmp_path, data):
    model = _model("numpy")
    model.save(tmp_path / "my model")
    model.save(str(tmp_path / "weights.bin"))
    assert sorted(os.listdir(tmp_path)) == ["my model", "weights.bin"]  # no temp files left
    np.testing.assert_array_equal(fm.load(tmp_path / "my model").predict(data[0]),
                                  model.predict(data[0]))


def test_numpy_integer_seed_saves(tmp_path):
    model = fm.Model([fm.Dense(2)], input_dim=2, seed=np.int64(4))
    model.save(tmp_path / "m")
    np.testing.assert_array_equal(fm.load(tmp_path / "m").get_weights()[0], model.get_weights()[0])


def test_save_overwrites(tmp_path, data):
    a, b = _model("numpy", seed=0), _model("numpy", seed=1)
    a.save(tmp_path / "m")
    b.save(tmp_path / "m")
    np.testing.assert_array_equal(fm.load(tmp_path / "m").predict(data[0]), b.predict(data[0]))


# -- a failed save -------------------------------------------------------------------

def test_failed_write_leaves_the_old_file_intact(saved, monkeypatch):
    model, path = saved
    before = path.read_bytes()

    def crash(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(fio.np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        model.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == [path.name]  # the temporary file was removed
    fm.load(path)


def test_failed_rename_leaves_the_old_file_intact(saved, monkeypatch):
    model, path = saved
    before = path.read_bytes()

    def fail(src, dst):
        raise PermissionError("read-only")

    monkeypatch.setattr(fio.os, "replace", fail)
    with pytest.raises(PermissionError):
        _model("numpy", seed=5).save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before and os.listdir(path.parent) == [path.name]


# -- bad files -----------------------------------------------------------------------

def _load_fails(path, match):
    with pytest.raises(ValueError, match=match):
        fm.load(path)


@pytest.mark.parametrize("keep", [0, 1, 30, 200, 0.5, -22, -1])
def test_truncated_file(saved, tmp_path, keep):
    _, path = saved
    data = path.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    bad = tmp_path / "cut"
    bad.write_bytes(data[:cut])
    _load_fails(bad, "not a readable fastmlp model file: damaged or truncated")


def test_every_single_byte_corruption_is_caught_or_harmless(saved, tmp_path, data):
    """Flip each byte in turn: the load either fails with ValueError or returns the same model
    (some zip metadata, such as timestamps, is not needed to read the arrays)."""
    model, path = saved
    good = path.read_bytes()
    bad = tmp_path / "flipped"
    expected = model.predict(data[0])
    for pos in range(0, len(good), 3):
        flipped = bytearray(good)
        flipped[pos] ^= 0x5A
        bad.write_bytes(bytes(flipped))
        try:
            again = fm.load(bad)
        except ValueError as exc:
            assert "not a readable fastmlp model file" in str(exc)
            continue
        np.testing.assert_array_equal(again.predict(data[0]), expected, err_msg=f"byte {pos}")


@pytest.mark.parametrize("content,match", [
    (b"", "damaged or truncated"),
    (b"hello, I am a text file\n" * 10, "damaged or truncated"),
    (b"\x89PNG\r\n\x1a\n" + bytes(100), "damaged or truncated"),
    (pickle.dumps({"theta": [1.0, 2.0]}), "pickles are never loaded"),
])
def test_foreign_files(tmp_path, content, match):
    path = tmp_path / "foreign"
    path.write_bytes(content)
    _load_fails(path, match)


def test_foreign_numpy_files(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(5.0))
    _load_fails(tmp_path / "a.npy", "single NumPy array")
    np.savez(tmp_path / "b.npz", x=np.arange(3))
    _load_fails(tmp_path / "b.npz", "missing")


def test_pickled_object_array_is_refused(saved, tmp_path):
    """A crafted archive with a pickled object array must never be unpickled."""
    _, path = saved
    arrays = _arrays(path)
    evil = tmp_path / "evil.npz"
    _write(evil, dict(arrays, theta=np.array([{"a": 1}, None], dtype=object)))
    _load_fails(evil, "pickled objects")


@pytest.mark.parametrize("change,match", [
    (lambda h: dict(h, version=99), "format version 99"),
    (lambda h: dict(h, version=None), "format version None"),
    (lambda h: dict(h, format="keras"), "not written by fastmlp"),
    (lambda h: [1, 2, 3], "not written by fastmlp"),
    (lambda h: dict(h, dtype="float16"), "invalid header.*dtype"),
    (lambda h: dict(h, network=dict(h["network"], loss="hinge")), "invalid header.*unknown loss"),
    (lambda h: dict(h, network=dict(h["network"], layers="abc")), "invalid header"),
    (lambda h: dict(h, optimizer={"name": "rmsprop"}), "invalid header.*unknown optimizer"),
    (lambda h: dict(h, optimizer={"name": "sgd", "lr": -1}), "invalid header.*lr"),
    (lambda h: {k: v for k, v in h.items() if k != "network"}, "invalid header.*network"),
    (lambda h: dict(h, network=dict(h["network"], input_dim=5)), "parameters have shape"),
])
def test_bad_headers(saved, tmp_path, change, match):
    _, path = saved
    arrays = _arrays(path)
    bad = tmp_path / "bad"
    _write(bad, _with_header(arrays, change(_header(arrays))))
    _load_fails(bad, match)


def test_header_that_is_not_json(saved, tmp_path):
    _, path = saved
    bad = tmp_path / "bad"
    _write(bad, dict(_arrays(path), header=np.frombuffer(b"\xff\xfe{not json", dtype=np.uint8)))
    _load_fails(bad, "damaged header")


@pytest.mark.parametrize("change,match", [
    (lambda a: {k: v for k, v in a.items() if k != "theta"}, r"missing \['theta'\]"),
    (lambda a: dict(a, theta=a["theta"][:-1]), "parameters have shape"),
    (lambda a: dict(a, theta=a["theta"].astype(np.float64)), "dtype float64"),
    (lambda a: dict(a, theta=np.where(np.arange(a["theta"].size) == 3, np.nan, a["theta"])
                    .astype(a["theta"].dtype)), "NaN or inf"),
    (lambda a: dict(a, opt_buffers=a["opt_buffers"][:1]), "optimiser state"),
    (lambda a: dict(a, opt_step=np.zeros(3, np.int64)), "optimiser state"),
])
def test_bad_arrays(saved, tmp_path, change, match):
    _, path = saved
    bad = tmp_path / "bad"
    _write(bad, change(_arrays(path)))
    _load_fails(bad, match)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        fm.load(tmp_path / "nothing-here.npz")

"""Save and load against hostile paths and files (issue 8, items 8-11, 13, 14).

save: follows symbolic links, refuses to replace what is not a regular file,
keeps permission bits (0666 & ~umask for new files), refuses non-finite state
and keeps the old file, cleans up temporary files of dead writers only.
load: every crafted file is a ValueError naming the file, in memory bounded by
the file's real size; the optional members (input scaling, classes, feature
names) round-trip; version 1 files still load.
"""
import io
import json
import os
import re
import socket
import stat
import struct
import subprocess
import sys
import tracemalloc
import zipfile

import numpy as np
import pytest

import fastmlp as fm
from helpers import saved_arrays, saved_header
from fastmlp import _atomic
from fastmlp import io as fio

BAD = "not a readable fastmlp model file"


def _model(backend="numpy", dtype="float32", optimizer=None, seed=0):
    return fm.Model([fm.Dense(6, "prelu"), fm.Dense(5, "elu", alpha=0.5), fm.Dense(3, "softmax")],
                    input_dim=4, loss="cross_entropy", optimizer=optimizer or fm.Adam(lr=0.01),
                    backend=backend, dtype=dtype, seed=seed)


@pytest.fixture
def saved(tmp_path):
    model = _model()
    X = np.random.default_rng(0).normal(size=(24, 4))
    model.fit(X, np.arange(24) % 3, epochs=2, batch_size=8)
    path = tmp_path / "model.npz"
    model.save(path)
    return model, path


_arrays, _header = saved_arrays, saved_header


def _blob(text):
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)


def _write(path, arrays):
    with open(path, "wb") as f:  # a file object, so numpy adds no suffix
        np.savez(f, **arrays)


def _npy(array=None, header=None, data=b""):
    """The bytes of a .npy member: of ``array``, or a hand-written header dict and data."""
    buf = io.BytesIO()
    if array is not None:
        np.save(buf, array)
    else:
        np.lib.format.write_array_header_1_0(buf, header)
        buf.write(data)
    return buf.getvalue()


def _zip(path, members, compressed=()):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name + ".npy", data,
                        zipfile.ZIP_DEFLATED if name in compressed else zipfile.ZIP_STORED)


def _temps(folder):
    return [n for n in os.listdir(folder) if n.endswith(".tmp")]


# -- item 8: links and special files ----------------------------------------------------

def test_save_through_a_symlink_replaces_its_target(tmp_path):
    real_dir, link_dir = tmp_path / "real", tmp_path / "links"
    real_dir.mkdir()
    link_dir.mkdir()
    target, link = real_dir / "m.npz", link_dir / "latest"
    _model(seed=1).save(target)
    link.symlink_to(os.path.relpath(target, link_dir))
    new = _model(seed=2)
    new.save(link)
    assert link.is_symlink() and os.readlink(link) == os.path.relpath(target, link_dir)
    assert os.listdir(link_dir) == ["latest"] and os.listdir(real_dir) == ["m.npz"]
    np.testing.assert_array_equal(fm.load(target).get_weights()[0], new.get_weights()[0])


def test_save_through_a_dangling_symlink_creates_its_target(tmp_path):
    link, target = tmp_path / "link", tmp_path / "new.npz"
    link.symlink_to("new.npz")
    _model().save(link)
    assert link.is_symlink() and target.is_file()
    fm.load(link)


def _fifo(path):
    os.mkfifo(path)


def _socket(path):
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    return s


def _link_to_dev_null(path):
    os.symlink(os.devnull, path)


@pytest.mark.parametrize("make,kind", [(os.mkdir, "directory"), (_fifo, "fifo"), (_socket, "socket"),
                                       (_link_to_dev_null, "character device")])
def test_save_refuses_to_replace_what_is_not_a_regular_file(tmp_path, make, kind):
    path = tmp_path / "target"
    keep = make(path)
    try:
        before = os.stat(path).st_mode
        with pytest.raises(ValueError, match=f"cannot save to {re.escape(str(path))}.*{kind}, not a regular file"):
            _model().save(path)
        assert os.stat(path).st_mode == before
        assert stat.S_ISCHR(os.stat(os.devnull).st_mode)
        assert not _temps(tmp_path)
    finally:
        if keep is not None:
            keep.close()


def test_save_into_a_missing_folder_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        _model().save(tmp_path / "nowhere" / "m.npz")


# -- item 9: permission bits -------------------------------------------------------------

@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002, 0o027])
@pytest.mark.parametrize("proc", [True, False], ids=["proc", "fallback"])
def test_a_new_file_gets_0666_less_the_umask(tmp_path, umask, monkeypatch, mask, proc):
    if not proc:  # no /proc: read the umask by setting it twice
        def no_proc(*args, **kwargs):
            raise OSError("no /proc here")
        monkeypatch.setattr(_atomic, "open", no_proc, raising=False)
    umask(mask)
    assert _atomic.current_umask() == mask
    assert os.umask(mask) == mask  # reading it left it unchanged
    _model().save(tmp_path / "m")
    assert stat.S_IMODE(os.stat(tmp_path / "m").st_mode) == 0o666 & ~mask


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o444, 0o600, 0o664])
def test_overwriting_keeps_the_files_mode(tmp_path, umask, mode):
    path = tmp_path / "m"
    _model(seed=1).save(path)
    os.chmod(path, mode)
    umask(0o077)
    _model(seed=2).save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == mode
    link = tmp_path / "link"
    link.symlink_to("m")
    _model(seed=3).save(link)
    assert stat.S_IMODE(os.stat(path).st_mode) == mode


# -- item 10: save refuses what load would refuse ----------------------------------------

@pytest.mark.parametrize("spoil,match", [
    (lambda s: s["theta"].__setitem__(3, np.nan), "parameters contain NaN or inf"),
    (lambda s: s["theta"].__setitem__(0, np.inf), "parameters contain NaN or inf"),
    (lambda s: s["opt_buffers"].__setitem__((0, 1), np.nan), r"optimiser state \(opt_buffers\)"),
    (lambda s: s["opt_buffers"].__setitem__((1, 1), -1.0), "second-moment"),
    (lambda s: s["opt_step"].__setitem__(0, -1), "step count"),
])
def test_save_refuses_a_bad_state_and_keeps_the_old_file(saved, monkeypatch, spoil, match):
    model, path = saved
    before = path.read_bytes()
    state = model.get_state()
    spoil(state)
    monkeypatch.setattr(model, "get_state", lambda: state)
    with pytest.raises(ValueError, match=f"{match}.*not saved to {re.escape(str(path))}, an existing file there is kept"):
        model.save(path)
    assert path.read_bytes() == before and os.listdir(path.parent) == [path.name]


def test_save_refuses_object_classes(tmp_path):
    model = _model()
    model.classes_ = np.array(["a", 1, None], dtype=object)
    with pytest.raises(ValueError, match="classes .*dtype object.*not saved"):
        model.save(tmp_path / "m")
    assert os.listdir(tmp_path) == []


# -- item 11: stale temporary files ------------------------------------------------------

def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_only_temporaries_of_dead_writers_are_removed(tmp_path):
    dead, alive = _dead_pid(), os.getppid()
    names = {
        f".fastmlp-{dead}-abc_12x.tmp": False,     # ours, writer gone: removed
        f".fastmlp-{alive}-abc_12x.tmp": True,     # writer alive
        f".fastmlp-{os.getpid()}-zzz.tmp": True,   # this process
        ".fastmlp-1-q.tmp": True,                  # init: alive (or not ours to signal)
        ".fastmlp-k3j2.tmp": True,                 # an older fastmlp's name: no pid, kept
        f".fastmlp-{dead}-abc.tmp.bak": True,      # not our pattern
        f"fastmlp-{dead}-abc.tmp": True,
        "notes.tmp": True,
    }
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    _model().save(tmp_path / "m.npz")
    left = set(os.listdir(tmp_path))
    assert left == {n for n, keep in names.items() if keep} | {"m.npz"}


# -- item 13: memory bombs ---------------------------------------------------------------

def _fails_in_little_memory(path, match, limit=4 << 20):
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=f"{BAD}: .*{match}"):
            fm.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < limit, f"{peak / 2**20:.1f} MiB to refuse {path.name}"


def test_a_header_claiming_a_huge_network_is_refused_before_allocating(saved, tmp_path):
    _, path = saved
    arrays = _arrays(path)
    header = _header(arrays)
    header["network"] = {"input_dim": 4000, "loss": "cross_entropy", "layers": [
        {"units": 4000, "activation": "relu"}, {"units": 3, "activation": "softmax"}]}
    bad = tmp_path / "claims-16M-params.npz"
    _write(bad, dict(arrays, header=_blob(json.dumps(header))))
    assert bad.stat().st_size < 10_000
    _fails_in_little_memory(bad, r"parameters have shape \(89,\).*needs \(16016003,\)")


def test_an_extra_compressed_member_is_refused_unread(saved, tmp_path):
    _, path = saved
    bad = tmp_path / "extra.npz"
    zeros = 64 << 20
    with zipfile.ZipFile(bad, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, array in _arrays(path).items():
            zf.writestr(name + ".npy", _npy(array), zipfile.ZIP_STORED)
        with zf.open("extra.npy", "w", force_zip64=True) as member:  # deflated
            zf_header = {"descr": "|u1", "fortran_order": False, "shape": (zeros,)}
            member.write(_npy(header=zf_header))
            chunk = bytes(1 << 20)
            for _ in range(zeros >> 20):
                member.write(chunk)
    assert bad.stat().st_size < zeros // 500
    _fails_in_little_memory(bad, r"unknown member\(s\) \['extra'\]")


def test_a_compressed_member_is_refused(saved, tmp_path):
    _, path = saved
    bad = tmp_path / "deflated.npz"
    _zip(bad, {k: _npy(v) for k, v in _arrays(path).items()}, compressed={"opt_buffers"})
    _fails_in_little_memory(bad, "'opt_buffers' is compressed")


def test_a_member_header_claiming_a_trillion_values_is_refused(saved, tmp_path):
    _, path = saved
    arrays = _arrays(path)
    members = {k: _npy(v) for k, v in arrays.items()}
    members["theta"] = _npy(header={"descr": "<f4", "fortran_order": False, "shape": (10**12,)},
                            data=arrays["theta"].tobytes())
    bad = tmp_path / "trillion.npz"
    _zip(bad, members)
    _fails_in_little_memory(bad, r"parameters have shape \(1000000000000,\)")


def test_a_member_claiming_more_bytes_than_the_file_has_is_refused(saved, tmp_path):
    _, path = saved
    data = bytearray(path.read_bytes())
    central = data.index(b"PK\x01\x02")  # the central directory's entries
    while data[central + 46:central + 46 + 9] != b"theta.npy":
        central = data.index(b"PK\x01\x02", central + 4)
    struct.pack_into("<II", data, central + 20, 0xFFFFFFF0, 0xFFFFFFF0)  # compressed, real size
    bad = tmp_path / "4GB-member.npz"
    bad.write_bytes(bytes(data))
    _fails_in_little_memory(bad, "damaged or truncated")


def test_an_oversized_header_member_is_refused_unread(saved, tmp_path):
    _, path = saved
    arrays = _arrays(path)
    padded = json.dumps(_header(arrays)) + " " * (fio.MAX_HEADER_BYTES + 1)
    bad = tmp_path / "big-header.npz"
    _write(bad, dict(arrays, header=_blob(padded)))
    _fails_in_little_memory(bad, "damaged header")


# -- item 14: crafted header fields and arrays -------------------------------------------

def _set(path_in_header, value):
    """A change that sets header[k1][k2]... = value."""
    def change(h):
        node = h
        for key in path_in_header[:-1]:
            node = node[key]
        node[path_in_header[-1]] = value
        return h
    return change


def _layer(i, **fields):
    def change(h):
        h["network"]["layers"][i].update(fields)
        return h
    return change


CRAFTED_HEADERS = {
    "rng negative": _set(["rng_state", "state", "state"], -1),
    "rng 2**128": _set(["rng_state", "state", "inc"], 2**128),
    "rng float": _set(["rng_state", "state", "inc"], 1.5),
    "rng generator": _set(["rng_state", "bit_generator"], "MT19937"),
    "rng extra key": _set(["rng_state", "extra"], 1),
    "rng has_uint32": _set(["rng_state", "has_uint32"], 2),
    "rng uinteger": _set(["rng_state", "uinteger"], -5),
    "rng string": _set(["rng_state"], "abc"),
    "rng missing": lambda h: {k: v for k, v in h.items() if k != "rng_state"},
    "seed negative": _set(["seed"], -1),
    "seed string": _set(["seed"], "7"),
    "seed float": _set(["seed"], 1.5),
    "seed bool": _set(["seed"], True),
    "backend number": _set(["backend"], 5),
    "backend auto": _set(["backend"], "auto"),   # round 55: advice contradicting itself
    "input_dim 0": _set(["network", "input_dim"], 0),
    "input_dim bool": _set(["network", "input_dim"], True),
    "input_dim string": _set(["network", "input_dim"], "4"),
    "input_dim float": _set(["network", "input_dim"], 4.0),
    "input_dim 10**400": _set(["network", "input_dim"], 10**400),
    "network list": _set(["network"], [1, 2]),
    "layers of numbers": _set(["network", "layers"], [5]),
    "layers empty": _set(["network", "layers"], []),
    "units 0": _layer(0, units=0),
    "units string": _layer(0, units="6"),
    "units null": _layer(0, units=None),
    "units 10**30": _layer(0, units=10**30),
    "activation unknown": _layer(1, activation="swish"),
    "activation number": _layer(1, activation=5),
    "activation list": _layer(1, activation=["elu"]),
    "param string": _layer(1, alpha="0.5"),
    "param NaN": _layer(1, alpha=float("nan")),
    "param inf": _layer(0, alpha=float("inf")),
    "param 10**400": _layer(1, alpha=10**400),
    "param bool": _layer(1, alpha=True),
    "param unknown": _layer(1, beta=0.5),
    "softmax hidden": _layer(0, activation="softmax"),
    "loss number": _set(["network", "loss"], 5),
    "optimizer string": _set(["optimizer"], "adam"),
    "optimizer lr string": _set(["optimizer", "lr"], "0.1"),
    "optimizer lr 10**400": _set(["optimizer", "lr"], 10**400),
    "optimizer lr NaN": _set(["optimizer", "lr"], float("nan")),
    "optimizer unknown key": _set(["optimizer", "rho"], 0.9),
    "optimizer list": _set(["optimizer"], [1]),
    "dtype number": _set(["dtype"], 5),
    "dtype list": _set(["dtype"], ["float32"]),
    "version bool": _set(["version"], True),
    "version float": _set(["version"], 1.0),
    "format missing": lambda h: {k: v for k, v in h.items() if k != "format"},
}


@pytest.mark.parametrize("name", CRAFTED_HEADERS)
def test_crafted_header_fields_are_a_clear_error(saved, tmp_path, name):
    _, path = saved
    arrays = _arrays(path)
    bad = tmp_path / "bad"
    _write(bad, dict(arrays, header=_blob(json.dumps(CRAFTED_HEADERS[name](_header(arrays))))))
    with pytest.raises(ValueError, match=BAD):
        fm.load(bad)


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"a":' * 50_000 + "1" + "}" * 50_000,
                                  "1" * 5000, "\ud800"], ids=["nested list", "nested dict",
                                                              "5000 digits", "lone surrogate"])
def test_header_json_that_python_cannot_parse(saved, tmp_path, text):
    _, path = saved
    bad = tmp_path / "bad"
    _write(bad, dict(_arrays(path), header=np.frombuffer(text.encode("utf-8", "surrogatepass"),
                                                           dtype=np.uint8)))
    with pytest.raises(ValueError, match=f"{BAD}: damaged header"):
        fm.load(bad)


CRAFTED_ARRAYS = {
    "step string": (dict(opt_step=np.array(["5"])), "opt_step"),
    "step NaN": (dict(opt_step=np.array([np.nan])), "opt_step"),
    "step 1e30": (dict(opt_step=np.array([1e30])), "opt_step"),
    "step 2**62": (dict(opt_step=np.array([2**62], np.int64)), "step count"),
    "step negative": (dict(opt_step=np.array([-1], np.int64)), "step count"),
    "step int32": (dict(opt_step=np.array([3], np.int32)), "opt_step"),
    "step 2-D": (dict(opt_step=np.zeros((1, 1), np.int64)), "opt_step"),
    "buffers NaN": ("nan m", "NaN or inf"),
    "adam v negative": ("negative v", "second-moment"),
    "theta inf": ("inf theta", "NaN or inf"),
    "big-endian theta": ("big-endian", "parameters have shape"),
    "fortran buffers": ("fortran", None),
    "input_mean alone": (dict(input_mean=np.zeros(4)), "come together"),
    "input_scale zero": (dict(input_mean=np.zeros(4), input_scale=np.zeros(4)), "input_scale > 0"),
    "input_scale NaN": (dict(input_mean=np.zeros(4), input_scale=np.full(4, np.nan)), "finite"),
    "input_mean float32": (dict(input_mean=np.zeros(4, np.float32), input_scale=np.ones(4)),
                           "input_mean have shape"),
    "input_mean wrong length": (dict(input_mean=np.zeros(5), input_scale=np.ones(5)), "input_mean"),
    "classes empty": (dict(classes=np.array([], np.int64)), "classes"),
    "classes 2-D": (dict(classes=np.zeros((3, 1))), "classes"),
    "classes complex": (dict(classes=np.zeros(3, complex)), "classes"),
    "classes NaN": (dict(classes=np.array([0.0, np.nan, 2.0])), "classes contain NaN"),
    "classes bytes": (dict(classes=np.array([b"a", b"b"])), "classes"),
    "classes pickled": (dict(classes=np.array(["a", 1], dtype=object)), "pickled objects"),
    "feature names wrong length": (dict(feature_names=np.array(["a", "b"])), "feature_names"),
    "feature names numbers": (dict(feature_names=np.arange(4)), "feature_names"),
}


def _spoil(arrays, how):
    if isinstance(how, dict):
        return dict(arrays, **how)
    buffers, theta = arrays["opt_buffers"].copy(), arrays["theta"].copy()
    if how == "nan m":
        buffers[0, 2] = np.nan
    elif how == "negative v":
        buffers[1, 2] = -1e-3
    elif how == "inf theta":
        theta[-1] = np.inf
    elif how == "big-endian":
        theta = theta.astype(">f4")
    elif how == "fortran":
        buffers = np.asfortranarray(buffers)
    return dict(arrays, opt_buffers=buffers, theta=theta)


@pytest.mark.parametrize("name", CRAFTED_ARRAYS)
def test_crafted_arrays_are_a_clear_error(saved, tmp_path, name):
    model, path = saved
    how, match = CRAFTED_ARRAYS[name]
    bad = tmp_path / "bad"
    _write(bad, _spoil(_arrays(path), how))
    if match is None:  # a valid variant: loads, same model
        np.testing.assert_array_equal(fm.load(bad).get_state()["opt_buffers"],
                                      model.get_state()["opt_buffers"])
        return
    with pytest.raises(ValueError, match=f"{BAD}: .*{match}"):
        fm.load(bad)


def test_sgd_buffers_may_be_negative_but_not_nan(tmp_path):
    model = _model(optimizer=fm.SGD(lr=0.1, momentum=0.9))
    X = np.random.default_rng(1).normal(size=(12, 4))
    model.fit(X, np.arange(12) % 3, epochs=1, batch_size=4)
    path = tmp_path / "sgd"
    model.save(path)
    assert (_arrays(path)["opt_buffers"][0] < 0).any()
    fm.load(path)
    arrays = _arrays(path)
    arrays["opt_buffers"][1, 0] = np.inf
    _write(path, arrays)
    with pytest.raises(ValueError, match=f"{BAD}: .*NaN or inf"):
        fm.load(path)


def test_random_corruption_is_always_the_documented_error(tmp_path):
    """Many bytes changed at once, or cut, in a file with every optional member:
    ValueError with the documented message, or a model, never another exception."""
    model = _model()
    model.set_input_scaling(np.arange(4.0), np.ones(4))
    model.classes_, model.feature_names_in_ = np.array(["x", "y", "z"]), np.array(list("abcd"))
    good = tmp_path / "good"
    model.save(good)
    data = good.read_bytes()
    rng = np.random.default_rng(8)
    bad = tmp_path / "bad"
    for trial in range(400):
        spoilt = bytearray(data)
        for pos in rng.integers(0, len(data), size=rng.integers(1, 8)):
            spoilt[pos] = rng.integers(0, 256)
        if trial % 4 == 0:
            spoilt = spoilt[:rng.integers(0, len(data))]
        bad.write_bytes(bytes(spoilt))
        try:
            fm.load(bad)
        except ValueError as exc:
            assert BAD in str(exc), (trial, exc)


# -- backends named in the file -------------------------------------------------------------

def test_unknown_backend_in_the_file_or_the_call(saved, tmp_path):
    _, path = saved
    arrays = _arrays(path)
    bad = tmp_path / "bad"
    _write(bad, dict(arrays, header=_blob(json.dumps(dict(_header(arrays), backend="tpu")))))
    with pytest.raises(ValueError, match="saved for backend 'tpu'.*pass backend="):
        fm.load(bad)
    assert fm.load(bad, backend="numpy").backend == "numpy"
    _write(bad, dict(arrays, header=_blob(json.dumps(dict(_header(arrays), backend=None)))))
    assert fm.load(bad).backend == "numpy"
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        fm.load(path, backend="nope")


# -- optional members and version 1 ----------------------------------------------------------

def test_scaling_classes_and_feature_names_round_trip(backend, dtype, tmp_path):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(30, 4)) * 1e3 + 1.7e9
    model = _model(backend, dtype)
    mean, scale = X.mean(0), X.std(0)
    model.set_input_scaling(mean, scale)
    model.fit(X, np.arange(30) % 3, epochs=1, batch_size=8)
    model.classes_ = np.array(["car", "bike", "truck"])
    model.feature_names_in_ = np.array(["wheels", "height", "weight", "time"])
    model.save(tmp_path / "m")
    arrays = _arrays(tmp_path / "m")
    assert set(arrays) == set(fio.REQUIRED + fio.OPTIONAL) and _header(arrays)["version"] == 2
    again = fm.load(tmp_path / "m")
    for a, b in zip(again.input_scaling, (mean, scale)):
        assert a.dtype == np.float64 and a.tobytes() == b.tobytes()
    for a, b in [(again.classes_, model.classes_), (again.feature_names_in_, model.feature_names_in_)]:
        assert a.dtype == b.dtype and a.tolist() == b.tolist() and a.flags.writeable
    assert again.predict(X).tobytes() == model.predict(X).tobytes()


@pytest.mark.parametrize("classes", [np.array([0, 1, 2]), np.array([0.5, 1.5, 2.5]),
                                     np.array([False, True]), np.array(["ü", "日本", ""])])
def test_classes_of_every_allowed_dtype_round_trip(tmp_path, classes):
    # two classes on one sigmoid unit: a file's classes must fit its output layer
    model = _model() if len(classes) == 3 else fm.Model(
        [fm.Dense(3, "relu"), fm.Dense(1, "sigmoid")], input_dim=4,
        loss="binary_cross_entropy", backend="numpy")
    model.classes_ = classes
    model.save(tmp_path / "m")
    again = fm.load(tmp_path / "m").classes_
    assert again.dtype == classes.dtype and again.tolist() == classes.tolist()


def test_a_version_1_file_written_before_the_optional_members_still_loads(tmp_path):
    """Bytes laid out as fastmlp wrote them before version 2: four members, np.savez."""
    model = _model()
    X = np.random.default_rng(2).normal(size=(10, 4))
    model.fit(X, np.arange(10) % 3, epochs=1, batch_size=5)
    state = model.get_state()
    header = {"format": "fastmlp-model", "version": 1, "network": model.net.config(),
              "optimizer": model.optimizer.config(), "dtype": "float32", "backend": "numpy",
              "seed": 0, "rng_state": state["rng_state"]}
    path = tmp_path / "v1.npz"
    _write(path, {"header": _blob(json.dumps(header)), "theta": state["theta"],
                  "opt_buffers": state["opt_buffers"], "opt_step": state["opt_step"]})
    again = fm.load(path)
    assert again.predict(X).tobytes() == model.predict(X).tobytes()
    assert again.input_scaling is None and again.classes_ is None
    _model().save(tmp_path / "plain")  # still written as version 1 without optional members
    assert _header(_arrays(tmp_path / "plain"))["version"] == 1

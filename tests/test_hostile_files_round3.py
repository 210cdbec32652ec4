"""Save, load and the CLI against a third round of hostile files and paths.

- load: a damaged zip directory that hides members, and a header version that does
  not match the members present, are refused (they loaded as a different model);
  fifos, devices, sockets and directories are refused without blocking or reading
  them (a fifo hung, /dev/zero was read without end);
- save and --save: a path that names a folder (``models/``) is refused (it wrote a
  file ``models``); a folder where no file can be created is named by the caller's
  path, not the temporary file's;
- the CLI: a numeric target with missing cells is never taken as class labels
  (``--loss mse`` is regression; auto names the cell), and running out of memory
  while reading the data says so.
"""
import json
import os
import socket
import struct
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import fastmlp as fm
from helpers import run_cli, saved_arrays, saved_header
from fastmlp import _atomic

BAD = "not a readable fastmlp model file"


def _classifier():
    """A model with every optional member: input scaling, string classes, feature names."""
    rng = np.random.default_rng(0)
    X = rng.normal(loc=1000.0, scale=50.0, size=(60, 3))
    model = fm.Model([fm.Dense(4, "relu"), fm.Dense(3, "softmax")], input_dim=3,
                     loss="cross_entropy", optimizer=fm.Adam(0.01), backend="numpy", seed=0)
    model.set_input_scaling(X.mean(0), X.std(0))
    model.fit(X, np.array(["cat", "dog", "eel"])[np.arange(60) % 3], epochs=2)
    model.feature_names_in_ = np.array(["a", "b", "c"])
    return model


def _write(path, arrays):
    with open(path, "wb") as f:  # a file object, so numpy adds no suffix
        np.savez(f, **arrays)


def _with_header(arrays, **changes):
    header = dict(saved_header(arrays), **changes)
    blob = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    return dict(arrays, header=blob)


# -- load: damaged directories and versions ------------------------------------------------

def _directory_entries(data):
    """(offset, name) of each central-directory entry of the zip bytes ``data``."""
    end = data.rfind(b"PK\x05\x06")
    count = struct.unpack_from("<H", data, end + 10)[0]   # total entries
    offset = struct.unpack_from("<I", data, end + 16)[0]  # where the directory starts
    entries = []
    for _ in range(count):
        assert data[offset:offset + 4] == b"PK\x01\x02"
        n_name, n_extra, n_comment = struct.unpack_from("<HHH", data, offset + 28)
        entries.append((offset, bytes(data[offset + 46:offset + 46 + n_name]).decode()))
        offset += 46 + n_name + n_extra + n_comment
    return entries


@pytest.fixture
def saved_classifier(tmp_path):
    model = _classifier()
    model.save(tmp_path / "m.npz")
    return model, tmp_path / "m.npz"


def test_one_flipped_bit_that_hides_members_is_refused(saved_classifier, tmp_path):
    """The hostile tester's repro: the comment length of one directory entry grows to 256,
    so zipfile takes the entries after it for its comment; they held the input scaling and
    the classes, and the file loaded as a different model."""
    _, path = saved_classifier
    data = path.read_bytes()
    entries = _directory_entries(data)
    assert len(entries) == 8  # the four required members and the four optional ones
    for offset, name in entries[:-1]:  # the last entry's comment would swallow only the end record
        damaged = bytearray(data)
        damaged[offset + 33] ^= 0x01
        bad = tmp_path / f"damaged-{name}"
        bad.write_bytes(damaged)
        with pytest.raises(ValueError, match=BAD) as caught:
            fm.load(bad)
        if name == "opt_step.npy":  # the repro: the entries after it vanished without a word
            assert "damaged zip directory: its end record counts 8 members, but 4 could be " \
                   "read" in str(caught.value)


def test_a_version_2_header_without_its_members_is_refused(saved_classifier, tmp_path):
    _, path = saved_classifier
    arrays = saved_arrays(path)
    required = {k: arrays[k] for k in ("header", "theta", "opt_buffers", "opt_step")}
    _write(tmp_path / "bad", required)
    with pytest.raises(ValueError, match=f"{BAD}: format version 2, but it holds none of the "
                                         "members that version adds"):
        fm.load(tmp_path / "bad")


@pytest.mark.parametrize("optional", [("classes",), ("input_mean", "input_scale"), ("feature_names",)])
def test_a_version_1_header_with_optional_members_is_refused(saved_classifier, tmp_path, optional):
    _, path = saved_classifier
    arrays = saved_arrays(path)
    kept = {k: arrays[k] for k in ("header", "theta", "opt_buffers", "opt_step") + optional}
    _write(tmp_path / "bad", _with_header(kept, version=1))
    with pytest.raises(ValueError, match=f"{BAD}: format version 1, which has no "
                                         f"{', '.join(sorted(optional))}, but the file holds them"):
        fm.load(tmp_path / "bad")


@pytest.mark.parametrize("optional", [(), ("classes",), ("input_mean", "input_scale"),
                                      ("feature_names",)])
def test_every_combination_save_writes_still_loads(saved_classifier, tmp_path, optional):
    """What save writes for each set of optional members (version 1 for none, else 2)."""
    model, path = saved_classifier
    arrays = saved_arrays(path)
    kept = {k: arrays[k] for k in ("header", "theta", "opt_buffers", "opt_step") + optional}
    _write(tmp_path / "ok", _with_header(kept, version=2 if optional else 1))
    again = fm.load(tmp_path / "ok")
    assert (again.classes_ is not None) == ("classes" in optional)
    assert (again.input_scaling is not None) == ("input_mean" in optional)
    assert (again.feature_names_in_ is not None) == ("feature_names" in optional)


# -- load: only regular files --------------------------------------------------------------

_LOAD_EACH = textwrap.dedent("""
    import resource, sys
    import fastmlp as fm
    # 1 GiB more than the imports took: reading /dev/zero whole ends in MemoryError
    with open("/proc/self/statm") as f:
        size = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 30), resource.getrlimit(resource.RLIMIT_AS)[1]))
    for path in sys.argv[1:]:
        try:
            fm.load(path)
            print(path, "-> loaded", flush=True)
        except Exception as exc:
            print(path, "->", type(exc).__name__, exc, flush=True)
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_fifos_devices_and_sockets_are_refused_without_reading_them(tmp_path):
    """In a child with a timeout and a memory limit: before the fix the fifo blocked for
    ever and /dev/zero was read until memory ran out."""
    fifo = tmp_path / "model.npz"
    os.mkfifo(fifo)
    sock_path = tmp_path / "s.npz"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    try:
        paths = [str(fifo), "/dev/zero", "/dev/null", str(sock_path)]
        result = subprocess.run([sys.executable, "-c", _LOAD_EACH, *paths], capture_output=True,
                                text=True, timeout=120)
    finally:
        sock.close()
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and len(lines) == 4, (result.stdout, result.stderr)
    for line, (path, kind) in zip(lines, [(fifo, "a fifo"), ("/dev/zero", "a character device"),
                                          ("/dev/null", "a character device"),
                                          (sock_path, "a socket")]):
        assert line == f"{path} -> ValueError {path} is {BAD}: it is {kind}, not a regular file"


def test_a_fifo_with_a_writer_is_refused_too(tmp_path):
    """A writer already waiting (the fifo opens at once): refused all the same, unread."""
    fifo = tmp_path / "model.npz"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: open(fifo, "wb").close(), daemon=True)
    writer.start()
    try:
        with pytest.raises(ValueError, match=f"{BAD}: it is a fifo"):
            fm.load(fifo)
    finally:
        # the writer blocks until a reader opens: open one ourselves if load never did
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        writer.join(10)
        os.close(fd)


def test_a_directory_is_refused_as_not_a_file(tmp_path):
    with pytest.raises(ValueError, match=f"{BAD}: it is a directory, not a regular file"):
        fm.load(tmp_path)


def test_missing_files_and_link_loops_still_raise_what_open_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        fm.load(tmp_path / "missing.npz")
    os.symlink("loop", tmp_path / "loop")
    with pytest.raises(OSError) as caught:
        fm.load(tmp_path / "loop")
    assert not isinstance(caught.value, ValueError)


def test_a_symlink_to_a_model_still_loads(saved_classifier, tmp_path):
    model, path = saved_classifier
    os.symlink(path, tmp_path / "link.npz")
    assert fm.load(tmp_path / "link.npz").classes_.tolist() == ["cat", "dog", "eel"]


# -- save: paths that name a folder, and the caller's path in errors ------------------------

@pytest.mark.parametrize("name", ["models/", "models/.", "models/.."])
def test_save_refuses_a_path_that_names_a_missing_folder(tmp_path, name):
    path = str(tmp_path / "x")[:-1] + name  # tmp_path/models/ etc., spelled as given
    with pytest.raises(ValueError, match="names a folder, not a file; give a file name"):
        _classifier().save(path)
    assert sorted(os.listdir(tmp_path)) == []  # no file 'models' (or anything) was written


def test_save_refuses_a_trailing_slash_after_an_existing_file(saved_classifier):
    _, path = saved_classifier
    before = path.read_bytes()
    with pytest.raises(ValueError, match=f"cannot save to {path}/: it ends with '/'"):
        fm.Model([fm.Dense(2, "softmax")], input_dim=3, loss="cross_entropy",
                 backend="numpy").save(f"{path}/")
    assert path.read_bytes() == before
    with pytest.raises(ValueError, match=f"{BAD}: it ends with '/'"):
        fm.load(f"{path}/")


def test_save_refuses_a_bytes_path_with_a_trailing_slash(tmp_path):
    with pytest.raises(ValueError, match="names a folder"):
        _classifier().save(os.fsencode(tmp_path) + b"/m/")
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_saving_where_no_file_can_be_created_names_the_callers_path():
    """/proc/<pid> holds files that can be read, but no new file: the error named the
    temporary file '/proc/<pid>/.fastmlp-...tmp', which the caller never chose."""
    with pytest.raises(OSError) as caught:
        _classifier().save("/proc/self/status")
    message = str(caught.value)
    assert "cannot save /proc/self/status" in message and ".fastmlp-" not in message


def test_a_folder_where_creating_fails_is_named_with_the_callers_path(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / ".fastmlp-1-x.tmp"))

    monkeypatch.setattr(_atomic.tempfile, "mkstemp", refuse)
    with pytest.raises(PermissionError, match=f"cannot save {tmp_path / 'm.npz'}: cannot create a "
                                              f"file in {tmp_path} \\(Permission denied\\)") as caught:
        _classifier().save(tmp_path / "m.npz")
    assert ".fastmlp-" not in str(caught.value)


def test_a_failed_rename_is_named_with_the_callers_path(tmp_path, monkeypatch):
    def refuse(src, dst):
        raise OSError(16, "Device or resource busy", src, dst)

    monkeypatch.setattr(_atomic.os, "replace", refuse)
    with pytest.raises(OSError, match="cannot save .*m.npz: cannot replace it") as caught:
        _classifier().save(tmp_path / "m.npz")
    monkeypatch.undo()
    assert ".fastmlp-" not in str(caught.value) and os.listdir(tmp_path) == []


# -- the CLI ---------------------------------------------------------------------------------

def one_line_error(code, err):
    return code == 2 and err.startswith("fastmlp train: error:") and err.count("\n") == 1 \
        and "Traceback" not in err


def _houses(tmp_path, bad_cell="NA", bad_row=3, n=40):
    """A 40-row price table (40 distinct prices) with one bad target cell."""
    rng = np.random.default_rng(0)
    lines = ["area,rooms,price"]
    for i in range(n):
        area, rooms = rng.uniform(50, 200), rng.integers(1, 7)
        price = bad_cell if i == bad_row else f"{area * 1000 + rooms * 5000 + rng.normal(0, 1e4):.2f}"
        lines.append(f"{area:.1f},{rooms},{price}")
    path = tmp_path / "houses.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_loss_mse_with_a_missing_target_cell_is_regression_and_names_the_cell(tmp_path, capsys):
    """It trained a 40-class classifier of price strings."""
    data = _houses(tmp_path)
    code, out, err = run_cli(capsys, "train", "--data", str(data), "--target", "price",
                             "--loss", "mse", "--epochs", "1", "--backend", "numpy")
    assert one_line_error(code, err), err
    assert f"{data}, line 5, target column 'price': 'NA' is not a finite number" in err
    assert "model:" not in out


@pytest.mark.parametrize("cell", ["NA", "n/a", "NaN", "nan", "null", "None", "?", "inf", "-Infinity"])
def test_auto_refuses_numbers_with_missing_cells_naming_the_first(tmp_path, capsys, cell):
    data = _houses(tmp_path, bad_cell=cell, bad_row=7)
    code, out, err = run_cli(capsys, "train", "--data", str(data), "--epochs", "1",
                             "--backend", "numpy")
    assert one_line_error(code, err), err
    what = "not a finite number" if "inf" in cell.lower() else "a missing value"
    assert f"{data}, line 9, target column 'price': {cell!r} is {what}, in a column of numbers" in err
    assert "--task classification" in err and "model:" not in out


def test_auto_with_few_integer_labels_and_a_missing_cell_is_refused_too(tmp_path, capsys):
    data = tmp_path / "t.csv"
    data.write_text("a,b,y\n1,2,3\n2,3,NA\n3,4,5\n4,5,3\n")
    code, _, err = run_cli(capsys, "train", "--data", str(data), "--epochs", "1", "--backend", "numpy")
    assert one_line_error(code, err) and "line 3, target column 'y': 'NA' is a missing value" in err


def test_text_labels_and_task_classification_still_train(tmp_path, capsys):
    """Text among text is a label ('NA' a class of its own); --task classification takes
    every cell as a label, as the error advises."""
    text = tmp_path / "w.csv"
    text.write_text("a,y\n" + "".join(f"{i},{['cat', 'dog', 'NA'][i % 3]}\n" for i in range(12)))
    code, out, err = run_cli(capsys, "train", "--data", str(text), "--epochs", "1",
                             "--backend", "numpy", "--test-fraction", "0")
    assert code == 0 and "classification (text labels in the target column)" in out, err
    numbers = tmp_path / "v.csv"
    numbers.write_text("a,y\n" + "".join(f"{i},{['1', '2', 'NA'][i % 3]}\n" for i in range(12)))
    code, out, err = run_cli(capsys, "train", "--data", str(numbers), "--epochs", "1",
                             "--backend", "numpy", "--test-fraction", "0",
                             "--task", "classification")
    assert code == 0 and "3 classes" in out, err


@pytest.mark.parametrize("name", ["outdir/", "outdir/."])
def test_cli_save_refuses_a_folder_name_before_training(tmp_path, capsys, name):
    save = str(tmp_path / "x")[:-1] + name
    code, out, err = run_cli(capsys, "train", "--epochs", "1", "--backend", "numpy", "--save", save)
    assert one_line_error(code, err), err
    assert f"--save {save}: it ends with" in err and "names a folder" in err
    assert "epoch" not in out and os.listdir(tmp_path) == []


def test_out_of_memory_reading_the_data_says_so(tmp_path, capsys, monkeypatch):
    """It advised smaller --layers or --batch-size for a CSV too big to read."""
    from fastmlp import _cli_data

    def too_big(*args, **kwargs):
        raise MemoryError

    data = _houses(tmp_path)
    monkeypatch.setattr(_cli_data.datasets, "read_csv", too_big)
    code, _, err = run_cli(capsys, "train", "--data", str(data), "--backend", "numpy")
    assert one_line_error(code, err), err
    assert f"out of memory while reading --data {data}" in err
    assert "--layers" not in err and "--batch-size" not in err


def test_out_of_memory_training_still_advises_smaller_layers(tmp_path, capsys, monkeypatch):
    def too_big(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(fm.Model, "fit", too_big)
    code, _, err = run_cli(capsys, "train", "--epochs", "1", "--backend", "numpy")
    assert one_line_error(code, err), err
    assert "out of memory; use smaller --layers or --batch-size" in err


def test_saving_over_one_name_of_a_hard_link_keeps_the_other(tmp_path):
    # the README's promise: the new file is a new inode, so the other name keeps the old model
    first, second = tmp_path / "a.fastmlp", tmp_path / "b.fastmlp"
    X = np.linspace(-1, 1, 8, dtype=np.float32).reshape(4, 2)
    old = fm.Model([fm.Dense(2)], input_dim=2, backend="numpy", seed=0)
    new = fm.Model([fm.Dense(2)], input_dim=2, backend="numpy", seed=1)
    old.save(first)
    os.link(first, second)
    new.save(first)
    np.testing.assert_array_equal(fm.load(first).predict(X), new.predict(X))
    np.testing.assert_array_equal(fm.load(second).predict(X), old.predict(X))
    assert os.stat(first).st_ino != os.stat(second).st_ino

"""The shipped data sets, the CSV loader and the split/standardize helpers."""
import gzip
import os

import numpy as np
import pytest

from fastmlp import datasets


def write(tmp_path, text, name="data.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# -- shipped data -----------------------------------------------------------------

def test_digits_shape_range_and_classes():
    X, y = datasets.load_digits()
    assert X.shape == (1797, 64) and X.dtype == np.float64 and X.flags.c_contiguous
    assert y.shape == (1797,) and y.dtype == np.int64
    assert X.min() == 0 and X.max() == 16 and np.all(X == np.round(X))
    counts = np.bincount(y)
    assert len(counts) == 10 and counts.min() >= 170  # roughly balanced, ~180 each


def test_vehicles_is_the_lessons_table():
    X, Y = datasets.load_vehicles()
    assert X.shape == (6, 3) and Y.shape == (6, 2)
    assert X[:, 0].tolist() == [4, 4, 4, 2, 2, 2]
    assert X[:, 1].tolist() == [6, 5.5, 5, 3, 3.5, 4]
    assert X[:, 2].tolist() == [500, 600, 550, 200, 150, 250]
    assert Y.argmax(axis=1).tolist() == [0, 0, 0, 1, 1, 1]  # car, bike
    assert np.all(Y.sum(axis=1) == 1)


# -- split and standardize -----------------------------------------------------------

def test_split_partitions_rows_reproducibly():
    X = np.arange(50.0).reshape(25, 2)
    y = np.arange(25)
    Xtr, Xte, ytr, yte = datasets.train_test_split(X, y, 0.2, seed=3)
    assert len(Xte) == 5 and len(Xtr) == 20
    assert sorted(np.concatenate([ytr, yte]).tolist()) == list(range(25))
    np.testing.assert_array_equal(Xtr[:, 0], 2 * ytr)  # rows stay paired with labels
    again = datasets.train_test_split(X, y, 0.2, seed=3)
    np.testing.assert_array_equal(again[3], yte)
    other = datasets.train_test_split(X, y, 0.2, seed=4)
    assert not np.array_equal(other[3], yte)


def test_split_keeps_a_row_on_each_side():
    Xtr, Xte, _, _ = datasets.train_test_split(np.zeros((3, 1)), np.zeros(3), 0.01)
    assert len(Xte) == 1 and len(Xtr) == 2
    Xtr, Xte, _, _ = datasets.train_test_split(np.zeros((3, 1)), np.zeros(3), 0.99)
    assert len(Xte) == 2 and len(Xtr) == 1


@pytest.mark.parametrize("fraction", [0, 1, -0.5, 1.5, True])
def test_split_rejects_bad_fractions(fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        datasets.train_test_split(np.zeros((10, 1)), np.zeros(10), fraction)


def test_split_rejects_mismatched_or_tiny_input():
    with pytest.raises(ValueError, match="rows"):
        datasets.train_test_split(np.zeros((10, 1)), np.zeros(9))
    with pytest.raises(ValueError, match="at least 2"):
        datasets.train_test_split(np.zeros((1, 1)), np.zeros(1))


def test_standardize_uses_training_statistics(rng):
    train = rng.normal(5.0, 3.0, size=(40, 3))
    train[:, 2] = 7.0  # constant column
    test = rng.normal(size=(10, 3))
    tr, te, mean, std = datasets.standardize(train, test)
    np.testing.assert_allclose(tr[:, :2].mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(tr[:, :2].std(axis=0), 1, rtol=1e-12)
    np.testing.assert_array_equal(tr[:, 2], 0)
    assert std[2] == 1 and mean[2] == 7
    np.testing.assert_allclose(te, (test - train.mean(axis=0)) / std, rtol=1e-12)


# -- CSV -------------------------------------------------------------------------------

def test_csv_string_labels_target_in_the_middle(tmp_path):
    path = write(tmp_path, "a,kind,b\n1,dog,2\n3,cat,4\n\n5,dog,6.5\n")
    X, y, classes, features = datasets.load_csv(path, "kind")
    assert classes == ["cat", "dog"] and features == ["a", "b"]
    assert y.tolist() == [1, 0, 1]
    np.testing.assert_array_equal(X, [[1, 2], [3, 4], [5, 6.5]])


def test_csv_numeric_labels_sort_as_numbers_and_default_to_last_column(tmp_path):
    path = write(tmp_path, "\ufeffx , y\n0.5,10\n1.5,9\n2.5,10.0\n")  # BOM, spaces in header
    X, y, classes, features = datasets.load_csv(path)
    assert features == ["x"] and classes == ["9", "10"]
    assert y.tolist() == [1, 0, 1]


def test_csv_gz(tmp_path):
    path = tmp_path / "d.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write("f1,f2,label\n1,2,a\n3,4,b\n")
    X, y, classes, _ = datasets.load_csv(path, "label")
    assert X.shape == (2, 2) and classes == ["a", "b"]


@pytest.mark.parametrize("text, target, message", [
    ("", "y", "empty"),
    ("\n\n", "y", "empty"),
    ("a,y\n", "y", "no data rows"),
    ("a,colour,y\n1,red,0\n2,blue,1\n", "y", r"line 2, column 'colour': 'red' is not a number"),
    ("a,y\n1,0\n2,1\n", "label", r"no column 'label'; its columns are: a, y"),
    ("a,b,y\n1,2,0\n3,1\n", "y", r"line 3: 2 fields but the header has 3"),
    ("a,b,y\n1,2,0\n3,4,5,1\n", "y", r"line 3: 4 fields"),
    ("a,y\n1,0\n,1\n", "y", r"line 3, column 'a': missing value"),
    ("a,y\n1,0\nnan,1\n", "y", r"column 'a': 'nan' is not a finite number"),
    ("a,y\n1,0\n2,\n", "y", r"line 3, target column 'y': missing value"),
    ("a,y\n1,0\n2,0\n", "y", r"only one class"),
    ("a,a,y\n1,2,0\n", "y", r"'a' appears twice"),
    ("a,,y\n1,2,0\n", "y", r"column 2 of the header has no name"),
    ("y\n0\n1\n", "y", r"only the target column"),
])
def test_csv_bad_input_is_named(tmp_path, text, target, message):
    path = write(tmp_path, text)
    with pytest.raises(ValueError, match=message):
        datasets.load_csv(path, target)


def test_csv_not_utf8(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("a,y\n1,caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        datasets.load_csv(path, "y")


def test_standardization_matches_the_plain_formulas_bit_for_bit(rng):
    X = rng.normal(5.0, 3.0, size=(100, 4)) * [1, 1e-100, 1e100, 1.7e9]
    mean, scale = datasets.standardization(X)
    np.testing.assert_array_equal(mean, X.mean(axis=0))
    np.testing.assert_array_equal(scale, X.std(axis=0))


@pytest.mark.parametrize("value", [0.1, 1e30, -3e-300, 5.0, 1.7e308])
def test_a_constant_column_is_its_value_with_scale_1(rng, value):
    """Hostile README audit, 2026-12-07: a column of 0.1 in every row got a mean one
    rounding off 0.1 and a scale of 1.7e-16 (1.4e14 for 1e30), which made that column
    swing every prediction (only a std of exactly 0 was given scale 1)."""
    X = np.c_[rng.normal(size=50), np.full(50, value)]
    mean, scale = datasets.standardization(X)
    assert mean[1] == value and scale[1] == 1
    assert mean[0] == X.mean(axis=0)[0] and scale[0] == X.std(axis=0)[0]
    assert np.array_equal(datasets.standardize(X)[0][:, 1], np.zeros(50))


def test_standardization_of_values_near_float64_max(rng):
    """Issue 8.19: the plain mean/std overflow to inf for finite values near 1.7e308."""
    X = rng.uniform(0.5, 1.0, size=(50, 2)) * 1.7e308
    with np.errstate(over="ignore"):
        assert not np.isfinite(X.mean(axis=0)).all()  # what the old code computed
    mean, scale = datasets.standardization(X)
    assert np.isfinite(mean).all() and np.isfinite(scale).all()
    np.testing.assert_allclose(mean, (X / 1e300).mean(axis=0) * 1e300, rtol=1e-14)
    np.testing.assert_allclose(scale, (X / 1e300).std(axis=0) * 1e300, rtol=1e-12)
    Xs = datasets.standardize(X)[0]
    np.testing.assert_allclose(Xs.std(axis=0), 1, rtol=1e-12)


def test_standardization_names_a_column_it_cannot_scale():
    X = np.array([[1.0, 1.7e308]] * 9 + [[2.0, -1.7e308]])
    with pytest.raises(ValueError, match=r"column 'huge' has values too large to standardize "
                                         r"\(\|x\| up to 1.7e\+308\)"):
        datasets.standardization(X, ["small", "huge"])
    mean, scale = datasets.standardization(X[:9], ["small", "huge"])  # fine on its own rows
    with pytest.raises(ValueError, match="column 1 has values too large"):
        datasets.check_standardizable(X, mean, scale)
    with pytest.raises(ValueError, match="column 'huge' contains NaN or inf"):
        datasets.standardization([[1.0, 2.0], [2.0, np.nan]], ["small", "huge"])


def test_read_csv_then_regression_or_classification_targets(tmp_path):
    path = write(tmp_path, "a,y\n1,2.5\n2,-1e3\n3,2.5\n")
    table = datasets.read_csv(path)
    assert table.target == "y" and table.features == ["a"] and table.lines == [2, 3, 4]
    np.testing.assert_array_equal(datasets.numeric_target(table), [2.5, -1000, 2.5])
    y, classes = datasets.class_labels(table)
    assert classes == ["-1000", "2.5"] and y.tolist() == [1, 0, 1]


def test_numeric_target_names_a_text_cell(tmp_path):
    table = datasets.read_csv(write(tmp_path, "a,y\n1,2.5\n2,big\n"))
    assert datasets.numeric_target(table, required=False) is None
    with pytest.raises(ValueError, match=r"line 3, target column 'y': 'big' is not a finite number"):
        datasets.numeric_target(table)


def _gz(text):
    return gzip.compress(text.encode())


LONG = "a,y\n" + "1,0\n2,1\n" * 500


@pytest.mark.parametrize("name, content, message", [
    ("cut.csv.gz", _gz(LONG)[:-30], "the gzip data is truncated"),
    ("plain.csv.gz", b"a,y\n1,0\n", r"not a valid gzip file \(Not a gzipped file"),
    ("crc.csv.gz", _gz(LONG)[:-8] + b"\0\0\0\0" + _gz(LONG)[-4:], "not a valid gzip file"),
    ("flipped.csv.gz", _gz(LONG)[:30] + b"\xff" * 40 + _gz(LONG)[70:], "gzip"),
    ("latin1.csv", "a,y\n1,caf\xe9\n".encode("latin-1"), r"not UTF-8 text \(byte 0xe9"),
    ("long.csv", b"a,y\n1," + b"x" * 200_000 + b"\n", r"long.csv, line 2: a cell longer than 131,072 characters, the most Python.s csv"),
])
def test_damaged_files_are_a_value_error_naming_the_file(tmp_path, name, content, message):
    """Issue 8.18: these gave EOFError, zlib.error or an error without the file's name."""
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        datasets.load_csv(path)
    assert str(info.value).startswith((f"{path}: ", f"{path}, line "))


def test_missing_file_and_directory_are_value_errors_naming_them(tmp_path):
    with pytest.raises(ValueError, match=r"nope.csv: No such file or directory$"):
        datasets.load_csv(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match=f"^{tmp_path}: Is a directory$"):
        datasets.load_csv(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path):
    path = write(tmp_path, "a,y\n1,0\n")
    path.chmod(0)
    with pytest.raises(ValueError, match="Permission denied"):
        datasets.load_csv(path)

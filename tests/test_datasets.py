"""The shipped data sets, the CSV loader and the split/standardize helpers."""
import gzip

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
    ("a,y\n1,0\n2,\n", "y", r"target column 'y': missing label"),
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


def test_csv_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        datasets.load_csv(tmp_path / "nope.csv")

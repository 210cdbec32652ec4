"""``fastmlp train`` on numeric class labels: the model keeps them as numbers, and --task auto
counts them exactly.

A saved classifier stored integer labels as strings ('0'..'9' for the digits), so comparing
its predict_classes with the data's integer labels scored 0 % without an error, and
evaluate refused those labels; a model trained in Python keeps integer classes_. And --task
auto counted distinct labels through float64, which merges 2**53 and 2**53 + 1.
"""
import os
import re

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import cli, datasets
from helpers import run_cli


run = run_cli


def labelled_csv(tmp_path, labels, n=60, seed=0, name="labelled.csv"):
    """A separable table of n rows, one blob per label of ``labels`` (written as given)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(labels)
    X = rng.normal(size=(n, 2)) + 4.0 * y[:, None]
    lines = ["x1,x2,label"] + [f"{a:.4f},{b:.4f},{labels[t]}" for (a, b), t in zip(X, y)]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def train(*argv):
    args = cli.make_parser().parse_args(["train", *argv])
    return cli.run_train(args, out=open(os.devnull, "w"))


# -- bug 1: the model's classes_ are the labels' own numbers --------------------------------

def test_the_saved_digits_classifier_scores_against_the_digits_own_labels(capsys, tmp_path):
    saved = tmp_path / "digits.fastmlp"
    code, out, err = run(capsys, "train", "--epochs", "2", "--save", str(saved))
    assert code == 0, err
    model = fm.load(saved)
    assert model.classes_.dtype == np.int64 and model.classes_.tolist() == list(range(10))
    X, y = datasets.load_digits()
    assert np.array_equal(model.predict_classes(X), model.predict(X).argmax(axis=1))
    assert np.mean(model.predict_classes(X) == y) > 0.9
    assert np.isfinite(model.evaluate(X, y))   # the data set's own labels are the model's
    # what the command prints names the classes as before
    assert "outputs are the probabilities of the classes 0, 1, 2, 3, 4, 5, 6, 7, 8, 9" in out


@pytest.mark.parametrize("labels, classes", [
    (("1", "2", "10"), [1, 2, 10]),                         # numeric order, not '1' < '10'
    (("-3", "0", "007"), [-3, 0, 7]),
    ((str(2 ** 53), str(2 ** 53 + 1), "20240131"), [20240131, 2 ** 53, 2 ** 53 + 1]),
    ((str(-2 ** 63), str(2 ** 63 - 1)), [-2 ** 63, 2 ** 63 - 1]),   # int64's own ends
])
def test_integer_labels_are_int64_classes_in_the_model_and_its_file(tmp_path, labels, classes):
    saved = tmp_path / "m.fastmlp"
    result = train("--data", str(labelled_csv(tmp_path, labels)), "--epochs", "60",
                   "--save", str(saved))
    for model in (result.model, fm.load(saved)):
        assert model.classes_.dtype == np.int64 and model.classes_.tolist() == classes
    # the classes' names are still the text the command prints
    assert result.data.classes == [str(c) for c in classes]


def test_a_loaded_classifier_scores_as_the_command_printed(capsys, tmp_path):
    """The held-out accuracy the command prints is that of the saved model's predict_classes
    compared with the CSV's own integer labels."""
    labels = ("1", "2", "10")
    path, saved = labelled_csv(tmp_path, labels, n=90), tmp_path / "m.fastmlp"
    code, out, err = run(capsys, "train", "--data", str(path), "--epochs", "60",
                         "--save", str(saved))
    assert code == 0, err
    assert "outputs are the probabilities of the classes 1, 2, 10" in out
    printed = re.search(r"held-out accuracy: ([\d.]+) % \((\d+)/(\d+) rows\)", out)
    table = datasets.read_csv(path)
    y = np.array([int(c) for c in table.cells])
    rows = datasets.train_test_split(table.X, np.arange(len(y)), 0.2, 0)[3]
    model = fm.load(saved)
    right = int(np.sum(model.predict_classes(table.X[rows]) == y[rows]))
    assert (right, len(rows)) == (int(printed.group(2)), int(printed.group(3)))
    assert right > 0.9 * len(rows)
    assert np.isfinite(model.evaluate(table.X, y))


def test_integers_beyond_int64_stay_strings(tmp_path):
    labels = (str(2 ** 64), str(2 ** 64 + 1), str(-2 ** 63 - 1))
    result = train("--data", str(labelled_csv(tmp_path, labels)), "--epochs", "1",
                   "--task", "classification")
    assert result.model.classes_.dtype.kind == "U"
    assert result.model.classes_.tolist() == [str(-2 ** 63 - 1), str(2 ** 64),
                                              str(2 ** 64 + 1)]


def test_non_integer_labels_keep_their_names(tmp_path):
    """fit takes no fractional labels: such classes stay the names the command prints."""
    saved = tmp_path / "m.fastmlp"
    path = labelled_csv(tmp_path, ("0.5", "2", "1e+30"), n=90)
    result = train("--data", str(path), "--epochs", "60", "--save", str(saved))
    for model in (result.model, fm.load(saved)):
        assert model.classes_.dtype.kind == "U"
        assert model.classes_.tolist() == ["0.5", "2", "1e+30"]
    labels = result.model.predict_classes(result.X_test)
    assert np.mean(labels == result.model.classes_[result.y_test]) > 0.9


def test_text_labels_stay_strings(tmp_path):
    result = train("--data", str(labelled_csv(tmp_path, ("no", "yes", "10"))), "--epochs", "1")
    assert result.model.classes_.tolist() == ["10", "no", "yes"]


@pytest.mark.parametrize("labels, classes", [
    (("1_000", "1000", "2000"), ["1000", "1_000", "2000"]),
    (("\u0663", "3", "4"), ["3", "4", "\u0663"]),      # the Arabic-Indic digit three
])
def test_labels_only_pythons_int_reads_as_numbers_stay_text(tmp_path, labels, classes):
    """int() and float() read '1_000' and the Arabic-Indic three as 1000 and 3: such labels
    were merged with '1000' and '3' into one class, silently (pandas reads them as text)."""
    result = train("--data", str(labelled_csv(tmp_path, labels)), "--epochs", "1")
    assert result.model.classes_.tolist() == classes


@pytest.mark.parametrize("cell", ["1_000", "\u0663", "\uff11\uff12"])
def test_feature_cells_follow_the_labels_number_rule(tmp_path, cell):
    """Round 28: a feature cell was read with float(), which takes '1_000', the
    Arabic-Indic three and full-width digits as 1000, 3 and 12, while the same cells as
    labels are text (as pandas reads both): a feature column holding one is refused,
    naming the cell, in read_csv and in the CLI."""
    path = tmp_path / "f.csv"
    path.write_text("a,b,y\n" + f"{cell},1,0\n" + "".join(f"{i},{i % 3},{i % 2}\n"
                                                           for i in range(20)),
                    encoding="utf-8")
    with pytest.raises(ValueError, match=rf"line 2, column 'a': '{cell}' is not a number"):
        datasets.read_csv(path)
    with pytest.raises(ValueError, match=rf"line 2, column 'a': '{cell}' is not a number"):
        train("--data", str(path), "--epochs", "1")


def test_a_target_with_a_non_plain_number_is_not_a_column_of_numbers(capsys, tmp_path):
    """The CLI's reading of a target column used float() too: with '1_000' beside 'NA'
    the column was a column of numbers with a gap; now '1_000' is text there as well, as
    the labels' rule and pandas read it."""
    from fastmlp import _cli_data
    assert _cli_data._number("1_000") is None and _cli_data._number("1000") == 1000.0
    assert _cli_data._number("\u0663") is None and _cli_data._number(" 2.5 ") == 2.5


@pytest.mark.parametrize("labels, classes", [
    (("1", "2", "\xa02"), ["1", "2", "\xa02"]),      # a no-break space before 2
    (("a", "a\x1c", "b"), ["a", "a\x1c", "b"]),      # an ASCII separator after a
    (("a", " a\t", "b"), ["a", "b"]),                # ASCII spaces and tabs are stripped
])
def test_labels_are_stripped_of_ascii_spaces_only(tmp_path, labels, classes):
    """Round 29: str.strip took Unicode spaces and the separators \\x1c-\\x1f off a
    label, so '\\xa02' joined the class 2 and 'a\\x1c' the class 'a', silently (pandas
    keeps them apart)."""
    result = train("--data", str(labelled_csv(tmp_path, labels)), "--epochs", "1")
    assert sorted(result.data.classes) == sorted(classes)


def test_only_ascii_spaces_make_a_row_blank_or_a_name_shorter(tmp_path):
    """Round 30: a row of no-break spaces was skipped as blank, and a header name 'a\\xa0'
    became 'a', where cells kept them (pandas keeps both)."""
    path = tmp_path / "f.csv"
    rows = "".join(f"{i},{i % 3},{i % 2}\n" for i in range(20))
    path.write_text("a\xa0,b,y\n" + rows + " , \t,\n", encoding="utf-8")
    table = datasets.read_csv(path)
    assert table.features == ["a\xa0", "b"] and len(table.cells) == 20   # blank: skipped
    path.write_text("a,b,y\n" + rows + "\xa0,\xa0,\xa0\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"line 22, column 'a': '\\xa0' is not a number"):
        datasets.read_csv(path)


@pytest.mark.parametrize("cell", ["\x1c2", "2\x1f", "\x0b2"])
def test_a_feature_cell_with_a_control_character_is_not_a_number(tmp_path, cell):
    """float() skips \\x1c-\\x1f and \\x0b as white space; pandas reads such cells as text."""
    path = tmp_path / "f.csv"
    path.write_text("a,b,y\n" + f"{cell},1,0\n" + "".join(f"{i},{i % 3},{i % 2}\n"
                                                           for i in range(20)))
    with pytest.raises(ValueError, match=r"line 2, column 'a': .* is not a number"):
        datasets.read_csv(path)


@pytest.mark.parametrize("labels", [("x", "x\0"), ("y\0", "x\0"), ("a\0b", "c")])
def test_a_label_holding_a_nul_is_refused_before_training(capsys, tmp_path, labels):
    """Round 28: 'x' and 'x\0' trained as two classes, then --save failed (NumPy's str
    array drops trailing NULs: classes ['x', 'x']); 'x\0' and 'y\0' saved classes_ that
    were not the file's labels. Refused before training, naming the line."""
    path = labelled_csv(tmp_path, labels)
    code, out, err = run(capsys, "train", "--data", str(path), "--epochs", "1")
    assert code == 2 and "training:" not in out, (out, err)
    assert "holds a NUL character" in err and "line " in err


# -- bug 2: --task auto counts integer labels exactly ----------------------------------------

def test_auto_counts_integer_labels_exactly(capsys, tmp_path):
    path = labelled_csv(tmp_path, (str(2 ** 53), str(2 ** 53 + 1), "20240131"))
    code, out, err = run(capsys, "train", "--data", str(path), "--epochs", "1")
    assert code == 0, err
    assert "3 classes" in out
    assert "classification (numeric target with 3 distinct values, at most 20;" in out


def test_auto_regresses_more_than_20_distinct_integers_float64_merges(tmp_path):
    """2**53 + 0..20: 21 distinct integers, 11 distinct float64 values."""
    labels = tuple(str(2 ** 53 + i) for i in range(21))
    result = train("--data", str(labelled_csv(tmp_path, labels, n=84)), "--epochs", "1")
    assert result.data.task == "regression"
    assert result.data.why == "numeric target with 21 distinct values, more than 20"

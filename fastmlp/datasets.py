"""Data for fastmlp: the shipped data sets, CSV loading and two preprocessing helpers.

* :func:`load_digits`: the UCI 8x8 handwritten digits (1797 samples, 64
  features 0..16, 10 classes; CC BY 4.0, see ``fastmlp/data/README.md``).
* :func:`load_vehicles`: the lessons' toy table (wheels, height, weight -> car/bike).
* :func:`read_csv`: a user's table (header row, numeric features, a target
  column), then :func:`class_labels` or :func:`numeric_target` for its target;
  :func:`load_csv` does both for a classification table.
* :func:`train_test_split`, :func:`standardization` and :func:`standardize`
  (statistics of the training rows only, so nothing about the held-out rows
  leaks into training; finite values up to float64's maximum do not overflow).

>>> from fastmlp import datasets
>>> X, y = datasets.load_digits()
>>> X.shape, y.shape
((1797, 64), (1797,))
"""
from __future__ import annotations

import csv
import decimal
import gzip
import math
import os
import re
import zlib
from importlib import resources
from itertools import chain
from typing import NamedTuple

import numpy as np

from ._atomic import kind
from ._signals import raise_if_signalled

_INT64 = (int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max))

VEHICLE_FEATURES = ("wheels", "height", "weight")
VEHICLE_CLASSES = ("car", "bike")

# The lessons' table: three cars, then three bikes.
_VEHICLES = np.array([
    [4, 6.0, 500],
    [4, 5.5, 600],
    [4, 5.0, 550],
    [2, 3.0, 200],
    [2, 3.5, 150],
    [2, 4.0, 250],
])


def digits_file():
    """Where the shipped digits are: a path (a Traversable where the package is not in a
    folder, e.g. a zip)."""
    return resources.files("fastmlp") / "data" / "digits.csv.gz"


def load_digits():
    """The 8x8 digits: X float64 (1797, 64) with values 0..16, y int64 (1797,) in 0..9."""
    with digits_file().open("rb") as raw, gzip.open(raw, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.float64)
    return np.ascontiguousarray(table[:, :-1]), table[:, -1].astype(np.int64)


def load_vehicles():
    """The lessons' vehicles: X float64 (6, 3) wheels/height/weight, Y one-hot (6, 2) car/bike."""
    Y = np.zeros((6, 2))
    Y[:3, 0] = 1  # car
    Y[3:, 1] = 1  # bike
    return _VEHICLES.astype(np.float64), Y


def train_test_split(X, y, test_fraction=0.2, seed=0):
    """Shuffle rows and split: (X_train, X_test, y_train, y_test).

    X (n, d), y (n,) or (n, k). The test part has round(n * test_fraction)
    rows, at least one; the training part keeps at least one row too.
    """
    X, y = np.asarray(X), np.asarray(y)
    n = len(X)
    if len(y) != n:
        raise ValueError(f"X has {n} rows but y has {len(y)}")
    if isinstance(test_fraction, bool) or not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction!r}")
    if n < 2:
        raise ValueError(f"need at least 2 rows to split into training and test sets, got {n}")
    n_test = min(max(int(round(n * float(test_fraction))), 1), n - 1)
    try:
        rng = np.random.default_rng(seed)
    except (TypeError, ValueError) as exc:  # NumPy's own words name no argument
        raise type(exc)(f"seed must be a non-negative integer (or None), got {seed!r}: "
                        f"{exc}") from None
    perm = rng.permutation(n)
    test, train = perm[:n_test], perm[n_test:]
    return X[train], X[test], y[train], y[test]


def standardization(train, names=None):
    """Column statistics for standardizing: ``(mean, scale)``, both float64 (d,).

    ``train`` (n, d). ``scale`` is the standard deviation, or 1 for a constant
    column (one value in every row, e.g. the digits' always-blank corner pixels), whose
    mean is then that value, so it becomes 0 instead of NaN. (Computed, a column of 0.1
    had a mean off by one rounding and a std of 1.7e-16: that column then swung every
    prediction.) The statistics are computed on each column divided by a power
    of two near its largest |value|: bit for bit what the plain formulas give
    where they do not overflow, and finite for values up to float64's maximum
    (1.8e308). A ValueError naming
    the column (``names[j]``, else its index) is raised if even then
    ``(train - mean) / scale`` would overflow.
    """
    train = np.asarray(train, dtype=np.float64)
    if train.ndim != 2 or len(train) == 0:
        raise ValueError(f"train must be a non-empty 2-D array, got shape {train.shape}")
    _, exponent = np.frexp(np.abs(train).max(axis=0))
    # 2**(e-1) <= peak < 2**e; dividing by 2**(e-1) is exact and keeps |values| < 2,
    # and 2**(e-1) itself stays finite even for peak near float64's maximum (e = 1024).
    unit = np.ldexp(1.0, exponent - 1)
    scaled = train / unit
    mean = scaled.mean(axis=0) * unit
    scale = scaled.std(axis=0) * unit
    constant = (train == train[0]).all(axis=0)
    mean[constant], scale[constant | (scale == 0)] = train[0, constant], 1.0
    check_standardizable(train, mean, scale, names)
    return mean, scale


def check_standardizable(X, mean, scale, names=None):
    """ValueError naming the first column of X (n, d) that holds NaN or inf, or whose
    ``(X - mean) / scale`` overflows, or that X is not (n, d) for the d statistics."""
    X = np.asarray(X, dtype=np.float64)
    width = np.size(mean)   # (a scalar mean: one column's)
    if X.ndim != 2 or X.shape[1] != width:
        raise ValueError(f"the data to standardize must have {width} column(s), as the "
                         f"statistics have, got shape {X.shape}")
    with np.errstate(over="ignore", invalid="ignore"):
        finite = np.isfinite((X - mean) / scale).all(axis=0)
    if not finite.all():
        j = int(np.argmin(finite))
        name = repr(names[j]) if names is not None else str(j)
        if not np.isfinite(X[:, j]).all():
            raise ValueError(f"column {name} contains NaN or inf")
        raise ValueError(f"column {name} has values too large to standardize "
                         f"(|x| up to {np.abs(X[:, j]).max():.3g}); rescale it, e.g. divide "
                         "it by a power of ten")


def standardize(train, *others):
    """Scale columns to mean 0, std 1 using ``train``'s statistics.

    Returns ``(train_scaled, *others_scaled, mean, std)``; every array is (n, d)
    float64; ``mean`` and ``std`` come from :func:`standardization` (constant
    columns get std 1).
    """
    mean, std = standardization(train)
    for other in others:
        check_standardizable(other, mean, std)
    scaled = [(np.asarray(a, dtype=np.float64) - mean) / std for a in (train, *others)]
    return (*scaled, mean, std)


class Table(NamedTuple):
    """A CSV table as :func:`read_csv` returns it."""

    path: str
    X: np.ndarray        # features, float64 (n, d), in file column order
    features: list       # their names (d,)
    target: str          # the target column's name
    cells: list          # its cells, stripped strings (n,)
    lines: list          # the file line of each row (n,), for error messages


def load_csv(path, target=None):
    """A classification table: ``read_csv`` then ``class_labels``.

    Returns ``(X float64 (n, d), y int64 (n,), classes list[str], features
    list[str])``; any problem is a ValueError naming the file (and the line and
    column where there is one).
    """
    table = read_csv(path, target)
    y, classes = class_labels(table)
    return table.X, y, classes, table.features


def read_csv(path, target=None):
    """A :class:`Table` from a CSV file with a header row (``.csv.gz`` too).

    ``target`` names the target column (default: the last one); every other
    column must be numeric. Every problem, the file's own included (missing,
    a directory, unreadable, not UTF-8, not gzip or truncated gzip, empty,
    header only), is a ValueError starting with the file's name, e.g.
    ``"f.csv, line 2, column 'colour': 'red' is not a number"``.
    """
    # str for the messages and the ".gz" test: a bytes path (os.fspath keeps bytes) made
    # path.lower().endswith(".gz") raise a bare TypeError
    path = os.fsdecode(path)
    table = _TableBuilder(path, target)
    _read_rows(path, table.add)
    return table.built()


# Rows converted a chunk at a time: every row kept as a list of str until the end took
# 13x the file's size (473 MB for a 37 MB CSV of 400,000 rows x 11), and under a memory
# limit CPython's allocator then crawled for minutes instead of failing. A chunk holds at
# most _CHUNK_CELLS cells (each a str of about 50 bytes, held twice while they are
# converted): 8,192 rows whatever the width made a 30 MB file of 2,000 one-digit columns
# peak at 12 times its size.
_CHUNK_ROWS = 8192
_CHUNK_CELLS = 8192 * 12


class _TableBuilder:
    """A Table made from a CSV's header and its rows, a chunk at a time (see read_csv)."""

    def __init__(self, path, target):
        self.path, self.target, self.header = path, target, None
        # X (capacity, features) float64 grown in place (ndarray.resize: realloc, which
        # for a large block remaps its pages rather than copying them), its first rows
        # filled: parts concatenated at the end held the table twice at the peak.
        self.X, self.rows = None, 0
        self.cells, self.lines = [], []

    def add(self, header, rows, lines):
        """The next ``rows`` (lists of str, as many as the header) and their file lines."""
        if self.header is None:
            self._columns(header)
        t = self.t
        # the feature cells of every row in one flat list, converted in one pass: a pass
        # per column per chunk cost 2.5 us a column, 29 s for a 200 x 50,000 file
        flat = list(chain.from_iterable(row[:t] + row[t + 1:] for row in rows))
        X = _finite_floats(flat)
        if X is None:
            self._first_problem(header, rows, lines)
        cells = [_stripped(row[t]) for row in rows]
        if not all(cells):
            self._first_problem(header, rows, lines)
        X = X.reshape(len(rows), len(self.features))
        self._append(X)
        self.cells += cells
        self.lines += lines

    def _append(self, rows):
        """Copy ``rows`` (k, features) float64 after the rows already read."""
        end = self.rows + len(rows)
        if self.X is None:
            self.X = np.empty((end, rows.shape[1]), dtype=np.float64)
        elif end > len(self.X):
            self.X.resize((max(end, len(self.X) * 5 // 4), rows.shape[1]), refcheck=False)
        self.X[self.rows:end] = rows
        self.rows = end

    def _first_problem(self, header, rows, lines):
        """Raise the first bad cell of ``rows`` in file order (line, then column), so the
        error named does not depend on where the chunks fall."""
        for row, line in zip(rows, lines):
            for i, cell in enumerate(row):
                if i == self.t:
                    if not _stripped(cell):
                        raise ValueError(f"{self.path}, line {line}, target column "
                                         f"{self.target!r}: missing value")
                else:
                    _number(f"{self.path}, line {line}, column {header[i]!r}", cell)
        raise AssertionError("a bad cell was found, then not found again")

    def _columns(self, header):
        path, target = self.path, self.target
        if target is None:
            target = self.target = header[-1]
        if target not in header:
            shown = ", ".join(map(shown_name, header[:20])) + (", ..." if len(header) > 20
                                                               else "")
            raise ValueError(f"{path}: no column {target!r}; its columns are: {shown}")
        if len(header) < 2:
            raise ValueError(f"{path}: has only the target column {target!r}; no feature "
                             "columns")
        self.header, self.t = header, header.index(target)
        self.features = [h for i, h in enumerate(header) if i != self.t]

    def built(self):
        if self.header is None:
            raise ValueError(f"{self.path}: has a header but no data rows")
        X, self.X = self.X, None
        X.resize((self.rows, X.shape[1]), refcheck=False)   # (no view of X exists yet)
        return Table(self.path, X, self.features, self.target, self.cells, self.lines)


def numeric_target(table, required=True):
    """The target column as float64 (n,).

    When a cell is not a finite number: a ValueError naming its line if
    ``required``, else None (the column holds text labels).
    """
    plain = _plain_numbers(table.cells)
    try:
        values = _floats(table.cells) if plain else None
    except ValueError:
        values = None
    if values is not None and np.isfinite(values).all():
        return values
    values = np.empty(len(table.cells), dtype=np.float64)
    for k, (cell, line) in enumerate(zip(table.cells, table.lines)):
        try:
            values[k] = float(cell) if _plain_numbers([cell]) else np.nan
        except ValueError:
            values[k] = np.nan
        if not np.isfinite(values[k]):
            if not required:
                return None
            raise ValueError(f"{table.path}, line {line}, target column {table.target!r}: "
                             f"{cell!r} is not a finite number (a regression target must be "
                             "numeric)")
    return values


def class_labels(table):
    """Class labels -> (indices int64 (n,), class names). Numeric labels sort as numbers;
    integer labels are read exactly (20240131 stays itself, 2**53 + 1 stays apart from
    2**53; '2.0' is the integer 2, see _integers) and each class is named as the shortest
    text of its number."""
    exact = _exact_integers(table.cells)
    integers = _every_one(exact)
    numbers = None if integers is not None else numeric_target(table, required=False)
    if integers is not None:
        keys = integers
        classes = sorted(set(keys))
        names = [str(c) for c in classes]
    elif numbers is not None:
        # Each integer cell as its exact int, the others as floats: Python compares and
        # hashes the two exactly, so 2**53 + 1 stays apart from 2**53 beside a 0.5 too (one
        # label not an integer sent the whole column through float64, merging them)
        keys = [number if e is None else e for e, number in zip(exact, numbers.tolist())]
        classes = sorted(set(keys))
        names = [str(c) if isinstance(c, int) else _number_name(c) for c in classes]
    else:
        keys = table.cells
        classes = names = sorted(set(keys))
        for cell, line in zip(keys, table.lines) if "\0" in "".join(classes) else ():
            if "\0" in cell:   # NumPy's str arrays drop trailing NULs: 'x\0' became 'x'
                raise ValueError(f"{table.path}, line {line}, target column {table.target!r}: "
                                 f"the label {cell!r} holds a NUL character, which a model's "
                                 "classes_ (a NumPy str array) cannot keep")
    if len(classes) < 2:
        raise ValueError(f"{table.path}: target column {table.target!r} has only one class "
                         f"({names[0]!r}); a classifier needs at least 2")
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[k] for k in keys], dtype=np.int64), names


def _integers(cells):
    """The cells as Python ints, or None unless every one is an integer: integer text
    (exact at any size), or a number written with a fraction or an exponent whose value is
    an integer int64 holds ('2.0', '-3.00', '1e3': pandas writes an integer column that
    once held a NaN as 0.0, 1.0, ..., whose classes were saved as the names '0', '1', ...
    while fit on the same labels learns int64). Those are read as decimal text, exactly:
    through float, 9007199254740993.0 became 2**53. '2.5' is no integer, and '1e30' is left
    to the numbers (beyond int64, it is named '1e+30')."""
    return _every_one(_exact_integers(cells))


def _every_one(exact):
    """``exact`` (see _exact_integers) when every cell is an integer, else None."""
    return None if exact is None or None in exact else exact


def _exact_integers(cells):
    """Each cell's exact Python int (see _integers), None for a cell that is no integer;
    None for them all when the cells are not plain numbers."""
    if not _plain_numbers(cells):
        return None
    try:
        return [int(cell) for cell in cells]   # the common case: one try for the column
    except ValueError:
        return [_integer(cell) for cell in cells]


def _integer(cell):
    """The Python int a plain number cell stands for exactly (see _integers), else None."""
    try:
        return int(cell)
    except ValueError:
        return _integral(cell)


def _integral(cell):
    """The int64 integer a decimal text such as '2.0' or '1e3' stands for, else None. The
    range is checked before int(): int(Decimal('1e999999999')) would build a billion digits."""
    try:
        number = decimal.Decimal(cell)
    except decimal.InvalidOperation:
        return None
    if not (number.is_finite() and _INT64[0] <= number <= _INT64[1]):
        return None
    return int(number) if number == number.to_integral_value() else None


def _stripped(cell):
    """``cell`` without the ASCII spaces, tabs and line ends around it. (str.strip also
    takes Unicode spaces and the separators \\x1c-\\x1f: a label '\\xa02' joined the
    class 2, 'a\\x1c' the class 'a', where pandas keeps them apart.)"""
    return cell.strip(" \t\r\n")


# Characters no plain number holds: underscores (int('1_000')), control characters
# (float() skips '\x1c' as white space), anything past ASCII (checked apart).
_NOT_PLAIN = re.compile(r"[_\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _plain_numbers(cells):
    """Whether the cells may be read as numbers: ASCII without underscores or control
    characters but tabs and line ends (which float() skips around a number). Python's int()
    and float() (and NumPy's) also read '1_000' and the Arabic-Indic '٣', which made the
    labels '1_000' and '1000', or '٣' and '3', one class, silently (pandas reads them as
    text). '007' and '7', or '+5' and '5', are one number, as pandas reads them. The one
    rule for labels, feature cells and the CLI's reading of a target column."""
    joined = "".join(cells)   # (one pass in C over the cells)
    return joined.isascii() and _NOT_PLAIN.search(joined) is None


def _number_name(x):
    """1.0 -> "1", 0.5 -> "0.5", 1e+30 -> "1e+30": the shortest text that reads back as x."""
    return str(int(x)) if x.is_integer() and abs(x) < 2 ** 53 else repr(x)


def _read_rows(path, add):
    """``add(header, rows, line numbers)`` for each chunk of a CSV file's rows (at most
    _CHUNK_ROWS, and _CHUNK_CELLS cells; none for a file with a header only); blank lines
    skipped, ragged rows
    rejected.

    Failures of the file itself become one ValueError naming it.
    """
    if not path:
        raise ValueError("cannot read the data: the path is empty")
    try:
        return _parse_rows(path, add)
    except UnicodeDecodeError as exc:
        if exc.start == 1 and bytes(exc.object[:2]) == b"\x1f\x8b":   # gzip's first bytes
            raise ValueError(f"{path}: gzip data (it starts with the bytes 1f 8b) in a file "
                             "whose name does not end with .gz: name it so, or decompress "
                             "it") from None
        bad = exc.object[exc.start:exc.start + 1].hex()
        raise ValueError(f"{path}: not UTF-8 text (byte 0x{bad}: {exc.reason}); save it as "
                         "UTF-8") from None
    except gzip.BadGzipFile as exc:
        raise ValueError(f"{path}: not a valid gzip file ({exc})") from None
    except EOFError:
        raise ValueError(f"{path}: the gzip data is truncated (the file ends before its "
                         "compressed stream does)") from None
    except zlib.error as exc:
        raise ValueError(f"{path}: damaged gzip data ({exc})") from None
    except OSError as exc:  # missing, a directory, no permission, ...
        raise_if_signalled(exc)
        raise ValueError(f"{path}: {exc.strerror or exc}") from None
    except csv.Error as exc:
        raise ValueError(f"{path}: not a readable CSV file ({exc})") from None


def _unclosed(path, start):
    """The ValueError for a record, begun on line ``start``, that the csv reader returned
    once the file was read (_parse_rows's flag): a quote opened there and never closed.
    Python's reader took the rest of the file as that one cell (a label of
    'x\n6,y\n7,x', rows lost, exit 0)."""
    return ValueError(f"{path}, line {start}: a quoted cell opened on this line is never "
                      "closed (the file ends inside it); close the quote, or write a quote "
                      "inside a quoted cell as \"\"")


def _file_read(flag):
    """Lines after a file's last: none, and ``flag`` set (a generator: chained after the
    file, it costs the lines read before it nothing)."""
    flag.append(True)
    yield from ()


def _parse_rows(path, add):
    _refuse_devices(path)
    opener = gzip.open if path.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8-sig", newline="") as f:
        ended = []
        reader = csv.reader(chain(f, _file_read(ended)))
        header = next(reader, None)
        if ended and header:
            raise _unclosed(path, 1)
        if header is not None and not any(_stripped(h) for h in header):
            # a blank first line before rows: no "empty" file, but the header's place
            text = next((r for r in reader if any(_stripped(cell) for cell in r)), None)
            if text is not None:
                raise ValueError(f"{path}, line 1: the header line is blank: expected a "
                                 "header row naming the columns on the first line (the "
                                 f"first line with text is line {reader.line_num})")
            header = None   # only blank lines
        if header is None:
            raise ValueError(f"{path}: the file is empty: expected a header row naming the "
                             "columns")
        header = [_stripped(h) for h in header]
        _check_header(path, header)
        rows, lines = [], []
        chunk = max(1, min(_CHUNK_ROWS, _CHUNK_CELLS // len(header)))
        last = reader.line_num
        try:
            for row in reader:
                if ended:   # (a bad cell above it is named first: errors in file order)
                    if rows:
                        add(header, rows, lines)
                    raise _unclosed(path, last + 1)
                last = reader.line_num
                if not row or all(not _stripped(cell) for cell in row):
                    continue
                if len(row) != len(header):
                    if rows:   # a bad cell above it is named first: errors in file order
                        add(header, rows, lines)
                    raise ValueError(f"{path}, line {reader.line_num}: {len(row)} fields "
                                     f"but the header has {len(header)}")
                rows.append(row)
                lines.append(reader.line_num)
                if len(rows) == chunk:
                    add(header, rows, lines)
                    rows, lines = [], []
        except csv.Error as exc:   # a bad cell above it is named first: errors in file order
            if rows:
                add(header, rows, lines)
            raise ValueError(f"{path}, line {reader.line_num}: {_csv_problem(exc)}") from None
        if rows:
            add(header, rows, lines)


def _csv_problem(exc):
    """What Python's csv reader refused (a csv.Error), in words naming the limit."""
    if "field limit" in str(exc):
        return (f"a cell longer than {csv.field_size_limit():,} characters, the most "
                "Python's csv reader takes")
    return f"not readable as CSV ({exc})"


def _refuse_devices(path):
    """A device or socket is no file of rows: /dev/zero would be read forever, one endless
    line. A fifo is read (``--data <(zcat big.csv.gz)``); a missing path is left to open."""
    try:
        what = kind(os.stat(path).st_mode)
    except OSError as exc:
        raise_if_signalled(exc)
        return
    if what not in (None, "a fifo", "a directory"):   # (open names a directory itself)
        raise ValueError(f"{path}: it is {what}, not a CSV file")


def one_line(message):
    """``message`` as text on one line: a character that does not print (a newline in a
    path the user gave, say) written as its escape, as repr writes it."""
    text = str(message)
    return text if text.isprintable() else "".join(
        c if c.isprintable() else repr(c)[1:-1] for c in text)


def shown_path(path):
    """A path the user gave, as a message shows it: as typed, or its repr when it holds a
    character that does not print or a backslash (repr's escapes are then unambiguous: a
    newline shows as \\n, the two characters backslash and n as \\\\n)."""
    text = str(path)
    return text if text.isprintable() and "\\" not in text else repr(text)


def shown_name(name):
    """A column or class name as a message shows it: as it is, or its repr when it holds a
    comma, a quote or a character that does not print (a quoted name may hold a newline,
    which made a one-line error two lines)."""
    plain = name.isprintable() and not any(c in name for c in ",'\"") and name == name.strip()
    return name if plain and name else repr(name)


def _check_header(path, header):
    for i, name in enumerate(header):
        if not name:
            raise ValueError(f"{path}: column {i + 1} of the header has no name")
        if "\0" in name:   # NumPy's str arrays drop trailing NULs: 'a\0' would become 'a'
            raise ValueError(f"{path}: column {i + 1} of the header, {name!r}, holds a NUL "
                             "character, which a model's feature names (a NumPy str array) "
                             "cannot keep")
    seen = set()
    for name in header:
        if name in seen:
            raise ValueError(f"{path}: column name {name!r} appears twice in the header")
        seen.add(name)


def _finite_floats(cells):
    """Feature cells (a chunk's, row by row) as float64 (n,), or None when a cell is not
    a finite number (or not a plain number: _plain_numbers)."""
    if not _plain_numbers(cells):
        return None
    try:
        values = _floats(cells)
    except ValueError:
        return None
    return values if np.isfinite(values).all() else None


def _number(where, cell):
    """float(cell), or the ValueError naming ``where`` the cell is."""
    if not _stripped(cell):
        raise ValueError(f"{where}: missing value")
    try:
        if not _plain_numbers([cell]):   # '1_000', '٣': text, as for labels and pandas
            raise ValueError
        value = float(cell)
    except ValueError:
        raise ValueError(f"{where}: {cell!r} is not a number (feature columns must be numeric; "
                         "encode or drop non-numeric columns)") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: {cell!r} is not a finite number")
    return value


def _floats(cells):
    """float(cell) for each cell, as float64 (n,); ValueError at the first that is not a
    number. Cell by cell: np.array(cells).astype(np.float64) first built a fixed-width
    array of rows x the longest cell x 4 bytes (1.6 GiB for a 148 KB file with one
    130,000-character number). The numbers are the same: NumPy parses text with float."""
    return np.fromiter(map(float, cells), dtype=np.float64, count=len(cells))

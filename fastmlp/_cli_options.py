"""The ``fastmlp`` command's option types and defaults: argparse's parsers for each option.

Each parser raises ``argparse.ArgumentTypeError``, which argparse prefixes with the
option's name (``argument --seed: expected a non-negative integer, got '-1'``).
"""
from __future__ import annotations

import argparse
import math

from fastmlp import activations
from fastmlp.backends import get_backend, resolve
from fastmlp.datasets import _plain_numbers
from fastmlp.network import MAX_UNITS

DEFAULT_LR = {"adam": 3e-3, "sgd": 0.1}
OUTPUT_ACTIVATION = {"cross_entropy": "softmax", "binary_cross_entropy": "sigmoid", "mse": "sigmoid"}
TASKS = ("auto", "classification", "regression")
# --task auto: a numeric target with more distinct values than this is a quantity, not labels.
MAX_AUTO_CLASSES = 20


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit status 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _plain(text, read):
    """``read(text)`` (int or float) of a number as a person types one, by the rule a CSV
    cell is read by (datasets._plain_numbers); ValueError otherwise: int() and float()
    also take '1_0' (10) and other scripts' digits ('٣', '１２')."""
    if not _plain_numbers([text]):
        raise ValueError(text)
    return read(text)


def _as_int(text):
    return _plain(text, int)


def layers(text):
    """'64,32' -> [64, 32]; '' -> [] (no hidden layer); an empty entry ('64,,32', a typo)
    is refused, not dropped."""
    try:
        units = [_as_int(u) for u in text.split(",")] if text.strip() else []
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 64,32, got {text!r}")
    if any(u < 1 for u in units):
        raise argparse.ArgumentTypeError(f"layer sizes must be positive, got {text!r}")
    if any(u > MAX_UNITS for u in units):  # named here, not as a Dense's error after the data
        raise argparse.ArgumentTypeError(f"layer sizes must be below 2**31, got {text!r}")
    return units


def _integer(minimum, wording):
    def parse(text):
        try:
            value = _as_int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {wording}, got {text!r}")
        return value
    return parse


def _number(accept, wording):
    def parse(text):
        try:
            value = _plain(text, float)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and accept(value)):
            raise argparse.ArgumentTypeError(f"expected {wording}, got {text!r}")
        return value
    return parse


def name_from(names, what):
    """A parser accepting one of ``names`` (any case), returned in lower case."""
    def parse(text):
        if text.lower() not in names:
            raise argparse.ArgumentTypeError(f"unknown {what} {text!r}; choose one of "
                                             f"{sorted(names)}")
        return text.lower()
    return parse


def _ascii_lower(text):
    """--backend's name in lower case, if ASCII: an error then names what was typed
    ('İ'.lower() is 'i̇', two characters)."""
    return text.lower() if text.isascii() else text


_activation_name = name_from(activations.ACTIVATIONS, "activation")


def hidden_activation(text):
    """--activation's name, any case (as --loss and --optimizer take theirs)."""
    name = _activation_name(text)
    if name == "softmax":
        raise argparse.ArgumentTypeError("softmax is only allowed on the output layer "
                                         "(--loss cross_entropy gives a softmax output)")
    return name


positive_int = _integer(1, "a positive integer")
seed = _integer(0, "a non-negative integer")
positive_float = _number(lambda v: v > 0, "a finite number > 0")
fraction = _number(lambda v: 0 <= v < 1, "a number from 0 (none held out) up to, not "
                   "including, 1")
momentum = _number(lambda v: 0 <= v < 1, "a number in [0, 1)")
non_negative_float = _number(lambda v: v >= 0, "a finite number >= 0")


def add_common(parser, seeds="initialisation, shuffling, split"):
    """--backend, --dtype, --seed (``seeds``: what it seeds): shared by every command."""
    # Static text: listing the importable backends here would import numba on every run.
    parser.add_argument("--backend", default="auto", type=_ascii_lower,   # any case, as --loss
                        help="auto (default: the fastest here, cython, then numba, then "
                        "numpy), numpy (the reference), numba or cython where installed; "
                        "fastmlp.available_backends() lists them")
    parser.add_argument("--dtype", default="float32", metavar="{float32,float64}",
                        type=name_from({"float32", "float64"}, "dtype"),
                        help="the model's float type, in any case (default float32)")
    parser.add_argument("--seed", type=seed, default=0,
                        help=f"{seeds} (default 0)")


def check_backend(name):
    """Refuse an unknown or unavailable --backend (ValueError naming the option)."""
    try:
        get_backend(resolve(name))
    except ValueError as exc:
        raise ValueError(f"--backend {name}: {exc}") from None

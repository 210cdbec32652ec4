"""Losses, each beside the gradient that backpropagation starts from.

All losses are a mean over the n samples of a sum over the outputs, as in the
lessons: ``mse`` is (1/n) sum_i sum_c (y_ic - t_ic)^2, so dE/dy = 2 (y - t) / n.

The model computes the classification losses from the output layer's
pre-activations ``z`` rather than from probabilities, so they stay finite when
a probability underflows to 0:

* ``cross_entropy`` with a softmax output: -sum_c t_c log_softmax(z)_c, and the
  softmax and loss derivatives fuse to delta = (p - t) / n.
* ``binary_cross_entropy`` with sigmoid outputs: softplus(z) - t z per output,
  and again delta = (p - t) / n.

The standalone functions at the bottom take probabilities, for users and for
the lessons' worked numbers.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import activations as act

MSE, CROSS_ENTROPY, BINARY_CROSS_ENTROPY = range(3)


def _mse_value(z, y, t):
    d = y - t
    return float(np.sum(d * d, dtype=np.float64)) / len(y)


def _mse_output_gradient(y, t):
    """dE/dy of the mean squared error, (n, k)."""
    return (2.0 / len(y)) * (y - t)


def _ce_value(z, y, t):
    return -float(np.sum(t * act.log_softmax(z), dtype=np.float64)) / len(y)


def _bce_value(z, y, t):
    return float(np.sum(act.softplus(z) - t * z, dtype=np.float64)) / len(y)


def _fused_delta(y, t):
    """delta = dE/dz for softmax + cross-entropy and sigmoid + binary cross-entropy."""
    return (y - t) / len(y)


@dataclass(frozen=True)
class Loss:
    """One row of the loss table. ``output`` names the activation a fused loss needs."""

    name: str
    code: int
    value: callable          # (z, y, t) -> float, mean over samples
    gradient: callable       # mse: dE/dy; fused losses: dE/dz directly
    output: str | None = None


LOSSES = {l.name: l for l in [
    Loss("mse", MSE, _mse_value, _mse_output_gradient),
    Loss("cross_entropy", CROSS_ENTROPY, _ce_value, _fused_delta, output="softmax"),
    Loss("binary_cross_entropy", BINARY_CROSS_ENTROPY, _bce_value, _fused_delta, output="sigmoid"),
]}


def get(name: str) -> Loss:
    """Look up a loss by name, with a clear error for unknown names."""
    try:
        return LOSSES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}") from None


# Standalone forms on probabilities ------------------------------------------------

def squared_error(y, t):
    """Sum of (y - t)^2 over the last axis: the lessons' (0.9 - 1)^2 = 0.01."""
    y, t = np.asarray(y, dtype=float), np.asarray(t, dtype=float)
    return np.sum((y - t) ** 2, axis=-1)


def cross_entropy(p, q, base=np.e):
    """-sum_x q(x) log p(x): how far the prediction p is from the truth q.

    ``p`` is clipped to the smallest positive normal float so a probability of
    exactly 0 gives a large, finite value. ``base=2`` gives bits, as in the
    lessons (p = {0.9, 0.1}, q = {0.6, 0.4} -> 1.42 bits).
    """
    p, q = np.asarray(p, dtype=float), np.asarray(q, dtype=float)
    logp = np.log(np.clip(p, np.finfo(float).tiny, None)) / np.log(base)
    return -np.sum(q * logp, axis=-1)

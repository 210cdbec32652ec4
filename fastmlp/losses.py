"""Losses, each beside the gradient that backpropagation starts from.

All losses are a mean over the n samples of a sum over the outputs, as in the
lessons: ``mse`` is (1/n) sum_i sum_c (y_ic - t_ic)^2, so dE/dy = 2 (y - t) / n.

The model computes the classification losses from the output layer's
pre-activations ``z`` rather than from probabilities, so they stay finite when
a probability underflows to 0:

* ``cross_entropy`` with a softmax output: -sum_c t_c log_softmax(z)_c. The
  softmax and loss derivatives fuse to delta = (p s - t) / n, where
  s = sum_c t_c is the row's target sum (PyTorch's general formula): any
  targets in [0, 1] are accepted, and one-hot or soft-label rows (s = 1) give
  the familiar (p - t) / n. A row of zeros has loss 0 and gradient 0. A target
  of 0 adds nothing to the loss, also where log_softmax is -inf (logits further
  apart than the dtype's largest number: 0 * -inf would be NaN).
* ``binary_cross_entropy`` with sigmoid outputs: softplus(z) - t z per output,
  and delta = (p - t) / n, exact for any t (each output is its own Bernoulli).

Every value and gradient divides by ``n``, the rows of the whole batch
(default: the rows given), so a batch may be processed in blocks of rows
whose values and gradients add up to the batch's.

The standalone functions at the bottom take probabilities, for users and for
the lessons' worked numbers.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import activations as act
from .codes import BINARY_CROSS_ENTROPY, CROSS_ENTROPY, MSE


def _mse_value(z, y, t, n=None):
    d = y - t
    return float(np.sum(d * d, dtype=np.float64)) / (n or len(y))


def _mse_output_gradient(y, t, n=None):
    """dE/dy of the mean squared error, (rows, k)."""
    return (2.0 / (n or len(y))) * (y - t)


def _ce_value(z, y, t, n=None):
    log_p = act.log_softmax(z)
    log_p[t == 0] = 0   # a 0 target's term is 0, even where log p is -inf
    return -float(np.sum(t * log_p, dtype=np.float64)) / (n or len(y))


def _ce_delta(y, t, n=None):
    """delta = dE/dz (rows, k) of softmax + cross-entropy: (p s - t) / n with
    s (rows, 1) each row's target sum, so targets need not sum to 1."""
    s = t.sum(axis=1, keepdims=True)
    return (y * s - t) / (n or len(y))


def _bce_value(z, y, t, n=None):
    return float(np.sum(act.softplus(z) - t * z, dtype=np.float64)) / (n or len(y))


def _bce_delta(y, t, n=None):
    """delta = dE/dz (rows, k) of sigmoid + binary cross-entropy: (p - t) / n."""
    return (y - t) / (n or len(y))


@dataclass(frozen=True)
class Loss:
    """One row of the loss table. ``output`` names the activation a fused loss needs."""

    name: str
    code: int
    value: callable          # (z, y, t, n=rows) -> float, sum over the rows / n
    gradient: callable       # (y, t, n=rows): mse dE/dy; fused losses dE/dz directly
    output: str | None = None


LOSSES = {l.name: l for l in [
    Loss("mse", MSE, _mse_value, _mse_output_gradient),
    Loss("cross_entropy", CROSS_ENTROPY, _ce_value, _ce_delta, output="softmax"),
    Loss("binary_cross_entropy", BINARY_CROSS_ENTROPY, _bce_value, _bce_delta, output="sigmoid"),
]}


BY_CODE = act.ByCode("loss", LOSSES.values())


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
    base = float(base)
    if not (np.isfinite(base) and base > 0 and base != 1):
        raise ValueError(f"base must be a finite number above 0 other than 1, got {base!r}")
    p, q = np.asarray(p, dtype=float), np.asarray(q, dtype=float)
    if p.shape != q.shape:
        raise ValueError(f"p and q must have one shape, got {p.shape} and {q.shape}")
    logp = np.log(np.clip(p, np.finfo(float).tiny, None)) / np.log(base)
    return -np.sum(q * logp, axis=-1)

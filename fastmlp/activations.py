"""Activations and their derivatives: one table, each function beside its twin.

These are the plain NumPy definitions (the reference). The compiled backends
implement the same table by the same integer ``code`` (from :mod:`fastmlp.codes`);
CONTRIBUTING.md lists what to edit to add one.

Every ``forward(z, p)`` maps pre-activations ``z`` (n, units) to outputs of the
same shape; every ``derivative(z, f, p)`` returns df/dz elementwise, given both
``z`` and ``f = forward(z, p)`` so each entry uses whichever is cheaper and more
accurate. ``p`` is the activation's scalar parameter (slope ``a`` of linear,
``alpha`` of the leaky, parametric and exponential units), or, for ``prelu``,
the layer's trainable per-unit alpha vector (units,).

Corrections to the lessons, on purpose:

* ReLU's derivative is 0 for z <= 0 and 1 for z > 0 (the lessons write 1
  everywhere, which would make ReLU train like a linear unit).
* ``step`` and ``sign`` have derivative 0 wherever it exists; a network that
  must learn through them cannot be trained by gradient descent, and
  :meth:`fastmlp.Model.fit` warns.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .codes import (ELU, LEAKY_RELU, LINEAR, PIECEWISE_LINEAR, PRELU, RELU, SIGMOID, SIGN,
                    SOFTMAX, SOFTPLUS, STEP, TANH, UnknownCode)


def _real(z):
    """The dtype these functions compute ``z`` in: its own if floating (float32 stays
    float32), else float64 (sigmoid of integers had been cast back to integers: 0)."""
    dtype = np.asarray(z).dtype
    return dtype if dtype.kind == "f" else np.dtype(np.float64)


def _as_real(z):
    return np.asarray(z, dtype=_real(z))


def sigmoid(z):
    """Logistic 1 / (1 + e^-z), finite and warning-free for any z (an array of any
    shape; integers and bools computed in float64)."""
    z = _as_real(z)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(z.dtype, copy=False)


def softplus(z):
    """ln(1 + e^z) computed as max(z, 0) + log1p(e^-|z|), so it never overflows."""
    z = _as_real(z)
    return (np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z)))).astype(z.dtype, copy=False)


def softmax(z):
    """Row-wise e^z_i / sum_j e^z_j of z (n, k) (a vector (k,) is one row), shifted
    by the row max for stability."""
    z = _as_real(z)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def log_softmax(z):
    """Row-wise log of :func:`softmax`, exact even where softmax underflows to 0."""
    z = _as_real(z)
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax_jacobian(p):
    """The lessons' softmax Jacobian dp_i/dz_k = p_i (1[i = k] - p_k), shape (n, k, k)."""
    eye = np.eye(p.shape[1], dtype=p.dtype)
    return p[:, :, None] * (eye[None, :, :] - p[:, None, :])


def softmax_vjp(p, dp):
    """delta = J^T dp for each row without forming J: p * (dp - sum(dp * p))."""
    return p * (dp - (dp * p).sum(axis=1, keepdims=True))


def _where(cond, a, b, like):
    return np.where(cond, a, b).astype(_real(like), copy=False)


@dataclass(frozen=True)
class Activation:
    """One row of the table: a function and its derivative, registered together."""

    name: str
    code: int
    forward: Callable
    derivative: Callable | None  # None for softmax, whose Jacobian is not elementwise
    param: str | None = None     # name of the scalar parameter, if any
    default: float = 0.0
    init: str = "glorot"         # weight initialisation that suits it


ACTIVATIONS = {a.name: a for a in [
    Activation("step", STEP,
               lambda z, p: _where(z > 0, 1.0, _where(z < 0, 0.0, 0.5, z), z),
               lambda z, f, p: np.zeros_like(z, dtype=_real(z))),
    Activation("sign", SIGN,
               lambda z, p: np.sign(_as_real(z)),
               lambda z, f, p: np.zeros_like(z, dtype=_real(z))),
    Activation("linear", LINEAR,
               lambda z, p: (p * z).astype(_real(z), copy=False),
               lambda z, f, p: np.full_like(z, p, dtype=_real(z)), param="a", default=1.0),
    Activation("piecewise_linear", PIECEWISE_LINEAR,
               lambda z, p: np.clip(z + 0.5, 0.0, 1.0).astype(_real(z), copy=False),
               lambda z, f, p: _where((z > -0.5) & (z < 0.5), 1.0, 0.0, z)),
    Activation("sigmoid", SIGMOID,
               lambda z, p: sigmoid(z),
               lambda z, f, p: f * (1 - f)),
    Activation("tanh", TANH,
               lambda z, p: np.tanh(_as_real(z)),
               lambda z, f, p: 1 - f * f),
    Activation("relu", RELU,
               lambda z, p: np.maximum(_as_real(z), 0),
               lambda z, f, p: _where(z > 0, 1.0, 0.0, z), init="he"),
    Activation("leaky_relu", LEAKY_RELU,
               lambda z, p: _where(z >= 0, z, p * z, z),
               lambda z, f, p: _where(z >= 0, 1.0, p, z), param="alpha", default=0.01, init="he"),
    Activation("prelu", PRELU,
               lambda z, p: _where(z >= 0, z, p * z, z),
               lambda z, f, p: _where(z >= 0, 1.0, np.broadcast_to(p, z.shape), z),
               param="alpha", default=0.25, init="he"),
    Activation("elu", ELU,
               lambda z, p: _where(z >= 0, z, p * np.expm1(np.minimum(_as_real(z), 0)), z),
               # alpha e^z below zero, not f + alpha, which cancels (f ~ -alpha); e^z in
               # float64, so that a float32 e^z below 1e-38 keeps its digits for a big alpha
               lambda z, f, p: _where(z >= 0, 1.0,
                                      p * np.exp(np.minimum(z, 0), dtype=np.float64), z),
               param="alpha", default=1.0, init="he"),
    Activation("softplus", SOFTPLUS,
               lambda z, p: softplus(z),
               lambda z, f, p: sigmoid(z), init="he"),
    Activation("softmax", SOFTMAX,
               lambda z, p: softmax(z),
               None),
]}

class ByCode(dict):
    """code -> table row; an unknown code raises :class:`fastmlp.codes.UnknownCode`
    (a ValueError and a KeyError) naming the codes there are."""

    def __init__(self, kind, rows):
        super().__init__((row.code, row) for row in rows)
        self.kind = kind

    def __missing__(self, code):
        raise UnknownCode(f"unknown {self.kind} code {code!r}; known codes are {sorted(self)}")


BY_CODE = ByCode("activation", ACTIVATIONS.values())


def get(name: str) -> Activation:
    """Look up an activation by name, with a clear error for unknown names."""
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}") from None

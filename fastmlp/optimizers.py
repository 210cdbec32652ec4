"""Optimisers, simplest first; each updates one flat parameter vector in place.

The lessons write the update as V <- V + eta * grad; that climbs the loss. Every
optimiser here *descends*: theta <- theta - lr * (step direction).

The state of an optimiser is a few arrays the size of the parameter vector
(see :class:`OptimizerState`), so every backend updates all layers in one pass
and a saved model resumes training exactly where it stopped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# The codes and the positions in OptimizerState.hyper, shared with the compiled kernels.
from .codes import (ADAM_CODE, BETA1, BETA2, EPS, LR, MOMENTUM, N_HYPER, NESTEROV,
                    SGD_CODE, WEIGHT_DECAY, UnknownCode)
from .validation import as_float, check_flag, shown


def _positive(name, value):
    if not isinstance(value, (int, float, np.floating, np.integer)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    number = as_float(value)
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {shown(value)}")
    return number


def _in_unit_interval(name, value):
    if not isinstance(value, (int, float, np.floating, np.integer)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    number = as_float(value)   # checked as stored: a long double 1 - 2**-60 is 1.0
    if not 0.0 <= number < 1.0:
        rounded = f" ({number!r} as a float64)" if number == 1.0 and value != 1.0 else ""
        raise ValueError(f"{name} must be in [0, 1), got {shown(value)}{rounded}")
    return number


class _Settings:
    """Immutable once made: a model copies an optimiser's settings into its state (and its
    kernels choose their path from them) when it is built or given the optimiser, so a
    later change would reach repr() and save() but not the training."""

    def __setattr__(self, name, value):
        if getattr(self, "_frozen", False):
            raise AttributeError(
                f"an optimizer cannot be changed once made (a model using it would not see "
                f"{name!r} change): give the model a new one, e.g. "
                f"model.optimizer = {type(self).__name__}({name}=...), which keeps its "
                "training state (step count, momentum or Adam buffers)")
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        # as an assignment: del left a model that trained on, but whose repr, save and
        # pickle then failed
        self.__setattr__(name, None)
        object.__delattr__(self, name)

    def __eq__(self, other):
        return type(other) is type(self) and other.config() == self.config()

    def __hash__(self):
        return hash(tuple(self.config().items()))


class SGD(_Settings):
    """Stochastic gradient descent with optional momentum and weight decay.

    PyTorch's convention: g <- grad + weight_decay * theta; with momentum,
    v <- momentum * v + g and the step is v (or g + momentum * v for Nesterov);
    theta <- theta - lr * step.

    >>> import fastmlp as fm
    >>> opt = fm.SGD(lr=0.1, momentum=0.9)
    """

    code = SGD_CODE
    n_buffers = 1

    def __init__(self, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0):
        self.lr = _positive("lr", lr)
        self.momentum = _in_unit_interval("momentum", momentum)
        self.nesterov = check_flag(nesterov, "nesterov")
        self.weight_decay = _in_unit_interval("weight_decay", weight_decay)
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        self._frozen = True

    def config(self):
        return {"name": "sgd", "lr": self.lr, "momentum": self.momentum,
                "nesterov": self.nesterov, "weight_decay": self.weight_decay}

    def hyper(self):
        h = np.zeros(N_HYPER)
        h[[LR, MOMENTUM, NESTEROV, WEIGHT_DECAY]] = (
            self.lr, self.momentum, float(self.nesterov), self.weight_decay)
        return h

    def __repr__(self):
        return f"SGD(lr={self.lr}, momentum={self.momentum}, nesterov={self.nesterov}, weight_decay={self.weight_decay})"


class Adam(_Settings):
    """Adam (Kingma & Ba) with bias correction; ``weight_decay`` is L2 added to the gradient.

    m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
    theta <- theta - lr * m_hat / (sqrt(v_hat) + eps), with m_hat = m / (1 - b1^t),
    v_hat = v / (1 - b2^t) and t the step count.

    >>> import fastmlp as fm
    >>> opt = fm.Adam(lr=1e-3)
    """

    code = ADAM_CODE
    n_buffers = 2

    def __init__(self, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
        self.lr = _positive("lr", lr)
        self.beta1 = _in_unit_interval("beta1", beta1)
        self.beta2 = _in_unit_interval("beta2", beta2)
        self.eps = _positive("eps", eps)
        self.weight_decay = _in_unit_interval("weight_decay", weight_decay)
        self._frozen = True

    def config(self):
        return {"name": "adam", "lr": self.lr, "beta1": self.beta1, "beta2": self.beta2,
                "eps": self.eps, "weight_decay": self.weight_decay}

    def hyper(self):
        h = np.zeros(N_HYPER)
        h[[LR, WEIGHT_DECAY, BETA1, BETA2, EPS]] = (
            self.lr, self.weight_decay, self.beta1, self.beta2, self.eps)
        return h

    def __repr__(self):
        return f"Adam(lr={self.lr}, beta1={self.beta1}, beta2={self.beta2}, eps={self.eps}, weight_decay={self.weight_decay})"


OPTIMIZERS = {"sgd": SGD, "adam": Adam}


def problem_in(optimizer, dtype):
    """Why ``optimizer``'s settings lose their meaning in ``dtype``'s arithmetic (the
    updates compute in the model dtype), or None. In float32, lr=1e-50 is 0 and
    eps=1e39 inf (no weight ever changes), eps=1e-320 is 0 (0/0 at a zero gradient),
    and beta2=1-1e-9 is 1 (Adam's v never grows)."""
    dtype = np.dtype(dtype)
    for name in ("lr", "eps"):
        value = getattr(optimizer, name, None)
        with np.errstate(over="ignore"):   # 1e39 -> inf in float32 is what is checked
            held = dtype.type(value) if value is not None else None
        # a rate below the smallest normal number (1e-45 is 1.4e-45 in float32) makes
        # steps that underflow to 0 or vanish beside the weights: nothing would learn
        smallest = np.finfo(dtype).tiny if name == "lr" else 0
        if held is not None and not (smallest <= held < np.inf and held > 0):
            what = "below the smallest normal number" if 0 < held < np.inf else float(held)
            return (f"{name}={value!r} is {what} in {dtype.name}, the model's "
                    f"arithmetic: give a {name} between {float(np.finfo(dtype).tiny):.3g} "
                    f"and {float(np.finfo(dtype).max):.3g}")
    for name in ("momentum", "beta1", "beta2"):
        value = getattr(optimizer, name, None)
        if value and dtype.type(value) >= 1:
            wider = " or dtype='float64'" if dtype != np.float64 else ""
            return (f"{name}={value!r} rounds to 1 in {dtype.name}, the model's arithmetic, "
                    f"where it must stay below 1: give a smaller {name}{wider}")
    return None


def from_config(config: dict):
    """Rebuild an optimiser from :meth:`config` (used by :func:`fastmlp.load`)."""
    config = dict(config)
    name = config.pop("name", None)
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](**config)


def get(optimizer):
    """Accept an optimiser instance or its name ("sgd", "adam") with default settings."""
    if optimizer is None:
        return SGD()
    if isinstance(optimizer, tuple(OPTIMIZERS.values())):
        return optimizer
    if isinstance(optimizer, str):
        if optimizer.lower() not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {sorted(OPTIMIZERS)}")
        return OPTIMIZERS[optimizer.lower()]()
    raise TypeError(f"optimizer must be fm.SGD, fm.Adam or a name, got {type(optimizer).__name__}")


@dataclass
class OptimizerState:
    """Everything an update needs, as arrays a compiled kernel can take.

    code: SGD_CODE or ADAM_CODE; hyper: float64 (N_HYPER,) indexed by LR, MOMENTUM, ...;
    buffers: (2, n_params) in the model dtype (momentum / Adam's m and v);
    step: int64 (1,), the number of updates done (Adam's bias correction).
    """

    code: int
    hyper: np.ndarray
    buffers: np.ndarray
    step: np.ndarray

    @classmethod
    def new(cls, optimizer, n_params, dtype, buffers=None):
        """A fresh state (step 0) for ``optimizer``; buffers zeros, or the (2, n_params)
        array given, taken as is (a restored model's own)."""
        if buffers is None:
            buffers = np.zeros((2, n_params), dtype=dtype)
        return cls(optimizer.code, optimizer.hyper(), buffers, np.zeros(1, dtype=np.int64))

    def copy_from(self, other):
        np.copyto(self.buffers, other.buffers)
        np.copyto(self.step, other.step)


def update(theta, grad, state: OptimizerState):
    """Reference update, in place: theta (p,), grad (p,) -> theta, state advanced one step."""
    if state.code not in (SGD_CODE, ADAM_CODE):
        raise UnknownCode(f"unknown optimizer code {state.code!r}; known codes are "
                          f"{sorted(c.code for c in OPTIMIZERS.values())}")
    # Python floats keep float32 arithmetic in float32 (NumPy's weak scalars).
    h = [float(x) for x in state.hyper]
    lr, wd = h[LR], h[WEIGHT_DECAY]
    g = grad + wd * theta if wd else grad
    state.step[0] += 1
    if state.code == SGD_CODE:
        mu = h[MOMENTUM]
        if mu:
            v = state.buffers[0]
            v *= mu
            v += g
            g = g + mu * v if h[NESTEROV] else v
        theta -= (lr * g).astype(theta.dtype, copy=False)
    elif state.code == ADAM_CODE:
        b1, b2, eps = h[BETA1], h[BETA2], h[EPS]
        m, v = state.buffers
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * g * g
        t = int(state.step[0])
        m_hat = m / (1 - b1 ** t)
        v_hat = v / (1 - b2 ** t)
        theta -= (lr * m_hat / (np.sqrt(v_hat) + eps)).astype(theta.dtype, copy=False)

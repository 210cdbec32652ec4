"""Device functions of the "cuda" backend: activations, their derivatives, the optimiser.

Every kernel of ``kernels/cuda_*.py`` (the general path of cuda_layers, the fused
kernels of cuda_fused) computes through these, so the formulas live in one place,
each the twin of its row in :mod:`fastmlp.activations` and :mod:`fastmlp.optimizers`.

Two forms of the same functions:

* ``act``, ``act_grad``, ``opt_update``, ``sigmoid``, ``softplus`` (module level):
  generic over float32/float64 arguments. Their literals are float64, so a float32
  argument is computed in float64 and rounded where the caller stores it: correct,
  and slower on GPUs with few float64 units.
* ``for_dtype(dtype)`` -> a namespace of the same names whose constants have the
  dtype's type (frozen as closure constants when a kernel compiles), so a float32
  kernel stays float32 end to end. The general path's kernels use these.

A device function is compiled into each kernel that calls it (inlined by NVVM);
the code arguments are runtime integers, so one kernel serves every activation.
"""
from __future__ import annotations

import math
import types
from types import SimpleNamespace

import numpy as np
from numba import cuda

from fastmlp.codes import (ADAM_CODE, BETA1, BETA2, ELU, EPS, LEAKY_RELU, LINEAR, LR, MOMENTUM,
                           NESTEROV, PIECEWISE_LINEAR, PRELU, RELU, SGD_CODE, SIGMOID, SIGN,
                           SOFTPLUS, STEP, TANH, WEIGHT_DECAY)


def simulated():
    """True under the Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1, read at numba's import)."""
    from numba.core import config
    return bool(config.ENABLE_CUDASIM)


def kernel(fn):
    """``cuda.jit`` of a kernel (device functions take ``cuda.jit(device=True)``).

    Under the simulator every GPU thread is a Python thread computing with NumPy
    scalars, which warn on overflow where a GPU silently gives inf or NaN; a
    warnings-as-errors filter (a test's, a user's) would turn those into exceptions
    in the middle of a kernel. So there each thread runs under
    ``np.errstate(all="ignore")``, as a GPU computes. The wrapper is built on fn's own
    globals, into which the simulator swaps its fake ``cuda`` module."""
    if not simulated():
        return cuda.jit(fn)
    errstate = np.errstate

    def quiet(*args):
        with errstate(all="ignore"):
            fn(*args)
    run = types.FunctionType(quiet.__code__, fn.__globals__, fn.__name__, None,
                             quiet.__closure__)
    run.__doc__ = fn.__doc__
    return cuda.jit(run)


def _build(ftype):
    """The device functions with constants of numpy type ``ftype`` (np.float32/np.float64)."""
    zero, half, one = ftype(0.0), ftype(0.5), ftype(1.0)

    @cuda.jit(device=True)
    def sigmoid(z):
        """1 / (1 + e^-z) without overflow: e^-|z| never exceeds 1."""
        e = math.exp(-abs(z))
        r = one / (one + e)
        return r if z >= zero else e * r

    @cuda.jit(device=True)
    def softplus(z):
        """ln(1 + e^z) as max(z, 0) + log1p(e^-|z|), finite for any finite z."""
        return max(z, zero) + math.log1p(math.exp(-abs(z)))

    @cuda.jit(device=True)
    def act(code, z, p, a):
        """f(z) of the elementwise activation ``code`` (every code but SOFTMAX);
        ``p`` its scalar parameter (Network.act_params), ``a`` prelu's alpha for this unit."""
        if code == RELU:   # as np.maximum(z, 0): NaN stays NaN, -0 becomes +0
            return zero if z <= zero else z
        if code == SIGMOID:
            return sigmoid(z)
        if code == TANH:
            return math.tanh(z)
        if code == LINEAR:
            return p * z
        if code == LEAKY_RELU:
            return z if z >= zero else p * z
        if code == PRELU:
            return z if z >= zero else a * z
        if code == ELU:
            return z if z >= zero else p * math.expm1(min(z, zero))
        if code == SOFTPLUS:
            return softplus(z)
        if code == PIECEWISE_LINEAR:
            return min(max(z + half, zero), one)
        if code == STEP:
            return one if z > zero else (zero if z < zero else half)
        if code == SIGN:   # as np.sign: NaN stays NaN, -0 becomes +0
            return one if z > zero else (-one if z < zero else (zero if z == zero else z))
        return z * (zero / zero)  # an unknown code: NaN, which the checks catch

    @cuda.jit(device=True)
    def act_grad(code, z, f, p, a):
        """df/dz of activation ``code`` at z, given f = act(code, z, p, a).
        ReLU's is 0 at z <= 0; step's and sign's are 0 everywhere (no gradient flows)."""
        if code == RELU:
            return one if z > zero else zero
        if code == SIGMOID:
            return f * (one - f)
        if code == TANH:
            return one - f * f
        if code == LINEAR:
            return p
        if code == LEAKY_RELU:
            return one if z >= zero else p
        if code == PRELU:
            return one if z >= zero else a
        if code == ELU:
            # alpha e^z (f + alpha would cancel), in float64 as the reference (p cast
            # too: the simulator's NumPy keeps float32 p * a Python float in float32)
            if z >= zero:
                return one
            return ftype(np.float64(p) * math.exp(np.float64(min(z, zero))))
        if code == SOFTPLUS:
            return sigmoid(z)
        if code == PIECEWISE_LINEAR:
            return one if (z > -half and z < half) else zero
        if code == STEP or code == SIGN:
            return zero
        return z * (zero / zero)

    @cuda.jit(device=True)
    def opt_update(code, hyper, t, i, theta, g, bufs):
        """One parameter's update, in place, as fastmlp.optimizers.update:
        theta[i] (and bufs[0, i]: momentum's v / Adam's m, bufs[1, i]: Adam's v) from
        the mean-loss gradient ``g``; ``hyper`` float64 (N_HYPER,), ``t`` the step count
        after this step's increment (Adam's bias correction). Hyper-parameters are
        rounded to the parameters' type first, as NumPy does with the reference's
        Python floats, so a float32 update stays float32."""
        lr = ftype(hyper[LR])
        wd = ftype(hyper[WEIGHT_DECAY])
        w = theta[i]
        if wd != zero:
            g = g + wd * w
        if code == SGD_CODE:
            mu = ftype(hyper[MOMENTUM])
            if mu != zero:
                v = mu * bufs[0, i] + g
                bufs[0, i] = v
                g = g + mu * v if hyper[NESTEROV] != 0.0 else v
            theta[i] = w - lr * g
        elif code == ADAM_CODE:
            b1, b2 = hyper[BETA1], hyper[BETA2]
            m = ftype(b1) * bufs[0, i] + ftype(1.0 - b1) * g
            v = ftype(b2) * bufs[1, i] + ftype(1.0 - b2) * g * g
            bufs[0, i] = m
            bufs[1, i] = v
            m_hat = m / ftype(1.0 - b1 ** t)
            v_hat = v / ftype(1.0 - b2 ** t)
            theta[i] = w - lr * m_hat / (math.sqrt(v_hat) + ftype(hyper[EPS]))

    return SimpleNamespace(dtype=np.dtype(ftype), sigmoid=sigmoid, softplus=softplus, act=act,
                           act_grad=act_grad, opt_update=opt_update)


_TYPED = {np.dtype(np.float32): _build(np.float32), np.dtype(np.float64): _build(np.float64)}


def for_dtype(dtype):
    """The device functions whose constants have ``dtype``'s type (float32 or float64)."""
    return _TYPED[np.dtype(dtype)]


# The generic forms (float64 constants): the ones other modules import by name.
_generic = _TYPED[np.dtype(np.float64)]
sigmoid, softplus = _generic.sigmoid, _generic.softplus
act, act_grad, opt_update = _generic.act, _generic.act_grad, _generic.opt_update

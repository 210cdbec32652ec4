"""The integer codes every backend dispatches on: the ONE place they are defined.

The Python tables (:mod:`fastmlp.activations`, :mod:`fastmlp.losses`,
:mod:`fastmlp.optimizers`) and the Numba kernels import these names; the
Cython kernels ``cimport`` them from ``kernels/_codes.pxd``, which setup.py
generates from this file at build time (it reads the ``NAME = integer`` lines
below, so keep every code in that form and this module free of imports).

A code is part of the saved-model format only through the tables' names, but
the compiled kernels are built against these numbers: after changing one,
rebuild (``python setup.py build_ext --inplace``).
"""

# Activations (fastmlp.activations.ACTIVATIONS)
STEP = 0
SIGN = 1
LINEAR = 2
PIECEWISE_LINEAR = 3
SIGMOID = 4
TANH = 5
RELU = 6
LEAKY_RELU = 7
PRELU = 8
ELU = 9
SOFTPLUS = 10
SOFTMAX = 11

# Losses (fastmlp.losses.LOSSES)
MSE = 0
CROSS_ENTROPY = 1
BINARY_CROSS_ENTROPY = 2

# Optimisers (fastmlp.optimizers.OPTIMIZERS)
SGD_CODE = 0
ADAM_CODE = 1

# Positions of the hyper-parameters in OptimizerState.hyper (float64 (N_HYPER,))
LR = 0
MOMENTUM = 1
NESTEROV = 2
WEIGHT_DECAY = 3
BETA1 = 4
BETA2 = 5
EPS = 6
N_HYPER = 7

# Modes of the Numba kernels' run(): train the parameters, or only form the gradient
TRAIN = 0
GRADIENT = 1


class UnknownCode(ValueError, KeyError):
    """A code that no table row (or no kernel) has: a ValueError, and a KeyError
    for code that looks codes up in a dict."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""

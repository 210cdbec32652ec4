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


# The layout both compiled backends read: an int64 "plan" built by
# fastmlp.network.Network.plan(cap, ...) for a workspace of ``cap`` rows. Its
# header fields first, then one row of LAYER_FIELDS per layer from PLAN_HEAD on.
# Offsets count elements of theta (LAYER_W/B/ALPHA) or of the one flat workspace
# (WS_*, LAYER_Z/F).
PLAN_LAYERS = 0       # L
PLAN_LOSS = 1         # the loss code
PLAN_FUSED = 2        # 1: the loss gives dE/dz of the output layer (fastmlp.rules.fused_output)
PLAN_N_PARAMS = 3     # length of theta
PLAN_WIDEST = 4       # widest layer (units)
PLAN_FOLD_ROWS = 5    # plain SGD folds into the GEMM up to this batch size (fastmlp.rules)
PLAN_CAP = 6          # rows the workspace holds
PLAN_WS_SIZE = 7      # elements of the workspace
WS_ACT_PARAMS = 8     # (L,) each layer's activation parameter, in the model dtype
WS_GRAD = 9           # (n_params,) the gradient vector
WS_XB = 10            # (2, cap, inputs): two halves of gathered input rows
WS_TB = 11            # (2, cap, outputs): the same for the targets
WS_D0 = 12            # (cap, widest): dE/df, then delta, of one layer
WS_D1 = 13            # (cap, widest): the same for the layer below
PLAN_HEAD = 14
# A layer's row
LAYER_N_IN = 0
LAYER_N_OUT = 1
LAYER_ACT = 2         # activation code (its parameter: Network.act_params)
LAYER_W = 3           # W (n_in, n_out) in theta
LAYER_B = 4           # b (n_out,) in theta
LAYER_ALPHA = 5       # prelu's alpha (n_out,) in theta, -1 for none
LAYER_Z = 6           # z (cap, n_out) in the workspace
LAYER_F = 7           # f (cap, n_out) in the workspace
LAYER_FIELDS = 8

# Columns per block of a chunk's column sums (the bias and prelu alpha gradients), which
# the compiled kernels hold in float64 on the stack and add to the batch's once per chunk
SUM_BLOCK = 256

class UnknownCode(ValueError, KeyError):
    """A code that no table row (or no kernel) has: a ValueError, and a KeyError
    for code that looks codes up in a dict."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""

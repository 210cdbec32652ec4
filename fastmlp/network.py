"""Architecture: ``Dense`` layers and the ``Network`` they form.

All parameters of a network live in ONE flat vector ``theta`` (llm.c style),
in :meth:`fastmlp.Model.get_weights` order: W1 (in, out) row-major, b1 (out,),
alpha1 (out,) for a prelu layer, then W2, b2, ... . ``Network.offsets`` says
where each piece starts, so every backend (NumPy, Numba, Cython) addresses the
same memory, optimisers update all layers in one pass, and saving is one array.

The layout is built here once, with named fields (the ``PLAN_*``, ``WS_*`` and
``LAYER_*`` positions of :mod:`fastmlp.codes`, as llm.c's structs name theirs):
``Network.layer_table`` holds each layer's sizes, activation and offsets in
theta, and :meth:`Network.plan` adds, for a workspace of ``cap`` rows, where
every buffer lies in that one flat workspace. Both compiled backends run on
that plan (Numba reads it as is, Cython fills its Net and Work structs from
it); neither derives an offset of its own.
"""
from __future__ import annotations

import numpy as np

from . import activations as act
from . import losses, rules
from ._aligned import CACHE_LINE, aligned_zeros
from .validation import real_number
from .codes import (LAYER_ACT, LAYER_ALPHA, LAYER_B, LAYER_F, LAYER_FIELDS, LAYER_N_IN,
                    LAYER_N_OUT, LAYER_W, LAYER_Z, PLAN_CAP, PLAN_FOLD_ROWS, PLAN_FUSED,
                    PLAN_HEAD, PLAN_LAYERS, PLAN_LOSS, PLAN_N_PARAMS, PLAN_WIDEST, PLAN_WS_SIZE,
                    WS_ACT_PARAMS, WS_D0, WS_D1, WS_GRAD, WS_TB, WS_XB)

# Columns of Network.offsets.
W_OFF, B_OFF, ALPHA_OFF = range(3)

# The widest layer (and input) a model may have: BLAS takes 32-bit sizes (the Cython
# kernels' int GEMM arguments), and every offset into theta must fit int64.
MAX_UNITS = 2 ** 31 - 1
MAX_PARAMS = 2 ** 62
# plan's workspace buffers start a multiple of this many elements in: a cache line of
# float32 (two of float64)
LINE_ELEMENTS = CACHE_LINE // 4
_DRAW_VALUES = 1 << 17   # initial weights drawn 1 MiB of float64 at a time (init_params)


class Dense:
    """A fully connected layer: f(x W + b) with ``units`` outputs.

    ``params`` set the activation's parameter: ``a`` for linear (slope),
    ``alpha`` for leaky_relu, elu and prelu (prelu's is the initial value of
    its trainable per-unit alpha). ``activation=None`` is linear, as in Keras.

    >>> import fastmlp as fm
    >>> fm.Dense(16, activation="leaky_relu", alpha=0.1)
    Dense(16, activation='leaky_relu', alpha=0.1)
    """

    def __init__(self, units, activation="linear", **params):
        if (isinstance(units, bool) or not isinstance(units, (int, np.integer))
                or not 1 <= units <= MAX_UNITS):
            raise ValueError(f"Dense units must be an integer in [1, 2**31), got {units!r}")
        self.units = int(units)
        # None is linear, as in Keras's Dense
        self.activation = act.get("linear" if activation is None else activation)
        allowed = {self.activation.param} - {None}
        unknown = set(params) - allowed
        if unknown:
            raise TypeError(f"activation {activation!r} takes parameters {sorted(allowed) or 'none'}, "
                            f"got {sorted(unknown)}")
        self.param = real_number(params.get(self.activation.param, self.activation.default),
                                 self.activation.param)
        if self.activation.code == act.LINEAR and self.param == 0:
            # f = 0 z: the layer outputs 0 whatever its input, and passes no gradient back
            raise ValueError("a linear layer with slope a=0 outputs 0 and learns nothing; "
                             "give a non-zero a (1 by default)")
        self._frozen = True

    def __setattr__(self, name, value):
        # A model copies its layers' units, codes and parameters into its plan and
        # kernels when it is built; a later change would reach save() and to_onnx()
        # but not the training and predictions, so none is allowed.
        if getattr(self, "_frozen", False):
            raise AttributeError(f"a Dense layer cannot be changed once made (a model built "
                                 f"from it would not see {name!r} change): make a new Dense")
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        # as an assignment: del left a model that trained on, but whose repr, save and
        # pickle then failed
        self.__setattr__(name, None)
        object.__delattr__(self, name)

    def __reduce__(self):
        # rebuilt from its config: the activation entry holds functions that pickle
        # cannot name
        return (Dense.from_config, (self.config(),))

    @classmethod
    def from_config(cls, cfg):
        """The Dense that :meth:`config` describes."""
        cfg = dict(cfg)
        return cls(cfg.pop("units"), cfg.pop("activation"), **cfg)

    def config(self):
        cfg = {"units": self.units, "activation": self.activation.name}
        if self.activation.param:
            cfg[self.activation.param] = self.param
        return cfg

    def __repr__(self):
        extra = f", {self.activation.param}={self.param}" if self.activation.param else ""
        return f"Dense({self.units}, activation={self.activation.name!r}{extra})"


def _line_up(n):
    """n rounded up to a multiple of LINE_ELEMENTS."""
    return -(-n // LINE_ELEMENTS) * LINE_ELEMENTS


def param_too_large(layers, dtype):
    """Why a layer's activation parameter cannot be held by ``dtype``, or None: 1e39 is
    inf in float32, and so would be every output it scales."""
    largest = float(np.finfo(dtype).max)
    for i, layer in enumerate(layers, 1):
        if abs(layer.param) > largest:
            return (f"layer {i}'s {layer.activation.param}={layer.param!r} is too large for "
                    f"{np.dtype(dtype).name} (at most {largest:.4g} in magnitude)")
    return None


def slope_vanishes(layers, dtype):
    """Why a linear layer's slope means nothing in ``dtype``, or None: 1e-50 is 0 in
    float32, the slope a=0 that Dense refuses."""
    for i, layer in enumerate(layers, 1):
        if layer.activation.code == act.LINEAR and abs(layer.param) < np.finfo(dtype).tiny:
            # 0 there, or subnormal (a z below 1 then makes 0 too)
            wider = " or dtype='float64'" if np.dtype(dtype) != np.float64 else ""
            return (f"layer {i}'s linear slope a={layer.param!r} is 0 or below the smallest "
                    f"normal number in {np.dtype(dtype).name}: the layer would output 0 and "
                    f"learn nothing; give a larger |a|{wider}")
    return None


class Network:
    """A stack of Dense layers, a loss, and the layout of their flat parameters.

    Attributes, all plain arrays so compiled kernels can take them:
    layer_table int64 (L, LAYER_FIELDS): per layer LAYER_N_IN, LAYER_N_OUT,
    LAYER_ACT, and LAYER_W, LAYER_B, LAYER_ALPHA (-1 if none), the starts of its
    pieces in theta (LAYER_Z and LAYER_F are -1 here: :meth:`plan` places them);
    dims int64 (L+1,): input width then each layer's units;
    act_codes int64 (L,): a view of layer_table's LAYER_ACT column; act_params float64 (L,);
    offsets int64 (L, 3): a view of layer_table's LAYER_W, LAYER_B, LAYER_ALPHA columns;
    n_params: length of theta; loss: the :class:`fastmlp.losses.Loss` row.
    """

    def __init__(self, layers, input_dim, loss):
        if isinstance(layers, Dense):
            raise TypeError(f"layers must be a list of fm.Dense, got one Dense: write "
                            f"[{layers!r}]")
        if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
            raise TypeError(f"layers must be a non-empty list of fm.Dense, got "
                            f"{type(layers).__name__}")
        # A tuple: the kernels, plan and optimiser state are built from these layers once,
        # so model.layers.append(...) or layers[0] = ... would reach save() and to_onnx()
        # but not training or predict (Dense layers are immutable for the same reason).
        layers = tuple(layers)
        if not layers or not all(isinstance(l, Dense) for l in layers):
            raise TypeError("layers must be a non-empty list of fm.Dense")
        if (isinstance(input_dim, bool) or not isinstance(input_dim, (int, np.integer))
                or not 1 <= input_dim <= MAX_UNITS):
            raise ValueError(f"input_dim must be an integer in [1, 2**31), got {input_dim!r}")
        widths = [int(input_dim)] + [l.units for l in layers]
        n_params = sum(a * b + b for a, b in zip(widths, widths[1:]))  # Python ints: exact
        if n_params >= MAX_PARAMS:
            raise ValueError(f"a network of {widths} has {n_params:.3g} parameters, more "
                             "than any machine holds")
        self.layers = layers
        self.loss = losses.get(loss)
        for i, layer in enumerate(layers[:-1]):
            if layer.activation.code == act.SOFTMAX:
                raise ValueError(f"softmax is only allowed on the output layer, found on layer {i + 1}")
        out_act = layers[-1].activation.name
        if self.loss.output and out_act != self.loss.output:
            raise ValueError(f"loss {self.loss.name!r} needs a {self.loss.output} output layer, "
                             f"got {out_act!r}")
        if layers[-1].activation.code == act.SOFTMAX and layers[-1].units == 1:
            # softmax over one unit is always 1: a constant output, no gradient, under any loss
            raise ValueError(f"a 1-unit softmax output is always 1 (loss {self.loss.name!r} "
                             "could learn nothing): for two classes use Dense(1, "
                             "activation='sigmoid') with loss='binary_cross_entropy', or "
                             "Dense(2, activation='softmax')")
        units = [l.units for l in layers]
        self.dims = np.array([int(input_dim)] + units, dtype=np.int64)
        # workspace_row_elements, counted once: rules.train_rows asks on every gradients()
        self._row_elements = 2 * int(input_dim) + 2 * units[-1] + 2 * max(units) + 2 * sum(units)
        self.act_params = np.array([l.param for l in layers], dtype=np.float64)
        table = np.full((len(layers), LAYER_FIELDS), -1, dtype=np.int64)
        shapes, pos = [], 0
        for i, layer in enumerate(layers):
            n_in, n_out = int(self.dims[i]), int(self.dims[i + 1])
            row = table[i]
            row[LAYER_N_IN], row[LAYER_N_OUT] = n_in, n_out
            row[LAYER_ACT] = layer.activation.code
            row[LAYER_W] = pos
            shapes.append((n_in, n_out))
            pos += n_in * n_out
            row[LAYER_B] = pos
            shapes.append((n_out,))
            pos += n_out
            if layer.activation.code == act.PRELU:
                row[LAYER_ALPHA] = pos
                shapes.append((n_out,))
                pos += n_out
        self.layer_table = table
        # Views, not copies: the table stays the one record of codes and offsets.
        self.act_codes = table[:, LAYER_ACT]
        self.offsets = table[:, LAYER_W:LAYER_ALPHA + 1]
        self.shapes = shapes
        # (start, stop, shape) of each array in theta, for split: counted once, not per call
        stops = np.cumsum([int(np.prod(shape)) for shape in shapes]).tolist()
        self._slices = list(zip([0] + stops[:-1], stops, shapes))
        self.n_params = int(pos)

    def plan(self, cap, fold_rows=0):
        """The kernels' description of this network with a workspace of ``cap`` rows:
        int64 (PLAN_HEAD + L * LAYER_FIELDS,), the fields named in fastmlp.codes.

        Header: PLAN_LAYERS, PLAN_LOSS, PLAN_FUSED (:func:`fastmlp.rules.fused_output`),
        PLAN_N_PARAMS, PLAN_WIDEST, PLAN_FOLD_ROWS (min(``fold_rows``, cap), ``fold_rows``
        from :func:`fastmlp.rules.sgd_fold_rows`: a folded batch must fit one chunk), PLAN_CAP, PLAN_WS_SIZE and the offsets
        in the one flat workspace of WS_ACT_PARAMS (L,), WS_GRAD (n_params,),
        WS_XB (2, cap, inputs), WS_TB (2, cap, outputs), WS_D0 and WS_D1 (cap, widest).
        Then layer_table's rows, with LAYER_Z and LAYER_F: each layer's z and f
        (cap, n_out) in the workspace. Built from the current codes and loss. Every
        buffer starts a multiple of LINE_ELEMENTS elements in, so on a cache line of a
        workspace that starts on one (the backends allocate it so, fastmlp/_aligned.py):
        the float32 GEMM loops (kernels/_sgemm_blas.h) load deltas and store gradients
        and activations a cache line at a time.
        """
        cap = int(cap)
        if cap < 1:
            raise ValueError(f"a workspace needs cap >= 1 rows, got {cap}")
        n_layers, widest = len(self.layers), int(self.dims[1:].max())
        plan = np.empty(PLAN_HEAD + LAYER_FIELDS * n_layers, dtype=np.int64)
        plan[PLAN_LAYERS], plan[PLAN_LOSS] = n_layers, self.loss.code
        plan[PLAN_FUSED] = rules.fused_output(self.loss)
        plan[PLAN_N_PARAMS], plan[PLAN_WIDEST] = self.n_params, widest
        plan[PLAN_FOLD_ROWS], plan[PLAN_CAP] = min(int(fold_rows), cap), cap
        pos = 0
        for field, size in ((WS_ACT_PARAMS, n_layers), (WS_GRAD, self.n_params),
                            (WS_XB, 2 * cap * self.input_dim), (WS_TB, 2 * cap * self.output_dim),
                            (WS_D0, cap * widest), (WS_D1, cap * widest)):
            plan[field], pos = pos, _line_up(pos + size)
        rows = plan[PLAN_HEAD:].reshape(n_layers, LAYER_FIELDS)
        rows[...] = self.layer_table
        for row in rows:
            size = _line_up(cap * int(row[LAYER_N_OUT]))
            row[LAYER_Z], row[LAYER_F], pos = pos, pos + size, pos + 2 * size
        plan[PLAN_WS_SIZE] = pos
        return plan

    def workspace_row_elements(self):
        """Elements of :meth:`plan`'s workspace per row of its cap: two rows of inputs
        and of targets (WS_XB, WS_TB), two of the widest layer (WS_D0, WS_D1), and
        every layer's z and f."""
        return self._row_elements

    @property
    def input_dim(self):
        return int(self.dims[0])

    @property
    def output_dim(self):
        return int(self.dims[-1])

    def split(self, theta):
        """Views of theta in get_weights() order: [W1, b1, (alpha1), W2, ...]."""
        return [theta[start:stop].reshape(shape) for start, stop, shape in self._slices]

    def layer_views(self, theta):
        """Per layer, (W (in, out), b (out,), alpha (out,) or None) as views of theta."""
        out = []
        for i in range(len(self.layers)):
            n_in, n_out = int(self.dims[i]), int(self.dims[i + 1])
            w, b, a = self.offsets[i]
            alpha = theta[a:a + n_out] if a >= 0 else None
            out.append((theta[w:w + n_in * n_out].reshape(n_in, n_out), theta[b:b + n_out], alpha))
        return out

    def parameter_at(self, index):
        """What theta[index] is, in words: "layer 2's W[3, 0]", "layer 1's b[4]" or
        "layer 1's prelu alpha[0]" (layers counted from 1); None for padding."""
        for i in range(len(self.layers)):
            n_in, n_out = int(self.dims[i]), int(self.dims[i + 1])
            w, b, a = (int(o) for o in self.offsets[i])
            if w <= index < w + n_in * n_out:
                return f"layer {i + 1}'s W[{(index - w) // n_out}, {(index - w) % n_out}]"
            if b <= index < b + n_out:
                return f"layer {i + 1}'s b[{index - b}]"
            if a >= 0 and a <= index < a + n_out:
                return f"layer {i + 1}'s prelu alpha[{index - a}]"
        return None

    def init_params(self, rng, dtype):
        """Glorot-uniform weights (He-uniform for the ReLU family), zero biases.

        Drawn in float64 and then cast, so float32 and float64 models with the
        same seed start from the same weights. Drawn a block of rows at a time into
        theta (the generator's stream in the same order, so the same numbers): a
        whole W in float64, then theta in float64 cast to float32, peaked at 5 times
        the float32 parameters (an 8192-8192 layer's 256 MiB took 1 GiB).
        """
        theta = aligned_zeros(self.n_params, dtype)
        for layer, (W, b, alpha) in zip(self.layers, self.layer_views(theta)):
            fan_in, fan_out = W.shape
            if layer.activation.init == "he":
                limit = np.sqrt(6.0 / fan_in)
            else:
                limit = np.sqrt(6.0 / (fan_in + fan_out))
            rows = max(1, _DRAW_VALUES // fan_out)
            for start in range(0, fan_in, rows):
                block = W[start:start + rows]
                block[...] = rng.uniform(-limit, limit, size=block.shape)
            if alpha is not None:
                alpha[...] = layer.param
        return theta

    def config(self):
        return {"input_dim": self.input_dim, "loss": self.loss.name,
                "layers": [l.config() for l in self.layers]}

    @staticmethod
    def layers_from_config(config):
        """The Dense layers described by :meth:`config` (used by :func:`fastmlp.load`)."""
        return [Dense.from_config(cfg) for cfg in config["layers"]]

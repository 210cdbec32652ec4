"""Export a :class:`fastmlp.Model` to a standard ONNX graph.

The graph computes the function :meth:`fastmlp.Model.predict` computes:

    X (n, input_dim) -> [Sub mean, Div scale] -> per layer: Gemm(W, b), activation -> Y (n, outputs)

in the model's dtype (float32 -> ONNX FLOAT, float64 -> DOUBLE), with the
batch dimension symbolic ("n"). Parameters are initializers named after
:meth:`~fastmlp.Model.get_weights` order: W1 (in, out), b1 (out,), alpha1
(out,) for prelu, W2, b2, ...

Activations use the standard operator where onnxruntime's CPU kernel exists
for the dtype and is as accurate as fastmlp's (Tanh, Relu, LeakyRelu, PRelu,
Softmax, Sign; Softplus in float32); the rest are written with elementary
operators, for reasons measured with onnxruntime 1.32:

* sigmoid: onnxruntime's Sigmoid is only accurate in absolute terms (about
  6e-8 in float32: 2e-4 relative at z = -8) and returns 0 below z = -18
  (float32) or z = -37 (float64), where fastmlp's is still relatively exact.
  Written as e^-|z| / (1 + e^-|z|) or 1 / (1 + e^-|z|) by the sign of z.
* elu: ONNX's Elu is alpha (e^z - 1), which loses all relative accuracy near
  z = 0 (Elu(-1e-8) = 0 in float32), and onnxruntime has no float64 Elu.
  Written with Kahan's expm1(x) = (e^x - 1) x / log(e^x).
* softplus in float64: onnxruntime has no float64 Softplus. Written as
  max(z, 0) + log1p(e^-|z|) as fastmlp computes it, with Kahan's
  log1p(x) = x log(1 + x) / ((1 + x) - 1), so it neither overflows nor
  loses the tail.
* step: (Sign(z) + 1) / 2; linear: a z (no node when a = 1);
  piecewise_linear: Clip(z + 1/2, 0, 1).

One difference remains on purpose: fastmlp applies input scaling
(:attr:`~fastmlp.Model.input_scaling`) in float64 before casting to the model
dtype; the graph's Sub and Div run in the model dtype, because its input is of
that dtype. In float32 the result differs by the roundings of X and X - mean,
about 6e-8 |X| / scale: negligible for features of order of their spread, but a
feature far larger than its spread (a Unix time, 1.7e9 with float32 spacing
128) loses its signal; export such a model in float64.

``onnx`` is an optional dependency (``pip install fastmlp[onnx]``); importing
fastmlp does not import it.
"""
from __future__ import annotations

import os

import numpy as np

from . import _atomic
from . import activations as act

DEFAULT_OPSET = 17   # onnxruntime >= 1.13 runs it
MIN_OPSET = 13       # Softmax over one axis, Clip's bounds as inputs, Equal on floats

# e^-40 is below half an ulp of 1 in float32 and float64, so expm1(x) = -1 for x <= -40:
# clamping there keeps log(e^x) finite in Kahan's formula without changing any result.
_EXPM1_FLOOR = -40.0


def _import_onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("ONNX export needs the onnx package: pip install fastmlp[onnx]") from None
    return onnx


class _Graph:
    """Nodes and initializers being collected, with unique names per layer scope."""

    def __init__(self, onnx, dtype):
        self.onnx = onnx
        self.dtype = dtype
        self.nodes = []
        self.initializers = []
        self._consts = {}
        self.scope = ""

    def initializer(self, name, array):
        array = np.ascontiguousarray(array, dtype=self.dtype)
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def const(self, value):
        """A scalar of the model dtype, one initializer per distinct value."""
        if value not in self._consts:
            self._consts[value] = self.initializer(f"const_{value!r}", np.array(value))
        return self._consts[value]

    def node(self, op, *inputs, **attrs):
        """Append ``op(inputs)``; return the name of its one output."""
        name = f"{self.scope}{op}_{len(self.nodes)}"
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), [name], name=name, **attrs))
        return name


# -- activations: each takes the graph, the pre-activation's name, the layer's
# scalar parameter and its prelu alpha initializer (or None), and returns the
# name of the output. One row per entry of fastmlp.activations.ACTIVATIONS.

def _step(g, z, p, alpha):
    # Sign gives -1, 0, 1 exactly, so this is 0, 1/2, 1 exactly.
    return g.node("Mul", g.node("Add", g.node("Sign", z), g.const(1.0)), g.const(0.5))


def _linear(g, z, p, alpha):
    return z if p == 1.0 else g.node("Mul", z, g.const(p))


def _piecewise_linear(g, z, p, alpha):
    return g.node("Clip", g.node("Add", z, g.const(0.5)), g.const(0.0), g.const(1.0))


def _sigmoid(g, z, p, alpha):
    e = g.node("Exp", g.node("Neg", g.node("Abs", z)))          # e^-|z| in (0, 1]: no overflow
    numerator = g.node("Where", g.node("GreaterOrEqual", z, g.const(0.0)), g.const(1.0), e)
    return g.node("Div", numerator, g.node("Add", g.const(1.0), e))


def _prelu(g, z, slope):
    """PRelu(z, slope): z where z >= 0, slope * z below. onnxruntime has no float64 PRelu
    kernel outside opsets 16-18, so float64 spells it out (the same values)."""
    if g.dtype == np.float32:
        return g.node("PRelu", z, slope)
    return g.node("Where", g.node("Less", z, g.const(0.0)), g.node("Mul", z, slope), z)


def _leaky_relu(g, z, p, alpha):
    if g.dtype == np.float32:
        return g.node("LeakyRelu", z, alpha=p)
    # float64: ONNX attributes are float32 (a slope must be a tensor to stay exact), and
    # onnxruntime runs a float64 LeakyRelu at opsets 16-18 only, as PRelu
    return _prelu(g, z, g.const(p))


def _expm1(g, x):
    """Kahan: e^x - 1 = (u - 1) x / log(u), u = e^x, accurate to a few ulps; x <= 0."""
    x = g.node("Max", x, g.const(_EXPM1_FLOOR))
    u = g.node("Exp", x)
    ratio = g.node("Div", g.node("Mul", g.node("Sub", u, g.const(1.0)), x), g.node("Log", u))
    return g.node("Where", g.node("Equal", u, g.const(1.0)), x, ratio)   # u = 1: 0/0 there


def _log1p(g, x):
    """Kahan: log(1 + x) = x log(u) / (u - 1), u = 1 + x, accurate to a few ulps; x >= 0."""
    u = g.node("Add", g.const(1.0), x)
    ratio = g.node("Div", g.node("Mul", x, g.node("Log", u)), g.node("Sub", u, g.const(1.0)))
    return g.node("Where", g.node("Equal", u, g.const(1.0)), x, ratio)   # u = 1: 0/0 there


def _elu(g, z, p, alpha):
    negative = g.node("Mul", g.const(p), _expm1(g, g.node("Min", z, g.const(0.0))))
    return g.node("Where", g.node("GreaterOrEqual", z, g.const(0.0)), z, negative)


def _softplus(g, z, p, alpha):
    if g.dtype == np.float32:
        return g.node("Softplus", z)       # onnxruntime's is stable and accurate in float32
    tail = _log1p(g, g.node("Exp", g.node("Neg", g.node("Abs", z))))
    return g.node("Add", g.node("Relu", z), tail)


_EMIT = {
    act.STEP: _step,
    act.SIGN: lambda g, z, p, alpha: g.node("Sign", z),
    act.LINEAR: _linear,
    act.PIECEWISE_LINEAR: _piecewise_linear,
    act.SIGMOID: _sigmoid,
    act.TANH: lambda g, z, p, alpha: g.node("Tanh", z),
    act.RELU: lambda g, z, p, alpha: g.node("Relu", z),
    act.LEAKY_RELU: _leaky_relu,
    act.PRELU: lambda g, z, p, alpha: _prelu(g, z, alpha),
    act.ELU: _elu,
    act.SOFTPLUS: _softplus,
    act.SOFTMAX: lambda g, z, p, alpha: g.node("Softmax", z, axis=-1),
}
assert set(_EMIT) == set(act.BY_CODE), "every activation needs an ONNX translation"


def _check_opset(onnx, opset):
    newest = onnx.defs.onnx_opset_version()
    if opset is None:
        return min(DEFAULT_OPSET, newest)
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)):
        raise TypeError(f"opset must be an integer, got {opset!r}")
    if not MIN_OPSET <= opset <= newest:
        raise ValueError(f"opset must be between {MIN_OPSET} and {newest} (the newest this "
                         f"onnx {onnx.__version__} knows), got {opset}")
    return int(opset)


def _check_scaling_fits(mean, scale, dtype):
    """Refuse input scaling the graph cannot compute in ``dtype`` (its Sub and Div run in
    the model's dtype; predict scales in float64): a mean or scale beyond float32's range
    (inf in the graph: NaN outputs) or a scale below its smallest normal number (a
    subnormal keeps a few bits: 4e-3 relative error where predict is exact). A float64
    graph divides as predict does, subnormal scales included: nothing to refuse."""
    if np.dtype(dtype) == np.float64:
        return
    info = np.finfo(dtype)
    with np.errstate(over="ignore"):
        mean_d, scale_d = np.asarray(mean).astype(dtype), np.asarray(scale).astype(dtype)
    bad = ~np.isfinite(mean_d) | ~np.isfinite(scale_d) | (np.abs(scale_d) < info.tiny)
    if bad.any():
        j = int(np.argmax(bad))
        raise ValueError(f"the input scaling of feature {j} (mean {float(mean[j])!r}, scale "
                         f"{float(scale[j])!r}) does not fit {np.dtype(dtype).name}, in "
                         "which the graph subtracts and divides (predict scales in float64):"
                         " export a float64 model with the same weights and scaling "
                         "(fm.Model(..., dtype='float64'), then set_weights and "
                         "set_input_scaling)")


def build_onnx(model, opset=None):
    """The ONNX ``ModelProto`` of ``model`` (see the module docstring), checked."""
    from . import __version__

    onnx = _import_onnx()
    # duck-typed, so this module does not import fastmlp.model (which imports it lazily)
    if not all(hasattr(model, a) for a in ("net", "get_weights", "input_scaling", "dtype")):
        raise TypeError(f"expected a fastmlp.Model, got {type(model).__name__}")
    opset = _check_opset(onnx, opset)
    helper = onnx.helper
    elem = helper.np_dtype_to_tensor_dtype(model.dtype)
    net = model.net
    g = _Graph(onnx, model.dtype.type)

    current = "X"
    if model.input_scaling is not None:
        mean, scale = model.input_scaling
        _check_scaling_fits(mean, scale, model.dtype)
        g.scope = "input_scaling/"
        current = g.node("Div", g.node("Sub", current, g.initializer("input_mean", mean)),
                         g.initializer("input_scale", scale))

    weights = iter(model.get_weights())
    for i, layer in enumerate(net.layers, start=1):
        g.scope = f"layer{i}/"
        W = g.initializer(f"W{i}", next(weights))
        b = g.initializer(f"b{i}", next(weights))
        alpha = g.initializer(f"alpha{i}", next(weights)) if layer.activation.code == act.PRELU else None
        z = g.node("Gemm", current, W, b)
        current = _EMIT[layer.activation.code](g, z, layer.param, alpha)
    # The last node made the network's output (a = 1 linear adds none, Gemm is last then).
    assert g.nodes[-1].output[0] == current
    g.nodes[-1].output[0] = "Y"

    graph = helper.make_graph(
        g.nodes, "fastmlp",
        [helper.make_tensor_value_info("X", elem, ["n", net.input_dim])],
        [helper.make_tensor_value_info("Y", elem, ["n", net.output_dim])],
        initializer=g.initializers,
        doc_string=repr(model))
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="fastmlp",
                              producer_version=__version__)
    # the oldest IR version that carries this opset, so older runtimes load the file
    proto.ir_version = helper.find_min_ir_version_for(opsets)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def to_onnx(model, path, opset=None):
    """Write ``model`` to ``path`` as an ONNX graph (opset ``opset``, default 17), atomically.

    The file is written to a temporary file in the same folder and renamed over
    ``path`` (:func:`fastmlp._atomic.replace`, as :func:`fastmlp.Model.save` does),
    so an existing file there is replaced only when the export succeeds.

    Example (needs ``pip install fastmlp[onnx]``)::

        m = fm.Model([fm.Dense(4, activation="tanh"), fm.Dense(2, activation="softmax")],
                     input_dim=3, loss="cross_entropy", seed=0)
        to_onnx(m, "m.onnx")
        onnxruntime.InferenceSession("m.onnx").run(None, {"X": np.ones((5, 3), np.float32)})[0]
        # (5, 2), equal to m.predict(np.ones((5, 3))) within 1e-5 relative
    """
    data = build_onnx(model, opset).SerializeToString()
    _atomic.replace(os.fspath(path), lambda f: f.write(data))

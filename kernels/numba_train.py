"""Whole-network Numba kernels: one compiled call per train step, epoch, gradient or prediction.

The network is described to the kernels by ``plan``, the int64 layout that
:meth:`fastmlp.network.Network.plan` builds (fields named in fastmlp.codes:
sizes, activation codes, offsets into ``theta`` and into the workspace, and
the rules of fastmlp.rules). Training uses ONE flat workspace ``ws`` per model,
laid out by that plan: the activation parameters, a gradient vector, two gather
buffers for the rows of a batch, every layer's Z and A (cap, units) and two
gradient buffers (cap, widest layer). Nothing is allocated per step.

A chunk's backward pass is two sweeps, as the Cython kernels' (cython_mlp.train_guarded):
first every layer's delta, each in place of its Z (a fused output layer's in WS_D1,
where the loss writes dE/df; every dE/df below goes through WS_D0), from the old
weights; then the parameter sweep (the weight-gradient GEMMs, or the folded SGD
update). So nothing is written before every delta is known, and the guarded step
(run given a guard record) proves its update finite there, copying nothing (see _guard).

Every training entry point runs :func:`run`, one loop over batches and row
chunks of at most ``cap`` rows: a batch larger than that accumulates its
gradient chunk by chunk; a batch of at most plan[PLAN_FOLD_ROWS] rows gets plain
SGD folded into the weight-gradient GEMM (unless per-layer gradient norms are
asked for: those need the gradient formed). ``predict`` and ``evaluate`` allocate their own small
buffers per call, so they are safe to run from several threads at once; ``run``
writes into the workspace it is given, so concurrent calls need workspaces of their
own (the backend sees to it).

Each kernel compiles once per dtype and calls the kernels below it by name
(the ``_linked`` stand-ins, see :mod:`numba_link`) instead of compiling their
code into its own, which halved a new user's first compile (13-15 s per dtype
on 2 cores before). The chunk loop of ``run`` is written out in it, not called:
a call per batch cost a quarter of the vehicle net's per-sample epoch. No kernel allocates (predict and evaluate allocate their buffers),
so they compile without reference counting (numba_math.KERNEL).

Numba's on-disk cache checks only a function's own source file, and a caller
assumes its callees' signatures: after editing a ``numba_*.py``, delete
``kernels/__pycache__/*.nb[ic]``. (Installing a release rewrites every file, so
users never see stale code.)
"""
from __future__ import annotations

import numpy as np
from numba import types

from fastmlp._aligned import aligned_zeros
from fastmlp.codes import (ADAM_CODE, BETA1, BETA2, EPS, GRADIENT, NESTEROV as _NESTEROV, LAYER_ACT, LAYER_ALPHA,
                           LAYER_B, LAYER_F, LAYER_FIELDS, LAYER_N_IN, LAYER_N_OUT, LAYER_W,
                           LAYER_Z, LR, MOMENTUM, NESTEROV, PLAN_CAP, PLAN_FOLD_ROWS,
                           PLAN_FUSED, PLAN_HEAD, PLAN_LAYERS, PLAN_LOSS,
                           PLAN_WIDEST, PLAN_WS_SIZE, SGD_CODE, TRAIN, WEIGHT_DECAY,
                           WS_ACT_PARAMS, WS_D0, WS_D1, WS_GRAD, WS_TB, WS_XB)

from .numba_activations import BACKWARD, FORWARD, numba_dtype
from .numba_blas import gemm_nn, gemm_nt, gemm_tn_from
from .numba_gemv import forward, xw
from .numba_layers import (LOSS, adam_update, dense_forward, dense_params,
                           loss_value_kernel, sgd_update)
from .numba_link import Late, separate
from .numba_math import abs_max, entry, helper, kernel
from .numba_views import flat, matrix, row_span


def new_workspace(net, dtype, cap, fold_rows=0):
    """(plan, ws, grad) for ``net`` (a :class:`fastmlp.network.Network`) trained at most
    ``cap`` rows at a time: plan = net.plan(cap, fold_rows), then the addresses of the
    kernels compiled for this network that the entry points call (:func:`calls_index`),
    each 0 until :func:`arm` has compiled it in this process; ws, laid out by it, holds
    the activation parameters and every buffer; grad (p,) is its gradient vector, a
    view of ws."""
    base = net.plan(cap, fold_rows)
    plan = np.zeros(len(base) + 2 * len(net.layers) + _INPUTS_SLOT + 1, dtype=np.int64)
    plan[:len(base)] = base
    nb = numba_dtype(dtype)
    for offset, late, code in _late_kernels(net, ("predict", "train", "guard", "norms")
                                            + tuple(("update", c) for c in UPDATES)):
        plan[len(base) + offset] = late.known(nb, code)
    ws = aligned_zeros(plan[PLAN_WS_SIZE], dtype)   # every buffer on a cache line (plan)
    fp, grad = plan[WS_ACT_PARAMS], plan[WS_GRAD]
    ws[fp:fp + len(net.act_params)] = net.act_params
    return plan, ws, ws[grad:grad + net.n_params]


# The guarded step's record, float64 (G_HEAD + 4 * layers,), one per backend (new_guard):
# upper bounds on max |theta| and the optimiser buffers in use, valid while G_KNOWN and
# only for the arrays they were taken of (the backend forgets them on any other write);
# path counters (for tests); the dtype's rounding unit and the proof's limit (max / 16);
# then per step: max |X|, status, path, the bounds after the update, a finite flag, and
# per layer max |f|, max |delta| and the bounds on |dE/dW| and |dE/db|. G_TARGETS: 1 when
# the loss is a cross-entropy, whose targets must lie in [0, 1] (run checks them).
(G_KNOWN, G_IN_USE, G_THETA, G_BUF0, G_BUF1, G_PROVEN, G_MEASURED, G_BACKED_UP, G_UNIT,
 G_LIMIT, G_XMAX, G_STATUS, G_PATH, G_AFTER, G_FINITE, G_TARGETS, G_HEAD) = (
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 16, 17, 18)


def new_guard(net, dtype):
    """A fresh guard record (see G_*) for ``net`` in ``dtype``: nothing known."""
    guard = np.zeros(G_HEAD + 4 * len(net.layers))
    f32 = np.dtype(dtype) == np.float32
    guard[G_UNIT] = 2.0 ** -24 if f32 else 2.0 ** -53
    guard[G_LIMIT] = float(np.finfo(dtype).max) / 16
    guard[G_TARGETS] = 1.0 if net.loss.output is not None else 0.0
    return guard


@helper
def _row(l):
    """Start of layer l's row in a plan."""
    return PLAN_HEAD + LAYER_FIELDS * l


def calls_index(plan, l):
    """Where layer l's kernel addresses lie in a plan of new_workspace, after the layer
    rows: its activation's forward pass (numba_activations.FORWARD), then its derivative
    (BACKWARD); at l = L, the other kernels', each at its slot (_GUARD_SLOT ...
    _INPUTS_SLOT): the guard's (GUARD), the loss's (numba_layers.LOSS), each optimiser's
    update (UPDATES), the gradient norms' (SUM_SQUARES), the guarded step's input
    check's (INPUTS_OK)."""
    return PLAN_HEAD + LAYER_FIELDS * plan[PLAN_LAYERS] + 2 * l


_calls = helper(calls_index)


def _late_kernels(net, parts):
    """(offset from calls_index(plan, 0), Late, code) of the kernels ``net``'s entry points
    call by address, for each of ``parts``: "predict" (the forward passes), "train" (the
    derivatives and the loss; run needs the forward passes too), "guard", "norms" (a
    training run given norms needs them), and ("update", code), the update of the
    optimiser of that code (a training run needs its own)."""
    layers = len(net.layers)
    kernels = []
    if "predict" in parts:
        kernels += [(2 * l, FORWARD, code) for l, code in enumerate(net.act_codes)]
    if "train" in parts:
        kernels += [(2 * l + 1, BACKWARD, code) for l, code in enumerate(net.act_codes)]
        kernels.append((2 * layers + _LOSS_SLOT, LOSS, net.loss.code))
    if "guard" in parts:
        kernels += [(2 * layers + _GUARD_SLOT, GUARD, 0),
                    (2 * layers + _INPUTS_SLOT, INPUTS_OK, 0)]
    if "norms" in parts:
        kernels.append((2 * layers + _NORMS_SLOT, SUM_SQUARES, 0))
    for part in parts:
        if isinstance(part, tuple) and part[0] == "update":
            if part[1] not in UPDATES:   # (as run would say)
                raise ValueError("unknown optimizer code")
            kernels.append((2 * layers + _UPDATE_SLOT + part[1], UPDATES[part[1]], 0))
    return kernels


def armed(net, dtype, parts):
    """Whether :func:`arm` of ``parts`` has nothing to compile or load in this process."""
    nb = numba_dtype(dtype)
    return all(late.ready(nb, code) for _, late, code in _late_kernels(net, parts))


def to_compile(net, dtype, parts):
    """[(Late.name, code)] of the kernels :func:`arm` of ``parts`` would compile, not
    load: neither in this process nor in the disk cache (another process can compile
    them meanwhile: fastmlp.warmup.compile_aside)."""
    nb = numba_dtype(dtype)
    return [(late.name, int(code)) for _, late, code in _late_kernels(net, parts)
            if not late.ready(nb, code) and not late.cached(nb, code)]


def arm(plan, net, dtype, parts):
    """The kernels of ``parts`` (see _late_kernels) compiled (or loaded) for ``net`` in
    ``dtype``, those not compiled before in this process, and their addresses written to
    ``plan`` (new_workspace's): predict and evaluate need "predict", run "predict" and
    "train" (each raises ValueError without them), a training run ("update", its
    optimiser's code) too, a guarded run "guard", and a run given norms "norms"."""
    nb, base = numba_dtype(dtype), calls_index(plan, 0)
    for offset, late, code in _late_kernels(net, parts):
        plan[base + offset] = late.address(nb, code)


@helper
def _armed(plan, passes):
    """Whether each layer's first ``passes`` activation pass addresses (1: forward, 2:
    and derivative) are armed (non-zero)."""
    for l in range(plan[PLAN_LAYERS]):
        for i in range(passes):
            if plan[_calls(plan, l) + i] == 0:
                return False
    return True


@helper
def _params(theta, plan, l):
    """Views of layer l's W (k_in, k), b (k,) and alpha (k,), or (0,) if it has none."""
    row = _row(l)
    k_in, k = plan[row + LAYER_N_IN], plan[row + LAYER_N_OUT]
    w, b, a = plan[row + LAYER_W], plan[row + LAYER_B], plan[row + LAYER_ALPHA]
    # (flat views: a slice compiles Numba's general slicing, negative bounds and all, and
    # _params is inlined five times into run)
    alpha = flat(theta, a, a + k) if a >= 0 else flat(theta, 0, 0)
    return matrix(theta, w, k_in, k), flat(theta, b, b + k), alpha


@kernel(fastmath={"reassoc", "contract"})
def _sum_squares(a):
    """sum of a (n,) squared, in float64. Its own function, reassociated so the sum
    vectorises: one strict float64 sum is a chain of dependent adds, and that chain
    made norms cost a 64-128-10 net's Adam epoch (batch 32) 24 % instead of 3 %."""
    total = 0.0
    for i in range(a.shape[0]):
        v = np.float64(a[i])   # (float() of a float32 is a float32 in Numba: squared there,
        total += v * v         # a gradient of 1e25 gave inf and one of 1e-25 gave 0)
    return total


# run calls it by address, compiled when a model first asks for gradient norms (arm's
# "norms"): in every run it was a twentieth of a new user's first fit
SUM_SQUARES = Late(_sum_squares, lambda dtype: (types.Array(dtype, 1, "C"),), None,
                   types.float64)
_sum_squares_at = SUM_SQUARES.call


def _sgd_types(dtype):
    """sgd_update's argument types, as run passes them, in ``dtype``."""
    vector = types.Array(dtype, 1, "C")
    return (vector, vector, vector, types.float64, types.float64, types.boolean, types.float64)


def _adam_types(dtype):
    """adam_update's argument types, as run passes them, in ``dtype``."""
    return (types.Array(dtype, 1, "C"),) * 4 + (types.float64,) * 5 + (types.int64,)


# run calls the optimiser's update by address, compiled for the model's optimiser alone at
# its first training call (kt.arm): both compiled with run were a twentieth of a new
# user's first fit. UPDATES: each optimiser's by its code, which is its slot after the
# guard's and the loss's (calls_index).
UPDATES = {SGD_CODE: Late(sgd_update, _sgd_types, None, types.none),
           ADAM_CODE: Late(adam_update, _adam_types, None, types.none)}
assert tuple(UPDATES) == tuple(range(len(UPDATES)))
_sgd_at, _adam_at = UPDATES[SGD_CODE].call, UPDATES[ADAM_CODE].call
# The plan's slots after the layers' pairs (at calls_index(plan, L) + slot): the guard's,
# the loss's, each optimiser's update at _UPDATE_SLOT + its code, the gradient norms', the
# guarded step's input check's
_GUARD_SLOT, _LOSS_SLOT, _UPDATE_SLOT = 0, 1, 2
_NORMS_SLOT = _UPDATE_SLOT + len(UPDATES)
_INPUTS_SLOT = _NORMS_SLOT + 1
# what the entry points raise when a kernel they would call by address is not armed
_NOT_ARMED = "the kernels this network calls are not compiled (numba_train.arm)"


@helper
def _gather(X, T, perm, start, stop, ws, plan, half):
    """Rows perm[start:stop] of X and T into gather buffer ``half`` (0 or 1)."""
    k_in, k_out, cap = X.shape[1], T.shape[1], plan[PLAN_CAP]
    xb = matrix(ws, plan[WS_XB] + half * cap * k_in, stop - start, k_in)
    tb = matrix(ws, plan[WS_TB] + half * cap * k_out, stop - start, k_out)
    for i in range(stop - start):
        r = perm[start + i]
        for j in range(k_in):
            xb[i, j] = X[r, j]
        for j in range(k_out):
            tb[i, j] = T[r, j]
    return xb, tb


@helper
def _buffers_in_use(opt, hyper):
    """Rows of bufs the optimiser's update uses: plain SGD 0, momentum 1 (v), Adam 2 (m, v);
    the same rule as fastmlp.rules.buffers_in_use (checked and backed up)."""
    if opt != SGD_CODE:
        return 2
    return 1 if hyper[MOMENTUM] != 0 else 0


# linked, not compiled into each caller again (tests/test_warmup checks that run's
# module holds its own code only)
_abs_max_linked = separate(abs_max, read_only=True)


@helper
def _finite(loss, theta, bufs, rows):
    """Whether loss, theta (p,) and bufs[:rows] (2, p) are all finite: by abs_max, which
    run links for the guard anyway (loops of their own here were a fiftieth of a new
    user's first fit)."""
    return ((loss - loss) == 0 and _abs_max_linked(matrix(theta, 0, 1, theta.shape[0]), 0, 1)
            < np.inf and _abs_max_linked(bufs, 0, rows) < np.inf)


@helper
def _copy_state(theta, bufs, rows, backup, save):
    """backup (>= 3p,) = theta (p,), then bufs[:rows] (2, p) if save, else the reverse.
    Loops, not slice assignments: those compile a shape-mismatch error message,
    string formatting and all, which took 2 s of the first compile."""
    p = theta.shape[0]
    for i in range(p):
        if save:
            backup[i] = theta[i]
        else:
            theta[i] = backup[i]
    for r in range(rows):
        # views indexed from 0: backup[(r + 1) * p + i] kept Numba's check for a negative
        # index in each element's address (numba_layers.dense_params says what that cost)
        saved, live = flat(backup, (r + 1) * p, (r + 2) * p), flat(bufs, r * p, (r + 1) * p)
        for i in range(p):
            if save:
                saved[i] = live[i]
            else:
                live[i] = saved[i]


@kernel
def _inputs_ok(X, T, plan, guard):
    """The guarded step's check of X (n, k_0) and T (n, k_L): False when X or T is not
    finite, or guard[G_TARGETS] and T is outside [0, 1]. Else X's maximum and the
    per-step fields of guard are reset for the step, and True."""
    xmax = _abs_max_linked(X, 0, X.shape[0])
    # NaN fails both range comparisons
    bad = not (xmax < np.inf)
    unit = guard[G_TARGETS] != 0
    for i in range(T.shape[0]):
        if unit:
            for j in range(T.shape[1]):
                bad |= not ((T[i, j] >= 0) & (T[i, j] <= 1))
        else:
            for j in range(T.shape[1]):
                bad |= (T[i, j] - T[i, j]) != 0
    if bad:
        return False
    guard[G_XMAX], guard[G_STATUS], guard[G_FINITE] = xmax, 0.0, 1.0
    for i in range(G_HEAD + 2 * plan[PLAN_LAYERS], guard.shape[0]):
        guard[i] = 0.0
    return True


@kernel
def _guard(theta, bufs, grad, plan, h, opt, step, guard, loss, rows, batch_rows, backup,
           phase):
    """The guarded step's bookkeeping and two decisions (see run's guard); returns 2 to
    stop, else 0.

    phase 0, after a chunk of ``rows`` rows' deltas: its maxima are added to the
    gradient bounds (|dE/dW| = |x^T delta| <= rows max|x| max|delta|, |dE/db| <= rows
    max|delta|, delta scaled as the loss is). Phase 1, the same on the batch's last
    chunk, then, every delta known and nothing written: 2 if the loss or a
    maximum is not finite (an inf or NaN input or delta reaches every product and sum
    it is in); else the update is proven finite from the bounds (measured afresh, one
    read of theta and the buffers in use, when unknown or when that fails), or,
    failing, theta and those buffers are backed up. Phase 2, once the update is
    written: a proven one's bounds become the new ones; a backed-up one is measured,
    and restored with the step counter (2) unless finite, its maxima becoming the
    bounds. rows: the chunk's (phases 0, 1); batch_rows: the batch's (the proof's). The proof is the Cython kernels' prove_update (kernels/_guard.pxd says why
    each bound holds, rounding included), written out once here: every @njit function
    and every call site of one costs first-compile time."""
    n_layers = plan[PLAN_LAYERS]
    if phase < 2:
        for l in range(n_layers):
            a = guard[G_XMAX] if l == 0 else guard[G_HEAD + l - 1]
            dmax = guard[G_HEAD + n_layers + l]
            if not (a < np.inf and dmax < np.inf):
                guard[G_FINITE] = 0
            guard[G_HEAD + 2 * n_layers + l] += rows * a * dmax
            guard[G_HEAD + 3 * n_layers + l] += rows * dmax
        if phase == 0:
            return 0
    after, rows = phase == 2, batch_rows
    in_use = _buffers_in_use(opt, h)
    G = 0.0
    if not after:
        for l in range(n_layers):
            v = max(guard[G_HEAD + 2 * n_layers + l], guard[G_HEAD + 3 * n_layers + l])
            G = v if not (v <= G) else G  # NaN wins
            row = _row(l)
            if plan[row + LAYER_ALPHA] >= 0:  # prelu: alpha's gradient as it is
                v = _abs_max_linked(matrix(grad, plan[row + LAYER_ALPHA], 1,
                                           plan[row + LAYER_N_OUT]), 0, 1)
                G = v if not (v <= G) else G
        if not (guard[G_FINITE] != 0 and (loss - loss) == 0 and G < np.inf):
            return 2
        if guard[G_IN_USE] != in_use:
            guard[G_KNOWN] = 0
    elif guard[G_PATH] == 0:  # proven: the bounds it proved
        guard[G_THETA], guard[G_BUF0], guard[G_BUF1] = (guard[G_AFTER], guard[G_AFTER + 1],
                                                        guard[G_AFTER + 2])
        return 0
    unit, limit = guard[G_UNIT], guard[G_LIMIT]
    proven = False
    for attempt in range(2):  # on the bounds known, then on bounds measured afresh
        if after or attempt == 1:
            at = G_AFTER if after else G_THETA
            for r in range(3):
                guard[at + r] = (_abs_max_linked(matrix(theta, 0, 1, theta.shape[0])
                                                 if r == 0 else bufs, max(r - 1, 0), max(r, 1))
                                 if r <= in_use else 0.0)
            if after:
                break
            guard[G_KNOWN], guard[G_IN_USE] = 1.0, in_use
            guard[G_MEASURED] += 1
        elif guard[G_KNOWN] == 0:
            continue
        # bounds after the update (prove_update), into guard[G_AFTER:G_AFTER + 3]
        s = 1 + (rows + 32) * unit
        lr, wd, mu = h[LR], h[WEIGHT_DECAY], h[MOMENTUM]
        b1, b2, eps = h[BETA1], h[BETA2], h[EPS]
        k1 = 1 - h[BETA1] ** float(step[0] + 1)
        k2 = 1 - h[BETA2] ** float(step[0] + 1)
        if unit > 1e-10:  # float32: the values the float kernels compute with, as float64
            # (so the bounds below are float64 arithmetic: Numba's float() of a float32 is
            # a float32)
            f64, f32 = np.float64, np.float32
            lr, wd, mu = f64(f32(lr)), f64(f32(wd)), f64(f32(mu))
            b1, b2, eps = f64(f32(b1)), f64(f32(b2)), f64(f32(eps))
            k1, k2 = f64(f32(k1)), f64(f32(k2))
        theta_b, buf0, buf1 = guard[G_THETA], guard[G_BUF0], guard[G_BUF1]
        g = (G + wd * theta_b) * s
        if not (lr < limit and g < limit):
            continue
        if opt == SGD_CODE:
            step_b = g
            if mu != 0:
                buf0 = (mu * buf0 + g) * s
                step_b = (g + mu * buf0) * s if h[_NESTEROV] != 0 else buf0
            step_b = lr * step_b * s
            ok = buf0 < limit
        else:
            buf0 = (b1 * buf0 + (1 - b1) * g) * s
            buf1 = (b2 * buf1 + (1 - b2) * (g * g * s)) * s
            inv_eps = 1 / eps if eps < 1 else 1.0
            step_b = lr * (buf0 / k1) * inv_eps * s * s
            ok = (g * g < limit and buf0 / k1 < limit and buf1 / k2 < limit
                  and buf1 < limit)
        guard[G_AFTER], guard[G_AFTER + 1], guard[G_AFTER + 2] = (theta_b + step_b) * s, buf0, buf1
        proven = ok and step_b < limit and guard[G_AFTER] < limit
        if proven:
            break
    if after:
        proven = (guard[G_AFTER] < np.inf and guard[G_AFTER + 1] < np.inf
                  and guard[G_AFTER + 2] < np.inf)
        if proven:  # finite: its maxima are the bounds
            guard[G_THETA], guard[G_BUF0], guard[G_BUF1] = (guard[G_AFTER], guard[G_AFTER + 1],
                                                            guard[G_AFTER + 2])
            guard[G_KNOWN], guard[G_IN_USE] = 1.0, in_use
        else:  # put back (the bounds still hold for what is restored)
            step[0] -= 1
    elif proven:
        guard[G_PROVEN] += 1
        guard[G_PATH] = 0
    else:
        guard[G_BACKED_UP] += 1
        guard[G_PATH] = 1
    if not proven:  # one call site: each inlined copy costs compile time
        _copy_state(theta, bufs, in_use, backup, not after)
        return 2 if after else 0
    return 0


def _guard_types(dtype):
    """_guard's argument types, as run passes them, in ``dtype``."""
    vector, rows = types.Array(dtype, 1, "C"), types.Array(dtype, 2, "C")
    ints, floats = types.Array(types.int64, 1, "C"), types.Array(types.float64, 1, "C")
    return (vector, rows, vector, ints, floats, types.int64, ints, floats, types.float64,
            types.int64, types.int64, vector, types.int64)


# run calls the guard by address (the plan's, _calls(plan, L)), so that a fit, which never
# guards a step, does not compile it with run (a sixth of run's first compile): the
# numba backend arms it on the first guarded step (arm)
GUARD = Late(_guard, _guard_types, None, types.int64)
_guard_at = GUARD.call


def _inputs_types(dtype):
    """_inputs_ok's argument types, as run passes them, in ``dtype``."""
    read = types.Array(dtype, 2, "C", readonly=True)   # (run's X and T may be read-only)
    return (read, read, types.Array(types.int64, 1, "C"), types.Array(types.float64, 1, "C"))


# and the guarded step's check of its inputs, armed with the guard: a kernel of its own,
# with four arguments (as a phase of the guard's, its call cost the vehicle net's step 6 %)
INPUTS_OK = Late(_inputs_ok, _inputs_types, None, types.boolean)
_inputs_ok_at = INPUTS_OK.call
_act_backward_at = BACKWARD.call
_loss_at = LOSS.call


@entry
def run(theta, grad, X, T, orders, batch_size, bufs, hyper, step, opt, ws, plan, mode, norms,
        tol, losses, guard, backup):
    """One epoch per row of orders (k, n): batches of rows orders[e, i:i + batch_size]
    (or of X itself if n == 0), each in chunks of at most cap rows. Returns (value,
    status): value the last epoch's sum(batch loss * batch rows) / rows (with n == 0
    and X one batch, that batch's loss itself), unless losses is given; status the
    guarded step's (below), 0 without a guard. A batch's loss is the sum over its
    chunks of each chunk's loss sum / the batch's rows, as the reference's.

    batch_size: rows per batch; any number >= the rows makes X one batch.
    mode TRAIN: one optimiser step per batch on theta (p,), bufs (2, p), step (1,),
    with opt SGD_CODE or ADAM_CODE and hyper float64 (7,) as in OptimizerState;
    grad (p,) is scratch. mode GRADIENT: grad OVERWRITTEN with the gradient of
    the mean loss (orders (1, 0)); bufs, hyper, step and opt are not read.
    norms: float64 (n_layers,) or (0,) for none (one type, so one compilation
    serves both). Given, each batch ADDS ||dE/dW_l||^2 of its mean loss (before
    weight decay) to norms[l], and plain SGD is not folded into the GEMM: the
    same updates as without norms, up to that fold's rounding. Otherwise a batch
    of at most plan[PLAN_FOLD_ROWS] rows (fastmlp.rules.sgd_fold_rows) has its plain
    SGD update, weight decay included, folded into the weight-gradient GEMMs.
    losses: float64 (k,), or (0,) for none. Given (mode TRAIN), each epoch's loss is
    written to losses[e] and checked to be finite, and theta and the optimiser buffers
    in use (momentum: v; Adam: m and v) after the last epoch run (a pass over them
    after every epoch cost a 784-256-128-10 net's 64-row Adam epoch 5 %); the epochs
    stop at one whose loss is not finite, or at the last if theta or the buffers are
    not (status 2: losses[e] written, e epochs done, one of which may have made theta
    or the buffers non-finite), or after one whose loss is <= tol when tol >= 0
    (status 1); else status 0, k done. Then the return is 4 * done + status (see
    :func:`epochs_result`).
    The backend calls this directly for epochs and gradients: each thin @njit
    wrapper around it costs a second of LLVM at first compile, so one function
    serves one epoch and many. An unknown mode, or optimiser code in mode TRAIN,
    raises ValueError before any work.
    guard: (0,) for none, or (the guarded train step: one batch, orders (1, 0), mode
    TRAIN) the guard record (G_*; its bounds must be of this theta and bufs): status 1
    (value NaN, nothing touched) when X or T is not finite, or guard[G_TARGETS] and T
    is outside [0, 1]; else the maxima are noted as the passes run, and after the last
    chunk's deltas, before anything is written, :func:`_guard` stops the step (status
    2: theta, bufs and step as before it, bit for bit), proves its update finite, or
    backs theta up; after the update it checks what it could not prove (status 2 and
    restored if not finite). Status 0 is the unguarded step bit for bit. Copy-free
    when the update is proven finite before it is written (see _guard). The backend
    calls this for train_step and train_step_checked too: a wrapper kernel's call,
    every array passed as its fields, cost a tenth of the vehicle net's step.
    backup (>= 3p,): theta's dtype, the guard's backup (read only with a guard).
    """
    if mode == TRAIN:
        if opt != SGD_CODE and opt != ADAM_CODE:
            raise ValueError("unknown optimizer code")
    elif mode != GRADIENT:
        raise ValueError("unknown run mode")
    guarded = guard.shape[0] > 0
    slots = _calls(plan, plan[PLAN_LAYERS])   # the kernels' addresses after the layers'
    guard_at, loss_at = plan[slots + _GUARD_SLOT], plan[slots + _LOSS_SLOT]
    update_at = plan[slots + _UPDATE_SLOT + opt] if mode == TRAIN else 0
    norms_at, inputs_at = plan[slots + _NORMS_SLOT], plan[slots + _INPUTS_SLOT]
    want_norms, report = norms.shape[0] > 0, losses.shape[0] > 0
    # every kernel called by address armed (arm): a call to address 0 would crash
    if (not _armed(plan, 2) or loss_at == 0 or (mode == TRAIN and update_at == 0)
            or (guarded and (guard_at == 0 or inputs_at == 0))
            or (want_norms and norms_at == 0)):
        raise ValueError(_NOT_ARMED)
    if guarded and not _inputs_ok_at(inputs_at, X, T, plan, guard):
        return np.nan, 1
    # the optimiser buffers in use, for the finiteness check
    in_use = _buffers_in_use(opt, hyper)
    gather = orders.shape[1] > 0
    n, cap = orders.shape[1] if gather else X.shape[0], plan[PLAN_CAP]
    n_layers, loss_code, fp = plan[PLAN_LAYERS], plan[PLAN_LOSS], plan[WS_ACT_PARAMS]
    # As the reference (backends/reference.py): a batch's loss is the sum over its
    # chunks of each chunk's loss sum divided by the batch's rows, and an epoch's is
    # sum(batch loss * batch rows) / rows. Dividing each chunk's sum before adding
    # keeps a float64 mean finite where the raw sums would overflow.
    epoch_loss = batch_loss = 0.0
    for e in range(orders.shape[0]):
        perm = orders[e]
        total = 0.0
        xb, tb = row_span(X, 0, 0), row_span(T, 0, 0)
        half = 0
        bstart = 0
        while bstart < n:
            bstop = min(bstart + batch_size, n)
            fold = mode == TRAIN and bstop - bstart <= plan[PLAN_FOLD_ROWS] and not want_norms
            lr = hyper[LR] if fold else 0.0
            decay = 1.0 - lr * hyper[WEIGHT_DECAY] if fold else 1.0
            batch_loss = 0.0
            cstart = bstart
            while cstart < bstop:
                cstop = min(cstart + cap, bstop)
                if gather:
                    # Rows are gathered one chunk ahead, into the other half of the gather
                    # buffer: reading rows just written stalls on store-to-load forwarding
                    # (that cost a third of a per-sample step at the vehicle net's size).
                    # So the chunk's rows are those gathered last, and the next chunk's
                    # are gathered now; at the epoch's first chunk, its own first. (One
                    # call site: a second inlined copy of _gather's loops was a twelfth of
                    # a new user's first compile.)
                    xc, tc = xb, tb
                    at = cstart if cstart == 0 else cstop
                    while at < n:
                        # the chunk from row at: cap rows at most, within at's batch
                        to = min(at + cap, bstop if at < bstop else min(at + batch_size, n))
                        half = 1 - half
                        xb, tb = _gather(X, T, perm, at, to, ws, plan, half)
                        if at == cstop:
                            break
                        xc, tc, at = xb, tb, cstop
                else:
                    xc, tc = row_span(X, cstart, cstop), row_span(T, cstart, cstop)
                # One chunk, forward and backward (written out here: as a function
                # of its own it cost a call per batch, a quarter of a per-sample
                # epoch, and as Numba-inlined code seconds of first compile).
                # lr == 0: grad = beta * grad + d(mean batch loss)/dtheta, beta 0 on a
                # batch's first chunk. lr > 0: plain SGD applied to theta layer by
                # layer. On the batch's last chunk (lr == 0), norms gets ||gW_l||^2 of
                # the whole batch's weight gradient ADDED, layer by layer right after
                # the GEMM that finishes gW_l, while it is still in cache.
                rows, scale = cstop - cstart, 1.0 / (bstop - bstart)
                beta = 0.0 if cstart == bstart else 1.0
                last = want_norms and cstop == bstop
                inp = xc
                for l in range(n_layers):
                    row = _row(l)
                    k = plan[row + LAYER_N_OUT]
                    W, b, alpha = _params(theta, plan, l)
                    A = matrix(ws, plan[row + LAYER_F], rows, k)
                    # guarded: max |f| of the hidden layers (the output feeds no GEMM)
                    top = dense_forward(inp, W, b, alpha, matrix(ws, plan[row + LAYER_Z], rows, k),
                                        A, plan[row + LAYER_ACT], ws[fp + l],
                                        guarded and l < n_layers - 1, plan[_calls(plan, l)])
                    if guarded:
                        guard[G_HEAD + l] = top
                    inp = A
                row = _row(n_layers - 1)
                k = plan[row + LAYER_N_OUT]
                D = matrix(ws, plan[WS_D1], rows, k)
                batch_loss += _loss_at(loss_at, matrix(ws, plan[row + LAYER_Z], rows, k), inp, tc,
                                       loss_code, scale, D) / (bstop - bstart)
                # The first sweep: every layer's delta, from the old weights, in place of
                # its z (the fused output layer's stays in WS_D1, D already dE/dz:
                # fastmlp.rules.fused_output); each dE/df below through WS_D0.
                for l in range(n_layers - 1, -1, -1):
                    row = _row(l)
                    k_in, k = plan[row + LAYER_N_IN], plan[row + LAYER_N_OUT]
                    W, b, alpha = _params(theta, plan, l)
                    delta = matrix(ws, plan[row + LAYER_Z], rows, k)
                    # guarded: max |delta|, taken while it is written (act_backward)
                    if l == n_layers - 1 and plan[PLAN_FUSED]:
                        delta = D
                        top = _abs_max_linked(D, 0, rows) if guarded else 0.0
                    else:
                        gW, gb, galpha = _params(grad, plan, l)
                        top = _act_backward_at(plan[_calls(plan, l) + 1], D, delta,
                                               matrix(ws, plan[row + LAYER_F], rows, k),
                                               plan[row + LAYER_ACT], ws[fp + l], alpha,
                                               galpha, beta, guarded)
                    if guarded:
                        guard[G_HEAD + n_layers + l] = top
                    if l > 0:
                        D = matrix(ws, plan[WS_D0], rows, k_in)
                        gemm_nt(delta, W, D, 1.0, 0.0)
                if guarded and _guard_at(guard_at, theta, bufs, grad, plan, hyper, opt, step,
                                         guard, batch_loss, rows, bstop - bstart, backup,
                                         1 if cstop == bstop else 0) == 2:
                    guard[G_STATUS] = 2
                    return batch_loss, 2
                # The second sweep: the parameters' gradients, or the folded update.
                for l in range(n_layers - 1, -1, -1):
                    row = _row(l)
                    k_in, k = plan[row + LAYER_N_IN], plan[row + LAYER_N_OUT]
                    inp = xc if l == 0 else matrix(ws, plan[_row(l - 1) + LAYER_F], rows, k_in)
                    delta = matrix(ws, plan[row + LAYER_Z], rows, k)
                    if l == n_layers - 1 and plan[PLAN_FUSED]:
                        delta = matrix(ws, plan[WS_D1], rows, k)
                    W, b, alpha = _params(theta, plan, l)
                    gW, gb, galpha = _params(grad, plan, l)
                    dense_params(inp, delta, W, b, alpha, gW, gb, galpha, beta, lr, decay)
                    if last:
                        w = plan[row + LAYER_W]
                        norms[l] += _sum_squares_at(norms_at, flat(grad, w, w + k_in * k))
                cstart = cstop
            if mode == TRAIN:
                step[0] += 1
                if not fold:   # (a folded update is done: in the weight-gradient GEMMs)
                    if opt == ADAM_CODE:
                        _adam_at(update_at, theta, grad, bufs[0], bufs[1], hyper[LR],
                                 hyper[BETA1], hyper[BETA2], hyper[EPS], hyper[WEIGHT_DECAY],
                                 step[0])
                    else:
                        _sgd_at(update_at, theta, grad, bufs[0], hyper[LR], hyper[MOMENTUM],
                                hyper[NESTEROV] != 0, hyper[WEIGHT_DECAY])
                if guarded and _guard_at(guard_at, theta, bufs, grad, plan, hyper, opt, step,
                                         guard, batch_loss, 0, bstop - bstart, backup,
                                         2) == 2:
                    guard[G_STATUS] = 2
            total += batch_loss * (bstop - bstart)
            bstart = bstop
        epoch_loss = total / n
        if report:
            losses[e] = epoch_loss
            stop = tol >= 0 and epoch_loss <= tol
            if (epoch_loss - epoch_loss) != 0 or ((stop or e == orders.shape[0] - 1)
                                                  and not _finite(epoch_loss, theta, bufs,
                                                                  in_use)):
                return 4.0 * e + 2, 0
            if stop:
                return 4.0 * (e + 1) + 1, 0
    if report:
        return 4.0 * orders.shape[0], 0
    if not gather and batch_size >= n:  # X as one batch (a step, a gradient): its loss
        epoch_loss = batch_loss
    return epoch_loss, int(guard[G_STATUS]) if guarded else 0


def epochs_result(code):
    """(epochs done, status) from the value :func:`run` returns when given losses."""
    done, status = divmod(int(code), 4)
    return done, status


_bias_act_forward_at = FORWARD.call


@helper
def _columns_abs_max(XT, c0, c1):
    """max |XT[:, c0:c1]| (float64), inf when one is NaN or inf: rows c0..c1 of a
    column-major X, XT its transpose (k_0, n), a contiguous run of each column."""
    whole, n, m = flat(XT, 0, XT.size), XT.shape[1], 0.0
    for p in range(XT.shape[0]):
        v = _abs_max_linked(matrix(whole, p * n + c0, 1, c1 - c0), 0, 1)
        m = v if v > m else m
    return m


@helper
def _to_rows(XT, c0, c1, xs):
    """xs[:(c1 - c0) * k_0] OVERWRITTEN with rows c0..c1 of a column-major X, one row
    after another; XT (k_0, n) its transpose."""
    k = XT.shape[0]
    for r in range(c1 - c0):
        for p in range(k):
            xs[r * k + p] = XT[p, c0 + r]


@kernel
def _forward_rows(theta, X, x0, plan, fparams, buf, out, zout, small, check):
    """Forward a chunk of c rows of inputs through three (c * widest) thirds of buf:
    one for Z, two for alternating layer outputs. The output layer's Z goes to zout
    (c, k_L) and its outputs to out (c, k_L). Z and A are never the same array: LLVM
    will not vectorise a pass whose output may overlap its input (in place was 4x
    slower). x0 < 0: X (c, k_0) is the chunk. x0 >= 0: X (k_0, n) is the transpose of
    a column-major input, the chunk its columns x0..x0 + c, which the first layer's
    GEMM reads transposed where they lie (numba_blas.gemm_tn_from).
    ``small`` (c <= rules.PREDICT_SMALL_ROWS): each layer's X W by the C GEMV loops
    (numba_gemv.xw, the Cython backend's), else by BLAS (numba_blas.gemm_nn).
    ``check``: X is checked finite through the first layer's X W, and X itself only
    when that is not finite (see predict); returns False when X is not (out then
    undefined), else True.
    """
    n, n_layers = out.shape[0], plan[PLAN_LAYERS]
    third = buf.shape[0] // 3
    inp = X
    for l in range(n_layers):
        row = _row(l)
        k = plan[row + LAYER_N_OUT]
        W, b, alpha = _params(theta, plan, l)
        last = l == n_layers - 1
        Z = zout if last else matrix(buf, 0, n, k)
        A = out if last else matrix(buf, (1 + l % 2) * third, n, k)
        if l == 0 and x0 >= 0:
            gemm_tn_from(X, x0, W, Z)
        elif small:
            xw(inp, W, Z)
        else:
            gemm_nn(inp, W, Z, 1.0, 0.0)
        if check and l == 0 and not (_abs_max_linked(Z, 0, n) < np.inf):
            if not ((_columns_abs_max(X, x0, x0 + n) if x0 >= 0
                     else _abs_max_linked(X, 0, n)) < np.inf):
                return False
        _bias_act_forward_at(plan[_calls(plan, l)], Z, b, A, plan[row + LAYER_ACT], fparams[l],
                             alpha, False)
        inp = A
    return True


_forward_rows_linked = separate(_forward_rows)
_loss_value_linked = separate(loss_value_kernel)


@entry(allocating=True)
def predict(theta, X, plan, fparams, chunk, Y, check, small, columns):
    """Y (n, k_L) OVERWRITTEN with the outputs of X (n, k_0), computed ``chunk`` rows
    at a time (fastmlp.rules.predict_rows); with ``columns``, X is given as its
    transpose (k_0, n), C-contiguous (X Fortran-ordered: a DataFrame's values), and
    read where it lies (see _forward_rows). Returns True; with ``check``, whether
    every value of X is finite (False: Y is undefined). Each chunk is checked just
    before its first layer reads it, from cache; or, where the first layer has fewer
    units than inputs, through that layer's X W, smaller and just written: a NaN or inf
    in a row of X makes every value of that row of X W NaN or inf (NaN * w and inf * 0
    are NaN, inf * w is inf, and a sum with such a term is never finite: no BLAS skips
    a non-zero x), so a finite X W proves X finite, and X is read only when it is not.

    A chunk of at most ``small`` rows (fastmlp.rules.PREDICT_SMALL_ROWS; 0: none) runs
    each layer's X W through the C GEMV loops the Cython backend runs (numba_gemv),
    a bigger one through BLAS: a BLAS call's set-up and thread hand-off dominate a
    1-row predict, and the GEMV loops written in Numba lost to BLAS (12.6 us against
    9.5 for 784-256-128-10 float32: Numba's loops keep the sums in memory). With
    ``columns``, such a chunk is copied into rows first (at most ``small`` rows) and
    runs as in rows, so that the last rows of a DataFrame get the same bits as the same
    rows given alone."""
    if not _armed(plan, 1):
        raise ValueError(_NOT_ARMED)
    n = Y.shape[0]
    c = min(chunk, n)
    buf = np.empty(3 * c * plan[PLAN_WIDEST], dtype=X.dtype)
    first = _row(0)
    k_in = plan[first + LAYER_N_IN]
    check_xw = check and plan[first + LAYER_N_OUT] < k_in
    xs = np.empty((min(small, c) * k_in) if columns else 0, dtype=X.dtype)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        x0, inp = (start, X) if columns else (-1, X[start:stop])
        if columns and stop - start <= small:
            _to_rows(X, start, stop, xs)
            x0, inp = -1, matrix(xs, 0, stop - start, k_in)
        if check and not check_xw and not ((_columns_abs_max(X, start, stop) if x0 >= 0
                                            else _abs_max_linked(inp, 0, stop - start))
                                           < np.inf):
            return False
        y = Y[start:stop]
        if x0 < 0 and stop - start > small:
            # a float32 chunk by the Cython extension's _sgemm.h loops, where it has them
            # (numba_gemv.forward: -1 where not); x already checked unless through x W
            third = c * plan[PLAN_WIDEST]
            done = forward(plan, fparams, theta, inp, flat(buf, third, 2 * third),
                           flat(buf, 2 * third, 3 * third), y, False, check_xw)
            if done == 1:
                return False
            if done == 0:
                continue
        if not _forward_rows_linked(theta, inp, x0, plan, fparams, buf, y,
                                    matrix(buf, 0, stop - start, y.shape[1]),
                                    stop - start <= small, check_xw):
            return False
    return True


@entry(allocating=True)
def evaluate(theta, X, T, plan, fparams, chunk, small):
    """Mean loss over X (n, k_0), T (n, k_L), computed ``chunk`` rows at a time, a chunk
    of at most ``small`` rows through the C GEMV loops (as :func:`predict`)."""
    if not _armed(plan, 1):
        raise ValueError(_NOT_ARMED)
    n, k_out = X.shape[0], T.shape[1]
    c = min(chunk, n)
    buf = np.empty(3 * c * plan[PLAN_WIDEST], dtype=X.dtype)
    Z, A = np.empty((c, k_out), dtype=X.dtype), np.empty((c, k_out), dtype=X.dtype)
    total = 0.0
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        z, a = Z[:stop - start], A[:stop - start]
        _forward_rows_linked(theta, X[start:stop], -1, plan, fparams, buf, a, z,
                             stop - start <= small, False)
        # each chunk's sum divided by n before the chunks are added, as the reference
        # (a float64 mean stays finite where the raw sums would overflow)
        total += _loss_value_linked(z, a, T[start:stop], plan[PLAN_LOSS]) / n
    return total

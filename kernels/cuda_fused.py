"""Fully fused CUDA kernels for narrow and tiny networks (issue 12), after tiny-cuda-nn.

Two paths, each one set of kernels per dtype (``_kernels(dtype)``):

* **Fused narrow step** (every layer <= MAX_UNITS units): ONE kernel runs forward, loss,
  backward and the weight-gradient reduction for tiles of rows. A block takes a tile of
  ``tile`` rows at a time (a grid-stride loop over the tiles of the batch), keeps every
  layer's z and f for its rows in shared memory, forms the output delta, backpropagates,
  and ADDS each layer's dW, db (and prelu's dalpha) over its rows to its own row of a
  per-block partial gradient (n_blocks, n_params): no atomics. A second kernel sums those
  rows over the blocks in block order (so the result is the same bits every run), then
  applies the optimiser (``cuda_math.opt_update``) or writes the gradient. A forward-only
  kernel serves predict and evaluate.
* **Tiny networks** (every layer <= TINY_UNITS units, <= TINY_PARAMS parameters): one
  block runs whole epochs of (mini-)batch training in ONE launch, theta and the step's
  gradient in shared memory, threads over the units and rows of a batch.

Shared memory. A block's activations live in one flat static shared array of
SHARED_BYTES (TINY_SHARED_BYTES for the tiny kernel, which also holds theta and its
gradient), under the 48 KB a block may declare statically. Where each layer's pieces
lie in it is a "layout" built on the host: an int64 (L, 2) table of each layer's z and f
offsets, plus the offsets of the input rows and the two delta buffers, all for ``tile``
rows. The tile is the most rows whose layout fits: training needs per row
``inputs + 2 * sum(units) + 2 * widest`` elements (x, every layer's z and f, two
ping-pong deltas), predict ``2 * max(inputs, hidden widths) + 2 * outputs`` (two
ping-pong buffers and the output's z and f). E.g. 64-64-64-64-64-16 in float32:
training 736 elements per row -> 13 rows, predict 160 -> 64 rows (MAX_TILE caps it).
A network whose training tile would be under MIN_TILE rows is not "fused" (the general
tiled-GEMM path of cuda_layers takes it).

Every kernel's arithmetic is in the model dtype (float32 stays float32); losses are
summed in float64, as the reference does. The maths is fastmlp.backends.reference's:
dE/dz of the output layer straight from the loss for softmax + cross_entropy and
sigmoid + binary_cross_entropy (rules.fused_output), 1/n folded into the output delta.
"""
from __future__ import annotations

import math
import threading
from functools import cache

import numba
import numpy as np
from numba import cuda

from fastmlp.codes import (BINARY_CROSS_ENTROPY, CROSS_ENTROPY, LAYER_ACT, LAYER_ALPHA, LAYER_B,
                           LAYER_N_IN, LAYER_N_OUT, LAYER_W, PRELU, SOFTMAX)

from .cuda_math import for_dtype, kernel

MAX_UNITS = 128          # widest layer of the fused narrow path (the limit)
MAX_TILE = 128           # rows per tile at most
MIN_TILE = 8             # fewer rows per tile than this: not worth fusing, use cuda_layers
MAX_THREADS = 256        # threads per block at most (the loss-reduction array's size)
SHARED_BYTES = 40 * 1024  # the fused kernels' activation area: 48 KB static, less the
                          # loss reduction (MAX_THREADS float64 = 2 KB) and headroom
TINY_UNITS = 32          # widest layer of the tiny-network path
TINY_PARAMS = 1024       # parameters of a tiny network at most (theta + gradient in shared)
TINY_SHARED_BYTES = 24 * 1024  # its activation area: 24 KB + 2 * 1024 float64 = 40 KB
DEFAULT_THREADS = 128
TINY_THREADS = 32

# Columns of a layout table
Z_OFF, F_OFF = 0, 1


# --- host side: layouts and what each path supports ------------------------------

def _act_elems(dtype, tiny=False):
    """Elements of the flat shared activation area of the fused (or tiny) kernels."""
    return (TINY_SHARED_BYTES if tiny else SHARED_BYTES) // np.dtype(dtype).itemsize


def _train_row(net):
    """Shared elements one row needs in training: x, every layer's z and f, two deltas."""
    units = net.dims[1:]
    return int(net.dims[0] + 2 * units.sum() + 2 * units.max())


def _predict_row(net):
    """Shared elements one row needs in predict: two ping-pong buffers, the output's z, f."""
    return int(2 * net.dims[:-1].max() + 2 * net.dims[-1])


def train_layout(net, tile):
    """The training layout for ``tile`` rows: (layout int64 (L, 2) of each layer's z and f
    offsets, x_off, d0_off, d1_off); layer l's z of row r, unit j at z_off + r * units + j."""
    layout = np.empty((len(net.layers), 2), dtype=np.int64)
    pos = tile * net.input_dim       # the input rows first, at 0
    for l, units in enumerate(net.dims[1:]):
        layout[l, Z_OFF], layout[l, F_OFF] = pos, pos + tile * units
        pos += 2 * tile * int(units)
    widest = int(net.dims[1:].max())
    return layout, 0, pos, pos + tile * widest


def predict_layout(net, tile):
    """The forward-only layout for ``tile`` rows: (layout (L, 2), x_off): the input in
    buffer A, hidden layers alternately in B and A (z and f in place), the output's z and f
    after both buffers, apart (the loss needs z)."""
    layout = np.empty((len(net.layers), 2), dtype=np.int64)
    size = tile * int(net.dims[:-1].max())
    buffers = (size, 0)              # layer 0 writes B (after A, which holds x)
    for l in range(len(net.layers) - 1):
        layout[l] = buffers[l % 2]
    last = 2 * size
    layout[-1] = last, last + tile * net.output_dim
    return layout, 0


def fused_tile(net, dtype):
    """Rows per tile of the fused training kernel for ``net`` in ``dtype`` (MAX_TILE at most)."""
    return min(MAX_TILE, _act_elems(dtype) // _train_row(net))


def predict_tile(net, dtype):
    """Rows per tile of the forward-only kernel (MAX_TILE at most)."""
    return min(MAX_TILE, _act_elems(dtype) // _predict_row(net))


def supports_fused(net, dtype="float32"):
    """True when ``net`` (a :class:`fastmlp.network.Network`) runs on the fused narrow path:
    every layer <= MAX_UNITS units and a training tile of >= MIN_TILE rows in ``dtype``."""
    return int(net.dims[1:].max()) <= MAX_UNITS and fused_tile(net, dtype) >= MIN_TILE


def supports_tiny(net, batch_size, dtype="float32"):
    """True when whole epochs of ``net`` with batches of ``batch_size`` rows run in one
    launch (:class:`TinyEpochs`): every layer <= TINY_UNITS units, <= TINY_PARAMS
    parameters, and a batch's activations fit the tiny kernel's shared area."""
    return (int(net.dims[1:].max()) <= TINY_UNITS and net.n_params <= TINY_PARAMS
            and 1 <= batch_size and batch_size * _train_row(net) <= _act_elems(dtype, tiny=True))


# --- device side ------------------------------------------------------------------

@cache
def _kernels(dtype):
    """The kernels for ``dtype`` (float32/float64), compiled on first launch."""
    dtype = np.dtype(dtype)
    ftype = dtype.type
    nbtype = numba.from_dtype(dtype)
    math_fns = for_dtype(dtype)
    act, act_grad, softplus = math_fns.act, math_fns.act_grad, math_fns.softplus
    opt_update = math_fns.opt_update
    zero = ftype(0.0)
    act_elems, tiny_elems = _act_elems(dtype), _act_elems(dtype, tiny=True)

    @cuda.jit(device=True)
    def load_rows(X, rows, indexed, base, nrows, sh, x_off, tid, nth):
        """sh[x_off + r * inputs + i] = X[row r, i] for the nrows rows: rows[base + r]
        when indexed, else base + r. Ends with a barrier."""
        n_in = X.shape[1]
        for e in range(tid, nrows * n_in, nth):
            r = e // n_in
            src = rows[base + r] if indexed else base + r
            sh[x_off + e] = X[src, e - r * n_in]
        cuda.syncthreads()

    @cuda.jit(device=True)
    def softmax_row(sh, zo, fo, k):
        """f = softmax(z) of one row of k units (zo == fo: in place), shifted by the max."""
        mx = sh[zo]
        for j in range(1, k):
            mx = max(mx, sh[zo + j])
        s = 0.0  # float64, as on the CPU: a float32 sum of thousands of terms drifts
        for j in range(k):
            e = math.exp(sh[zo + j] - mx)
            sh[fo + j] = e
            s += e
        s_ = ftype(s)
        for j in range(k):
            sh[fo + j] = sh[fo + j] / s_

    @cuda.jit(device=True)
    def forward_tile(theta, aparams, table, lay, sh, x_off, nrows, tid, nth):
        """Every layer's z and f of the tile's nrows rows, from x at x_off, into the
        layout's places (z_off == f_off: f overwrites z). Ends with a barrier."""
        in_off = x_off
        for l in range(table.shape[0]):
            n_in, n_out = table[l, LAYER_N_IN], table[l, LAYER_N_OUT]
            code, w, b, al = table[l, LAYER_ACT], table[l, LAYER_W], table[l, LAYER_B], table[l, LAYER_ALPHA]
            p = aparams[l]
            z_off, f_off = lay[l, Z_OFF], lay[l, F_OFF]
            # one thread per (row, unit): consecutive threads read consecutive W columns
            for e in range(tid, nrows * n_out, nth):
                r = e // n_out
                j = e - r * n_out
                a_row = in_off + r * n_in
                acc = theta[b + j]
                for i in range(n_in):
                    acc += sh[a_row + i] * theta[w + i * n_out + j]
                sh[z_off + e] = acc
                if code != SOFTMAX:
                    a = theta[al + j] if al >= 0 else zero
                    sh[f_off + e] = act(code, acc, p, a)
            cuda.syncthreads()
            if code == SOFTMAX:   # the output layer only (Network refuses it elsewhere)
                for r in range(tid, nrows, nth):
                    softmax_row(sh, z_off + r * n_out, f_off + r * n_out, n_out)
                cuda.syncthreads()
            in_off = f_off

    @cuda.jit(device=True)
    def loss_tile(T, rows, indexed, base, nrows, sh, theta, aparams, table, lay, loss_code,
                  n_f, mse_scale, d_off, want_delta, tid, nth):
        """This thread's rows' summed loss (float64, not yet divided by n), one thread per
        row; with want_delta, dE/dz of the output layer (rows, outputs) written at d_off,
        1/n included, and for a prelu output its dalpha terms dE/df * min(z, 0) written
        over its z. No barrier."""
        last = table.shape[0] - 1
        k, code, al = table[last, LAYER_N_OUT], table[last, LAYER_ACT], table[last, LAYER_ALPHA]
        p = aparams[last]
        total = 0.0
        for r in range(tid, nrows, nth):
            src = rows[base + r] if indexed else base + r
            zr, fr, dr = lay[last, Z_OFF] + r * k, lay[last, F_OFF] + r * k, d_off + r * k
            if loss_code == CROSS_ENTROPY:   # softmax output: -sum t log_softmax(z)
                mx = sh[zr]
                for j in range(1, k):
                    mx = max(mx, sh[zr + j])
                s = zero
                for j in range(k):
                    s += math.exp(sh[zr + j] - mx)
                lse = math.log(s)
                t_sum = zero
                for j in range(k):
                    t = T[src, j]
                    t_sum += t
                    if t != zero:   # nothing, even where z - mx is -inf (0 * -inf: NaN)
                        total -= t * ((sh[zr + j] - mx) - lse)
                if want_delta:               # (p * sum(t) - t) / n
                    for j in range(k):
                        sh[dr + j] = (sh[fr + j] * t_sum - T[src, j]) / n_f
            elif loss_code == BINARY_CROSS_ENTROPY:   # sigmoid outputs: softplus(z) - t z
                for j in range(k):
                    z, t = sh[zr + j], T[src, j]
                    total += softplus(z) - t * z
                    if want_delta:           # (p - t) / n
                        sh[dr + j] = (sh[fr + j] - t) / n_f
            else:                            # MSE: sum (y - t)^2
                for j in range(k):
                    d = sh[fr + j] - T[src, j]
                    total += d * d
                    if want_delta:
                        sh[dr + j] = mse_scale * d      # dE/df = 2 (y - t) / n
                if want_delta:
                    if code == SOFTMAX:      # J^T dE/df = p * (g - sum(g * p))
                        dot = 0.0   # float64, as on the CPU
                        for j in range(k):
                            dot += sh[dr + j] * sh[fr + j]
                        dot_ = ftype(dot)
                        for j in range(k):
                            sh[dr + j] = sh[fr + j] * (sh[dr + j] - dot_)
                    else:
                        for j in range(k):
                            g, z = sh[dr + j], sh[zr + j]
                            a = theta[al + j] if al >= 0 else zero
                            sh[dr + j] = g * act_grad(code, z, sh[fr + j], p, a)
                            if code == PRELU:
                                sh[zr + j] = g * min(z, zero)
        return total

    @cuda.jit(device=True)
    def backward_tile(theta, aparams, table, lay, sh, x_off, d0, d1, nrows, grad, tid, nth):
        """Backpropagate the output delta at d0 through every layer, ADDING each layer's
        dW, db (and dalpha) over the tile's rows to grad (n_params,). Each grad element has
        one writer per phase; a barrier ends every layer."""
        cur, nxt = d0, d1
        for l in range(table.shape[0] - 1, -1, -1):
            n_in, n_out = table[l, LAYER_N_IN], table[l, LAYER_N_OUT]
            w, b, al = table[l, LAYER_W], table[l, LAYER_B], table[l, LAYER_ALPHA]
            in_off = x_off if l == 0 else lay[l - 1, F_OFF]
            z_off = lay[l, Z_OFF]            # prelu: holds dE/df * min(z, 0) by now
            # dW = a_prev^T delta, db = sum delta, dalpha = sum dE/df min(z, 0); one
            # thread per parameter, rows summed in order (the same bits every run)
            n_w = n_in * n_out
            n_g = n_w + n_out + (n_out if al >= 0 else 0)
            for e in range(tid, n_g, nth):
                s = zero
                if e < n_w:
                    i = e // n_out
                    j = e - i * n_out
                    for r in range(nrows):
                        s += sh[in_off + r * n_in + i] * sh[cur + r * n_out + j]
                    grad[w + e] += s
                elif e < n_w + n_out:
                    j = e - n_w
                    for r in range(nrows):
                        s += sh[cur + r * n_out + j]
                    grad[b + j] += s
                else:
                    j = e - n_w - n_out
                    for r in range(nrows):
                        s += sh[z_off + r * n_out + j]
                    grad[al + j] += s
            # the layer below's delta = (delta W^T) * f'(z); it reads and writes nothing
            # the loop above touches, so both run before one barrier
            if l > 0:
                below = l - 1
                code, p = table[below, LAYER_ACT], aparams[below]
                alb = table[below, LAYER_ALPHA]
                zb, fb = lay[below, Z_OFF], lay[below, F_OFF]
                for e in range(tid, nrows * n_in, nth):
                    r = e // n_in
                    i = e - r * n_in
                    g = zero
                    d_row = cur + r * n_out
                    for j in range(n_out):
                        g += sh[d_row + j] * theta[w + i * n_out + j]
                    z = sh[zb + e]
                    a = theta[alb + i] if alb >= 0 else zero
                    sh[nxt + e] = g * act_grad(code, z, sh[fb + e], p, a)
                    if alb >= 0:
                        sh[zb + e] = g * min(z, zero)
            cuda.syncthreads()
            cur, nxt = nxt, cur

    @cuda.jit(device=True)
    def block_sum(red, value, tid, nth):
        """The sum over the block's threads of ``value`` (float64), in thread order; the
        same on every thread. Two barriers."""
        red[tid] = value
        cuda.syncthreads()
        s = 0.0
        for t in range(nth):
            s += red[t]
        cuda.syncthreads()
        return s

    @kernel
    def tile_gradient(theta, aparams, table, lay, X, T, rows, first, count, tile, x_off, d0, d1,
                      loss_code, n_f, mse_scale, partial, partial_loss, step, bump):
        """Per-block gradient of rows[first:first + count]: block b OVERWRITES partial[b]
        (n_params,) with the sum over its tiles of dE/dtheta (1/n included) and
        partial_loss[b] with its rows' summed loss; with bump, block 0 adds 1 to step[0]."""
        sh = cuda.shared.array(act_elems, nbtype)
        red = cuda.shared.array(MAX_THREADS, numba.float64)
        tid, nth, blk = cuda.threadIdx.x, cuda.blockDim.x, cuda.blockIdx.x
        grad = partial[blk]
        for i in range(tid, grad.shape[0], nth):
            grad[i] = zero
        if bump != 0 and blk == 0 and tid == 0:
            step[0] += 1
        cuda.syncthreads()
        total = 0.0
        for k in range(blk, (count + tile - 1) // tile, cuda.gridDim.x):
            base = first + k * tile
            nrows = min(tile, count - k * tile)
            load_rows(X, rows, 1, base, nrows, sh, x_off, tid, nth)
            forward_tile(theta, aparams, table, lay, sh, x_off, nrows, tid, nth)
            total += loss_tile(T, rows, 1, base, nrows, sh, theta, aparams, table, lay,
                               loss_code, n_f, mse_scale, d0, 1, tid, nth)
            cuda.syncthreads()
            backward_tile(theta, aparams, table, lay, sh, x_off, d0, d1, nrows, grad, tid, nth)
        s = block_sum(red, total, tid, nth)
        if tid == 0:
            partial_loss[blk] = s

    @kernel
    def tile_forward(theta, aparams, table, lay, X, T, rows, count, tile, x_off, out, want_out,
                     loss_code, partial_loss, want_loss):
        """Forward pass of X[:count] tile by tile: with want_out, out[:count] (rows, outputs)
        OVERWRITTEN with the outputs; with want_loss, partial_loss[b] OVERWRITTEN with
        block b's rows' summed loss against T. ``rows`` is unused (any int64 array)."""
        sh = cuda.shared.array(act_elems, nbtype)
        red = cuda.shared.array(MAX_THREADS, numba.float64)
        tid, nth, blk = cuda.threadIdx.x, cuda.blockDim.x, cuda.blockIdx.x
        last = table.shape[0] - 1
        k_out, f_out = table[last, LAYER_N_OUT], lay[last, F_OFF]
        total = 0.0
        for k in range(blk, (count + tile - 1) // tile, cuda.gridDim.x):
            base = k * tile
            nrows = min(tile, count - base)
            load_rows(X, rows, 0, base, nrows, sh, x_off, tid, nth)
            forward_tile(theta, aparams, table, lay, sh, x_off, nrows, tid, nth)
            if want_out:
                for e in range(tid, nrows * k_out, nth):
                    r = e // k_out
                    out[base + r, e - r * k_out] = sh[f_out + e]
            if want_loss:
                total += loss_tile(T, rows, 0, base, nrows, sh, theta, aparams, table, lay,
                                   loss_code, zero, zero, 0, 0, tid, nth)
            cuda.syncthreads()       # before the next tile's rows overwrite these
        if want_loss:
            s = block_sum(red, total, tid, nth)
            if tid == 0:
                partial_loss[blk] = s

    @cuda.jit(device=True)
    def sum_blocks(partial, n_blocks, partial_loss, n, loss, slot, i):
        """Parameter i's gradient: the sum over blocks b < n_blocks of partial[b, i], in
        block order (the same bits every run); thread 0 also writes loss[slot] = the sum
        of partial_loss / n."""
        if i == 0:
            s = 0.0
            for b in range(n_blocks):
                s += partial_loss[b]
            loss[slot] = s / n
        g = partial[0, i]
        for b in range(1, n_blocks):
            g += partial[b, i]
        return g

    @kernel
    def reduce_gradient(partial, n_blocks, partial_loss, n, grad, loss, slot):
        """grad[i] = sum_blocks (OVERWRITTEN), and the loss."""
        i = cuda.grid(1)
        if i < grad.shape[0]:
            grad[i] = sum_blocks(partial, n_blocks, partial_loss, n, loss, slot, i)

    @kernel
    def reduce_update(partial, n_blocks, partial_loss, n, loss, slot, theta, bufs, hyper, step,
                      opt_code):
        """As reduce_gradient, then theta[i] (and bufs[:, i]) updated in place by the
        optimiser with that gradient, step[0] its step count (already advanced)."""
        i = cuda.grid(1)
        if i < theta.shape[0]:
            g = sum_blocks(partial, n_blocks, partial_loss, n, loss, slot, i)
            opt_update(opt_code, hyper, step[0], i, theta, g, bufs)

    @kernel
    def sum_loss(partial_loss, n_blocks, n, loss, slot):
        """loss[slot] = sum of partial_loss[:n_blocks] / n, in block order (one thread)."""
        if cuda.grid(1) == 0:
            s = 0.0
            for b in range(n_blocks):
                s += partial_loss[b]
            loss[slot] = s / n

    @kernel
    def tiny_epochs(theta, bufs, hyper, step, opt_code, in_use, aparams, table, lay, x_off, d0,
                    d1, X, T, orders, batch, loss_code, tol, losses, status):
        """train_epoch once per row of orders (k, n) in ONE block: per batch of rows
        orders[e, s:s + batch] (the last may be short), the gradient in shared memory and
        the optimiser update. theta (n_params,) lives in shared memory for the launch and
        is written back at the end; bufs (2, n_params) are updated in place; step[0]
        advances by the steps taken. losses[e] OVERWRITTEN with epoch e's mean loss
        (sum of batch loss * batch rows / n); status[0] = epochs done, status[1] = 0 (all
        ran), 1 (an epoch's loss <= tol, tol >= 0) or 2 (non-finite loss, theta or the
        in_use first rows of bufs after an epoch: stopped there, that epoch not counted)."""
        sh = cuda.shared.array(tiny_elems, nbtype)
        th = cuda.shared.array(TINY_PARAMS, nbtype)
        gr = cuda.shared.array(TINY_PARAMS, nbtype)
        red = cuda.shared.array(MAX_THREADS, numba.float64)
        ctl = cuda.shared.array(1, numba.int32)
        tid, nth = cuda.threadIdx.x, cuda.blockDim.x
        n_params = theta.shape[0]
        for i in range(tid, n_params, nth):
            th[i] = theta[i]
        t = step[0]
        cuda.syncthreads()
        n_epochs, n = orders.shape[0], orders.shape[1]
        done, verdict = n_epochs, 0
        for e in range(n_epochs):
            rows = orders[e]
            epoch_total = 0.0
            for first in range(0, n, batch):
                nrows = min(batch, n - first)
                for i in range(tid, n_params, nth):
                    gr[i] = zero
                load_rows(X, rows, 1, first, nrows, sh, x_off, tid, nth)
                forward_tile(th, aparams, table, lay, sh, x_off, nrows, tid, nth)
                part = loss_tile(T, rows, 1, first, nrows, sh, th, aparams, table, lay,
                                 loss_code, ftype(nrows), ftype(2.0 / nrows), d0, 1, tid, nth)
                batch_loss = block_sum(red, part, tid, nth) / nrows
                epoch_total += batch_loss * nrows
                backward_tile(th, aparams, table, lay, sh, x_off, d0, d1, nrows, gr, tid, nth)
                t += 1
                for i in range(tid, n_params, nth):
                    opt_update(opt_code, hyper, t, i, th, gr[i], bufs)
                cuda.syncthreads()
            loss = epoch_total / n
            # after each epoch: stop on a non-finite loss, theta or buffer in use, or tol
            if tid == 0:
                ctl[0] = 0
                losses[e] = loss
            cuda.syncthreads()
            bad = False
            for i in range(tid, n_params, nth):
                if not math.isfinite(th[i]):
                    bad = True
                for row in range(in_use):
                    if not math.isfinite(bufs[row, i]):
                        bad = True
            if bad:
                ctl[0] = 2
            cuda.syncthreads()
            if ctl[0] == 2 or not math.isfinite(loss):
                done, verdict = e, 2
                break
            if tol >= 0.0 and loss <= tol:
                done, verdict = e + 1, 1
                break
            cuda.syncthreads()   # ctl is read by all before thread 0 resets it
        for i in range(tid, n_params, nth):
            theta[i] = th[i]
        if tid == 0:
            step[0] = t
            status[0] = done
            status[1] = verdict

    return {"tile_gradient": tile_gradient, "tile_forward": tile_forward,
            "reduce_gradient": reduce_gradient, "reduce_update": reduce_update,
            "sum_loss": sum_loss, "tiny_epochs": tiny_epochs}


# --- launchers ----------------------------------------------------------------------

def _device_sm_count():
    """Multiprocessors of the current device (16 where it does not say: the simulator)."""
    return int(getattr(cuda.get_current_device(), "MULTIPROCESSOR_COUNT", 16))


class _Net:
    """The network's description on the device: layer table, activation parameters."""

    def __init__(self, net, dtype):
        self.net, self.dtype = net, np.dtype(dtype)
        self.table = cuda.to_device(np.ascontiguousarray(net.layer_table))
        self.aparams = cuda.to_device(net.act_params.astype(self.dtype))
        self.kernels = _kernels(self.dtype)


def _check_threads(threads):
    if not 1 <= threads <= MAX_THREADS:
        raise ValueError(f"threads must be in 1..{MAX_THREADS}, got {threads}")


def _scalar(dtype, value):
    return np.dtype(dtype).type(value)


class FusedStep:
    """The fused narrow-network kernels of one model (see :func:`supports_fused`).

    ``FusedStep(net, dtype, threads=128, max_blocks=None, stream=0, tile=None)``: ``net``
    a :class:`fastmlp.network.Network`, ``dtype`` float32/float64 (every array passed
    in must have it, except where said). A batch runs on up to ``max_blocks`` blocks
    (default: 2 per multiprocessor) of ``threads`` threads, ``tile`` rows per tile
    (default and most: :func:`fused_tile`; fewer for tests); the per-block partial
    gradient (max_blocks, n_params) and losses are allocated once, here, and reused.
    All launches go to ``stream``; each call's launches are made under a lock, so calls
    from several threads never interleave on the shared partials. Results depend only on
    the rows, theta and (tile, blocks): two runs give the same bits.

    Device arrays (Numba device arrays or anything with ``__cuda_array_interface__``),
    C-contiguous: theta (n_params,); X (N, inputs); T (N, outputs); rows int64 (M,) row
    indices into X and T (an epoch's order); grad (n_params,); loss float64 (S,);
    buffers (2, n_params); hyper float64 (N_HYPER,); step int64 (1,); out (N, outputs).
    """

    def __init__(self, net, dtype, threads=DEFAULT_THREADS, max_blocks=None, stream=0,
                 tile=None):
        _check_threads(threads)
        self._net = _Net(net, dtype)
        self.net, self.dtype, self.threads, self.stream = net, np.dtype(dtype), threads, stream
        fits = fused_tile(net, self.dtype)
        if fits < 1:
            raise ValueError(f"a network needing {_train_row(net)} shared elements per row "
                             f"does not fit the fused kernels ({_act_elems(self.dtype)})")
        if tile is not None and not 1 <= tile <= fits:
            raise ValueError(f"tile must be in 1..{fits} rows for this network, got {tile}")
        self.tile = int(tile or fits)
        layout, self._x_off, self._d0, self._d1 = train_layout(net, self.tile)
        self._layout = cuda.to_device(layout)
        self.predict_tile = min(predict_tile(net, self.dtype), int(tile or MAX_TILE))
        layout, self._px_off = predict_layout(net, self.predict_tile)
        self._playout = cuda.to_device(layout)
        self.max_blocks = int(max_blocks or 2 * _device_sm_count())
        self._partial = cuda.device_array((self.max_blocks, net.n_params), dtype=self.dtype,
                                          stream=stream)
        self._partial_loss = cuda.device_array(self.max_blocks, dtype=np.float64, stream=stream)
        self._no_ints = cuda.to_device(np.zeros(1, dtype=np.int64))  # for unused int64 args
        self._lock = threading.Lock()

    def _blocks(self, count, tile):
        return max(1, min(self.max_blocks, -(-count // tile)))

    def _gradient_kernel(self, d_theta, d_X, d_T, d_rows, start, count, n, d_step, bump):
        """Launch tile_gradient; (blocks it used, n)."""
        if count < 1:
            raise ValueError(f"a gradient needs count >= 1 rows, got {count}")
        n = count if n is None else n
        blocks = self._blocks(count, self.tile)
        k, m = self._net.kernels, self._net
        step = d_step if d_step is not None else self._no_ints  # unused unless bump
        k["tile_gradient"][blocks, self.threads, self.stream](
            d_theta, m.aparams, m.table, self._layout, d_X, d_T, d_rows, start, count, self.tile,
            self._x_off, self._d0, self._d1, self.net.loss.code, _scalar(self.dtype, n),
            _scalar(self.dtype, 2.0 / n), self._partial, self._partial_loss, step, int(bump))
        return blocks, n

    def gradient(self, d_theta, d_X, d_T, d_rows, start, count, d_grad, d_loss, slot=0, n=None):
        """d_grad (n_params,) OVERWRITTEN with dE/dtheta of the rows d_rows[start:start +
        count] and d_loss[slot] (float64) with their loss, both divided by ``n`` (default
        count: the mean loss), as the reference's loss_and_gradient. count >= 1."""
        with self._lock:
            blocks, n = self._gradient_kernel(d_theta, d_X, d_T, d_rows, start, count, n, None, 0)
            grid = -(-self.net.n_params // self.threads)
            self._net.kernels["reduce_gradient"][grid, self.threads, self.stream](
                self._partial, blocks, self._partial_loss, float(n), d_grad, d_loss, slot)

    def train(self, d_theta, d_buffers, d_hyper, d_step, opt_code, d_X, d_T, d_rows, start, count,
              d_loss, slot=0):
        """One train step on the rows d_rows[start:start + count]: d_theta and d_buffers
        updated in place by optimiser ``opt_code`` (fastmlp.codes SGD_CODE/ADAM_CODE) with
        hyper-parameters d_hyper, d_step[0] advanced by one; d_loss[slot] OVERWRITTEN
        with the batch's mean loss before the update. Two launches."""
        with self._lock:
            blocks, n = self._gradient_kernel(d_theta, d_X, d_T, d_rows, start, count, None,
                                              d_step, 1)
            grid = -(-self.net.n_params // self.threads)
            self._net.kernels["reduce_update"][grid, self.threads, self.stream](
                self._partial, blocks, self._partial_loss, float(n), d_loss, slot, d_theta,
                d_buffers, d_hyper, d_step, int(opt_code))

    def predict(self, d_theta, d_X, d_out):
        """d_out (N, outputs) OVERWRITTEN with the outputs for d_X (N, inputs). One launch,
        no shared state: safe from several threads."""
        count = d_X.shape[0]
        if count == 0:
            return
        k, m = self._net.kernels, self._net
        blocks = self._blocks(count, self.predict_tile)
        k["tile_forward"][blocks, self.threads, self.stream](
            d_theta, m.aparams, m.table, self._playout, d_X, d_out, self._no_ints, count,
            self.predict_tile,
            self._px_off, d_out, 1, self.net.loss.code, self._partial_loss, 0)

    def evaluate(self, d_theta, d_X, d_T, d_loss, slot=0):
        """d_loss[slot] (float64) OVERWRITTEN with the mean loss of d_X (N >= 1 rows)
        against d_T. Two launches."""
        count = d_X.shape[0]
        k, m = self._net.kernels, self._net
        with self._lock:
            blocks = self._blocks(count, self.predict_tile)
            k["tile_forward"][blocks, self.threads, self.stream](
                d_theta, m.aparams, m.table, self._playout, d_X, d_T, self._no_ints, count,
                self.predict_tile,
                self._px_off, d_T, 0, self.net.loss.code, self._partial_loss, 1)
            k["sum_loss"][1, 1, self.stream](self._partial_loss, blocks, float(count), d_loss, slot)


class TinyEpochs:
    """Whole epochs of a tiny network in ONE launch of one block (see :func:`supports_tiny`).

    ``TinyEpochs(net, dtype, batch_size, threads=32, stream=0)``. ``run`` trains
    ``orders.shape[0]`` epochs, bit for bit the same whatever the launch count.
    """

    def __init__(self, net, dtype, batch_size, threads=TINY_THREADS, stream=0):
        _check_threads(threads)
        if not supports_tiny(net, batch_size, dtype):
            raise ValueError(f"the network ({net.n_params} parameters, widest "
                             f"{int(net.dims[1:].max())} units) with batches of {batch_size} "
                             "rows is not tiny: see supports_tiny")
        self._net = _Net(net, dtype)
        self.net, self.dtype, self.batch_size = net, np.dtype(dtype), int(batch_size)
        self.threads, self.stream = threads, stream
        layout, self._x_off, self._d0, self._d1 = train_layout(net, self.batch_size)
        self._layout = cuda.to_device(layout)

    def run(self, d_theta, d_buffers, d_hyper, d_step, state_code, in_use, d_X, d_T, d_orders,
            d_losses, d_status, tol=-1.0):
        """Train one epoch per row of d_orders, int64 (k, n), each row a permutation of
        (or any row indices into) d_X (N, inputs) and d_T (N, outputs), in batches of
        batch_size rows (the last may be short). d_theta (n_params,) and d_buffers
        (2, n_params) are updated in place, d_step (1,) int64 advanced by the steps taken;
        d_losses float64 (k,) gets each finished epoch's mean loss (the reference's
        train_epoch value); d_status int64 (2,) OVERWRITTEN with (epochs done, status) as
        the backend contract's train_epochs: 0 all ran, 1 stopped at an epoch with loss
        <= tol (tol >= 0), 2 stopped at an epoch after which the loss, theta or the first
        ``in_use`` rows of d_buffers (rules.buffers_in_use) were not finite.
        ``state_code`` is the optimiser's code (OptimizerState.code)."""
        m = self._net
        m.kernels["tiny_epochs"][1, self.threads, self.stream](
            d_theta, d_buffers, d_hyper, d_step, int(state_code), int(in_use), m.aparams,
            m.table, self._layout, self._x_off, self._d0, self._d1, d_X, d_T, d_orders,
            self.batch_size, self.net.loss.code, float(tol), d_losses, d_status)

"""The rules every backend follows, decided here once.

Which loss gradient fuses with its output activation, when plain SGD folds its
update into the weight-gradient GEMM, how many rows a training workspace holds,
and how many rows predict and evaluate take at a time. The compiled kernels
read the first two from the plan (:meth:`fastmlp.network.Network.plan`,
fields ``PLAN_FUSED`` and ``PLAN_FOLD_ROWS``) and are given the row counts;
no backend decides any of them on its own.
"""
from __future__ import annotations

import numpy as np

from .codes import MOMENTUM, SGD_CODE

# Rows a training workspace holds at most: a bigger batch goes through it in
# chunks of this many rows, its gradient accumulated, so memory stays bounded
# however large the batch (one gradients() on a million rows once took 3.2 GB).
# Fewer where TRAIN_ROWS rows would take more than TRAIN_BYTES: a network with a
# very wide layer (1-200000-1 took 3.3 GB for 1,024 rows; 2048-2048-2048-10 takes
# 67 MB in float32, 134 MB in float64, and is not affected).
TRAIN_ROWS = 1024
TRAIN_BYTES = 256 << 20

# predict and evaluate take rows in chunks, so memory stays bounded however many
# rows come. While PREDICT_MIN_ROWS rows of the widest layer's outputs fit in
# PREDICT_BYTES (about an L2), a chunk holds PREDICT_BYTES of them: enough rows for
# BLAS to run at full speed while a layer's outputs stay in L2 for the next layer.
# Measured on 784-256-128-10 at 512 rows: 64-row chunks 1.3x slower, 256 and more
# alike (the floor); in float64 (256-row chunks) 512 rows were 1-2 % slower; a
# 4-16-16-1 net gets chunks of thousands of rows, which keeps the per-chunk overhead
# (the reference's NumPy calls) small on long inputs. A wider layer's outputs do not
# fit at any useful chunk, and then the GEMMs decide: PREDICT_WIDE_ROWS rows, over
# which each chunk's packing of every W is spread. Measured with 512-row chunks
# against 256 (numba / cython, time ratio): 2048-2048-2048-10 on 512 rows 0.93 / 0.93
# in float32, 0.96 / 0.94 in float64; 1024-1024-1024-10 on 2048 rows 0.97 / 0.98 and
# 0.95 / 0.96; 4096-4096-10 0.95 / 0.94. (1024 rows: float32 a further 0-6 % faster,
# float64 up to 8 % slower.)
PREDICT_BYTES = 512 * 1024
PREDICT_MIN_ROWS = 256
PREDICT_WIDE_ROWS = 512
# ... and fewer where a chunk's three buffers of the widest layer would take more
# than this (a 1-2000000-1 net took 7.6 GiB to predict)
PREDICT_MAX_BYTES = 64 << 20

# A predict (or evaluate) chunk of at most this many rows runs each layer as
# hand-written GEMV loops (the Cython backend's kernels/_gemv.h: W's rows streamed
# once per tile of up to 4 rows, the outputs kept in registers) instead of a BLAS
# call, whose set-up and thread hand-off dominate a 1-row predict. Measured on
# 784-256-128-10 (AVX-512, OpenBLAS with 2 threads and with 1), loops vs BLAS: 1 row
# 7.6 vs 10-14 us in float32 (22 vs 32 in float64); 2 and 4 rows within 15 % either
# way; 3, 5, 6 and 8 rows 1.2-4x faster in float32 and 0.9-1.7x in float64; 12 and
# 16 rows slower in float64 (0.7-1.0x): so up to 8.
PREDICT_SMALL_ROWS = 8

# predict converts (and scales) an X that is not already C-contiguous in the model's
# dtype this many bytes of float64 rows at a time, so that a float64 DataFrame scored by
# a float32 model is never copied whole (10 million rows of 20 features took 0.8 GB more,
# 3 GB with input scaling). Large enough that the per-block call costs nothing.
CONVERT_BYTES = 16 << 20


def convert_rows(net, dtype):
    """Rows of X that predict converts at a time (see CONVERT_BYTES): a multiple of
    :func:`predict_rows`, so that the blocks are cut where the chunks are and the
    outputs are those of converting X whole, bit for bit."""
    chunk = predict_rows(net, dtype)
    return chunk * max(1, CONVERT_BYTES // (8 * net.input_dim * chunk))


def fused_output(loss):
    """True when ``loss`` (a :class:`fastmlp.losses.Loss` row) and its output
    activation fuse: the loss row names the activation it pairs with
    (softmax + cross_entropy, sigmoid + binary_cross_entropy), whose Jacobian
    cancels against the loss's, so the loss kernel gives dE/dz of the output layer
    directly and the output layer's activation derivative is skipped."""
    return loss.output is not None


def train_rows(rows, net, dtype):
    """Rows of the training workspace of ``net`` (a :class:`fastmlp.network.Network`) in
    ``dtype`` for batches of ``rows`` rows: min(rows, TRAIN_ROWS, the rows that fit
    TRAIN_BYTES), at least 1. Every backend chunks a batch by it (the reference too, so
    that their losses add up over the same chunks)."""
    row_bytes = net.workspace_row_elements() * np.dtype(dtype).itemsize
    return max(1, min(int(rows), TRAIN_ROWS, TRAIN_BYTES // row_bytes))


def predict_rows(net, dtype):
    """Rows per predict/evaluate chunk for ``net`` in ``dtype``: PREDICT_BYTES of its
    widest layer's outputs when that is at least PREDICT_MIN_ROWS rows, else
    PREDICT_WIDE_ROWS, or as many as fit PREDICT_MAX_BYTES in the three widest-layer
    buffers a chunk uses, or CONVERT_BYTES of float64 inputs, whichever is fewest (at
    least 1)."""
    widest_bytes = np.dtype(dtype).itemsize * int(net.dims[1:].max())
    rows = PREDICT_BYTES // widest_bytes
    rows = rows if rows >= PREDICT_MIN_ROWS else PREDICT_WIDE_ROWS
    # A chunk is also the least predict converts of an X in another dtype or layout
    # (convert_rows), so no more rows than CONVERT_BYTES of float64 inputs: sized by
    # its outputs alone, a 784-1 net's chunk was 131,072 rows, and a float64 X was
    # converted 411 MB at a time.
    return max(1, min(rows, PREDICT_MAX_BYTES // (3 * widest_bytes),
                      CONVERT_BYTES // (8 * int(net.input_dim))))


def buffers_in_use(state):
    """Rows of ``state.buffers`` (an :class:`fastmlp.optimizers.OptimizerState`) that its
    update reads and writes: plain SGD 0, momentum 1 (v), Adam 2 (m and v). Only those
    can go non-finite, so only those are checked and backed up for a rollback (the
    Numba and Cython kernels write the same rule as ``_buffers_in_use``/``buffers_in_use``)."""
    if state.code != SGD_CODE:
        return 2
    return 1 if float(state.hyper[MOMENTUM]) != 0 else 0


def sgd_fold_rows(state):
    """The largest batch (rows) whose plain SGD update folds into the weight GEMM,
    0 for never; ``state`` an :class:`fastmlp.optimizers.OptimizerState`.

    Folding means the backward pass updates W <- d W - lr x^T delta in the GEMM
    that would have formed dE/dW (b and alpha likewise), so the gradient is never
    written and no update pass follows (train steps 5-25 % faster on
    784-256-128-10). It needs:
    * SGD without momentum: a momentum step is v = mu v + g, which needs g formed;
    * weight decay is folded, not refused: theta - lr (g + wd theta) =
      (1 - lr wd) theta - lr g, so it is the GEMM's beta d = 1 - lr wd, exact up
      to rounding (refusing it, as the Cython kernels once did, made SGD with
      weight decay pay a gradient pass and an update pass: 655 -> 389 us per
      784-256-128-10 step of 64 rows once folded);
    * the batch in one chunk (<= TRAIN_ROWS rows): a batch processed in chunks
      must accumulate its whole gradient before theta may change;
    * no per-layer gradient norms asked for (they need dE/dW formed): the
      kernels check that one per call, as it is an argument of the call.
    The kernels fold a batch of n rows when n <= this and no norms are asked for.
    The optimiser's kind and momentum are read once, when the backend is built
    (a Model never changes them; set_state restores buffers and step only).
    """
    plain = state.code == SGD_CODE and float(state.hyper[MOMENTUM]) == 0
    return TRAIN_ROWS if plain else 0

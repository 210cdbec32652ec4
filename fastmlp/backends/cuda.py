"""The ``"cuda"`` backend: the model's parameters, optimiser state and workspaces on an
NVIDIA GPU, through numba-cuda (``pip install fastmlp[cuda]``).

An adaptor like :mod:`fastmlp.backends.numba`: it walks the layers on the host and
launches the general path's kernels (:mod:`fastmlp.kernels.cuda_layers`: a tiled GEMM
with the bias + activation, or dE/df -> delta, in its epilogue; the loss and output
gradient in one kernel per row block; column reductions; one optimiser kernel over
the flat parameters). Networks the fused kernels serve go there instead
(:mod:`fastmlp.kernels.cuda_fused`; the switches ``FUSED`` and ``TINY`` below, or the
constructor's ``fused`` and ``tiny``, turn them off):

* every layer <= 128 units (``supports_fused``): train_step, train_step_checked,
  train_epoch, train_epochs, loss_and_gradient, predict and evaluate run the fused
  narrow kernels (:class:`FusedStep`: forward, loss, backward and the weight-gradient
  reduction of a tile of rows in one kernel, the optimiser in a second);
* a tiny network whose batch fits one block (``supports_tiny``): train_epoch and
  train_epochs run whole epochs in ONE launch (:class:`TinyEpochs`), when the training
  set is on the device and no gradient norms are asked for;
* otherwise (and train_epoch with ``norms``, which the fused kernels do not form) the
  general path. Each call takes one path for a given network and batch size, so
  train_epochs is bit for bit k train_epoch calls, and train_step_checked train_step.

Where the data live:

* theta, the optimiser buffers and the hyper-parameters are copied to the device when
  the backend is built and stay there. The host arrays given to ``__init__`` (which the
  Model holds) are made current by :meth:`CudaBackend.pull` (a copy only when the device
  is newer); after the Model writes them it calls :meth:`CudaBackend.push`. Reading
  ``backend.theta`` or ``backend.state`` pulls and marks the device stale, so code that
  edits the arrays it got from there (tests do) is pushed before the next kernel.
  ``state.step`` is counted on the host, which knows how many steps every call takes:
  the general path's kernels get the step number as an argument; the fused kernels
  advance a device copy (``_d_step``) themselves, which is refreshed from the host
  before a fused launch whenever the host count moved without it (push, the general
  path, a rollback).
* X and T may be NumPy arrays (copied chunk by chunk into the workspace) or device
  arrays (anything with ``__cuda_array_interface__``, and the simulator's arrays), read
  where they are. :meth:`CudaBackend.to_device` copies a training set once (fit calls
  it once per fit) unless it exceeds ``DEVICE_BUDGET_BYTES``: then it stays on the host
  and every batch is gathered there and streamed.
* Orders (int64 (k, n)) are copied to the device once per call; batches are gathered
  on the device from them.

Synchronisation: train_step returns its loss (one copy back per step), train_epoch one
per epoch (the fused step: its batches' losses in one copy), train_epochs one per epoch
(its loss and the finiteness flag; the tiny kernel: one per call).

Threads: predict, evaluate and loss_and_gradient each take a workspace (or, fused, a
staging area for host data) no other call holds (a list of spares, as the Numba backend
does) and only read theta; FusedStep serialises its own shared partials.
"""
from __future__ import annotations

import importlib.util
import math

import numpy as np

if importlib.util.find_spec("numba_cuda") is None:
    raise ImportError("numba-cuda is not installed: pip install fastmlp[cuda]")
try:
    from numba import cuda
except ImportError as exc:  # numba itself missing or broken
    raise ImportError(f"numba-cuda does not import ({exc}): pip install fastmlp[cuda]") from None


def _unusable():
    """Why no GPU can be used here (a short sentence), or None when one can."""
    try:
        if cuda.is_available():
            return None
        cuda.detect()   # prints nothing useful here; the exception says why
        return "no CUDA GPU was found"
    except Exception as exc:  # CudaSupportError and the driver's own errors
        text = " ".join(str(exc).split())
        if "driver library cannot be found" in text:
            return "the CUDA driver library cannot be found (no NVIDIA driver)"
        if "no CUDA-capable device" in text or "CUDA_ERROR_NO_DEVICE" in text:
            return "no CUDA GPU was found"
        return text or type(exc).__name__


_WHY = _unusable()
if _WHY is not None:
    raise ImportError(_WHY)

from .. import rules  # noqa: E402
from ..codes import (LAYER_ACT, LAYER_ALPHA, LAYER_F, LAYER_FIELDS, LAYER_Z,  # noqa: E402
                     MSE, PLAN_HEAD, PLAN_WS_SIZE, PRELU, SOFTMAX, WS_D0, WS_D1, WS_GRAD,
                     WS_TB, WS_XB)
from ..kernels import cuda_fused as cf  # noqa: E402
from ..kernels import cuda_layers as cl  # noqa: E402
from ..kernels import cuda_math  # noqa: E402
from .reference import check_batch_size, check_losses, check_norms  # noqa: E402

# A training set larger than this (X and T together, bytes) is not copied to the
# device: fit streams it batch by batch from the host instead. Set it before fit.
DEVICE_BUDGET_BYTES = 2 << 30

# The fused kernels for the networks they support (see the module docstring): FUSED
# False sends every network down the general path; TINY False keeps the fused step but
# not the whole-epoch tiny kernel. Read when a backend is built (the constructor's
# ``fused`` and ``tiny`` arguments override them for one backend): tests run every path
# on the same networks.
FUSED = True
TINY = True

# slots of a workspace's float64 `sums`: the batch's loss, the epoch's
_BATCH, _EPOCH = 0, 1

# Threads per block of the fused kernels: their defaults on a GPU; the simulator runs
# every thread as a Python thread, so it gets one warp (the same code and loops).
_FUSED_THREADS = 32 if cuda_math.simulated() else cf.DEFAULT_THREADS


def is_device_array(x):
    """True for a GPU array: anything with ``__cuda_array_interface__`` (CuPy,
    PyTorch CUDA tensors, Numba device arrays) or a simulator device array."""
    return hasattr(x, "__cuda_array_interface__") or bool(getattr(x, "__cuda_ndarray__", False))


def as_device(x):
    """A Numba device array over the GPU array ``x``, no copy."""
    return x if getattr(x, "__cuda_ndarray__", False) else cuda.as_cuda_array(x)


def _flat(x):
    """A 1-D view of a C-contiguous device array (the kernels' argument form)."""
    return x.reshape(x.size) if len(x.shape) != 1 else x


class _Work:
    """One workspace: the plan's flat buffer for ``cap`` rows on the device (z, f of
    every layer, the two delta buffers, staged X and T rows, the gradient), the
    per-row losses and the float64 sums and int32 flags of the reductions."""

    def __init__(self, net, dtype, cap):
        self.cap = cap
        plan = net.plan(cap)
        self.plan = plan
        self.layers = [tuple(int(v) for v in row)
                       for row in plan[PLAN_HEAD:].reshape(-1, LAYER_FIELDS)]
        self.xb, self.tb = int(plan[WS_XB]), int(plan[WS_TB])
        self.d0, self.d1, self.grad = int(plan[WS_D0]), int(plan[WS_D1]), int(plan[WS_GRAD])
        self.ws = cuda.device_array(int(plan[PLAN_WS_SIZE]), dtype=dtype)
        self.rows = cuda.device_array(cap, dtype=np.float64)
        self.sums = cuda.to_device(np.zeros(4))
        self.flags = cuda.to_device(np.zeros(2, dtype=np.int32))


class _Staging:
    """Device room for ``cap`` rows of host data on the fused path: X (cap, inputs),
    T and outputs (cap, outputs), the float64 losses of ``slots`` batches, the gradient."""

    def __init__(self, net, dtype, cap, slots=1):
        self.cap, self.slots = cap, slots
        self.X = cuda.device_array((cap, net.input_dim), dtype=dtype)
        self.T = cuda.device_array((cap, net.output_dim), dtype=dtype)
        self.out = cuda.device_array((cap, net.output_dim), dtype=dtype)
        self.losses = cuda.device_array(max(slots, 1), dtype=np.float64)
        self.grad = cuda.device_array(net.n_params, dtype=dtype)

    def fits(self, cap, slots=1):
        return self.cap >= cap and self.slots >= slots

    def put(self, X, T, rows):
        """(X, T) of ``rows`` host rows copied in: their device views (T None: X only)."""
        x = self.X[:rows]
        x.copy_to_device(np.ascontiguousarray(X))
        if T is None:
            return x, None
        t = self.T[:rows]
        t.copy_to_device(np.ascontiguousarray(T))
        return x, t


class CudaBackend:
    """Backend contract (see fastmlp.backends) on an NVIDIA GPU.

    ``fused``, ``tiny``: use the fused step / the tiny-network epoch kernel where they
    apply (None: the module's ``FUSED`` / ``TINY``; tiny needs fused)."""

    name = "cuda"
    # How the Model recognises and reads a GPU array (predict's device path).
    is_device_array = staticmethod(is_device_array)
    as_device = staticmethod(as_device)

    def __init__(self, net, dtype, theta, state, fused=None, tiny=None):
        self.net = net
        self.dtype = np.dtype(dtype)
        self._theta, self._state = theta, state
        self._k = cl.kernels(self.dtype)
        self._fparams = [self.dtype.type(p) for p in net.act_params]
        self._loss_code = int(net.loss.code)
        self._fused = net.loss.output is not None
        self._n_params = net.n_params
        self._predict_rows = rules.predict_rows(net, self.dtype)
        self._d_theta = cuda.to_device(theta)
        self._d_bufs = cuda.to_device(state.buffers)
        self._d_hyper = cuda.to_device(state.hyper)
        self._d_step = cuda.to_device(state.step)   # the fused kernels' step count
        self._step_moved = False     # the host's step count moved without _d_step
        use_fused = FUSED if fused is None else bool(fused)
        self._use_tiny = use_fused and (TINY if tiny is None else bool(tiny))
        self.fused = use_fused and cf.supports_fused(net, self.dtype)
        self._narrow = cf.FusedStep(net, self.dtype, threads=_FUSED_THREADS) if self.fused else None
        self._tiny = {}              # batch size -> TinyEpochs (or None: not tiny)
        self._ident = cuda.to_device(np.arange(1, dtype=np.int64))  # rows 0.. of staged data
        self._stage_train = None     # the trainers' _Staging
        self._stages = []            # readers' _Stagings not in use right now
        self._device_newer = False   # kernels changed theta/buffers since the last pull
        self._host_newer = False     # host arrays were handed out: push before a kernel
        self._backup = None          # train_step_checked's (3, n_params), on first use
        self._flag = None            # the trainers' finiteness flag, on first use
        self._train = None           # the trainers' _Work
        self._spare = []             # readers' _Works not in use right now

    # -- the host copy -----------------------------------------------------------------
    @property
    def theta(self):
        """The host theta, made current; the device is pushed before the next kernel."""
        self.pull()
        self._host_newer = True
        return self._theta

    @property
    def state(self):
        """The host optimiser state, made current (as ``theta``)."""
        self.pull()
        self._host_newer = True
        return self._state

    def pull(self):
        """Make the host theta and state.buffers current (a copy only if the device is newer)."""
        if self._device_newer:
            self._d_theta.copy_to_host(self._theta)
            self._d_bufs.copy_to_host(self._state.buffers)
            self._device_newer = False

    def push(self):
        """The host theta and state were written: copy them to the device."""
        self._d_theta.copy_to_device(self._theta)
        self._d_bufs.copy_to_device(self._state.buffers)
        self._d_hyper.copy_to_device(self._state.hyper)
        self._d_step.copy_to_device(self._state.step)
        self._device_newer = self._host_newer = self._step_moved = False

    def _ready(self):
        """Before any kernel: the device holds the latest parameters."""
        if self._host_newer:
            self.push()

    def _ready_fused(self):
        """Before a fused kernel that trains: also the device step count is the host's."""
        self._ready()
        if self._step_moved:
            self._d_step.copy_to_device(self._state.step)
            self._step_moved = False

    def _steps_taken(self, k):
        """k fused optimiser steps ran (they advanced _d_step): count them on the host."""
        self._state.step[0] += k
        self._device_newer = True

    # -- data ----------------------------------------------------------------------------
    def to_device(self, X, T):
        """(X, T) on the device, copied once (device arrays pass through); the host arrays
        themselves when they exceed DEVICE_BUDGET_BYTES, to be streamed batch by batch."""
        if is_device_array(X) and is_device_array(T):
            return as_device(X), as_device(T)
        if X.nbytes + T.nbytes > DEVICE_BUDGET_BYTES:
            return X, T
        return cuda.to_device(np.ascontiguousarray(X)), cuda.to_device(np.ascontiguousarray(T))

    def all_finite(self, X):
        """True when every element of X (a device or host array) is finite."""
        if not is_device_array(X):
            return bool(np.isfinite(X).all())
        x = _flat(as_device(X))
        flags = cuda.to_device(np.zeros(1, dtype=np.int32))
        if x.size:
            self._k.flag_bad[cl.rows(self._k, x.size)](x, 0, x.size, 0, flags, 0)
        return not flags.copy_to_host()[0]

    def _source(self, X, T=None):
        """(device flat X or None, device flat T or None): device inputs as kernel args."""
        xd = _flat(as_device(X)) if is_device_array(X) else None
        td = _flat(as_device(T)) if T is not None and is_device_array(T) else None
        return xd, td

    def _stage(self, w, X, T, xd, td, start, rows, order=None, o_start=0, host_idx=None):
        """(A, a_off, Tarr, t_off) of ``rows`` rows for the kernels: rows start.. of X/T
        as they lie on the device, or gathered there through ``order`` (device int64),
        or copied (host_idx: gathered on the host first) into the workspace."""
        n_in, n_out = self.net.input_dim, self.net.output_dim
        if xd is not None and order is None:
            return xd, start * n_in, td, start * n_out
        if xd is not None:
            k = self._k
            k.gather_rows[cl.rows(self._k, rows * n_in)](order, o_start, rows, xd,
                                                                n_in, w.ws, w.xb)
            if T is not None:
                k.gather_rows[cl.rows(self._k, rows * n_out)](order, o_start, rows, td,
                                                                     n_out, w.ws, w.tb)
            return w.ws, w.xb, w.ws, w.tb
        if host_idx is not None:
            xs, ts = X[host_idx], (T[host_idx] if T is not None else None)
        else:
            xs, ts = X[start:start + rows], (T[start:start + rows] if T is not None else None)
        w.ws[w.xb:w.xb + rows * n_in].copy_to_device(np.ascontiguousarray(xs).reshape(-1))
        if ts is not None:
            w.ws[w.tb:w.tb + rows * n_out].copy_to_device(np.ascontiguousarray(ts).reshape(-1))
        return w.ws, w.xb, w.ws, w.tb

    # -- workspaces ------------------------------------------------------------------------
    def _reader(self, rows):
        try:
            w = self._spare.pop()
        except IndexError:
            w = None
        if w is None or w.cap < rows:
            w = _Work(self.net, self.dtype, rows)
        return w

    def _trainer(self, rows):
        cap = rules.train_rows(rows, self.net, self.dtype)
        if self._train is None or self._train.cap < cap:
            self._train = _Work(self.net, self.dtype, cap)
        return self._train

    # -- the passes ------------------------------------------------------------------------
    def _forward(self, w, A, a_off, rows, keep_z=True, out=None, o_off=0):
        """Every layer's f (and z when keep_z) into the workspace for ``rows`` rows of A;
        the output layer's f into ``out`` at o_off instead when out is given."""
        k, theta = self._k, self._d_theta
        last = len(w.layers) - 1
        for l, (n_in, n_out, code, wo, bo, ao, zo, fo, *_) in enumerate(w.layers):
            into_out = l == last and out is not None
            if code == SOFTMAX:   # z, then softmax_rows
                C, c_off, z_off = w.ws, zo, -1
            else:
                C, c_off = (out, o_off) if into_out else (w.ws, fo)
                z_off = zo if keep_z else -1
            cl.gemm(k, rows, n_out, n_in, A, a_off, n_in, 0, theta, wo, n_out, 0, C, c_off,
                    Z=w.ws, z_off=z_off, mode=cl.FORWARD, code=code, p=self._fparams[l],
                    theta=theta, bias_off=bo, alpha_off=ao)
            if code == SOFTMAX:
                F, f_off = (out, o_off) if into_out else (w.ws, fo)
                k.softmax_rows[cl.rows(self._k, rows)](rows, n_out, w.ws, zo, F, f_off)
            A, a_off = w.ws, fo

    def _loss(self, w, Tarr, t_off, rows, n, want_grad, accumulate, epoch_n=0):
        """Per-row losses of the forward pass just run, their sum / n into sums[_BATCH]
        (added when accumulate; also / epoch_n into sums[_EPOCH] when epoch_n), and, when
        want_grad, the output layer's delta (dE/df for prelu) into the workspace's d0."""
        k = self._k
        n_in, n_out, code, wo, bo, ao, zo, fo, *_ = w.layers[-1]
        gscale = self.dtype.type((2.0 if self._loss_code == MSE else 1.0) / n)
        k.loss_rows[cl.rows(self._k, rows)](
            rows, n_out, self._loss_code, self._fused, code, self._fparams[-1], w.ws, zo, w.ws, fo,
            Tarr, t_off, w.ws, w.d0, gscale, want_grad, w.rows)
        k.reduce_sum[1, self._k.reduce_threads](w.rows, 0, rows, 0, w.sums, _BATCH, 1.0 / n,
                                           accumulate, _EPOCH if epoch_n else -1,
                                           1.0 / epoch_n if epoch_n else 0.0)

    def _backward(self, w, A0, a0_off, rows, accumulate):
        """The gradient of the rows whose forward pass and loss just ran, into the
        workspace's gradient (added when accumulate)."""
        k, theta, g = self._k, self._d_theta, w.grad
        cur, nxt = w.d0, w.d1
        for l in range(len(w.layers) - 1, -1, -1):
            n_in, n_out, code, wo, bo, ao, zo, fo, *_ = w.layers[l]
            k.col_grad[cl.blocks(n_out, k.col_width), (k.col_width, k.col_lanes)](
                rows, n_out, w.ws, cur, w.ws, zo, theta, ao, w.ws, g + bo,
                g + ao if ao >= 0 else -1, accumulate)
            A, a_off = (A0, a0_off) if l == 0 else (w.ws, w.layers[l - 1][LAYER_F])
            cl.gemm(k, n_in, n_out, rows, A, a_off, n_in, 1, w.ws, cur, n_out, 0, w.ws, g + wo,
                    accumulate=accumulate)
            if l > 0:
                below = w.layers[l - 1]
                code_b = below[LAYER_ACT]
                # dE/df of the layer below, turned into its delta in the epilogue
                # (prelu's col_grad needs dE/df itself)
                cl.gemm(k, rows, n_in, n_out, w.ws, cur, n_out, 0, theta, wo, n_out, 1, w.ws, nxt,
                        Z=w.ws, z_off=below[LAYER_Z], f_off=below[LAYER_F],
                        mode=cl.STORE if code_b == PRELU else cl.BACKWARD, code=code_b,
                        p=self._fparams[l - 1], theta=theta, alpha_off=below[LAYER_ALPHA])
                cur, nxt = nxt, cur

    def _gradient(self, w, X, T, xd, td, n, order=None, o_start=0, host_order=None,
                  epoch_n=0, norms=None):
        """Loss and gradient of n rows (rows 0.. of X, or order[o_start:o_start + n]) into
        w.sums[_BATCH] and the workspace's gradient, in chunks of w.cap rows."""
        for c, start in enumerate(range(0, n, w.cap)):
            rows = min(w.cap, n - start)
            idx = None if host_order is None else host_order[o_start + start:o_start + start + rows]
            A, a_off, Tarr, t_off = self._stage(w, X, T, xd, td, start, rows, order,
                                                o_start + start, idx)
            self._forward(w, A, a_off, rows)
            self._loss(w, Tarr, t_off, rows, n, 1, c > 0, epoch_n)
            self._backward(w, A, a_off, rows, c > 0)
        if norms is not None:
            for l, (n_in, n_out, _, wo, *_) in enumerate(w.layers):
                self._k.reduce_sum[1, self._k.reduce_threads](w.ws, w.grad + wo, n_in * n_out, 1,
                                                         norms, l, 1.0, 1, -1, 0.0)

    def _update(self, w):
        """One optimiser step with the workspace's gradient; state.step counts it."""
        state = self._state
        state.step[0] += 1
        self._step_moved = True
        p = self._n_params
        self._k.optimizer[cl.rows(self._k, p)](p, int(state.code), self._d_hyper,
                                                        int(state.step[0]), self._d_theta,
                                                        w.ws, w.grad, self._d_bufs)
        self._device_newer = True

    # -- the fused paths -------------------------------------------------------------------
    def _rows(self, n):
        """Device int64 row indices 0, 1, ... (at least n): staged or whole data in order."""
        ident = self._ident
        if len(ident) < n:
            ident = self._ident = cuda.to_device(np.arange(max(n, 2 * len(ident)),
                                                           dtype=np.int64))
        return ident

    def _staging(self, cap, slots=1):
        """A reader's _Staging for cap rows (put it back on self._stages after use)."""
        try:
            st = self._stages.pop()
        except IndexError:
            st = None
        return st if st is not None and st.fits(cap, slots) else _Staging(
            self.net, self.dtype, cap, slots)

    def _train_staging(self, cap, slots=1):
        """The trainers' _Staging, grown to cap rows and slots batch losses."""
        st = self._stage_train
        if st is None or not st.fits(cap, slots):
            cap, slots = (cap, slots) if st is None else (max(cap, st.cap), max(slots, st.slots))
            st = self._stage_train = _Staging(self.net, self.dtype, cap, slots)
        return st

    def _tiny_for(self, batch_size):
        """The TinyEpochs launcher for batches of batch_size rows, or None: not tiny."""
        if batch_size not in self._tiny:
            tiny = (cf.TinyEpochs(self.net, self.dtype, batch_size)
                    if cf.supports_tiny(self.net, batch_size, self.dtype) else None)
            self._tiny[batch_size] = tiny
        return self._tiny[batch_size]

    def _tiny_epochs(self, X, T, orders, batch_size, tol, losses, in_use):
        """train_epochs on the tiny kernel: ONE launch, (epochs done, status); losses[e]
        written for every epoch that ran."""
        tiny = self._tiny_for(batch_size)
        k, n = orders.shape
        d_orders = cuda.to_device(np.ascontiguousarray(orders, dtype=np.int64))
        d_losses = cuda.device_array(k, dtype=np.float64)
        d_status = cuda.device_array(2, dtype=np.int64)
        self._ready_fused()
        tiny.run(self._d_theta, self._d_bufs, self._d_hyper, self._d_step, int(self._state.code),
                 in_use, as_device(X), as_device(T), d_orders, d_losses, d_status, tol)
        done, status = (int(v) for v in d_status.copy_to_host())
        ran = done + (status == 2)   # the bad epoch ran to its end
        losses[:ran] = d_losses[:ran].copy_to_host()
        self._steps_taken(ran * -(-n // batch_size))
        return done, status

    def _fused_epoch(self, X, T, order, o_start, host_order, n, batch_size):
        """One epoch on the fused step over n rows in the order order[o_start:] (device)
        or host_order (X, T on the host: each batch gathered there and staged); returns
        sum(batch loss * batch rows) / n, read back once."""
        n_batches = -(-n // batch_size)
        st = self._train_staging(batch_size if host_order is not None else 1, n_batches)
        self._ready_fused()
        code = int(self._state.code)
        for b in range(n_batches):
            start = b * batch_size
            rows = min(batch_size, n - start)
            if host_order is None:
                x, t, idx, first = X, T, order, o_start + start
            else:
                pick = host_order[o_start + start:o_start + start + rows]
                (x, t), idx, first = st.put(X[pick], T[pick], rows), self._rows(rows), 0
            self._narrow.train(self._d_theta, self._d_bufs, self._d_hyper, self._d_step, code,
                               x, t, idx, first, rows, st.losses, b)
        self._steps_taken(n_batches)
        batch_losses = st.losses[:n_batches].copy_to_host()
        total = 0.0
        for b in range(n_batches):
            total += batch_losses[b] * min(batch_size, n - b * batch_size)
        return total / n

    def _fused_train_step(self, X, T):
        n = len(X)
        st = self._train_staging(1 if is_device_array(X) else n)
        x, t = ((as_device(X), as_device(T)) if is_device_array(X) and is_device_array(T)
                else st.put(X, T, n))
        self._ready_fused()
        self._narrow.train(self._d_theta, self._d_bufs, self._d_hyper, self._d_step,
                           int(self._state.code), x, t, self._rows(n), 0, n, st.losses, 0)
        self._steps_taken(1)
        return float(st.losses[:1].copy_to_host()[0])

    def _fused_loss_and_gradient(self, X, T, grad):
        n = len(X)
        on_device = is_device_array(X) and is_device_array(T)
        st = self._staging(1 if on_device else n)
        try:
            x, t = (as_device(X), as_device(T)) if on_device else st.put(X, T, n)
            self._narrow.gradient(self._d_theta, x, t, self._rows(n), 0, n, st.grad, st.losses)
            st.grad.copy_to_host(grad)
            return float(st.losses[:1].copy_to_host()[0])
        finally:
            self._stages.append(st)

    def _fused_predict(self, X, out):
        n, k_out, chunk = len(X), self.net.output_dim, self._predict_rows
        xd = as_device(X) if is_device_array(X) else None
        if out is None:
            out = (cuda.device_array((n, k_out), dtype=self.dtype) if xd is not None
                   else np.empty((n, k_out), dtype=self.dtype))
        od = as_device(out) if is_device_array(out) else None
        st = None if xd is not None and od is not None else self._staging(min(max(n, 1), chunk))
        try:
            for start in range(0, n, chunk):
                rows = min(chunk, n - start)
                x = (xd[start:start + rows] if xd is not None
                     else st.put(X[start:start + rows], None, rows)[0])
                o = od[start:start + rows] if od is not None else st.out[:rows]
                self._narrow.predict(self._d_theta, x, o)
                if od is None:
                    o.copy_to_host(out[start:start + rows])
            if od is not None:
                cuda.synchronize()
        finally:
            if st is not None:
                self._stages.append(st)
        return out

    def _fused_evaluate(self, X, T):
        """The mean loss, chunk by chunk as predict (the same chunks for host and device
        data, so both give the same bits): sum(chunk mean * (chunk rows / n))."""
        n, chunk = len(X), self._predict_rows
        on_device = is_device_array(X) and is_device_array(T)
        st = self._staging(1 if on_device else min(n, chunk))
        try:
            if n <= chunk:
                x, t = (as_device(X), as_device(T)) if on_device else st.put(X, T, n)
                self._narrow.evaluate(self._d_theta, x, t, st.losses)
                return float(st.losses[:1].copy_to_host()[0])
            total = 0.0
            for start in range(0, n, chunk):
                rows = min(chunk, n - start)
                if on_device:
                    x, t = as_device(X)[start:start + rows], as_device(T)[start:start + rows]
                else:
                    x, t = st.put(X[start:start + rows], T[start:start + rows], rows)
                self._narrow.evaluate(self._d_theta, x, t, st.losses)
                # the chunk's share of the mean, as the reference adds each chunk's sum / n
                # (chunk mean * rows could overflow where the mean does not)
                total += float(st.losses[:1].copy_to_host()[0]) * (rows / n)
            return total
        finally:
            self._stages.append(st)

    # -- the contract ------------------------------------------------------------------------
    def predict(self, X, out=None):
        self._ready()
        if self.fused:
            return self._fused_predict(X, out)
        xd, _ = self._source(X)
        n, k_out = len(X), self.net.output_dim
        if out is None:
            out = (cuda.device_array((n, k_out), dtype=self.dtype) if xd is not None
                   else np.empty((n, k_out), dtype=self.dtype))
        on_device = is_device_array(out)
        od = _flat(as_device(out)) if on_device else None
        chunk = self._predict_rows
        w = self._reader(min(max(n, 1), chunk))
        try:
            for start in range(0, n, chunk):
                rows = min(chunk, n - start)
                A, a_off, _, _ = self._stage(w, X, None, xd, None, start, rows)
                if on_device:
                    self._forward(w, A, a_off, rows, keep_z=False, out=od, o_off=start * k_out)
                else:
                    self._forward(w, A, a_off, rows, keep_z=False)
                    f = w.layers[-1][LAYER_F]
                    w.ws[f:f + rows * k_out].copy_to_host(out[start:start + rows].reshape(-1))
            if on_device:
                cuda.synchronize()
        finally:
            self._spare.append(w)
        return out

    def evaluate(self, X, T):
        self._ready()
        n, chunk = len(X), self._predict_rows
        if n == 0:
            return 0.0
        if self.fused:
            return self._fused_evaluate(X, T)
        xd, td = self._source(X, T)
        w = self._reader(min(n, chunk))
        try:
            for c, start in enumerate(range(0, n, chunk)):
                rows = min(chunk, n - start)
                A, a_off, Tarr, t_off = self._stage(w, X, T, xd, td, start, rows)
                self._forward(w, A, a_off, rows)
                self._loss(w, Tarr, t_off, rows, n, 0, c > 0)
            return float(w.sums.copy_to_host()[_BATCH])
        finally:
            self._spare.append(w)

    def loss_and_gradient(self, X, T, grad):
        self._ready()
        n = len(X)
        if self.fused and n:
            return self._fused_loss_and_gradient(X, T, grad)
        xd, td = self._source(X, T)
        w = self._reader(rules.train_rows(n, self.net, self.dtype))
        try:
            self._gradient(w, X, T, xd, td, n)
            loss = float(w.sums.copy_to_host()[_BATCH])
            w.ws[w.grad:w.grad + self._n_params].copy_to_host(grad)
            return loss
        finally:
            self._spare.append(w)

    def train_step(self, X, T):
        self._ready()
        if self.fused and len(X):
            return self._fused_train_step(X, T)
        xd, td = self._source(X, T)
        w = self._trainer(len(X))
        self._gradient(w, X, T, xd, td, len(X))
        self._update(w)
        return float(w.sums.copy_to_host()[_BATCH])

    def train_step_checked(self, X, T):
        self._ready()
        unit = self.net.loss.output is not None
        if not self._inputs_ok(X, T, unit):
            return float("nan"), 1
        state = self._state
        in_use = rules.buffers_in_use(state)
        if self._backup is None:
            self._backup = cuda.device_array((3, self._n_params), dtype=self.dtype)
        step, newer = int(state.step[0]), self._device_newer
        self._backup[0].copy_to_device(self._d_theta)
        if in_use:
            self._backup[1:1 + in_use].copy_to_device(self._d_bufs[:in_use])
        loss = self.train_step(X, T)
        if math.isfinite(loss) and self._params_finite(in_use):
            return loss, 0
        self._d_theta.copy_to_device(self._backup[0])
        if in_use:
            self._d_bufs[:in_use].copy_to_device(self._backup[1:1 + in_use])
        state.step[0] = step
        self._step_moved = True   # a fused step advanced the device's count too
        self._device_newer = newer
        return loss, 2

    def _train_flag(self):
        """The trainers' int32 (1,) flag on the device, zeroed (allocated once)."""
        if self._flag is None:
            self._flag = cuda.device_array(1, dtype=np.int32)
        self._flag.copy_to_device(np.zeros(1, dtype=np.int32))
        return self._flag

    def _inputs_ok(self, X, T, unit):
        """X finite, and T finite (or, unit, in [0, 1]), on the host or the device."""
        if not is_device_array(X):
            with np.errstate(invalid="ignore"):
                return bool(np.isfinite(X).all() and (((T >= 0) & (T <= 1)).all() if unit
                                                      else np.isfinite(T).all()))
        flags = self._train_flag()
        for arr, in_unit in ((X, 0), (T, int(unit))):
            a = _flat(as_device(arr))
            if a.size:
                self._k.flag_bad[cl.rows(self._k, a.size)](a, 0, a.size, in_unit,
                                                                    flags, 0)
        return not flags.copy_to_host()[0]

    def _params_finite(self, in_use):
        """theta and the optimiser buffers in use are finite (one flag read back)."""
        flags = self._train_flag()
        k, p = self._k, self._n_params
        k.flag_bad[cl.rows(self._k, p)](self._d_theta, 0, p, 0, flags, 0)
        if in_use:
            b = _flat(self._d_bufs)
            k.flag_bad[cl.rows(self._k, in_use * p)](b, 0, in_use * p, 0, flags, 0)
        return not flags.copy_to_host()[0]

    def _epoch(self, w, X, T, xd, td, order, o_start, host_order, n, batch_size, norms):
        """One epoch over n rows in the order order[o_start:] (device) or host_order;
        its loss accumulates in w.sums[_EPOCH] (zeroed here)."""
        w.sums.copy_to_device(np.zeros(4))
        for start in range(0, n, batch_size):
            rows = min(batch_size, n - start)
            self._gradient(w, X, T, xd, td, rows, order, o_start + start, host_order,
                           epoch_n=n, norms=norms)
            self._update(w)

    def _orders(self, X, orders):
        """(device orders or None, host orders or None): data on the device are gathered
        there; host data (streamed) are gathered on the host."""
        if is_device_array(X):
            return cuda.to_device(np.ascontiguousarray(orders, dtype=np.int64).reshape(-1)), None
        return None, np.ascontiguousarray(orders, dtype=np.int64).reshape(-1)

    def _training_data(self, X, T):
        """X and T as training reads them: on the device when they fit the budget."""
        if is_device_array(X) and is_device_array(T):
            return X, T
        return self.to_device(X, T)

    def train_epoch(self, X, T, perm, batch_size, norms=None):
        batch_size = check_batch_size(batch_size)
        if norms is not None:
            check_norms(norms, len(self.net.layers))
        self._ready()
        n = len(perm)
        if n == 0:
            return 0.0
        X, T = self._training_data(X, T)
        if norms is None:   # the fused kernels form no norms
            if self._use_tiny and is_device_array(X) and self._tiny_for(batch_size) is not None:
                loss = np.empty(1)
                self._tiny_epochs(X, T, np.reshape(perm, (1, n)), batch_size, -1.0, loss, 0)
                return float(loss[0])
            if self.fused:
                order, host_order = self._orders(X, perm)
                return self._fused_epoch(X, T, order, 0, host_order, n, batch_size)
        xd, td = self._source(X, T)
        order, host_order = self._orders(X, perm)
        w = self._trainer(min(batch_size, n))
        d_norms = None if norms is None else cuda.to_device(np.zeros(len(self.net.layers)))
        self._epoch(w, X, T, xd, td, order, 0, host_order, n, batch_size, d_norms)
        if d_norms is not None:
            norms += d_norms.copy_to_host()
        return float(w.sums.copy_to_host()[_EPOCH])

    def train_epochs(self, X, T, orders, batch_size, tol, losses):
        batch_size = check_batch_size(batch_size)
        k = len(orders)
        check_losses(losses, k)
        if k == 0:
            return 0, 0
        self._ready()
        n = orders.shape[1]
        X, T = self._training_data(X, T)
        in_use = rules.buffers_in_use(self._state)
        tiny = (n and self._use_tiny and is_device_array(X)
                and self._tiny_for(batch_size) is not None)
        if tiny:
            return self._tiny_epochs(X, T, orders, batch_size, tol, losses, in_use)
        xd, td = self._source(X, T)
        order, host_order = self._orders(X, orders)
        fused = self.fused and n
        w = None if fused else self._trainer(min(batch_size, max(n, 1)))
        for e in range(k):
            if fused:
                loss = self._fused_epoch(X, T, order, e * n, host_order, n, batch_size)
            else:
                self._epoch(w, X, T, xd, td, order, e * n, host_order, n, batch_size, None)
                loss = float(w.sums.copy_to_host()[_EPOCH]) if n else 0.0
            losses[e] = loss
            if not (math.isfinite(loss) and self._params_finite(in_use)):
                return e, 2
            if 0 <= tol and loss <= tol:
                return e + 1, 1
        return k, 0

# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, language_level=3
"""The ``"cython"`` backend: whole train steps, epochs and inference run in C with
the GIL released, and :class:`Engine`, their checked Python entry point.

The per-layer, loss and optimiser kernels are ``cdef inline`` fused-type
functions in the .pxd files beside this one (_layers, _losses, _optimizers,
_activations, _blas). Layout and maths are those of the NumPy reference
(fastmlp.backends.reference): theta is the flat parameter vector addressed by
``Network.offsets``; every array is row-major. Kernels never check sizes:
:class:`Engine` checks every array it is given before any of them runs.

Each kernel's docstring says which buffers it OVERWRITES and which it
ACCUMULATES into.
"""
import numpy as np

cimport numpy as cnp
from cpython.pythread cimport (NOWAIT_LOCK, WAIT_LOCK, PyThread_acquire_lock,
                               PyThread_allocate_lock, PyThread_free_lock,
                               PyThread_release_lock, PyThread_type_lock)
from cython cimport floating
from libc.stdint cimport int64_t
from libc.string cimport memcpy

from _blas cimport SMALL_GEMM, blas_gemm, gemm, small_gemm
from _codes cimport (BINARY_CROSS_ENTROPY, CROSS_ENTROPY, EPS, LR, MOMENTUM, MSE, N_HYPER,
                     PRELU, SGD_CODE, WEIGHT_DECAY, compiled_codes)
from _layers cimport activation_backward, bias_activation_forward, dense_backward, dense_forward
from _losses cimport loss_forward_backward
from _optimizers cimport optimizer_update

cnp.import_array()

SMALL_GEMM_FLOPS = SMALL_GEMM
# Every code as compiled in here, by its name in fastmlp.codes (tests compare them).
CODES = compiled_codes()


# -- which codes have kernels ------------------------------------------------------
# Asked of the kernels' own dispatch, once, on one element: an activation whose
# passes return 0, a loss whose value of zeros is finite, an optimiser whose
# update of zeros is finite. So the list of codes the Engine accepts is the
# dispatch itself, and an unknown code is refused before any kernel runs.

cdef int _MAX_CODE = 64
cdef bint _known_activation[64]
cdef bint _known_loss[64]
cdef bint _known_optimizer[64]


cdef void _probe_codes():
    cdef double z[1]
    cdef double f[1]
    cdef double one[1]
    cdef double theta[1]
    cdef double buf[2]
    cdef double h[N_HYPER]
    cdef double loss
    cdef int code, k
    for code in range(_MAX_CODE):
        z[0] = 0
        one[0] = 1
        _known_activation[code] = (
            bias_activation_forward(1, 1, z, z, code, <double>1, one, f) == 0
            and activation_backward(1, 1, one, z, f, code, <double>1, one, one, True) == 0)
        z[0] = 0
        loss = loss_forward_backward(1, 1, code, z, z, z, f, <double>1)
        _known_loss[code] = loss == loss  # not NaN
        theta[0] = 0
        buf[0] = buf[1] = 0
        for k in range(N_HYPER):
            h[k] = 0
        h[EPS] = 1
        optimizer_update(1, theta, z, buf, buf + 1, code, h, 1)
        _known_optimizer[code] = theta[0] == 0


_probe_codes()


def known_codes():
    """{"activation": [...], "loss": [...], "optimizer": [...]}: the codes whose
    kernels are compiled in here."""
    return {"activation": [c for c in range(_MAX_CODE) if _known_activation[c]],
            "loss": [c for c in range(_MAX_CODE) if _known_loss[c]],
            "optimizer": [c for c in range(_MAX_CODE) if _known_optimizer[c]]}


cdef inline bint _has(const bint* known, long code) noexcept:
    return 0 <= code < _MAX_CODE and known[code]


# -- whole network ---------------------------------------------------------------

cdef struct Net:
    int L
    int loss
    Py_ssize_t n_params
    const int64_t* dims      # (L + 1,)
    const int64_t* codes     # (L,)
    const double* params     # (L,)
    const int64_t* offsets   # (L, 3): W, b, alpha (-1 if none)
    const int64_t* cum       # (L + 1,): start of each layer's columns in the z/f buffers


cdef struct Work:
    Py_ssize_t cap           # rows the buffers hold
    void* z                  # (cap, cum[L]): every layer's x W + b
    void* f                  # (cap, cum[L]): every layer's output
    void* d0                 # (cap, widest layer): dE/df, then delta, of one layer
    void* d1                 # (cap, widest layer): the same for the layer below
    void* xb                 # (cap, inputs): a mini-batch gathered through perm
    void* tb                 # (cap, outputs)
    void* grad               # (n_params,)


cdef void network_forward(const Net* net, const Work* w, const floating* theta,
                          const floating* x, Py_ssize_t rows) noexcept nogil:
    """Every layer's z and f for rows (<= w.cap) of x, OVERWRITTEN in w.z and w.f."""
    cdef int i
    cdef Py_ssize_t n_in, n_out
    cdef const floating* a = x
    cdef floating* z
    cdef floating* f
    cdef const int64_t* off
    for i in range(net.L):
        n_in, n_out = net.dims[i], net.dims[i + 1]
        off = net.offsets + 3 * i
        z = <floating*>w.z + w.cap * net.cum[i]
        f = <floating*>w.f + w.cap * net.cum[i]
        dense_forward(rows, n_in, n_out, a, theta + off[0], theta + off[1], <int>net.codes[i],
                      <floating>net.params[i], theta + off[2] if off[2] >= 0 else NULL, z, f)
        a = f


cdef inline double sum_squares(Py_ssize_t n, const floating* a) noexcept nogil:
    """sum of a[0:n] squared, accumulated in double. Four partial sums: GCC may not
    reorder one strict double sum, a chain of dependent 4-cycle adds."""
    cdef Py_ssize_t i, n4 = n - n % 4
    cdef double v0, v1, v2, v3, s0 = 0, s1 = 0, s2 = 0, s3 = 0
    for i in range(0, n4, 4):
        v0, v1, v2, v3 = a[i], a[i + 1], a[i + 2], a[i + 3]
        s0 += v0 * v0
        s1 += v1 * v1
        s2 += v2 * v2
        s3 += v3 * v3
    for i in range(n4, n):
        v0 = a[i]
        s0 += v0 * v0
    return (s0 + s1) + (s2 + s3)


cdef double network_backward(const Net* net, const Work* w, floating* theta, const floating* x,
                             const floating* t, Py_ssize_t rows, floating scale,
                             bint accumulate, floating* grad, bint sgd,
                             floating lr, double* norms) noexcept nogil:
    """After network_forward on the same rows: returns the loss SUMMED over the rows.

    sgd false: grad (n_params,) gets scale * d(summed loss)/dtheta, OVERWRITTEN, or
    ACCUMULATED when ``accumulate`` (the later chunks of a batch); theta is untouched.
    sgd true (accumulate false): plain SGD with rate lr is applied to theta layer
    by layer (each layer's dx computed before its W changes); grad is scratch for
    b and alpha. scale is 1 / (rows of the whole batch).
    norms (L,) or NULL (sgd false; pass it on a batch's last chunk only): each layer's
    ||dE/dW||^2, summed over its finished gW right after the GEMM that wrote it
    (still in cache), is ADDED to norms[i].
    """
    cdef int i, L = net.L
    cdef Py_ssize_t j, n_in, n_out
    cdef const int64_t* off
    cdef floating* dcur = <floating*>w.d0
    cdef floating* dnext = <floating*>w.d1
    cdef floating* tmp
    cdef floating* z
    cdef floating* alpha
    cdef const floating* xprev
    cdef bint fused = net.loss == CROSS_ENTROPY or net.loss == BINARY_CROSS_ENTROPY
    cdef floating* zl = <floating*>w.z + w.cap * net.cum[L - 1]
    cdef floating* fl = <floating*>w.f + w.cap * net.cum[L - 1]
    cdef double loss = loss_forward_backward(rows, net.dims[L], net.loss, zl, fl, t, dcur, scale)
    for i in range(L - 1, -1, -1):
        n_in, n_out = net.dims[i], net.dims[i + 1]
        off = net.offsets + 3 * i
        alpha = theta + off[2] if off[2] >= 0 else NULL
        if not (fused and i == L - 1):
            z = <floating*>w.z + w.cap * net.cum[i]
            activation_backward(rows, n_out, dcur, z, <floating*>w.f + w.cap * net.cum[i],
                                <int>net.codes[i], <floating>net.params[i], alpha,
                                grad + off[2] if alpha != NULL else NULL, accumulate)
            if sgd and alpha != NULL:
                for j in range(n_out):
                    alpha[j] -= lr * grad[off[2] + j]
        xprev = x if i == 0 else <floating*>w.f + w.cap * net.cum[i - 1]
        dense_backward(rows, n_in, n_out, xprev, theta + off[0], dcur,
                       dnext if i > 0 else NULL, theta + off[0] if sgd else grad + off[0],
                       grad + off[1], accumulate, sgd, lr, theta + off[1])
        if norms != NULL:
            norms[i] += sum_squares(n_in * n_out, grad + off[0])
        tmp = dcur
        dcur = dnext
        dnext = tmp
    return loss


cdef void gather(const Net* net, const Work* w, const floating* X, const floating* T,
                 const int64_t* perm, Py_ssize_t rows) noexcept nogil:
    """Rows perm[0:rows] (rows <= w.cap) of X and T, OVERWRITTEN into w.xb and w.tb."""
    cdef Py_ssize_t r, n_in = net.dims[0], n_out = net.dims[net.L]
    cdef floating* xb = <floating*>w.xb
    cdef floating* tb = <floating*>w.tb
    for r in range(rows):
        memcpy(xb + r * n_in, X + perm[r] * n_in, n_in * sizeof(floating))
        memcpy(tb + r * n_out, T + perm[r] * n_out, n_out * sizeof(floating))


cdef double batch_gradient(const Net* net, const Work* w, floating* theta, const floating* X,
                           const floating* T, const int64_t* perm, Py_ssize_t rows,
                           floating* grad, double* norms) noexcept nogil:
    """Mean loss of a batch; grad (n_params,) OVERWRITTEN with its gradient; theta only read.

    The batch is rows perm[0:rows] of (X, T), gathered a chunk at a time, or the
    first ``rows`` rows of X and T when perm is NULL. It is processed in chunks
    of at most w.cap rows, the gradient accumulated over them, so the workspace
    stays bounded however large the batch. norms (L,) or NULL: each layer's
    ||dE/dW||^2 of the whole batch ADDED (during the last chunk).
    """
    cdef Py_ssize_t start = 0, c
    cdef Py_ssize_t n_in = net.dims[0], n_out = net.dims[net.L]
    cdef const floating* x
    cdef const floating* t
    cdef floating scale = <floating>1 / <floating>rows
    cdef double total = 0
    while start < rows:
        c = min(w.cap, rows - start)
        if perm != NULL:
            gather(net, w, X, T, perm + start, c)
            x, t = <floating*>w.xb, <floating*>w.tb
        else:
            x, t = X + start * n_in, T + start * n_out
        network_forward(net, w, theta, x, c)
        total += network_backward(net, w, theta, x, t, c, scale, start > 0, grad, False, 0,
                                  norms if start + c == rows else NULL)
        start += c
    return total / rows


cdef double train_batch(const Net* net, const Work* w, floating* theta, const floating* X,
                        const floating* T, const int64_t* perm, Py_ssize_t rows,
                        floating* buffers, int code, const double* h,
                        int64_t* step, double* norms) noexcept nogil:
    """One update of theta on a batch (as batch_gradient's), IN PLACE; returns the
    loss before it. buffers (2, n_params): the optimiser's state; step (1,) is
    incremented. Plain SGD on a batch that fits the workspace is folded into the
    backward pass's weight GEMMs; anything else computes the gradient, then updates.
    norms (L,) or NULL: each layer's ||dE/dW||^2 ADDED; it turns the fold off, since
    the gradient must then be formed."""
    cdef bint plain = (code == SGD_CODE and h[MOMENTUM] == 0 and h[WEIGHT_DECAY] == 0
                       and norms == NULL)
    cdef const floating* x = X
    cdef const floating* t = T
    cdef double loss
    if plain and rows <= w.cap:
        if perm != NULL:
            gather(net, w, X, T, perm, rows)
            x, t = <floating*>w.xb, <floating*>w.tb
        network_forward(net, w, theta, x, rows)
        loss = network_backward(net, w, theta, x, t, rows, <floating>1 / <floating>rows, False,
                                <floating*>w.grad, True, <floating>h[LR], NULL) / rows
        step[0] += 1
        return loss
    loss = batch_gradient(net, w, theta, X, T, perm, rows, <floating*>w.grad, norms)
    step[0] += 1
    optimizer_update(net.n_params, theta, <floating*>w.grad, buffers, buffers + net.n_params,
                     code, h, step[0])
    return loss


cdef double train_epoch(const Net* net, const Work* w, floating* theta, const floating* X,
                        const floating* T, const int64_t* perm, Py_ssize_t n,
                        Py_ssize_t batch, floating* buffers, int code, const double* h,
                        int64_t* step, double* norms) noexcept nogil:
    """One train_batch per batch of rows perm[i:i + batch] (each < len(X), checked by
    the caller); returns sum(batch loss * rows) / n. norms (L,) or NULL: every
    batch ADDS each layer's ||dE/dW||^2 (see train_batch)."""
    cdef Py_ssize_t start = 0, rows
    cdef double total = 0
    while start < n:
        rows = min(batch, n - start)
        total += train_batch(net, w, theta, X, T, perm + start, rows, buffers, code, h,
                             step, norms) * rows
        start += batch
    return total / n


cdef double infer(const Net* net, const floating* theta, const floating* X, Py_ssize_t n,
                  Py_ssize_t chunk, floating* p0, floating* p1, floating* zl, floating* out,
                  const floating* T) noexcept nogil:
    """Forward pass over X (n, inputs) in chunks of rows, with caller buffers p0, p1
    (chunk, widest layer) so concurrent calls share nothing.

    T NULL (predict): out (n, outputs) is OVERWRITTEN with the outputs; returns 0.
    Otherwise (evaluate): out and zl are (chunk, outputs) scratch; returns the
    loss summed over all rows.
    """
    cdef Py_ssize_t start, rows, n_in, n_out
    cdef int i, L = net.L
    cdef const int64_t* off
    cdef const floating* a
    cdef floating* z
    cdef floating* f
    cdef double total = 0
    start = 0
    while start < n:
        rows = min(chunk, n - start)
        a = X + start * net.dims[0]
        for i in range(L):
            n_in, n_out = net.dims[i], net.dims[i + 1]
            off = net.offsets + 3 * i
            if i < L - 1:
                z = p0 if i % 2 == 0 else p1
                f = z
            elif T == NULL:
                z = out + start * n_out
                f = z
            else:
                z = zl
                f = out
            dense_forward(rows, n_in, n_out, a, theta + off[0], theta + off[1],
                          <int>net.codes[i], <floating>net.params[i],
                          theta + off[2] if off[2] >= 0 else NULL, z, f)
            a = f
        if T != NULL:
            total += loss_forward_backward(rows, net.dims[L], net.loss, zl, out,
                                           T + start * net.dims[L], <floating*>NULL,
                                           <floating>0)
        start += chunk
    return total


# -- Python entry points -----------------------------------------------------------

cdef int _C_ALIGNED = cnp.NPY_ARRAY_C_CONTIGUOUS | cnp.NPY_ARRAY_ALIGNED
cdef int _WRITABLE = _C_ALIGNED | cnp.NPY_ARRAY_WRITEABLE
cdef Py_ssize_t _INT_MAX = 2147483647  # BLAS takes 32-bit sizes
# Rows of the training workspace: bigger batches are processed in chunks of this
# many rows (their gradient accumulated), so memory stays bounded (the Numba
# backend's MAX_ROWS, for the same reason).
cdef Py_ssize_t _MAX_ROWS = 1024
MAX_ROWS = _MAX_ROWS  # for Python readers and tests


cdef object _aligned(object obj):
    """obj, or an aligned copy of it when it is a C-contiguous array whose data is not
    aligned to its item size (a memmap at an odd offset, np.frombuffer with an offset):
    inputs are copied, never refused, for that."""
    if cnp.PyArray_Check(obj):
        if (cnp.PyArray_FLAGS(<cnp.ndarray>obj) & _C_ALIGNED) == cnp.NPY_ARRAY_C_CONTIGUOUS:
            return np.array(obj, order="C")
    return obj


cdef char* _array(object obj, int typenum, Py_ssize_t d0, Py_ssize_t d1, bint writable,
                  str name) except NULL:
    """obj's data after checking it is an aligned C-contiguous array of typenum with
    shape (d0,) when d1 < 0, else (d0, d1); d0 < 0 accepts any 1 <= rows < 2**31."""
    if not cnp.PyArray_Check(obj):
        raise TypeError(f"{name} must be a NumPy array, got {type(obj).__name__}")
    cdef cnp.ndarray a = <cnp.ndarray>obj
    cdef int flags = _WRITABLE if writable else _C_ALIGNED
    cdef int ndim = 1 if d1 < 0 else 2
    cdef bint ok = (cnp.PyArray_NDIM(a) == ndim and cnp.PyArray_TYPE(a) == typenum
                    and (cnp.PyArray_FLAGS(a) & flags) == flags)
    if ok:
        ok = (cnp.PyArray_DIMS(a)[0] == d0 if d0 >= 0
              else 1 <= cnp.PyArray_DIMS(a)[0] <= _INT_MAX)
        ok = ok and (ndim == 1 or cnp.PyArray_DIMS(a)[1] == d1)
    if not ok:
        want = cnp.PyArray_DescrFromType(typenum)
        shape = ("n" if d0 < 0 else str(d0)) + ("" if d1 < 0 else f", {d1}")
        fl = obj.flags
        raise ValueError(f"{name} must be a {'writable ' if writable else ''}aligned C-contiguous "
                         f"{want} array of shape ({shape}), got {obj.dtype} {obj.shape} "
                         f"(C-contiguous: {fl.c_contiguous}, aligned: {fl.aligned}, "
                         f"writable: {fl.writeable})")
    return <char*>cnp.PyArray_DATA(a)


cdef class Engine:
    """Compiled network of one dtype with its training workspace.

    Engine(dims, act_codes, act_params, offsets, loss_code, n_params, dtype) takes
    the arrays of a fastmlp.network.Network. Every method checks its arrays'
    dtype, layout and shape before any kernel runs (unaligned inputs X, T and
    perm are copied). The workspace holds at most MAX_ROWS rows (bigger batches
    go through it in chunks) and is reused. train_step and train_epoch hold a
    per-engine lock around it; loss_and_gradient uses it when the lock is free
    and a workspace of its own otherwise; predict and evaluate allocate their
    own buffers. So predict, evaluate and loss_and_gradient may run from many
    threads at once, each giving the single-thread result bit for bit.
    """
    cdef Net net
    cdef Work work
    cdef readonly object dtype
    cdef int typenum
    cdef Py_ssize_t widest, itemsize
    cdef object _keep      # arrays that Net points into
    cdef object _bufs      # arrays that Work points into
    cdef PyThread_type_lock lock

    def __cinit__(self):
        self.lock = PyThread_allocate_lock()
        if self.lock == NULL:
            raise MemoryError("cannot allocate a lock")

    def __dealloc__(self):
        if self.lock != NULL:
            PyThread_free_lock(self.lock)

    def __init__(self, dims, act_codes, act_params, offsets, int loss_code, Py_ssize_t n_params,
                 dtype):
        if self.net.L:
            raise RuntimeError("an Engine is initialised once")  # kernels may be running on it
        # Copies: the kernels read these for the Engine's life, checked once here.
        dims = np.array(dims, dtype=np.int64, order="C")
        L = len(dims) - 1
        codes = np.array(act_codes, dtype=np.int64, order="C")
        params = np.array(act_params, dtype=np.float64, order="C")
        offsets = np.array(offsets, dtype=np.int64, order="C")
        if L < 1 or codes.shape != (L,) or params.shape != (L,) or offsets.shape != (L, 3):
            raise ValueError("dims, act_codes, act_params and offsets disagree on the layer count")
        if dims.min() < 1 or dims.max() > _INT_MAX:
            raise ValueError(f"layer widths must be in [1, 2**31), got {dims.tolist()}")
        for c in codes:
            if not _has(_known_activation, c):
                raise ValueError(f"unknown activation code {c}: the Cython kernels have no "
                                 f"section for it (known: {known_codes()['activation']})")
        if not _has(_known_loss, loss_code):
            raise ValueError(f"unknown loss code {loss_code}: the Cython kernels have no "
                             f"section for it (known: {known_codes()['loss']})")
        sizes = np.stack([dims[:L] * dims[1:], dims[1:], dims[1:]], axis=1)
        if (offsets[:, :2].min() < 0 or (offsets + sizes).max() > n_params
                or ((offsets[:, 2] >= 0) != (codes == PRELU)).any()):
            raise ValueError("parameter offsets fall outside theta")
        self.dtype = np.dtype(dtype)
        self.itemsize = self.dtype.itemsize
        if self.dtype == np.float32:
            self.typenum = cnp.NPY_FLOAT32
        elif self.dtype == np.float64:
            self.typenum = cnp.NPY_FLOAT64
        else:
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        cum = np.zeros(L + 1, dtype=np.int64)
        cum[1:] = np.cumsum(dims[1:])
        self._keep = (dims, codes, params, offsets, cum)
        self.net.L = L
        self.net.loss = loss_code
        self.net.n_params = n_params
        self.net.dims = <int64_t*>cnp.PyArray_DATA(dims)
        self.net.codes = <int64_t*>cnp.PyArray_DATA(codes)
        self.net.params = <double*>cnp.PyArray_DATA(params)
        self.net.offsets = <int64_t*>cnp.PyArray_DATA(offsets)
        self.net.cum = <int64_t*>cnp.PyArray_DATA(cum)
        self.widest = int(dims[1:].max())
        self.work.cap = 0
        self._reserve(1)

    cdef object _new_work(self, Work* w, Py_ssize_t rows):
        """Fill w with buffers for batches (or chunks) of min(rows, MAX_ROWS) rows;
        returns the arrays it points into, which must outlive its use."""
        rows = min(rows, _MAX_ROWS)
        cdef const int64_t* dims = self.net.dims
        z = np.empty(rows * self.net.cum[self.net.L], dtype=self.dtype)
        f = np.empty_like(z)
        d = np.empty(2 * rows * self.widest, dtype=self.dtype)
        xb = np.empty(rows * dims[0], dtype=self.dtype)
        tb = np.empty(rows * dims[self.net.L], dtype=self.dtype)
        grad = np.empty(self.net.n_params, dtype=self.dtype)
        w.z = cnp.PyArray_DATA(z)
        w.f = cnp.PyArray_DATA(f)
        w.d0 = cnp.PyArray_DATA(d)
        w.d1 = <char*>cnp.PyArray_DATA(d) + rows * self.widest * self.itemsize
        w.xb = cnp.PyArray_DATA(xb)
        w.tb = cnp.PyArray_DATA(tb)
        w.grad = cnp.PyArray_DATA(grad)
        w.cap = rows
        return (z, f, d, xb, tb, grad)

    cdef int _reserve(self, Py_ssize_t rows) except -1:
        """Grow the shared workspace (lock held) to min(rows, MAX_ROWS) rows; it never shrinks."""
        if min(rows, _MAX_ROWS) > self.work.cap:
            self._bufs = self._new_work(&self.work, rows)
        return 0

    cdef inline void _lock(self):
        if not PyThread_acquire_lock(self.lock, NOWAIT_LOCK):
            with nogil:
                PyThread_acquire_lock(self.lock, WAIT_LOCK)

    cdef Py_ssize_t _rows(self, object X, object T) except -1:
        _array(X, self.typenum, -1, self.net.dims[0], False, "X")
        cdef Py_ssize_t n = cnp.PyArray_DIMS(<cnp.ndarray>X)[0]
        _array(T, self.typenum, n, self.net.dims[self.net.L], False, "T")
        return n

    def train_step(self, theta, state, X, T):
        """One optimiser step on (X, T); theta and state updated in place. Returns the
        batch loss before the step."""
        X, T = _aligned(X), _aligned(T)
        cdef Py_ssize_t P = self.net.n_params
        cdef char* th = _array(theta, self.typenum, P, -1, True, "theta")
        cdef Py_ssize_t n = self._rows(X, T)
        cdef char* x = <char*>cnp.PyArray_DATA(<cnp.ndarray>X)
        cdef char* t = <char*>cnp.PyArray_DATA(<cnp.ndarray>T)
        cdef char* buf = _array(state.buffers, self.typenum, 2, P, True, "state.buffers")
        cdef double* h = <double*>_array(state.hyper, cnp.NPY_FLOAT64, N_HYPER, -1, False, "state.hyper")
        cdef int64_t* step = <int64_t*>_array(state.step, cnp.NPY_INT64, 1, -1, True, "state.step")
        cdef int code = state.code
        cdef double loss
        if not _has(_known_optimizer, code):
            raise ValueError(f"unknown optimizer code {code} (known: {known_codes()['optimizer']})")
        self._lock()
        try:
            self._reserve(n)
            with nogil:
                if self.typenum == cnp.NPY_FLOAT64:
                    loss = train_batch(&self.net, &self.work, <double*>th, <double*>x,
                                       <double*>t, NULL, n, <double*>buf, code, h, step,
                                       NULL)
                else:
                    loss = train_batch(&self.net, &self.work, <float*>th, <float*>x,
                                       <float*>t, NULL, n, <float*>buf, code, h, step,
                                       NULL)
        finally:
            PyThread_release_lock(self.lock)
        return loss

    def train_epoch(self, theta, state, X, T, perm, Py_ssize_t batch_size, norms=None):
        """One train_step per batch of rows perm[i:i + batch_size]; returns the mean
        loss over rows, sum(batch loss * batch rows) / len(perm).

        norms: None, or a float64 array (n_layers,) to which every step ADDS each
        layer's squared weight-gradient norm ||dE/dW||^2 (plain SGD then forms the
        gradient instead of folding the update into the GEMM)."""
        X, T, perm = _aligned(X), _aligned(T), _aligned(perm)
        cdef Py_ssize_t P = self.net.n_params
        cdef char* th = _array(theta, self.typenum, P, -1, True, "theta")
        cdef Py_ssize_t n_rows = self._rows(X, T)
        cdef char* x = <char*>cnp.PyArray_DATA(<cnp.ndarray>X)
        cdef char* t = <char*>cnp.PyArray_DATA(<cnp.ndarray>T)
        cdef int64_t* pm = <int64_t*>_array(perm, cnp.NPY_INT64, -1, -1, False, "perm")
        cdef Py_ssize_t n = cnp.PyArray_DIMS(<cnp.ndarray>perm)[0], i
        cdef char* buf = _array(state.buffers, self.typenum, 2, P, True, "state.buffers")
        cdef double* h = <double*>_array(state.hyper, cnp.NPY_FLOAT64, N_HYPER, -1, False, "state.hyper")
        cdef int64_t* step = <int64_t*>_array(state.step, cnp.NPY_INT64, 1, -1, True, "state.step")
        cdef int code = state.code
        cdef double loss
        cdef bint bad = False
        cdef double* nrm = NULL
        if norms is not None:
            nrm = <double*>_array(norms, cnp.NPY_FLOAT64, self.net.L, -1, True, "norms")
        if not _has(_known_optimizer, code):
            raise ValueError(f"unknown optimizer code {code} (known: {known_codes()['optimizer']})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if n == 0:
            raise ValueError("perm is empty: an epoch needs at least one row")
        with nogil:
            for i in range(n):
                if pm[i] < 0 or pm[i] >= n_rows:
                    bad = True
                    break
        if bad:
            raise ValueError(f"perm must hold row indices in [0, {n_rows}), found {perm[i]}")
        batch_size = min(batch_size, n)
        self._lock()
        try:
            self._reserve(batch_size)
            with nogil:
                if self.typenum == cnp.NPY_FLOAT64:
                    loss = train_epoch(&self.net, &self.work, <double*>th, <double*>x,
                                       <double*>t, pm, n, batch_size, <double*>buf, code, h, step,
                                       nrm)
                else:
                    loss = train_epoch(&self.net, &self.work, <float*>th, <float*>x,
                                       <float*>t, pm, n, batch_size, <float*>buf, code, h, step,
                                       nrm)
        finally:
            PyThread_release_lock(self.lock)
        return loss

    def loss_and_gradient(self, theta, X, T, grad):
        """Mean loss of (X, T); grad (n_params,) is OVERWRITTEN with dE/dtheta.

        Uses the shared workspace when no other call holds it, else one of its own
        (allocated for this call), so concurrent calls never wait or interfere."""
        X, T = _aligned(X), _aligned(T)
        cdef Py_ssize_t P = self.net.n_params
        cdef char* th = _array(theta, self.typenum, P, -1, False, "theta")
        cdef char* g = _array(grad, self.typenum, P, -1, True, "grad")
        cdef Py_ssize_t n = self._rows(X, T)
        cdef char* x = <char*>cnp.PyArray_DATA(<cnp.ndarray>X)
        cdef char* t = <char*>cnp.PyArray_DATA(<cnp.ndarray>T)
        cdef double loss
        cdef Work own
        cdef Work* w = &self.work
        cdef bint shared = PyThread_acquire_lock(self.lock, NOWAIT_LOCK)
        keep = None
        try:
            if shared:
                self._reserve(n)
            else:
                keep = self._new_work(&own, n)
                w = &own
            with nogil:
                if self.typenum == cnp.NPY_FLOAT64:
                    loss = batch_gradient(&self.net, w, <double*>th, <double*>x, <double*>t,
                                          NULL, n, <double*>g, NULL)
                else:
                    loss = batch_gradient(&self.net, w, <float*>th, <float*>x, <float*>t,
                                          NULL, n, <float*>g, NULL)
        finally:
            if shared:
                PyThread_release_lock(self.lock)
        return loss

    def predict(self, theta, X, Py_ssize_t chunk=256):
        """Outputs (n, outputs), a new array; X processed ``chunk`` rows at a time."""
        return self._infer(theta, _aligned(X), None, chunk)

    def evaluate(self, theta, X, T, Py_ssize_t chunk=256):
        """Mean loss over (X, T), computed ``chunk`` rows at a time."""
        return self._infer(theta, _aligned(X), _aligned(T), chunk)

    cdef object _infer(self, theta, X, T, Py_ssize_t chunk):
        cdef char* th = _array(theta, self.typenum, self.net.n_params, -1, False, "theta")
        cdef char* x = _array(X, self.typenum, -1, self.net.dims[0], False, "X")
        cdef Py_ssize_t n = cnp.PyArray_DIMS(<cnp.ndarray>X)[0]
        cdef Py_ssize_t n_out = self.net.dims[self.net.L]
        cdef char* t = NULL
        if T is not None:
            t = _array(T, self.typenum, n, n_out, False, "T")
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        chunk = min(chunk, n)
        # Per-call buffers, so concurrent calls share nothing mutable.
        scratch = np.empty(2 * chunk * self.widest, dtype=self.dtype)
        if T is None:
            out = np.empty((n, n_out), dtype=self.dtype)
        else:
            out = np.empty(2 * chunk * n_out, dtype=self.dtype)
        cdef char* p0 = <char*>cnp.PyArray_DATA(scratch)
        cdef char* p1 = p0 + chunk * self.widest * self.itemsize
        cdef char* o = <char*>cnp.PyArray_DATA(out)
        cdef char* zl = o + chunk * n_out * self.itemsize  # evaluate only
        cdef double total
        with nogil:
            if self.typenum == cnp.NPY_FLOAT64:
                total = infer(&self.net, <double*>th, <double*>x, n, chunk, <double*>p0,
                              <double*>p1, <double*>zl, <double*>o, <double*>t)
            else:
                total = infer(&self.net, <float*>th, <float*>x, n, chunk, <float*>p0,
                              <float*>p1, <float*>zl, <float*>o, <float*>t)
        return out if T is None else total / n


def _gemm(bint trans_a, bint trans_b, double alpha, cnp.ndarray a, cnp.ndarray b, double beta,
          cnp.ndarray c, int path=-1):
    """Test hook: c = alpha op(a) op(b) + beta c, in place, through the kernels' gemm
    (path -1), its plain loops (0) or BLAS (1). Holds the GIL."""
    cdef int m = c.shape[0], n = c.shape[1]
    cdef int k = a.shape[0] if trans_a else a.shape[1]
    if ((b.shape[1] if trans_b else b.shape[0]) != k or (a.shape[1] if trans_a else a.shape[0]) != m
            or (b.shape[0] if trans_b else b.shape[1]) != n):
        raise ValueError("shapes do not match")
    for arr in (a, b, c):
        _array(arr, cnp.PyArray_TYPE(c), arr.shape[0], arr.shape[1], arr is c, "operand")
    if cnp.PyArray_TYPE(c) == cnp.NPY_FLOAT64:
        _gemm_path(path, trans_a, trans_b, m, n, k, alpha, <double*>a.data, a.shape[1],
                   <double*>b.data, b.shape[1], beta, <double*>c.data, n)
    else:
        _gemm_path(path, trans_a, trans_b, m, n, k, <float>alpha, <float*>a.data, a.shape[1],
                   <float*>b.data, b.shape[1], <float>beta, <float*>c.data, n)


cdef void _gemm_path(int path, bint trans_a, bint trans_b, int m, int n, int k, floating alpha,
                     const floating* a, int lda, const floating* b, int ldb, floating beta,
                     floating* c, int ldc) noexcept:
    if path == 0:
        small_gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
    elif path == 1:
        blas_gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
    else:
        gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

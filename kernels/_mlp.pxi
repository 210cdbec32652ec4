# The source of the Cython kernels, included by kernels/_cython_mlp_{base,avx2,avx512}.pyx:
# one build per instruction set, of which kernels/cython_mlp.py imports the widest this
# processor runs. (The directives are on those files' first line.)
"""The ``"cython"`` backend: whole train steps, epochs and inference run in C with
the GIL released, and :class:`Engine`, their checked Python entry point.

The per-layer, loss and optimiser kernels are ``cdef inline`` fused-type
functions in the .pxd files beside this one (_layers, _losses, _optimizers,
_activations, _blas). Layout and maths are those of the NumPy reference
(fastmlp.backends.reference): theta is the flat parameter vector, and theta and
the workspace are addressed through the plan of fastmlp.network.Network.plan,
the layout the Numba kernels use too; every array is row-major. Kernels never check sizes:
:class:`Engine` checks every array it is given before any of them runs.

Each kernel's docstring says which buffers it OVERWRITES and which it
ACCUMULATES into.
"""
import numpy as np

from fastmlp._aligned import aligned_empty

cimport numpy as cnp
from cpython.pythread cimport (NOWAIT_LOCK, WAIT_LOCK, PyThread_acquire_lock,
                               PyThread_allocate_lock, PyThread_free_lock,
                               PyThread_release_lock, PyThread_type_lock)
from cython cimport floating
from libc.float cimport DBL_MAX, FLT_MAX
from libc.math cimport INFINITY, NAN
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

from _blas cimport (SMALL_GEMM, blas_gemm, fm_gemm_built, fm_gemm_packed_use, fm_gemm_scope,
                   fm_gemm_scratch, fm_gemm_scratch_floats, fm_gemm_use, fm_own_sgemm64, gemm,
                   small_gemm)
from _codes cimport (EPS, LAYER_ACT, LAYER_ALPHA, LAYER_B, LAYER_F, LAYER_FIELDS, LAYER_N_IN,
                     LAYER_N_OUT, LAYER_W, LAYER_Z, LR, MOMENTUM, N_HYPER, PLAN_CAP, PLAN_FOLD_ROWS,
                     PLAN_FUSED, PLAN_HEAD, PLAN_LAYERS, PLAN_LOSS, PLAN_N_PARAMS, PLAN_WIDEST,
                     PLAN_WS_SIZE, PRELU, SGD_CODE, WEIGHT_DECAY, WS_ACT_PARAMS, WS_D0, WS_D1, WS_GRAD,
                     WS_TB, WS_XB, compiled_codes)
from _guard cimport Bounds, abs_max, any_negative, below, prove_update
from _scaling cimport fm_scale_f32_f32, fm_scale_f32_f64, fm_scale_f64_f32, fm_scale_f64_f64
from _gemv cimport (fm_blas_pool_jobs, fm_blas_pool_known, fm_blas_pool_ok, fm_blas_pool_set,
                    fm_gemv_pool_jobs, fm_gemv_pool_leave, fm_gemv_pool_min_bytes,
                    fm_gemv_pool_naps, fm_gemv_pool_spin_ns, fm_gemv_pool_state,
                    fm_gemv_threads, fm_gemv_use, fm_sgemm, fm_sgemm_ok, fm_sgemm_use,
                    FM_SGEMM_MR, fm_split, fm_xw_f32, fm_xw_f64)
from _layers cimport (activation_backward, bias_activation_forward, dense_backward_input,
                      dense_backward_params, dense_forward, dense_product)
from _losses cimport loss_forward_backward
from _optimizers cimport optimizer_update

cnp.import_array()

SMALL_GEMM_FLOPS = SMALL_GEMM
# Bytes per vector of the small-batch GEMV copy in use (_gemv.h): 64 AVX-512F, 32 AVX2
# with FMA, 16 the SSE2 (or other GNU target's) baseline, 0 plain C.
GEMV_BYTES = fm_gemv_use(64)
fm_gemv_threads(0)   # the big GEMVs' default thread limit, read once (it reads the environment)


def _use_blas_pool(bint on=True):
    """Whether fm_split (float32 batches of predict, products on the GEMM loops) hands its
    second part to the thread pool of the BLAS the kernels call (kernels/_blas_pool.h,
    fastmlp.blas.worker_pool) rather than to _gemv_pool.h's worker (never where that BLAS
    has no such pool); returns the setting before. Set at import; a test hook after.
    Not while kernels run in other threads."""
    from fastmlp.blas import worker_pool
    pool = worker_pool() if on else None
    cdef size_t a = pool[0] if pool else 0, b = pool[1] if pool else 0, c = pool[2] if pool else 0
    was = fm_blas_pool_known() != 0
    fm_blas_pool_set(<void*>a, <void*>b, <void*>c)
    return was


try:
    _use_blas_pool()
except Exception:   # (a BLAS fastmlp.blas cannot look into: the pool of _gemv_pool.h)
    pass

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
            bias_activation_forward(1, 1, z, z, code, <double>1, one, f, NULL) == 0
            and activation_backward(1, 1, one, z, f, code, <double>1, one, one, True, NULL) == 0)
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
# Both structs are filled from a plan of fastmlp.network.Network.plan (the layout
# the Numba kernels run on too): a row of LAYER_FIELDS per layer, fields named in
# fastmlp.codes. Net's rows come from one plan; a Work's from the plan of its cap,
# whose LAYER_Z and LAYER_F place each layer's buffers in that Work's workspace.

cdef struct Net:
    int L
    int loss
    bint fused               # the loss gives dE/dz of the output layer (PLAN_FUSED)
    Py_ssize_t n_params
    const int64_t* layers    # (L, LAYER_FIELDS): sizes, activation, offsets in theta
    const double* params     # (L,): each layer's activation parameter


cdef struct Work:
    Py_ssize_t cap           # rows the buffers hold (PLAN_CAP)
    Py_ssize_t fold_rows     # plain SGD folds into the GEMM up to this batch (PLAN_FOLD_ROWS)
    const int64_t* layers    # its plan's rows: as Net's, with LAYER_Z and LAYER_F
    void* ws                 # the one flat workspace its plan lays out
    void* d0                 # WS_D0 (cap, widest layer): dE/df of the layer being undone
    void* d1                 # WS_D1 (cap, widest layer): the output layer's dE/df (its delta
                             # when fused); every other layer's delta replaces its z
    void* xb                 # WS_XB (cap, inputs): a mini-batch gathered through perm
    void* tb                 # WS_TB (cap, outputs)
    void* grad               # WS_GRAD (n_params,)
    double* maxima           # (4, layers) float64: a guarded step's Guard arrays


cdef inline const int64_t* layer_row(const int64_t* layers, int i) noexcept nogil:
    """Layer i's row of a plan's layer rows."""
    return layers + i * LAYER_FIELDS


cdef inline const floating* alpha_of(const floating* theta, const int64_t* row) noexcept nogil:
    """prelu's alpha in theta, or NULL for a layer without one."""
    return theta + row[LAYER_ALPHA] if row[LAYER_ALPHA] >= 0 else NULL


cdef inline floating* delta_of(const Net* net, const Work* w, floating* ws, int i) noexcept nogil:
    """Where layer i's delta = dE/dz lies after network_deltas: w.d1 for a fused output
    layer, else in place of its z; ws is w.ws."""
    if net.fused and i == net.L - 1:
        return <floating*>w.d1
    return ws + layer_row(w.layers, i)[LAYER_Z]


cdef void network_forward(const Net* net, const Work* w, const floating* theta,
                          const floating* x, Py_ssize_t rows, double* fmax) noexcept nogil:
    """Every layer's z and f for rows (<= w.cap) of x, OVERWRITTEN in w's workspace.
    fmax (L,) or NULL: fmax[i] OVERWRITTEN with max |f| of every layer but the last
    (inf if NaN or inf), whose outputs feed no GEMM; fmax[L - 1] = 0."""
    cdef int i
    cdef const floating* a = x
    cdef floating* f
    cdef const int64_t* row
    for i in range(net.L):
        row = layer_row(w.layers, i)
        f = <floating*>w.ws + row[LAYER_F]
        dense_forward(rows, row[LAYER_N_IN], row[LAYER_N_OUT], a, theta + row[LAYER_W],
                      theta + row[LAYER_B], <int>row[LAYER_ACT], <floating>net.params[i],
                      alpha_of(theta, row), <floating*>w.ws + row[LAYER_Z], f,
                      fmax + i if fmax != NULL and i < net.L - 1 else NULL)
        a = f
    if fmax != NULL:
        fmax[net.L - 1] = 0


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


cdef double network_deltas(const Net* net, const Work* w, const floating* theta,
                           const floating* t, Py_ssize_t rows, floating scale, bint accumulate,
                           floating* grad, double* dmax) noexcept nogil:
    """The backward pass's first sweep, after network_forward on the same rows: returns
    the loss SUMMED over the rows, and every layer's delta = scale * dE/dz is
    OVERWRITTEN where delta_of says (in place of z, whose last use is its
    activation's derivative), each from the old weights. theta is only read: nothing
    is decided about the update yet. prelu's dE/dalpha (times scale) goes to grad,
    OVERWRITTEN or ACCUMULATED when ``accumulate``; w.d0 and w.d1 are scratch.
    dmax (L,) or NULL: max |delta| of each layer OVERWRITTEN (inf if NaN or inf)."""
    cdef int i, L = net.L
    cdef const int64_t* row = layer_row(w.layers, L - 1)
    cdef floating* dout = <floating*>w.d1   # dE/df of layer i
    cdef floating* delta
    cdef const floating* alpha
    cdef double loss = loss_forward_backward(rows, row[LAYER_N_OUT], net.loss,
                                             <floating*>w.ws + row[LAYER_Z],
                                             <floating*>w.ws + row[LAYER_F], t, dout, scale)
    for i in range(L - 1, -1, -1):
        row = layer_row(w.layers, i)
        delta = delta_of(net, w, <floating*>w.ws, i)
        alpha = alpha_of(theta, row)
        if delta == dout:  # fused: the loss gave dE/dz
            if dmax != NULL:
                dmax[i] = abs_max(rows * row[LAYER_N_OUT], delta)
        else:
            activation_backward(rows, row[LAYER_N_OUT], dout, delta,
                                <floating*>w.ws + row[LAYER_F], <int>row[LAYER_ACT],
                                <floating>net.params[i], alpha,
                                grad + row[LAYER_ALPHA] if alpha != NULL else NULL, accumulate,
                                dmax + i if dmax != NULL else NULL)
        if i > 0:
            dout = <floating*>w.d0
            dense_backward_input(rows, row[LAYER_N_IN], row[LAYER_N_OUT], theta + row[LAYER_W],
                                 delta, dout)
    return loss


cdef void network_params(const Net* net, const Work* w, floating* theta, const floating* x,
                         Py_ssize_t rows, bint accumulate, floating* grad, bint sgd,
                         floating lr, floating decay, double* norms) noexcept nogil:
    """The backward pass's second sweep, after network_deltas on the same rows.

    sgd false: grad (n_params,) gets dE/dW and dE/db (delta carries the scale),
    OVERWRITTEN, or ACCUMULATED when ``accumulate`` (the later chunks of a batch);
    prelu's part was written by network_deltas; theta is untouched.
    sgd true (accumulate false): plain SGD with rate lr and decay factor
    1 - lr * weight_decay is applied to theta (see fastmlp.rules.sgd_fold_rows);
    grad is scratch for b and holds alpha's gradient.
    norms (L,) or NULL (sgd false; pass it on a batch's last chunk only): each layer's
    ||dE/dW||^2, summed over its finished gW right after the GEMM that wrote it
    (still in cache), is ADDED to norms[i].
    """
    cdef int i
    cdef Py_ssize_t j, n_in, n_out
    cdef const int64_t* row
    cdef floating* alpha
    cdef const floating* xprev
    for i in range(net.L - 1, -1, -1):
        row = layer_row(w.layers, i)
        n_in, n_out = row[LAYER_N_IN], row[LAYER_N_OUT]
        alpha = <floating*>alpha_of(theta, row)
        if sgd and alpha != NULL:
            for j in range(n_out):
                alpha[j] = decay * alpha[j] - lr * grad[row[LAYER_ALPHA] + j]
        xprev = x if i == 0 else <floating*>w.ws + layer_row(w.layers, i - 1)[LAYER_F]
        dense_backward_params(rows, n_in, n_out, xprev, delta_of(net, w, <floating*>w.ws, i),
                              theta + row[LAYER_W] if sgd else grad + row[LAYER_W],
                              grad + row[LAYER_B], accumulate, sgd, lr, decay,
                              theta + row[LAYER_B])
        if norms != NULL:
            norms[i] += sum_squares(n_in * n_out, grad + row[LAYER_W])


# What a guarded step measures while the data is in cache (arrays (L,) in a Work's
# ``maxima``): the gradient bounds it proves its update with.
cdef struct Guard:
    double xmax        # max |x| of the batch
    double* fmax       # max |f| of each layer, of the chunk just run (network_forward)
    double* dmax       # max |delta| of each layer, likewise (network_deltas)
    double* gw         # bound on |dE/dW| of each layer, ACCUMULATED over the chunks
    double* gb         # bound on |dE/db|, likewise
    bint finite        # every maximum so far is finite


cdef void guard_chunk(const Net* net, Guard* g, Py_ssize_t rows) noexcept nogil:
    """Add a chunk of ``rows`` rows to g's gradient bounds: |dE/dW| = |x^T delta| <=
    rows max|x| max|delta| and |dE/db| <= rows max|delta|, delta scaled as the loss is."""
    cdef int i
    cdef double a
    for i in range(net.L):
        a = g.xmax if i == 0 else g.fmax[i - 1]
        g.finite = g.finite and below(a, INFINITY) and below(g.dmax[i], INFINITY)
        g.gw[i] += rows * a * g.dmax[i]
        g.gb[i] += rows * g.dmax[i]


cdef void gather(const Work* w, const floating* X, const floating* T, const int64_t* perm,
                 Py_ssize_t rows, Py_ssize_t n_in, Py_ssize_t n_out) noexcept nogil:
    """Rows perm[0:rows] (rows <= w.cap) of X (., n_in) and T (., n_out), OVERWRITTEN
    into w.xb and w.tb."""
    cdef Py_ssize_t r
    cdef floating* xb = <floating*>w.xb
    cdef floating* tb = <floating*>w.tb
    for r in range(rows):
        memcpy(xb + r * n_in, X + perm[r] * n_in, n_in * sizeof(floating))
        memcpy(tb + r * n_out, T + perm[r] * n_out, n_out * sizeof(floating))


cdef double batch_gradient(const Net* net, const Work* w, floating* theta, const floating* X,
                           const floating* T, const int64_t* perm, Py_ssize_t rows,
                           floating* grad, double* norms, Guard* guard) noexcept nogil:
    """Mean loss of a batch; grad (n_params,) OVERWRITTEN with its gradient; theta only read.

    The batch is rows perm[0:rows] of (X, T), gathered a chunk at a time, or the
    first ``rows`` rows of X and T when perm is NULL. It is processed in chunks
    of at most w.cap rows, the gradient accumulated over them, so the workspace
    stays bounded however large the batch. norms (L,) or NULL: each layer's
    ||dE/dW||^2 of the whole batch ADDED (during the last chunk). guard or NULL:
    each chunk's maxima added to its bounds (guard_chunk; xmax set by the caller).
    """
    cdef Py_ssize_t start = 0, c
    cdef Py_ssize_t n_in = layer_row(net.layers, 0)[LAYER_N_IN]
    cdef Py_ssize_t n_out = layer_row(net.layers, net.L - 1)[LAYER_N_OUT]
    cdef const floating* x
    cdef const floating* t
    cdef floating scale = <floating>1 / <floating>rows
    cdef double total = 0
    while start < rows:
        c = min(w.cap, rows - start)
        if perm != NULL:
            gather(w, X, T, perm + start, c, n_in, n_out)
            x, t = <floating*>w.xb, <floating*>w.tb
        else:
            x, t = X + start * n_in, T + start * n_out
        network_forward(net, w, theta, x, c, guard.fmax if guard != NULL else NULL)
        # each chunk's sum divided by the batch's rows before it is added, as the
        # reference does: two chunks' raw sums may overflow where their means do not
        total += network_deltas(net, w, theta, t, c, scale, start > 0, grad,
                                guard.dmax if guard != NULL else NULL) / rows
        network_params(net, w, theta, x, c, start > 0, grad, False, 0, 1,
                       norms if start + c == rows else NULL)
        if guard != NULL:
            guard_chunk(net, guard, c)
        start += c
    return total


cdef double train_batch(const Net* net, const Work* w, floating* theta, const floating* X,
                        const floating* T, const int64_t* perm, Py_ssize_t rows,
                        floating* buffers, int code, const double* h,
                        int64_t* step, double* norms) noexcept nogil:
    """One update of theta on a batch (as batch_gradient's), IN PLACE; returns the
    loss before it. buffers (2, n_params): the optimiser's state; step (1,) is
    incremented. A batch of at most w.fold_rows rows (fastmlp.rules.sgd_fold_rows:
    plain SGD, weight decay included) has its update folded into the backward
    pass's weight GEMMs; anything else computes the gradient, then updates.
    norms (L,) or NULL: each layer's ||dE/dW||^2 ADDED; it turns the fold off, since
    the gradient must then be formed. train_guarded runs the same passes."""
    cdef const floating* x = X
    cdef const floating* t = T
    cdef double loss
    if rows <= w.fold_rows and norms == NULL:
        if perm != NULL:
            gather(w, X, T, perm, rows, layer_row(net.layers, 0)[LAYER_N_IN],
                   layer_row(net.layers, net.L - 1)[LAYER_N_OUT])
            x, t = <floating*>w.xb, <floating*>w.tb
        network_forward(net, w, theta, x, rows, NULL)
        loss = network_deltas(net, w, theta, t, rows, <floating>1 / <floating>rows, False,
                              <floating*>w.grad, NULL) / rows
        network_params(net, w, theta, x, rows, False, <floating*>w.grad, True,
                       <floating>h[LR], <floating>(1 - h[LR] * h[WEIGHT_DECAY]), NULL)
        step[0] += 1
        return loss
    loss = batch_gradient(net, w, theta, X, T, perm, rows, <floating*>w.grad, norms, NULL)
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


cdef inline bint all_finite(Py_ssize_t n, const floating* a) noexcept nogil:
    """Whether a (n,) is all finite: x - x is 0 for every finite x and NaN otherwise,
    so one OR over lanes, which vectorises (a branch per element would not)."""
    cdef Py_ssize_t i
    cdef int bad = 0
    for i in range(n):
        bad |= (a[i] - a[i]) != 0
    return bad == 0


cdef inline Py_ssize_t buffers_in_use(int code, const double* h) noexcept nogil:
    """Rows of the optimiser buffers its update uses: plain SGD 0, momentum 1 (v), Adam 2
    (m, v); the same rule as fastmlp.rules.buffers_in_use (checked and backed up)."""
    if code != SGD_CODE:
        return 2
    return 1 if h[MOMENTUM] != 0 else 0


cdef int train_epochs(const Net* net, const Work* w, floating* theta, const floating* X,
                      const floating* T, const int64_t* orders, Py_ssize_t k, Py_ssize_t n,
                      Py_ssize_t batch, floating* buffers, int code, const double* h,
                      int64_t* step, double tol, double* losses, Py_ssize_t* done) noexcept nogil:
    """train_epoch over rows orders[e] (orders (k, n)) for e = 0, 1, ...: losses[e]
    OVERWRITTEN with each epoch's loss, which is checked to be finite; theta and the
    optimiser buffers in use (momentum: v; Adam: m and v) are checked after the last
    epoch run (a pass over them after every epoch cost a 784-256-128-10 net's 64-row
    Adam epoch 5 %). Stops at an epoch whose loss is not finite, or after the last one
    if theta or those buffers are not (returns 2, done[0] = that epoch: an earlier one
    may have made theta or the buffers non-finite), or after one whose loss is <= tol
    when tol >= 0 (returns 1, done[0] = the epochs run); else returns 0, done[0] = k."""
    cdef Py_ssize_t e
    cdef double loss
    cdef bint stop
    cdef Py_ssize_t in_use = buffers_in_use(code, h) * net.n_params
    for e in range(k):
        loss = train_epoch(net, w, theta, X, T, orders + e * n, n, batch, buffers, code, h,
                           step, NULL)
        losses[e] = loss
        stop = tol >= 0 and loss <= tol
        if not ((loss - loss) == 0) or ((stop or e == k - 1) and not (
                all_finite(net.n_params, theta) and all_finite(in_use, buffers))):
            done[0] = e
            return 2
        if stop:
            done[0] = e + 1
            return 1
    done[0] = k
    return 0


cdef inline double nan_max(double a, double b) noexcept nogil:
    """max(a, b), NaN if either is."""
    return b if not (b <= a) else a


cdef void measure(Bounds* b, Py_ssize_t n, const floating* theta, const floating* buffers,
                  Py_ssize_t in_use) noexcept nogil:
    """b OVERWRITTEN with the maxima of theta (n,) and of the buffers' in_use rows, read
    in one pass each (inf where one is NaN or inf), and whether Adam's v (in use: 2) holds
    a value below 0 (a second pass, on this path only: set_state accepts one)."""
    b.known = True
    b.in_use = in_use
    b.theta = abs_max(n, theta)
    b.buf0 = abs_max(n, buffers) if in_use >= 1 else 0
    b.buf1 = abs_max(n, buffers + n) if in_use >= 2 else 0
    b.v_negative = in_use >= 2 and any_negative(n, buffers + n)


cdef int train_guarded(const Net* net, const Work* w, floating* theta, const floating* X,
                       const floating* T, Py_ssize_t rows, floating* buffers, int code,
                       const double* h, int64_t* step, bint unit, Bounds* bounds,
                       floating* backup, double* loss) noexcept nogil:
    """train_batch on (X, T) (rows, inputs), (rows, outputs), guarded, with no copy of
    theta when its update is proven finite before it is written. Returns:

    1: X or T is not finite (or, ``unit``, T is outside [0, 1]); nothing ran or changed.
    2: the step would make the loss, theta or the optimiser buffers in use non-finite;
       theta, buffers and step are as before it, bit for bit.
    3: the update could not be proven finite and backup is NULL; nothing changed (call
       again with a backup of n_params * (1 + buffers in use) elements).
    0: the step of train_batch, bit for bit; loss[0] its loss.

    How: the forward pass notes max |f| of each layer and the backward pass computes
    every layer's delta (network_deltas, noting max |delta|) before anything is
    written; a non-finite loss or maximum means the update would be non-finite
    (an inf or NaN input or delta reaches every product and sum it is in), so the
    step stops there: 2. Else the gradient is bounded by the maxima (guard_chunk)
    and the update by ``bounds`` (prove_update): below the limit, it is written
    (network_params, or optimizer_update) and bounds raised to the new ones. If not,
    bounds are measured afresh (one read of theta and the buffers) and the proof
    retried; failing again, the step runs on a backup and is checked as before this
    design: undone (2) unless theta and the buffers are finite, whose maxima, read
    by that check, become the bounds. bounds.proven/measured/backed_up count the paths.
    """
    cdef Py_ssize_t P = net.n_params, i
    cdef int L = net.L
    cdef Py_ssize_t n_t = rows * layer_row(net.layers, L - 1)[LAYER_N_OUT]
    cdef Py_ssize_t in_use = buffers_in_use(code, h)
    cdef floating* grad = <floating*>w.grad
    cdef bint fold = rows <= w.fold_rows
    cdef bint proven
    cdef double G = 0, unit_round, limit
    cdef int64_t saved_step = step[0]
    cdef int bad = 0
    cdef const int64_t* row
    cdef Bounds after
    cdef Guard g
    if floating is float:
        unit_round, limit = 2.0 ** -24, FLT_MAX / 16
    else:
        unit_round, limit = 2.0 ** -53, DBL_MAX / 16
    g.xmax = abs_max(rows * layer_row(net.layers, 0)[LAYER_N_IN], X)
    if not below(g.xmax, INFINITY):
        return 1
    if unit:  # NaN fails both comparisons; & and no branch, so the loop vectorises
        for i in range(n_t):
            bad |= ((T[i] >= 0) & (T[i] <= 1)) == 0
        if bad:
            return 1
    elif not below(abs_max(n_t, T), INFINITY):
        return 1
    g.fmax, g.dmax, g.gw, g.gb = w.maxima, w.maxima + L, w.maxima + 2 * L, w.maxima + 3 * L
    for i in range(L):
        g.gw[i] = g.gb[i] = 0
    g.finite = True
    if fold:
        network_forward(net, w, theta, X, rows, g.fmax)
        loss[0] = network_deltas(net, w, theta, T, rows, <floating>1 / <floating>rows, False,
                                 grad, g.dmax) / rows
        guard_chunk(net, &g, rows)
    else:
        loss[0] = batch_gradient(net, w, theta, X, T, NULL, rows, grad, NULL, &g)
    for i in range(L):
        row = layer_row(net.layers, i)
        G = nan_max(G, nan_max(g.gw[i], g.gb[i]))
        if row[LAYER_ALPHA] >= 0:  # prelu: alpha's gradient as it is, n_out numbers
            G = nan_max(G, abs_max(row[LAYER_N_OUT], grad + row[LAYER_ALPHA]))
    if not (g.finite and (loss[0] - loss[0]) == 0):
        return 2
    # G itself may be inf or NaN with every maximum finite: the bound overflowed (rows
    # max|x| max|delta| with the two maxima in different rows), not the gradient. No
    # proof holds then, and the backup path decides.
    if bounds.in_use != in_use:
        bounds.known = False
    proven = bounds.known and prove_update(bounds, G, rows, code, h, saved_step + 1, unit_round,
                                           limit, &after)
    if not proven:
        measure(bounds, P, theta, buffers, in_use)
        proven = prove_update(bounds, G, rows, code, h, saved_step + 1, unit_round, limit,
                              &after)
        bounds.measured += 1
    if not proven:
        if backup == NULL:
            return 3
        memcpy(backup, theta, P * sizeof(floating))
        memcpy(backup + P, buffers, in_use * P * sizeof(floating))
        bounds.backed_up += 1
    else:
        bounds.proven += 1
    if fold:
        network_params(net, w, theta, X, rows, False, grad, True, <floating>h[LR],
                       <floating>(1 - h[LR] * h[WEIGHT_DECAY]), NULL)
        step[0] += 1
    else:
        step[0] += 1
        optimizer_update(P, theta, grad, buffers, buffers + P, code, h, step[0])
    if proven:
        after.proven, after.measured, after.backed_up = (
            bounds.proven, bounds.measured, bounds.backed_up)
        bounds[0] = after
        return 0
    measure(&after, P, theta, buffers, in_use)
    if below(after.theta, INFINITY) and below(after.buf0, INFINITY) and below(after.buf1, INFINITY):
        after.proven, after.measured, after.backed_up = (
            bounds.proven, bounds.measured, bounds.backed_up)
        bounds[0] = after
        return 0
    memcpy(theta, backup, P * sizeof(floating))   # bounds still hold for what is restored
    memcpy(buffers, backup + P, in_use * P * sizeof(floating))
    step[0] = saved_step
    return 2


cdef inline double x_abs_max(Py_ssize_t rows, Py_ssize_t n_in, const floating* x,
                             Py_ssize_t ldx) noexcept nogil:
    """max |x| over a chunk x (rows, n_in) of X, inf if one is NaN or inf: its rows
    adjacent (ldx 0), or its columns ``ldx`` elements apart (column-major X)."""
    if ldx == 0:
        return abs_max(rows * n_in, x)
    cdef Py_ssize_t c
    cdef double m = 0
    for c in range(n_in):
        m = nan_max(m, abs_max(rows, x + c * ldx))
    return m


cdef inline bint x_finite(Py_ssize_t rows, Py_ssize_t n_in, const floating* x,
                          Py_ssize_t ldx, const floating* z, Py_ssize_t n_z) noexcept nogil:
    """Whether a chunk x (rows, n_in; ldx as x_abs_max's) holds no NaN or inf, judged
    through its first layer's x W, z (rows, n_z) just written, unless z is NULL: a NaN or
    inf in row r of x makes every z[r, j] NaN or inf (NaN * w and inf * 0 are NaN, inf *
    w is inf; a sum with one such term is never finite: no GEMM skips a non-zero x), so
    a finite z proves x finite; a z that is not (x bad, or finite but huge) sends us to
    x itself."""
    if z != NULL and below(abs_max(rows * n_z, z), INFINITY):
        return True
    return below(x_abs_max(rows, n_in, x, ldx), INFINITY)


cdef inline void to_rows(Py_ssize_t rows, Py_ssize_t n_in, const floating* x, Py_ssize_t ldx,
                         floating* xs) noexcept nogil:
    """xs (rows, n_in) OVERWRITTEN with x (rows, n_in), its columns ``ldx`` apart."""
    cdef Py_ssize_t r, c
    for r in range(rows):
        for c in range(n_in):
            xs[r * n_in + c] = x[r + c * ldx]


cdef struct Rows:
    # predict's forward pass over some rows of a float32 chunk (forward_rows): the network,
    # the chunk's x (rows, inputs), the hidden layers' outputs p0, p1 (chunk, widest), the
    # outputs (rows, outputs), the finiteness checks asked (see infer); bad[part] set to 1
    # where that part's x is not finite (part 0 the rows from 0, 1 the others). widest:
    # the widest layer's units, the stride of each row's place in p0 and p1, so that the
    # parts' places never overlap (layer i + 2 writes over layer i's outputs there: with
    # rows of each layer's own width the other thread's rows were overwritten)
    const Net* net
    const float* theta
    const float* x
    float* p0
    float* p1
    float* out
    Py_ssize_t widest
    bint check
    bint check_z
    int bad[2]


cdef void forward_rows(void* ctx, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    """Rows r0 to r1 of a Rows chunk through every layer, in place in its buffers: each
    GEMM by _sgemm.h's loops, then its bias and activation while the rows are in cache.
    A row's outputs are the same bits whichever rows share its call (fm_split's
    contract): the GEMM sums each output in one chain over k, and the bias and
    activation pass works element by element (softmax row by row)."""
    cdef Rows* c = <Rows*>ctx
    cdef const Net* net = c.net
    cdef int i, part = 1 if r0 > 0 else 0
    cdef Py_ssize_t rows = r1 - r0, n_out
    cdef Py_ssize_t n_in = layer_row(net.layers, 0)[LAYER_N_IN]
    cdef const int64_t* row
    cdef const float* a = c.x + r0 * n_in
    cdef float* z
    if c.check and not c.check_z and not x_finite(rows, n_in, a, 0, <float*>NULL, 0):
        c.bad[part] = 1
        return
    for i in range(net.L):
        row = layer_row(net.layers, i)
        n_out = row[LAYER_N_OUT]
        # this part's own place: rows r0.. of p0 or p1 (widest apart), or of out
        z = ((c.p0 if i % 2 == 0 else c.p1) + r0 * c.widest if i < net.L - 1
             else c.out + r0 * n_out)
        fm_sgemm(rows, row[LAYER_N_IN], n_out, a, c.theta + row[LAYER_W], z)
        if i == 0 and c.check_z and not x_finite(rows, n_in, a, 0, z, n_out):
            c.bad[part] = 1
            return
        bias_activation_forward(rows, n_out, z, c.theta + row[LAYER_B], <int>row[LAYER_ACT],
                                <float>net.params[i], alpha_of(c.theta, row), z, NULL)
        a = z


cdef inline Py_ssize_t split_most(Py_ssize_t rows) noexcept nogil:
    """The most parts (fm_split) for a chunk of ``rows`` rows through forward_rows: two
    from 2 rows, more only where each gets a block of _sgemm.h's FM_SGEMM_MR rows."""
    return max(2, rows // FM_SGEMM_MR)


cdef Py_ssize_t sgemm_all(const Net* net, Py_ssize_t rows) noexcept nogil:
    """The widest layer's units when every layer's GEMM of a float32 chunk of ``rows``
    rows can run _sgemm.h's loops (fm_sgemm_ok), else 0."""
    cdef int i
    cdef const int64_t* row
    cdef Py_ssize_t widest = 0
    for i in range(net.L):
        row = layer_row(net.layers, i)
        if not fm_sgemm_ok(rows, row[LAYER_N_IN], row[LAYER_N_OUT]):
            return 0
        widest = max(widest, row[LAYER_N_OUT])
    return widest


cdef int forward_f32(const int64_t* plan, const float* fparams, const float* theta,
                     const float* x, Py_ssize_t rows, float* p0, float* p1, float* out,
                     int check, int check_z) noexcept nogil:
    """A float32 predict chunk through forward_rows on two threads, for the Numba
    backend's predict, which calls it by a symbol (kernels/numba_gemv.py): the same
    code, so the same bits, as this extension's predict. plan: a Network.plan's int64
    layout; fparams (layers,): each layer's activation parameter; x (rows, inputs);
    p0, p1 (rows, widest layer) scratch; out (rows, outputs) OVERWRITTEN. check and
    check_z as infer's check (check_z: x checked through x W). Returns -1 where the
    chunk is not for _sgemm.h's loops (fm_sgemm_ok: the caller runs its own path), 1
    when x is not finite (out then undefined), else 0."""
    cdef Net net
    cdef Rows part
    cdef int i
    cdef double* params
    cdef Py_ssize_t widest
    net.L = <int>plan[PLAN_LAYERS]
    net.loss = <int>plan[PLAN_LOSS]
    net.fused = plan[PLAN_FUSED] != 0
    net.n_params = plan[PLAN_N_PARAMS]
    net.layers = plan + PLAN_HEAD
    widest = sgemm_all(&net, rows)
    if widest == 0:
        return -1
    params = <double*>malloc(net.L * sizeof(double))
    if params == NULL:
        return -1
    for i in range(net.L):
        params[i] = fparams[i]
    net.params = params
    part = Rows(net=&net, theta=theta, x=x, p0=p0, p1=p1, out=out, widest=widest,
                check=check, check_z=check_z, bad=[0, 0])
    fm_split(forward_rows, &part, rows, split_most(rows))
    free(params)
    return 1 if part.bad[0] or part.bad[1] else 0


cdef double infer(const Net* net, const floating* theta, const floating* X, Py_ssize_t n,
                  Py_ssize_t ldx, Py_ssize_t chunk, Py_ssize_t small, floating* p0,
                  floating* p1, floating* xs, floating* zl, floating* out, const floating* T,
                  bint check) noexcept nogil:
    """Forward pass over X (n, inputs) in chunks of rows, with caller buffers p0, p1
    (chunk, widest layer) so concurrent calls share nothing. A chunk of at most
    ``small`` rows (fastmlp.rules.PREDICT_SMALL_ROWS) goes through the GEMV loops of
    _gemv.h, a bigger one through gemm (see dense_product).

    ldx 0: X is row-major. Otherwise X is column-major, its columns ``ldx`` >= n
    elements apart (a DataFrame's values: Fortran order), and the first layer's gemm
    reads each chunk transposed where it lies, at no extra cost (a copy into rows cost
    more than the whole predict of a narrow first layer). Its outputs then agree with
    those of the same values in rows to rounding (BLAS may sum a transposed operand in
    another order; OpenBLAS gave the same bits in every test). A chunk of at most
    ``small`` rows is copied into rows in xs (small, inputs) and goes through the GEMV
    loops as in rows, so that the last rows, predicted alone or in a DataFrame, get
    the same bits either way.

    T NULL (predict): out (n, outputs) is OVERWRITTEN with the outputs; returns 0.
    Otherwise (evaluate): out and zl are (chunk, outputs) scratch; returns the mean
    loss: each chunk's sum divided by n, then added (the reference's order, so two
    chunks' sums cannot overflow where the mean does not).
    check (predict): each chunk of X is checked to be finite; at the first one that is
    not, returns NaN (out then undefined). Where the first layer has fewer units than
    inputs, its x W (in cache, just written) is checked instead of x, and x only when
    x W is not finite; otherwise x, in one pass that leaves it in cache for the first
    layer.
    """
    cdef int i, L = net.L
    cdef Py_ssize_t start = 0, rows, n_out, lda
    cdef Py_ssize_t n_in = layer_row(net.layers, 0)[LAYER_N_IN]
    cdef Py_ssize_t k_out = layer_row(net.layers, L - 1)[LAYER_N_OUT]
    cdef bint check_z = check and layer_row(net.layers, 0)[LAYER_N_OUT] < n_in
    cdef const int64_t* row
    cdef const floating* a
    cdef floating* z
    cdef floating* f
    cdef double total = 0
    cdef Rows part
    cdef Py_ssize_t widest
    while start < n:
        rows = min(chunk, n - start)
        a = X + (start if ldx else start * n_in)
        if floating is float:
            # predict's float32 rows in the AVX-512 build: the whole forward pass of each
            # part of the rows on a thread of its own (fm_split), one hand-off per chunk;
            # a chunk of at most ``small`` rows goes to the GEMV loops below instead
            widest = sgemm_all(net, rows) if T == NULL and ldx == 0 and rows > small else 0
            if widest:
                part = Rows(net=net, theta=theta, x=a, p0=p0, p1=p1, out=out + start * k_out,
                            widest=widest, check=check, check_z=check_z, bad=[0, 0])
                fm_split(forward_rows, &part, rows, split_most(rows))
                if part.bad[0] or part.bad[1]:
                    return NAN
                start += chunk
                continue
        lda = ldx
        if ldx and rows <= small:
            to_rows(rows, n_in, a, ldx, xs)
            a, lda = xs, 0
        if check and not check_z and not x_finite(rows, n_in, a, lda, <floating*>NULL, 0):
            return NAN
        for i in range(L):
            row = layer_row(net.layers, i)
            n_out = row[LAYER_N_OUT]
            if i < L - 1:
                z = p0 if i % 2 == 0 else p1
                f = z
            elif T == NULL:
                z = out + start * n_out
                f = z
            else:
                z = zl
                f = out
            if i == 0 and lda:
                gemm(True, False, <int>rows, <int>n_out, <int>n_in, <floating>1, a, <int>lda,
                     theta + row[LAYER_W], <int>n_out, <floating>0, z, <int>n_out)
            else:
                dense_product(rows, row[LAYER_N_IN], n_out, a, theta + row[LAYER_W], z,
                              rows <= small)
            # x checked through x W (see check above)
            if i == 0 and check_z and not x_finite(rows, n_in, a, lda, z, n_out):
                return NAN
            bias_activation_forward(rows, n_out, z, theta + row[LAYER_B], <int>row[LAYER_ACT],
                                    <floating>net.params[i], alpha_of(theta, row), f, NULL)
            a = f
        if T != NULL:
            total += loss_forward_backward(rows, k_out, net.loss, zl, out, T + start * k_out,
                                           <floating*>NULL, <floating>0) / n
        start += chunk
    return total


# -- Python entry points -----------------------------------------------------------

cdef int _C_ALIGNED = cnp.NPY_ARRAY_C_CONTIGUOUS | cnp.NPY_ARRAY_ALIGNED
cdef int _WRITABLE = _C_ALIGNED | cnp.NPY_ARRAY_WRITEABLE
cdef Py_ssize_t _INT_MAX = 2147483647  # BLAS takes 32-bit sizes
# A predict's scratch (2 chunks of its widest layer) lives on the stack up to this many
# doubles (16 KiB: 8 rows of 784-256-128-10 in float32), well inside any thread's stack.
cdef enum:
    _STACK_DOUBLES = 2048


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


cdef Py_ssize_t _lead(cnp.ndarray a, bint columns):
    """a's leading dimension in elements when each of its rows (or, with ``columns``,
    its columns) is contiguous, the next one at least as far on; else -1. (The stride
    of an axis of length 1 is never used, and NumPy leaves it arbitrary.)"""
    cdef int inner_axis = 0 if columns else 1
    cdef Py_ssize_t item = cnp.PyArray_ITEMSIZE(a)
    cdef Py_ssize_t count = cnp.PyArray_DIMS(a)[inner_axis]
    cdef Py_ssize_t inner = (cnp.PyArray_STRIDES(a)[inner_axis] if count > 1 else item)
    cdef Py_ssize_t outer = (cnp.PyArray_STRIDES(a)[1 - inner_axis]
                             if cnp.PyArray_DIMS(a)[1 - inner_axis] > 1 else count * item)
    if inner != item or outer % item or outer < count * item:
        return -1
    return outer // item


cdef Py_ssize_t _column_major(object obj, int typenum, Py_ssize_t cols):
    """ldx when obj is an aligned column-major 2-D array of typenum, ``cols`` >= 2 columns
    and 2 <= rows <= ldx < 2**31 rows, its columns ``ldx`` elements apart (Fortran
    order, or a block of rows of such an array) and its rows not adjacent; else 0 (C
    order, or anything _array then checks and names)."""
    if not cnp.PyArray_Check(obj):
        return 0
    cdef cnp.ndarray a = <cnp.ndarray>obj
    if (cnp.PyArray_NDIM(a) != 2 or cnp.PyArray_TYPE(a) != typenum
            or not (cnp.PyArray_FLAGS(a) & cnp.NPY_ARRAY_ALIGNED)
            or (cnp.PyArray_FLAGS(a) & cnp.NPY_ARRAY_C_CONTIGUOUS)
            or cnp.PyArray_DIMS(a)[1] != cols or cols < 2 or cnp.PyArray_DIMS(a)[0] < 2):
        return 0
    cdef Py_ssize_t ldx = _lead(a, True)   # (2 rows and columns or more: both strides count)
    return ldx if 0 < ldx < _INT_MAX else 0


cdef int _check_rows(const int64_t* pm, Py_ssize_t count, Py_ssize_t n_rows,
                     str name) except -1:
    """Refuse an order whose entries are not row indices in [0, n_rows)."""
    cdef Py_ssize_t i
    cdef bint bad = False
    with nogil:
        for i in range(count):
            if pm[i] < 0 or pm[i] >= n_rows:
                bad = True
                break
    if bad:
        raise ValueError(f"{name} must hold row indices in [0, {n_rows}), found {pm[i]}")
    return 0


cdef inline Py_ssize_t _laid_out_rows(object a, Py_ssize_t cols, cnp.dtype dtype):
    """The rows of ``a`` if it is a plain (not a subclass), C-contiguous, aligned 2-D
    ndarray of ``dtype`` (byte order included) with ``cols`` columns and >= 1 row; else 0."""
    if type(a) is not np.ndarray:
        return 0
    cdef cnp.ndarray arr = <cnp.ndarray>a
    if (cnp.PyArray_NDIM(arr) != 2 or cnp.PyArray_DIMS(arr)[1] != cols
            or (cnp.PyArray_FLAGS(arr) & _C_ALIGNED) != _C_ALIGNED):
        return 0
    # the same descriptor object, as NumPy's own float32/float64 arrays have; else ==
    # decides (slowly, but only for an unusual descriptor: '>f4' is not '<f4')
    if <void*>cnp.PyArray_DESCR(arr) != <void*>dtype and not (arr.dtype == dtype):
        return 0
    return cnp.PyArray_DIMS(arr)[0]


def laid_out(a, Py_ssize_t cols, cnp.dtype dtype):
    """fastmlp.validation.laid_out in C (the same answer for every object; tested so):
    True when ``a`` is a C-contiguous, aligned 2-D ndarray of ``dtype`` with ``cols``
    columns and at least one row. O(1); its values are not read. ~50 ns where the
    Python attribute reads cost ~350: most of a 1-row predict's Python."""
    return _laid_out_rows(a, cols, dtype) > 0


def laid_out_xy(X, Y, Py_ssize_t n_in, Py_ssize_t n_out, cnp.dtype dtype):
    """fastmlp.validation.laid_out_xy in C: laid_out(X, n_in, dtype) and
    laid_out(Y, n_out, dtype) with as many rows as X -- a train_on_batch ready for the
    backends as it is."""
    cdef Py_ssize_t n = _laid_out_rows(X, n_in, dtype)
    return n > 0 and _laid_out_rows(Y, n_out, dtype) == n


cdef inline bint _class_index(const char* p, int typenum, Py_ssize_t k,
                              Py_ssize_t* index) noexcept nogil:
    """The integer of NumPy type ``typenum`` at p (native byte order, maybe unaligned) as
    index[0] when it lies in [0, k): True; else False (and for any other type)."""
    cdef long long v
    cdef unsigned long long u
    if typenum == cnp.NPY_BYTE or typenum == cnp.NPY_SHORT or typenum == cnp.NPY_INT \
            or typenum == cnp.NPY_LONG or typenum == cnp.NPY_LONGLONG:
        if typenum == cnp.NPY_BYTE:
            v = (<const signed char*>p)[0]
        elif typenum == cnp.NPY_SHORT:
            v = _load_short(p)
        elif typenum == cnp.NPY_INT:
            v = _load_int(p)
        elif typenum == cnp.NPY_LONG:
            v = _load_long(p)
        else:
            v = _load_longlong(p)
        if v < 0 or v >= k:
            return False
        index[0] = <Py_ssize_t>v
        return True
    if typenum == cnp.NPY_UBYTE:
        u = (<const unsigned char*>p)[0]
    elif typenum == cnp.NPY_USHORT:
        u = <unsigned short>_load_short(p)
    elif typenum == cnp.NPY_UINT:
        u = <unsigned int>_load_int(p)
    elif typenum == cnp.NPY_ULONG:
        u = <unsigned long>_load_long(p)
    elif typenum == cnp.NPY_ULONGLONG:
        u = <unsigned long long>_load_longlong(p)
    else:
        return False
    if u >= <unsigned long long>k:
        return False
    index[0] = <Py_ssize_t>u
    return True


# loads through memcpy: an integer array's data need not be aligned
cdef inline short _load_short(const char* p) noexcept nogil:
    cdef short v
    memcpy(&v, p, sizeof(short))
    return v


cdef inline int _load_int(const char* p) noexcept nogil:
    cdef int v
    memcpy(&v, p, sizeof(int))
    return v


cdef inline long _load_long(const char* p) noexcept nogil:
    cdef long v
    memcpy(&v, p, sizeof(long))
    return v


cdef inline long long _load_longlong(const char* p) noexcept nogil:
    cdef long long v
    memcpy(&v, p, sizeof(long long))
    return v


def index_targets(Y, Py_ssize_t n_rows, Py_ssize_t k, cnp.dtype dtype):
    """fastmlp.validation.index_targets in C (the same answer for every object; tested
    so): one-hot targets (n_rows, k) of ``dtype`` (float32 or float64), C-contiguous,
    for class indices Y, a plain ndarray (n_rows,) or (n_rows, 1) of a native-order
    integer dtype with every value in [0, k); else None. One pass over Y, read where it
    lies (any stride)."""
    if type(Y) is not np.ndarray or n_rows <= 0 or k <= 0:
        return None
    cdef cnp.ndarray y = <cnp.ndarray>Y
    cdef int nd = cnp.PyArray_NDIM(y)
    if nd < 1 or nd > 2 or cnp.PyArray_DIMS(y)[0] != n_rows:
        return None
    if nd == 2 and cnp.PyArray_DIMS(y)[1] != 1:
        return None
    if not cnp.PyArray_ISNOTSWAPPED(y):
        return None
    cdef int typenum = cnp.PyArray_TYPE(y)
    cdef int out_type = dtype.type_num
    if out_type != cnp.NPY_FLOAT32 and out_type != cnp.NPY_FLOAT64:
        return None
    cdef cnp.npy_intp dims[2]
    dims[0], dims[1] = n_rows, k
    cdef cnp.ndarray T = cnp.PyArray_ZEROS(2, dims, out_type, 0)
    cdef const char* p = <const char*>cnp.PyArray_DATA(y)
    cdef Py_ssize_t stride = cnp.PyArray_STRIDES(y)[0]
    cdef Py_ssize_t i, j
    cdef float* t32 = <float*>cnp.PyArray_DATA(T)
    cdef double* t64 = <double*>cnp.PyArray_DATA(T)
    for i in range(n_rows):
        if not _class_index(p + i * stride, typenum, k, &j):
            return None
        if out_type == cnp.NPY_FLOAT32:
            t32[i * k + j] = 1
        else:
            t64[i * k + j] = 1
    return T


cdef bint _overlap(cnp.ndarray a, cnp.ndarray b):
    """Whether the bytes a and b span (first to last element) meet, a and b 1-D or 2-D
    with non-negative strides on their axes longer than 1."""
    cdef char* lo_a = <char*>cnp.PyArray_DATA(a)
    cdef char* lo_b = <char*>cnp.PyArray_DATA(b)
    return lo_a < lo_b + _extent(b) and lo_b < lo_a + _extent(a)


cdef Py_ssize_t _extent(cnp.ndarray a):
    """Bytes from a's first element to the end of its last (a's axes longer than 1 have
    non-negative strides)."""
    cdef Py_ssize_t end = cnp.PyArray_ITEMSIZE(a)
    cdef int axis
    for axis in range(cnp.PyArray_NDIM(a)):
        if cnp.PyArray_DIMS(a)[axis] > 1:
            end += (cnp.PyArray_DIMS(a)[axis] - 1) * cnp.PyArray_STRIDES(a)[axis]
    return end


def scale_into(out, X, mean, scale):
    """out[...] = (X - mean) / scale, each value in float64, then cast to out's dtype
    (fastmlp.validation._scale_into's arithmetic, bit for bit; see _scaling.h), the
    GIL released. X and out (n, k): aligned float32 or float64 arrays with rows, both
    with each row's values adjacent (C order) or both with each column's (Fortran
    order, or a block of rows of such an array), out writable and sharing no memory
    with the others (the pass reads and writes through restrict pointers); mean and
    scale float64 (k,), C-contiguous. Returns True; False, writing nothing, for
    anything else (NumPy then computes it)."""
    if not (cnp.PyArray_Check(out) and cnp.PyArray_Check(X) and cnp.PyArray_Check(mean)
            and cnp.PyArray_Check(scale)):
        return False
    cdef cnp.ndarray o = <cnp.ndarray>out, x = <cnp.ndarray>X
    cdef cnp.ndarray mu = <cnp.ndarray>mean, sd = <cnp.ndarray>scale
    if (cnp.PyArray_NDIM(o) != 2 or cnp.PyArray_NDIM(x) != 2
            or cnp.PyArray_DIMS(o)[0] != cnp.PyArray_DIMS(x)[0]
            or cnp.PyArray_DIMS(o)[1] != cnp.PyArray_DIMS(x)[1]
            or cnp.PyArray_DIMS(x)[0] < 1 or cnp.PyArray_DIMS(x)[1] < 1):
        return False
    cdef Py_ssize_t rows = cnp.PyArray_DIMS(x)[0], cols = cnp.PyArray_DIMS(x)[1]
    cdef int vectors = cnp.NPY_ARRAY_C_CONTIGUOUS | cnp.NPY_ARRAY_ALIGNED
    for v in (mu, sd):
        if (cnp.PyArray_NDIM(<cnp.ndarray>v) != 1 or cnp.PyArray_DIMS(<cnp.ndarray>v)[0] != cols
                or cnp.PyArray_TYPE(<cnp.ndarray>v) != cnp.NPY_FLOAT64
                or not cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>v)
                or (cnp.PyArray_FLAGS(<cnp.ndarray>v) & vectors) != vectors):
            return False
    cdef int xt = cnp.PyArray_TYPE(x), ot = cnp.PyArray_TYPE(o)
    if (xt not in (cnp.NPY_FLOAT32, cnp.NPY_FLOAT64) or ot not in (cnp.NPY_FLOAT32, cnp.NPY_FLOAT64)
            or not cnp.PyArray_ISNOTSWAPPED(x) or not cnp.PyArray_ISNOTSWAPPED(o)
            or not cnp.PyArray_ISALIGNED(x) or not cnp.PyArray_ISALIGNED(o)
            or not cnp.PyArray_ISWRITEABLE(o)):
        return False
    cdef bint columns = False
    cdef Py_ssize_t ldx = _lead(x, False), ldo = _lead(o, False)
    if ldx < 0 or ldo < 0:
        columns = True
        ldx, ldo = _lead(x, True), _lead(o, True)
        if ldx < 0 or ldo < 0:
            return False
    if _overlap(o, x) or _overlap(o, mu) or _overlap(o, sd):
        return False
    cdef const double* m = <const double*>cnp.PyArray_DATA(mu)
    cdef const double* s = <const double*>cnp.PyArray_DATA(sd)
    cdef void* xp = cnp.PyArray_DATA(x)
    cdef void* op = cnp.PyArray_DATA(o)
    with nogil:
        if xt == cnp.NPY_FLOAT32 and ot == cnp.NPY_FLOAT32:
            fm_scale_f32_f32(rows, cols, <const float*>xp, ldx, m, s, <float*>op, ldo, columns)
        elif xt == cnp.NPY_FLOAT32:
            fm_scale_f32_f64(rows, cols, <const float*>xp, ldx, m, s, <double*>op, ldo, columns)
        elif ot == cnp.NPY_FLOAT32:
            fm_scale_f64_f32(rows, cols, <const double*>xp, ldx, m, s, <float*>op, ldo, columns)
        else:
            fm_scale_f64_f64(rows, cols, <const double*>xp, ldx, m, s, <double*>op, ldo,
                             columns)
    return True


cdef class Engine:
    """Compiled network of one dtype with its training workspace.

    Engine(net, dtype, train_rows, predict_rows, fold_rows) takes a
    fastmlp.network.Network and the rules of fastmlp.rules: its Net and every
    Work are filled from ``net.plan(cap, fold_rows)``, the layout the Numba
    kernels run on too. The plan is checked once per workspace, every method
    checks its arrays' dtype, layout and shape before any kernel runs (unaligned
    inputs X, T and perm are copied). The workspace holds at most ``train_rows``
    rows (bigger batches go through it in chunks) and is reused; predict and
    evaluate take ``predict_rows`` rows at a time, a chunk of at most ``small_rows``
    rows (fastmlp.rules.PREDICT_SMALL_ROWS; 0: none) through the GEMV loops of
    _gemv.h rather than BLAS; predict_checked also checks X finite on the way.
    train_step and train_epoch
    hold a per-engine lock around the workspace; loss_and_gradient uses it when
    the lock is free and a workspace of its own otherwise; predict and evaluate
    allocate their own buffers. So predict, evaluate and loss_and_gradient may run
    from many threads at once, each giving the single-thread result bit for bit.
    """
    cdef Net net
    cdef Work work
    cdef readonly object dtype
    cdef readonly Py_ssize_t train_rows, predict_rows, fold_rows, small_rows
    cdef int typenum
    cdef Py_ssize_t widest, itemsize, n_in, n_out
    cdef object _network   # the fastmlp.network.Network whose plans fill the structs
    cdef object _keep      # arrays that Net points into
    cdef object _bufs      # arrays that Work points into
    cdef object _backup    # train_step_checked's copy of theta and buffers in use, when needed
    cdef Bounds bounds     # train_step_checked's bounds on theta and the buffers ...
    cdef object _bounded   # ... of these arrays: (theta, state.buffers)
    cdef bint unit_targets  # cross-entropies: targets must lie in [0, 1]
    cdef PyThread_type_lock lock

    def __cinit__(self):
        self.lock = PyThread_allocate_lock()
        if self.lock == NULL:
            raise MemoryError("cannot allocate a lock")

    def __dealloc__(self):
        if self.lock != NULL:
            PyThread_free_lock(self.lock)

    def __init__(self, net, dtype, Py_ssize_t train_rows, Py_ssize_t predict_rows,
                 Py_ssize_t fold_rows, Py_ssize_t small_rows=0):
        if self.net.L:
            raise RuntimeError("an Engine is initialised once")  # kernels may be running on it
        if train_rows < 1 or predict_rows < 1:
            raise ValueError(f"train_rows and predict_rows must be >= 1, got {train_rows} "
                             f"and {predict_rows}")
        if small_rows < 0:
            raise ValueError(f"small_rows must be >= 0, got {small_rows}")
        self.dtype = np.dtype(dtype)
        self.itemsize = self.dtype.itemsize
        if self.dtype == np.float32:
            self.typenum = cnp.NPY_FLOAT32
        elif self.dtype == np.float64:
            self.typenum = cnp.NPY_FLOAT64
        else:
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        self._network = net
        self.train_rows, self.predict_rows, self.fold_rows = train_rows, predict_rows, fold_rows
        self.small_rows = small_rows
        # Copies: the kernels read these for the Engine's life, checked once here.
        plan = self._plan(1)
        params = np.array(net.act_params, dtype=np.float64, order="C")
        L = int(plan[PLAN_LAYERS])
        if params.shape != (L,):
            raise ValueError(f"act_params has shape {params.shape}, the plan {L} layers")
        rows = plan[PLAN_HEAD:].reshape(L, LAYER_FIELDS)
        self._keep = (plan, params)
        self.net.L = L
        self.net.loss = <int>plan[PLAN_LOSS]
        self.net.fused = plan[PLAN_FUSED] != 0
        self.net.n_params = plan[PLAN_N_PARAMS]
        self.net.layers = <int64_t*>cnp.PyArray_DATA(plan) + PLAN_HEAD
        self.net.params = <double*>cnp.PyArray_DATA(params)
        self.widest = plan[PLAN_WIDEST]
        self.n_in, self.n_out = rows[0, LAYER_N_IN], rows[L - 1, LAYER_N_OUT]
        self.work.cap = 0
        self._reserve(1)
        self.unit_targets = net.loss.output is not None

    cdef object _plan(self, Py_ssize_t cap):
        """net.plan(cap, fold_rows) as a C-contiguous int64 copy, checked: sizes that
        chain, known codes, pieces inside theta and buffers inside the workspace."""
        plan = np.array(self._network.plan(cap, self.fold_rows), dtype=np.int64, order="C")
        if plan.ndim != 1 or len(plan) < PLAN_HEAD + LAYER_FIELDS:
            raise ValueError("the plan has no layer")
        L = int(plan[PLAN_LAYERS])
        if L < 1 or len(plan) != PLAN_HEAD + L * LAYER_FIELDS:
            raise ValueError(f"the plan's length {len(plan)} does not hold {L} layers")
        rows = plan[PLAN_HEAD:].reshape(L, LAYER_FIELDS)
        n_in, n_out = rows[:, LAYER_N_IN], rows[:, LAYER_N_OUT]
        if min(n_in.min(), n_out.min()) < 1 or max(n_in.max(), n_out.max()) > _INT_MAX:
            raise ValueError(f"layer widths must be in [1, 2**31), got {n_in.tolist()} -> "
                             f"{n_out.tolist()}")
        if (n_in[1:] != n_out[:-1]).any():
            raise ValueError("a layer's inputs differ from the previous layer's outputs")
        if plan[PLAN_WIDEST] != n_out.max() or plan[PLAN_CAP] != cap:
            raise ValueError("the plan's widest layer or capacity is wrong")
        for c in rows[:, LAYER_ACT]:
            if not _has(_known_activation, c):
                raise ValueError(f"unknown activation code {c}: the Cython kernels have no "
                                 f"section for it (known: {known_codes()['activation']})")
        if not _has(_known_loss, plan[PLAN_LOSS]):
            raise ValueError(f"unknown loss code {plan[PLAN_LOSS]}: the Cython kernels have no "
                             f"section for it (known: {known_codes()['loss']})")
        pieces = np.stack([n_in * n_out, n_out, n_out], axis=1)
        at = rows[:, LAYER_W:LAYER_ALPHA + 1]
        has_alpha = at[:, 2] >= 0
        if (at[:, :2].min() < 0 or (at + pieces).max() > plan[PLAN_N_PARAMS]
                or (has_alpha != (rows[:, LAYER_ACT] == PRELU)).any()):
            raise ValueError("parameter offsets fall outside theta")
        buffers = [(plan[WS_ACT_PARAMS], L), (plan[WS_GRAD], plan[PLAN_N_PARAMS]),
                   (plan[WS_XB], 2 * cap * n_in[0]), (plan[WS_TB], 2 * cap * n_out[-1]),
                   (plan[WS_D0], cap * n_out.max()), (plan[WS_D1], cap * n_out.max())]
        buffers += [(z, cap * k) for z, k in zip(rows[:, LAYER_Z], n_out)]
        buffers += [(f, cap * k) for f, k in zip(rows[:, LAYER_F], n_out)]
        if min(s for s, _ in buffers) < 0 or max(s + k for s, k in buffers) > plan[PLAN_WS_SIZE]:
            raise ValueError("workspace offsets fall outside the workspace")
        return plan

    cdef object _new_work(self, Work* w, Py_ssize_t rows):
        """Fill w with a workspace for batches (or chunks) of min(rows, train_rows) rows,
        laid out by its plan; returns the arrays it points into, which must outlive its use."""
        cdef Py_ssize_t cap = max(1, min(rows, self.train_rows))
        plan = self._plan(cap)
        cdef const int64_t* p = <int64_t*>cnp.PyArray_DATA(<cnp.ndarray>plan)
        ws = aligned_empty(p[PLAN_WS_SIZE], self.dtype)   # every buffer on a cache line (plan)
        cdef char* base = <char*>cnp.PyArray_DATA(<cnp.ndarray>ws)
        cdef Py_ssize_t size = self.itemsize
        w.ws = base
        w.d0 = base + p[WS_D0] * size
        w.d1 = base + p[WS_D1] * size
        w.xb = base + p[WS_XB] * size
        w.tb = base + p[WS_TB] * size
        w.grad = base + p[WS_GRAD] * size
        w.layers = p + PLAN_HEAD
        w.fold_rows = p[PLAN_FOLD_ROWS]
        w.cap = cap
        maxima = np.zeros(4 * self.net.L, dtype=np.float64)
        w.maxima = <double*>cnp.PyArray_DATA(maxima)
        return (plan, ws, maxima)

    cdef int _reserve(self, Py_ssize_t rows) except -1:
        """Grow the shared workspace (lock held) to min(rows, train_rows) rows; it never shrinks."""
        if min(rows, self.train_rows) > self.work.cap:
            self._bufs = self._new_work(&self.work, rows)
        return 0

    cdef inline void _lock(self):
        if not PyThread_acquire_lock(self.lock, NOWAIT_LOCK):
            with nogil:
                PyThread_acquire_lock(self.lock, WAIT_LOCK)

    cdef Py_ssize_t _rows(self, object X, object T) except -1:
        _array(X, self.typenum, -1, self.n_in, False, "X")
        cdef Py_ssize_t n = cnp.PyArray_DIMS(<cnp.ndarray>X)[0]
        _array(T, self.typenum, n, self.n_out, False, "T")
        return n

    cdef int _state(self, state, char** buf, double** h, int64_t** step) except -1:
        """Point buf, h and step at state.buffers (2, n_params), .hyper and .step, each
        checked; returns state.code, refused unless the kernels know it."""
        cdef int code = state.code
        buf[0] = _array(state.buffers, self.typenum, 2, self.net.n_params, True, "state.buffers")
        h[0] = <double*>_array(state.hyper, cnp.NPY_FLOAT64, N_HYPER, -1, False, "state.hyper")
        step[0] = <int64_t*>_array(state.step, cnp.NPY_INT64, 1, -1, True, "state.step")
        if not _has(_known_optimizer, code):
            raise ValueError(f"unknown optimizer code {code} (known: {known_codes()['optimizer']})")
        return code

    def layout(self):
        """What the Net and shared Work structs hold, read back from them (for tests):
        {"net": the Net's header fields by PLAN_* name and "layers" (L, LAYER_FIELDS),
        "work": the Work's PLAN_CAP, PLAN_FOLD_ROWS, WS_* offsets (elements from the
        workspace's start) and "layers" (L, LAYER_FIELDS)}."""
        cdef Py_ssize_t i, size = self.itemsize
        cdef char* base = <char*>self.work.ws
        L = self.net.L
        net_rows = np.array([self.net.layers[i] for i in range(L * LAYER_FIELDS)], dtype=np.int64)
        work_rows = np.array([self.work.layers[i] for i in range(L * LAYER_FIELDS)], dtype=np.int64)
        return {
            "net": {"PLAN_LAYERS": L, "PLAN_LOSS": self.net.loss, "PLAN_FUSED": int(self.net.fused),
                    "PLAN_N_PARAMS": self.net.n_params, "PLAN_WIDEST": self.widest,
                    "layers": net_rows.reshape(L, LAYER_FIELDS)},
            "work": {"PLAN_CAP": self.work.cap, "PLAN_FOLD_ROWS": self.work.fold_rows,
                     "WS_D0": (<char*>self.work.d0 - base) // size,
                     "WS_D1": (<char*>self.work.d1 - base) // size,
                     "WS_XB": (<char*>self.work.xb - base) // size,
                     "WS_TB": (<char*>self.work.tb - base) // size,
                     "WS_GRAD": (<char*>self.work.grad - base) // size,
                     "layers": work_rows.reshape(L, LAYER_FIELDS)},
        }

    def train_step(self, theta, state, X, T):
        """One optimiser step on (X, T); theta and state updated in place. Returns the
        batch loss before the step."""
        X, T = _aligned(X), _aligned(T)
        cdef Py_ssize_t P = self.net.n_params
        cdef char* th = _array(theta, self.typenum, P, -1, True, "theta")
        cdef Py_ssize_t n = self._rows(X, T)
        cdef char* x = <char*>cnp.PyArray_DATA(<cnp.ndarray>X)
        cdef char* t = <char*>cnp.PyArray_DATA(<cnp.ndarray>T)
        cdef char* buf
        cdef double* h
        cdef int64_t* step
        cdef int code = self._state(state, &buf, &h, &step)
        cdef double loss
        self._lock()
        try:
            self._reserve(n)
            self.bounds.known = False  # theta and the state change unguarded
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

    def train_step_checked(self, theta, state, X, T):
        """train_step, guarded, in one call with the GIL released; returns (loss, status).
        Status 1: X or T is not finite (or, for a cross-entropy, T is outside [0, 1]);
        nothing ran or changed (loss NaN). Status 2: the step would have made the loss,
        theta or the optimiser buffers in use non-finite: theta, state.buffers and
        state.step are as before it. Status 0: the step of train_step, bit for bit.

        Copy-free (see train_guarded): the Engine keeps upper bounds on max |theta| and
        the buffers of the (theta, state.buffers) it was last given, and proves each
        update finite before writing it; anything else that writes them must call
        forget_bounds() (the backend's push() does), or the next proof may be wrong.
        A backup (theta and the buffers in use) is allocated only when a proof fails."""
        X, T = _aligned(X), _aligned(T)
        cdef Py_ssize_t P = self.net.n_params
        cdef char* th = _array(theta, self.typenum, P, -1, True, "theta")
        cdef Py_ssize_t n = self._rows(X, T)
        cdef char* x = <char*>cnp.PyArray_DATA(<cnp.ndarray>X)
        cdef char* t = <char*>cnp.PyArray_DATA(<cnp.ndarray>T)
        cdef char* buf
        cdef double* h
        cdef int64_t* step
        cdef int code = self._state(state, &buf, &h, &step)
        cdef double loss = float("nan")
        cdef int status = 3
        cdef char* backup = NULL
        self._lock()
        try:
            self._reserve(n)
            bounded = self._bounded
            if bounded is None or bounded[0] is not theta or bounded[1] is not state.buffers:
                self.bounds.known = False
                self._bounded = (theta, state.buffers)
            if self._backup is not None:
                backup = <char*>cnp.PyArray_DATA(<cnp.ndarray>self._backup)
            while status == 3:  # at most twice: 3 only when there is no backup
                with nogil:
                    if self.typenum == cnp.NPY_FLOAT64:
                        status = train_guarded(&self.net, &self.work, <double*>th, <double*>x,
                                               <double*>t, n, <double*>buf, code, h, step,
                                               self.unit_targets, &self.bounds,
                                               <double*>backup, &loss)
                    else:
                        status = train_guarded(&self.net, &self.work, <float*>th, <float*>x,
                                               <float*>t, n, <float*>buf, code, h, step,
                                               self.unit_targets, &self.bounds,
                                               <float*>backup, &loss)
                if status == 3:  # theta and both buffers, whatever the optimiser
                    self._backup = np.empty(3 * P, dtype=self.dtype)
                    backup = <char*>cnp.PyArray_DATA(<cnp.ndarray>self._backup)
        finally:
            PyThread_release_lock(self.lock)
        return loss, status

    def forget_bounds(self):
        """Say that theta or the optimiser state was written outside train_step_checked:
        its next call measures them again (one read) instead of trusting its bounds."""
        self._lock()
        self.bounds.known = False
        PyThread_release_lock(self.lock)

    def guard_paths(self):
        """How train_step_checked wrote its steps so far (for tests): {"proven": on
        bounds alone, "measured": after measuring theta and the buffers, "backed_up":
        with a backup, the update not provably finite}."""
        return {"proven": self.bounds.proven, "measured": self.bounds.measured,
                "backed_up": self.bounds.backed_up}

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
        cdef Py_ssize_t n = cnp.PyArray_DIMS(<cnp.ndarray>perm)[0]
        cdef char* buf
        cdef double* h
        cdef int64_t* step
        cdef int code = self._state(state, &buf, &h, &step)
        cdef double loss
        cdef double* nrm = NULL
        if norms is not None:
            nrm = <double*>_array(norms, cnp.NPY_FLOAT64, self.net.L, -1, True, "norms")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if n == 0:
            raise ValueError("perm is empty: an epoch needs at least one row")
        _check_rows(pm, n, n_rows, "perm")
        batch_size = min(batch_size, n)
        self._lock()
        try:
            self._reserve(batch_size)
            self.bounds.known = False  # theta and the state change unguarded
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

    def train_epochs(self, theta, state, X, T, orders, Py_ssize_t batch_size, double tol,
                     losses):
        """train_epoch once per row of orders (k, n), in one call with the GIL released;
        returns (epochs done, status). losses float64 (k,) OVERWRITTEN with each run
        epoch's loss. Each epoch's loss is checked to be finite, and theta and the
        optimiser buffers in use after the last epoch run: status 2 at an epoch whose
        loss is not finite, or at the last if they are not (its loss written; done
        counts the epochs before it, of which one may have made theta or the buffers
        non-finite: see fastmlp.backends), status 1 after an epoch whose loss is <= tol
        (tol < 0: none), else status 0 and done == k."""
        X, T, orders = _aligned(X), _aligned(T), _aligned(orders)
        cdef Py_ssize_t P = self.net.n_params
        cdef char* th = _array(theta, self.typenum, P, -1, True, "theta")
        cdef Py_ssize_t n_rows = self._rows(X, T)
        cdef char* x = <char*>cnp.PyArray_DATA(<cnp.ndarray>X)
        cdef char* t = <char*>cnp.PyArray_DATA(<cnp.ndarray>T)
        if not cnp.PyArray_Check(orders) or cnp.PyArray_NDIM(<cnp.ndarray>orders) != 2:
            raise ValueError("orders must be a 2-D int64 array (epochs, rows)")
        cdef Py_ssize_t k = cnp.PyArray_DIMS(<cnp.ndarray>orders)[0]
        cdef Py_ssize_t n = cnp.PyArray_DIMS(<cnp.ndarray>orders)[1]
        cdef int64_t* pm = <int64_t*>_array(orders, cnp.NPY_INT64, k, n, False, "orders")
        cdef double* out = <double*>_array(losses, cnp.NPY_FLOAT64, k, -1, True, "losses")
        cdef char* buf
        cdef double* h
        cdef int64_t* step
        cdef int code = self._state(state, &buf, &h, &step)
        cdef int status = 0, scoped
        cdef Py_ssize_t done = 0
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if k == 0:
            return 0, 0
        if n == 0:
            raise ValueError("orders has no rows: an epoch needs at least one row")
        _check_rows(pm, k * n, n_rows, "orders")
        batch_size = min(batch_size, n)
        self._lock()
        try:
            self._reserve(batch_size)
            self.bounds.known = False  # theta and the state change unguarded
            with nogil:
                scoped = fm_gemm_scope(1)   # fit's epochs: the float32 GEMM loops' scope
                if self.typenum == cnp.NPY_FLOAT64:
                    status = train_epochs(&self.net, &self.work, <double*>th, <double*>x,
                                          <double*>t, pm, k, n, batch_size, <double*>buf, code,
                                          h, step, tol, out, &done)
                else:
                    status = train_epochs(&self.net, &self.work, <float*>th, <float*>x,
                                          <float*>t, pm, k, n, batch_size, <float*>buf, code,
                                          h, step, tol, out, &done)
                fm_gemm_scope(scoped)
        finally:
            PyThread_release_lock(self.lock)
        return done, status

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
                                          NULL, n, <double*>g, NULL, NULL)
                else:
                    loss = batch_gradient(&self.net, w, <float*>th, <float*>x, <float*>t,
                                          NULL, n, <float*>g, NULL, NULL)
        finally:
            if shared:
                PyThread_release_lock(self.lock)
        return loss

    def predict(self, theta, X, out=None):
        """The outputs of X (n, inputs): ``out`` (n, outputs), OVERWRITTEN and returned
        (a new array when None); X processed ``predict_rows`` rows at a time. X may be
        row-major or column-major (Fortran order, or a block of rows of such an array),
        read where it lies (see infer)."""
        return self._infer(theta, _aligned(X), None, out, False)

    def predict_checked(self, theta, X, out):
        """predict into ``out`` (n, outputs), OVERWRITTEN, checking on the way that X (n,
        inputs) is finite: returns True when it is, False when X holds NaN or inf (out is
        then undefined). Each chunk of X is checked just before the first layer reads it,
        while it is in cache, so no separate pass over X is made. X and out must be
        aligned arrays of the dtype, out C-contiguous, X C-contiguous or column-major as
        predict takes it (X is not copied); the same outputs as predict, bit for bit."""
        return self._infer(theta, X, None, out, True) is out

    def evaluate(self, theta, X, T):
        """Mean loss over (X, T), computed ``predict_rows`` rows at a time."""
        return self._infer(theta, _aligned(X), _aligned(T), None, False)

    cdef object _infer(self, theta, X, T, out, bint check):
        """predict (T None) or evaluate; with ``check``, predict returns None instead of
        out when X is not finite. predict also takes a column-major X (see infer)."""
        cdef char* th = _array(theta, self.typenum, self.net.n_params, -1, False, "theta")
        cdef Py_ssize_t ldx = 0 if T is not None else _column_major(X, self.typenum, self.n_in)
        cdef char* x = (<char*>cnp.PyArray_DATA(<cnp.ndarray>X) if ldx
                        else _array(X, self.typenum, -1, self.n_in, False, "X"))
        cdef Py_ssize_t n = cnp.PyArray_DIMS(<cnp.ndarray>X)[0]
        cdef Py_ssize_t n_out = self.n_out
        cdef Py_ssize_t chunk = min(self.predict_rows, n)
        cdef char* t = NULL
        # Per-call buffers, so concurrent calls share nothing mutable: on the stack when
        # they fit (the small predicts, whose time a NumPy allocation would show in).
        cdef double stack[_STACK_DOUBLES]
        cdef char* p0 = <char*>stack
        cdef Py_ssize_t small = self.small_rows
        # (and, for a column-major X, a short chunk copied into rows: see infer)
        cdef Py_ssize_t xs_items = min(small, chunk) * self.n_in if ldx else 0
        cdef Py_ssize_t need = (2 * chunk * self.widest + xs_items) * self.itemsize
        scratch = None
        if T is not None:
            t = _array(T, self.typenum, n, n_out, False, "T")
            out = np.empty(2 * chunk * n_out, dtype=self.dtype)  # the last layer's z and f
        elif out is None:
            out = np.empty((n, n_out), dtype=self.dtype)
        else:
            _array(out, self.typenum, n, n_out, True, "out")
        if need > _STACK_DOUBLES * <Py_ssize_t>sizeof(double):
            scratch = np.empty(2 * chunk * self.widest + xs_items, dtype=self.dtype)
            p0 = <char*>cnp.PyArray_DATA(scratch)
        cdef char* p1 = p0 + chunk * self.widest * self.itemsize
        cdef char* xs = p1 + chunk * self.widest * self.itemsize
        cdef char* o = <char*>cnp.PyArray_DATA(<cnp.ndarray>out)
        cdef char* zl = o + chunk * n_out * self.itemsize  # evaluate only
        cdef double total
        with nogil:
            if self.typenum == cnp.NPY_FLOAT64:
                total = infer(&self.net, <double*>th, <double*>x, n, ldx, chunk, small,
                              <double*>p0, <double*>p1, <double*>xs, <double*>zl, <double*>o,
                              <double*>t, check)
            else:
                total = infer(&self.net, <float*>th, <float*>x, n, ldx, chunk, small,
                              <float*>p0, <float*>p1, <float*>xs, <float*>zl, <float*>o,
                              <float*>t, check)
        if T is not None:
            return total  # infer's mean
        return out if total == 0 else None


def _use_gemv(int nbytes):
    """Test hook: run the small-batch GEMV copy of at most ``nbytes`` (16, 32 or 64) that
    this processor supports; returns its width (see _gemv.h), which GEMV_BYTES keeps
    naming the import-time choice of. Not while kernels run in other threads."""
    return fm_gemv_use(nbytes)


def _use_sgemm(int on=-1):
    """Test hook: whether predict's float32 batches and the other float32 products
    (_sgemm_blas.h; the Numba kernels' too, through own_sgemm64_address) go through
    _sgemm.h's loops (1) or BLAS (0); ``on`` -1 only asks. Returns the setting before;
    always 0 in a build without AVX-512. Not while kernels run in other threads."""
    return fm_sgemm_use(on)


def own_sgemm64_address(size_t blas_sgemm64):
    """The address of _sgemm_blas.h's fm_sgemm64_own: the Fortran sgemm ABI with 64-bit
    integers, a product on this extension's float32 GEMM loops where they take it (both
    threads, as its own train steps run them: the same bits), else on ``blas_sgemm64``
    (an sgemm of that ABI, the one the Numba kernels called before: kernels/numba_blas.py
    binds its symbol to the address returned). 0 in a build without those loops (no
    AVX-512). Every call sets the fallback for the whole process."""
    if not fm_gemm_built():
        return 0
    return <size_t>fm_own_sgemm64(<void*>blas_sgemm64)


def gemm_policy(int policy=-1):
    """Where float32 products run on this build's GEMM loops (_sgemm_blas.h): 0 never,
    1 inside fit's compiled epochs only, 2 every call, 3 (the default) every call where
    their other threads are the BLAS's own and it runs at most 2 threads (_blas_pool.h),
    else as 1; -1 only asks.
    Returns the setting before (always 0 in a build without those loops). Both backends'
    kernels follow it (the Numba kernels' through own_sgemm64_address, their epochs
    through gemm_scope). fastmlp.set_gemm_loops is the public switch."""
    return fm_gemm_use(policy)


def _pack_gemm(int mode=-1):
    """Test hook: which float32 products on the GEMM loops (_sgemm_blas.h) copy their
    operands into panels first: 1 (the default) those whose B is over 1 MiB (else BLAS
    takes them), 0 none (BLAS takes those), 2 every product the loops take; -1 only
    asks. Returns the setting before (always 0 in a build without those loops). Not
    while kernels run in other threads."""
    return fm_gemm_packed_use(mode)


def _gemm_scratch():
    """Test hook: (address, floats) of the calling thread's buffer for op(B) = B^T's copy
    and the packed copies in the float32 GEMM loops (_sgemm_blas.h), which the thread
    keeps between products;
    (0, 0) before its first such product, and always in a build without those loops."""
    if not fm_gemm_built():
        return 0, 0
    return <size_t>fm_gemm_scratch, fm_gemm_scratch_floats


def gemm_scope(bint on):
    """The calling thread inside (True) or outside fit's compiled epochs, for policy 1
    (gemm_policy); returns the setting before. The Numba backend's train_epochs calls it
    around its kernel (the Cython kernels' own do so themselves)."""
    return fm_gemm_scope(on) != 0


def forward_address():
    """The address of forward_f32, the float32 predict chunk on _sgemm.h's loops, which
    the Numba backend's predict calls by name (kernels/numba_gemv.py): a C function
    int (const int64_t* plan, const float* fparams, const float* theta, const float* x,
    Py_ssize_t rows, float* p0, float* p1, float* out, int check, int check_z)."""
    return <size_t><void*>forward_f32


def gemv_addresses():
    """(float32, float64): the addresses of the small-batch GEMV functions (_gemv.h's
    fm_xw_f32 and fm_xw_f64: the copy in use, and the worker thread for a big W), C
    functions (rows, n_in, n_out, x, W, z) with Py_ssize_t sizes. The Numba kernels call
    these same functions by name (see kernels/numba_gemv.py), so both backends run one
    GEMV code."""
    return <size_t><void*>fm_xw_f32, <size_t><void*>fm_xw_f64


def gemv_threads(int n=0):
    """The most threads (1 or 2) the small-batch GEMV of a big W uses (_gemv_pool.h):
    ``n`` >= 1 sets it (more than 2 is 2; fastmlp.set_num_threads does), 0 reads it.
    Returns the limit in effect (always 1 where the extension is built without the
    worker thread; where one could not be started, _gemv_pool()["state"] is -1 and
    every call runs on the calling thread alone).
    Default: 2 when the process may run on 2 CPUs and OPENBLAS_NUM_THREADS /
    OMP_NUM_THREADS do not say 1."""
    if n < 0:
        raise ValueError(f"number of threads must be >= 0, got {n}")
    return fm_gemv_threads(n)


def _gemv_pool(Py_ssize_t min_bytes=-1, long spin_ns=-1, int leave_to_worker=-1):
    """Test hook of the GEMV's worker thread (_gemv_pool.h): sets what is given (>= 0)
    and returns the settings before, with ``jobs`` (parts the worker computed in this
    process), ``naps`` (times it went to sleep) and ``state`` (1 started, 0 not yet,
    -1 none: one thread only).
    min_bytes: the smallest W (bytes) whose sum over n_in is cut in two parts, shared
    with the worker (which changes the bits of a W moved across it); spin_ns: how long
    the worker spins for the next part before it sleeps; leave_to_worker: 1 makes the
    caller wait for the worker to compute every second part (so a test sees the
    worker's results), never computing it itself. Not while kernels run in other
    threads."""
    return {"min_bytes": fm_gemv_pool_min_bytes(min_bytes),
            "spin_ns": fm_gemv_pool_spin_ns(spin_ns),
            "leave_to_worker": fm_gemv_pool_leave(leave_to_worker),
            "jobs": fm_gemv_pool_jobs(), "naps": fm_gemv_pool_naps(),
            "state": fm_gemv_pool_state()}


def _blas_pool():
    """Test hook of fm_split's hand-off to the BLAS's worker (_blas_pool.h): ``on``
    (whether a split now goes there: the pool set, 2 threads allowed by both the BLAS
    and fm_gemv_threads) and ``jobs`` (parts a BLAS worker ran, in this process)."""
    return {"on": fm_blas_pool_ok() != 0, "jobs": fm_blas_pool_jobs()}


def _xw(cnp.ndarray x, cnp.ndarray W):
    """Test hook: x (rows, n_in) W (n_in, n_out) as a new (rows, n_out) array, by
    _gemv.h's fm_xw_f32 / fm_xw_f64 (the copy in use; the worker thread for a big W),
    the GIL released as in a predict. x and W: aligned C-contiguous, both float32 or
    both float64, rows and n_in >= 1."""
    cdef int typenum = cnp.PyArray_TYPE(x)
    if typenum != cnp.NPY_FLOAT32 and typenum != cnp.NPY_FLOAT64:
        raise TypeError("x must be float32 or float64")
    if x.ndim != 2 or W.ndim != 2:
        raise ValueError("x and W must be 2-D")
    cdef Py_ssize_t rows = x.shape[0], n_in = x.shape[1], n_out = W.shape[1]
    if rows < 1 or n_in < 1:
        raise ValueError("x must have rows >= 1 and n_in >= 1")
    cdef const char* xp = _array(x, typenum, rows, n_in, False, "x")
    cdef const char* Wp = _array(W, typenum, n_in, n_out, False, "W")
    cdef cnp.ndarray z = np.full((rows, n_out), np.nan, dtype=x.dtype)   # NaN where missed
    cdef char* zp = <char*>cnp.PyArray_DATA(z)
    with nogil:
        if typenum == cnp.NPY_FLOAT64:
            fm_xw_f64(rows, n_in, n_out, <const double*>xp, <const double*>Wp, <double*>zp)
        else:
            fm_xw_f32(rows, n_in, n_out, <const float*>xp, <const float*>Wp, <float*>zp)
    return z


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

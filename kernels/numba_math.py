"""exp, expm1, tanh and log1p that LLVM can vectorise, for the Numba kernels' elementwise loops.

``math.exp`` and ``math.tanh`` compile to calls into libm, one element at a
time; these are branch-free polynomials (select, never branch), so a loop of
them runs 8-16 elements per instruction: a sigmoid pass over 512 x 256 floats
takes 0.1 ms instead of 1 ms. Each has a float64 and a float32 version, chosen
by the argument's type when the caller compiles (``overload``): float32 in
float64 would halve the vector width and add two conversions per element.
Relative error below 3e-14 in float64 (tanh near 0.17: 2.5e-14, about 100 ulps;
sigmoid and softplus below 1e-14, measured over [-30, 30]) and about 1e-7 in float32, far inside
the agreement tolerances. Other argument types (integers) use float64.

Inside a kernel a float literal is float64 and promotes whatever it touches;
``like(1.0, z)`` is 1.0 in z's type, so a float32 loop stays float32.

Every kernel compiles with ``error_model="numpy"``: Python's error model puts a
zero-division check (a branch that raises) in every division, and that alone
keeps a loop from vectorising.
"""
from __future__ import annotations

import inspect
import os
import tempfile

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core.registry import CPUDispatcher
from numba.extending import intrinsic, overload

from fastmlp._signals import raise_if_signalled, say

from .numba_views import flat



def _cache_folder_found():
    """Whether Numba finds a writable folder for these kernels' cache: NUMBA_CACHE_DIR
    if set (Numba tries it first), else beside them (kernels/__pycache__), else the
    user's cache folder. A read-only install with no writable home has none, and
    ``cache=True`` would then make every kernel's decoration raise: the kernels are
    compiled uncached instead."""
    def probe():
        pass
    try:
        njit(cache=True)(probe)  # looks for the folder now, as each kernel would
    except RuntimeError:
        say(f"fastmlp: {_no_cache_folder()}")
        return False
    return True


def _no_cache_folder():
    """The notice for no writable cache folder; it names NUMBA_CACHE_DIR's folder where
    that is set and cannot be written."""
    from numba.core import config
    folder = config.CACHE_DIR
    try:  # Numba's own test (caching._CacheLocator.ensure_cache_path), for its reason
        if folder:
            os.makedirs(folder, exist_ok=True)
            tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        raise_if_signalled(exc)
        return (f"Numba cannot cache its compiled kernels in NUMBA_CACHE_DIR={folder} "
                f"({exc.strerror or exc}), nor in kernels/__pycache__ or the user's cache "
                "folder, so each process compiles them again (about 10 s); point "
                "NUMBA_CACHE_DIR at a writable folder to keep them")
    return ("Numba finds no writable folder to cache its compiled kernels in "
            "(kernels/__pycache__ is read-only and so is the user's cache folder), so "
            "each process compiles them again (about 10 s); set NUMBA_CACHE_DIR to a "
            "writable folder to keep them")


CACHE = _cache_folder_found()

# Options of every kernel in kernels/numba_*.py. The entry points that the backend
# calls add nogil=True, so models (and one model's predict) run in parallel threads;
# train_step alone keeps the GIL: releasing it costs 50 ns of the vehicle net's 1.3 us.
# Kernels allocate nothing, so they compile without Numba's reference counting
# (_nrt=False): no increments and decrements of array views to emit, lower and
# optimise away (that was a sixth of the first compile), and none at run time.
# predict and evaluate allocate their buffers, so they keep it (ALLOCATING_ENTRY).
# Every kernel is cached (where Numba has a folder for it: CACHE): callers link to it
# by name (numba_link), so a caller loaded from the cache loads it too.
# No cfunc wrapper (the C-callable one behind ``.cfunc`` and first-class function
# calls, which nothing here uses): one function less to lower and optimise per kernel.
# forceinline set, so that a kernel first compiled from a HELPER's body (numba_link binds
# it there) does not inherit the helper's. Kernels (the @kernel decorator) are called from
# other kernels only, so they have no CPython wrapper either; the entry points the
# backend calls (ENTRY) have one.
KERNEL = {"cache": CACHE, "error_model": "numpy", "_nrt": False, "no_cfunc_wrapper": True,
          "forceinline": False, "no_cpython_wrapper": True}
ENTRY = dict(KERNEL, nogil=True, no_cpython_wrapper=False)
ALLOCATING_ENTRY = dict(ENTRY, _nrt=True)
# The LLVM optimisation level of the entry points (run, predict, evaluate) and of the
# helpers (only ever inlined: their caller's module is optimised again at its own level);
# the process's own (NUMBA_OPT, 3 unless set) for every other kernel: numba_link.compile_level. The
# entry points are loops over batches and chunks that call the kernels doing the
# arithmetic, which keep the full level; level 3's extra passes (loop unswitching among
# them) grew run's optimised IR by a fifth (4,806 lines against 4,017). A new user's first
# fit on the AVX2 EPYC (2026-12-07, 4 processes each, run compiled alone): run's LLVM
# time 2.2-2.4 s at 3, 1.3-1.9 s at 2, its compile 5.8-6.2 s against 4.4-4.9 s; the
# vehicle net's epochs and steps ran as fast (best of 15: fit 1.53 / 1.51 ms, per-sample
# fit 1.05 / 1.03 ms, 2,000 train_on_batch 5.30 / 5.07 ms).
ENTRY_OPT = 2
# Numba's IR inliner copies the callee's IR block by block, each copy with the whole
# variable scope: keep it to small bodies (a big one cost seconds to inline).
INLINE = {"inline": "always", "error_model": "numpy"}
# Small scalar helpers: compiled once each, then inlined by LLVM (not by Numba's
# IR inliner, which repeats type inference at every call site). No cfunc wrapper, as
# the kernels, nor for the overloads (which Numba never gives a CPython wrapper).
SCALAR = {"error_model": "numpy", "no_cfunc_wrapper": True}
OVERLOAD = {"error_model": "numpy", "no_cfunc_wrapper": True}
# Helpers of the kernels (the @helper decorator): typed and lowered once per signature,
# and inlined by LLVM (forceinline: LLVM's alwaysinline) into the caller when it is
# optimised; Numba's IR inliner (INLINE) types their body again at every call site. No
# reference counting, as the kernels; not cached on their own: the caller's cached code
# holds them. No wrapper of either kind: a helper is only ever called from compiled
# code, and the two wrappers were a twentieth of a new user's first compile.
HELPER = {"error_model": "numpy", "_nrt": False, "forceinline": True, "no_cfunc_wrapper": True,
          "no_cpython_wrapper": True}


class _CompiledOnly(CPUDispatcher):
    """The dispatcher of a kernel or helper (:func:`kernel`, :func:`helper`). Compiled
    without a CPython wrapper, its Python entry point would be address 0 (a crash), so a
    call from Python raises instead."""

    def __call__(self, *args, **kwargs):
        raise TypeError(f"{self.py_func.__name__} is compiled for the Numba kernels, without "
                        "a Python entry point: call it from @njit code")


def _compiled_only(options, function):
    dispatcher = njit(**options)(function)
    dispatcher.__class__ = _CompiledOnly
    return dispatcher


def helper(function):
    """``function`` compiled as a helper of the kernels (HELPER): callable from @njit code
    only (from Python it raises TypeError). Optimised at ENTRY_OPT: its own code is only
    ever inlined, and its caller's module is then optimised at the caller's level."""
    dispatcher = _compiled_only(HELPER, function)
    dispatcher.llvm_opt = ENTRY_OPT   # (read by numba_link.compile_level)
    return dispatcher


def kernel(function=None, **options):
    """``function`` compiled as a kernel (KERNEL, with ``options`` added): its own code,
    cached, callable from @njit code only (from Python it raises TypeError). Also
    ``@kernel(**options)``."""
    if function is None:
        return lambda function: _compiled_only(dict(KERNEL, **options), function)
    return _compiled_only(dict(KERNEL, **options), function)


def entry(function=None, allocating=False):
    """``function`` compiled as an entry point the backend calls (ENTRY, or
    ALLOCATING_ENTRY if ``allocating``), at LLVM level ENTRY_OPT. Also
    ``@entry(allocating=True)``."""
    def decorate(function):
        dispatcher = njit(**(ALLOCATING_ENTRY if allocating else ENTRY))(function)
        dispatcher.llvm_opt = ENTRY_OPT   # (read by numba_link.compile_level)
        return dispatcher
    return decorate if function is None else decorate(function)


def _dispatch(stub, f64, f32):
    """Overload ``stub(x)``: ``f32`` for a float32 x, ``f64`` (on float(x)) otherwise.

    The overload compiles to its own function, which LLVM inlines into the caller's
    loop before vectorising it; ``inline="always"`` here would nest numba's inlining
    of the helper in a second one, which numba's SSA pass warns about. ``py_func``
    compiles the float body as it is, so the helper's argument is named ``x``.
    """

    @overload(stub, jit_options=OVERLOAD)
    def _typed(x):
        if x == types.float32:
            return f32.py_func
        if x == types.float64:
            return f64.py_func
        return lambda x: f64(float(x))

    return stub


# --- float64 ---------------------------------------------------------------

_LOG2E = 1.4426950408889634
_LN2_HI = 0.6931471803691238       # ln 2 split in two so n * ln2 is exact to 2^-60
_LN2_LO = 1.9082149292705877e-10
_SHIFTER = 6755399441055744.0      # 1.5 * 2^52: x + _SHIFTER rounds x to an integer
# Clamped to _EXP_LO, n = -1023 and 2^n's bits are those of +0: e^x is 0 from
# there down (a true e^x < 2.3e-308 there) and expm1 -1, as _vmath.pxd's.
_EXP_LO, _EXP_HI = -709.0, 709.0
_LN2 = 0.6931471805599453
_SQRT2 = 1.4142135623730951


@intrinsic
def _pow2_64(typingctx, t):
    """2^n as a float64, for a float64 t = _SHIFTER + n: the low bits of t hold n,
    shifted into the exponent field they make 2^n."""
    if t != types.float64:
        return None

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        n = builder.add(builder.bitcast(args[0], i64), ir.Constant(i64, 1023))
        return builder.bitcast(builder.shl(n, ir.Constant(i64, 52)), ir.DoubleType())

    return types.float64(t), codegen


@njit(**INLINE)
def _exp64(x):
    """e^x: x = n ln2 + r, |r| <= ln2 / 2, e^r by its Taylor series to r^11, times 2^n.

    Clamped to [-709, 709] (NaN passes through): e^x is 0 below about -708.7,
    where it is no longer a normal float64; the kernels never need e^x above.
    """
    x = _EXP_LO if x < _EXP_LO else x
    x = _EXP_HI if x > _EXP_HI else x
    t = x * _LOG2E + _SHIFTER
    n = t - _SHIFTER
    r = (x - n * _LN2_HI) - n * _LN2_LO
    p = 1.0 + r * (1.0 + r * (1 / 2 + r * (1 / 6 + r * (1 / 24 + r * (1 / 120 + r * (
        1 / 720 + r * (1 / 5040 + r * (1 / 40320 + r * (1 / 362880 + r * (
            1 / 3628800 + r * (1 / 39916800)))))))))))
    return p * _pow2_64(t)


@njit(**INLINE)
def _expm164(x):
    """e^x - 1, accurate near 0 (ELU): x = n ln2 + r as in _exp64, then
    2^n (e^r - 1) + (2^n - 1), which is e^r - 1 itself for n = 0; e^r - 1 by its
    Taylor series to r^13 on |r| <= ln2 / 2. -1 below -709 (NaN passes through)."""
    x = _EXP_LO if x < _EXP_LO else x
    x = _EXP_HI if x > _EXP_HI else x
    t = x * _LOG2E + _SHIFTER
    n = t - _SHIFTER
    r = (x - n * _LN2_HI) - n * _LN2_LO
    em1 = r + r * r * (1 / 2 + r * (1 / 6 + r * (1 / 24 + r * (1 / 120 + r * (1 / 720 + r * (
        1 / 5040 + r * (1 / 40320 + r * (1 / 362880 + r * (1 / 3628800 + r * (
            1 / 39916800 + r * (1 / 479001600 + r * (1 / 6227020800))))))))))))
    scale = _pow2_64(t)
    return scale * em1 + (scale - 1.0)


@njit(**INLINE)
def _tanh64(x):
    """tanh x = sign(x) (1 - 2 / (e^{2|x|} + 1)); a Taylor series below |x| = 1/16,
    where that difference would lose digits."""
    a = abs(x)
    big = 1.0 - 2.0 / (_exp64(2.0 * a) + 1.0)
    s = a * a
    small = a * (1.0 + s * (-1 / 3 + s * (2 / 15 + s * (-17 / 315 + s * (
        62 / 2835 + s * (-1382 / 155925))))))
    t = small if a < 0.0625 else big
    return t if x >= 0 else -t


@njit(**INLINE)
def _log1p64(x):
    """ln(1 + x) for 0 <= x <= 1 (softplus's ln(1 + e^-|z|)).

    u = 1 + x is m 2^k with m in [sqrt(2)/2, sqrt(2)); ln m = 2 atanh(s), s = (m-1)/(m+1),
    by its series to s^21; (x - (u - 1)) / u restores what rounding u lost.
    """
    u = 1.0 + x
    k = 1.0 if u > _SQRT2 else 0.0
    m = u * 0.5 if u > _SQRT2 else u
    s = (m - 1.0) / (m + 1.0)
    q = s * s
    series = 2.0 * s * (1.0 + q * (1 / 3 + q * (1 / 5 + q * (1 / 7 + q * (1 / 9 + q * (
        1 / 11 + q * (1 / 13 + q * (1 / 15 + q * (1 / 17 + q * (1 / 19 + q / 21))))))))))
    return k * _LN2 + series + (x - (u - 1.0)) / u


# --- float32: the same methods, shorter polynomials, every constant float32 --

_F = np.float32
_1, _2, _HALF = _F(1.0), _F(2.0), _F(0.5)
_LOG2E_F = _F(_LOG2E)
_LN2_HI_F = _F(0.693359375)        # 9 bits: n * _LN2_HI_F is exact for |n| < 2^15
_LN2_LO_F = _F(-2.12194440e-4)     # ln 2 = _LN2_HI_F + _LN2_LO_F to float32 precision
_SHIFTER_F = _F(12582912.0)        # 1.5 * 2^23
_EXP_LO_F, _EXP_HI_F = _F(-88.0), _F(88.0)  # below, n = -127 and 2^n is +0 (see _EXP_LO)
# e^r = 1 + r + r^2 P(r) on |r| <= ln2 / 2, minimax P (Cephes expf), error ~1e-7
_E0, _E1, _E2 = _F(5.0000001201e-1), _F(1.6666665459e-1), _F(4.1665795894e-2)
_E3, _E4, _E5 = _F(8.3334519073e-3), _F(1.3981999507e-3), _F(1.9875691500e-4)
# e^r - 1 = r + r^2 P(r) on |r| <= ln2 / 2, minimax quartic P (_vmath.pxd's _em1), error 9e-8
_M0, _M1, _M2 = _F(0.4999999701976776), _F(0.16666541993618011), _F(0.04166758805513382)
_M3, _M4 = _F(0.00836667139083147), _F(0.0013858656166121364)
# tanh a = a + a^3 Q(a^2) on a <= 0.625, minimax Q (Cephes tanhf)
_T0, _T1, _T2 = _F(-3.33332819422e-1), _F(1.33314422036e-1), _F(-5.37397155531e-2)
_T3, _T4 = _F(2.06390887954e-2), _F(-5.70498872745e-3)
_TANH_SMALL_F = _F(0.625)
_LN2_F, _SQRT2_F = _F(_LN2), _F(_SQRT2)
_L1, _L2, _L3, _L4 = _F(1 / 3), _F(1 / 5), _F(1 / 7), _F(1 / 9)


@intrinsic
def _pow2_32(typingctx, t):
    """2^n as a float32, for a float32 t = _SHIFTER_F + n (as _pow2_64)."""
    if t != types.float32:
        return None

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        n = builder.add(builder.bitcast(args[0], i32), ir.Constant(i32, 127))
        return builder.bitcast(builder.shl(n, ir.Constant(i32, 23)), ir.FloatType())

    return types.float32(t), codegen


@njit(**INLINE)
def _exp32(x):
    """e^x as _exp64, clamped to [-88, 88] (0 below about -87.7, where e^x is no
    longer a normal float32), with a degree-7 minimax polynomial."""
    x = _EXP_LO_F if x < _EXP_LO_F else x
    x = _EXP_HI_F if x > _EXP_HI_F else x
    t = x * _LOG2E_F + _SHIFTER_F
    n = t - _SHIFTER_F
    r = (x - n * _LN2_HI_F) - n * _LN2_LO_F
    p = _1 + r + r * r * (_E0 + r * (_E1 + r * (_E2 + r * (_E3 + r * (_E4 + r * _E5)))))
    return p * _pow2_32(t)


@njit(**INLINE)
def _expm132(x):
    """e^x - 1 as _expm164, with a quartic minimax e^r - 1; -1 below -88."""
    x = _EXP_LO_F if x < _EXP_LO_F else x
    x = _EXP_HI_F if x > _EXP_HI_F else x
    t = x * _LOG2E_F + _SHIFTER_F
    n = t - _SHIFTER_F
    r = (x - n * _LN2_HI_F) - n * _LN2_LO_F
    em1 = r + r * r * (_M0 + r * (_M1 + r * (_M2 + r * (_M3 + r * _M4))))
    scale = _pow2_32(t)
    return scale * em1 + (scale - _1)


@njit(**INLINE)
def _tanh32(x):
    """tanh x as _tanh64; the polynomial covers |x| < 0.625, where
    1 - 2 / (e^{2|x|} + 1) would lose more than a bit."""
    a = abs(x)
    big = _1 - _2 / (_exp32(_2 * a) + _1)
    s = a * a
    small = a + a * s * (_T0 + s * (_T1 + s * (_T2 + s * (_T3 + s * _T4))))
    t = small if a < _TANH_SMALL_F else big
    return t if x >= 0 else -t


@njit(**INLINE)
def _log1p32(x):
    """ln(1 + x) for 0 <= x <= 1 as _log1p64, the series to s^9."""
    u = _1 + x
    k = _1 if u > _SQRT2_F else _F(0.0)
    m = u * _HALF if u > _SQRT2_F else u
    s = (m - _1) / (m + _1)
    q = s * s
    series = _2 * s * (_1 + q * (_L1 + q * (_L2 + q * (_L3 + q * _L4))))
    return k * _LN2_F + series + (x - (u - _1)) / u


# --- what the kernels call -------------------------------------------------

def exp(x):
    """e^x in x's float type (see _exp64, _exp32); for compiled code only."""


def expm1(x):
    """e^x - 1 in x's float type, accurate near 0 (see _expm164, _expm132); for
    compiled code only."""


def tanh(x):
    """tanh x in x's float type (see _tanh64, _tanh32); for compiled code only."""


def log1p(x):
    """ln(1 + x), 0 <= x <= 1, in x's float type; for compiled code only."""


def like(c, z):
    """The float c in z's float type (float32 or float64); for compiled code only."""


_dispatch(exp, _exp64, _exp32)
_dispatch(expm1, _expm164, _expm132)
_dispatch(tanh, _tanh64, _tanh32)
_dispatch(log1p, _log1p64, _log1p32)


def is_code(code, value):
    """``code == value`` inside @njit code, answered while the caller is typed where both
    are literal integers (a kernel compiled for one code: numba_link.Late), so that
    helpers which pick a code's own code by the same rule (the per-code overloads of
    numba_activations and numba_layers) can replace the other branches by stand-ins:
    a branch on it is typed whole either way."""


@overload(is_code, jit_options=OVERLOAD, prefer_literal=True)
def _is_code(code, value):
    if isinstance(code, types.IntegerLiteral) and isinstance(value, types.IntegerLiteral):
        answer = code.literal_value == value.literal_value
        return lambda code, value: answer
    return lambda code, value: code == value


def code_chain(table, params, what, name="code"):
    """An overload implementation ``(<name>, <params>)`` that calls ``table[<name>](<params>)``
    for a code known only at run time (a branch per entry, in the table's order; an unknown
    code raises ValueError("unknown <what> code")): built from the table, so that the
    table stays the one list of which code runs which helper. ``params``: the helpers'
    parameter names, comma-separated; ``name``: the code's, as the overloaded stub has it."""
    lines = [f"def any_code({name}, {params}):"]
    for i, code in enumerate(table):
        lines += [f"    {'if' if i == 0 else 'elif'} {name} == {int(code)}:",
                  f"        return helper_{i}({params})"]
    lines.append(f"    raise ValueError('unknown {what} code')")
    scope = {f"helper_{i}": helper for i, helper in enumerate(table.values())}
    exec("\n".join(lines), scope)
    return scope["any_code"]


def only_for(value, helper):
    """``f(code, <helper's parameters>)`` to call inside @njit code where
    ``is_code(code, value)`` holds: ``helper(<parameters>)``. In a kernel compiled for
    another literal code it is a stand-in that returns 0.0 and is never called, so that
    kernel never types (nor links, nor compiles) ``helper``: a branch is typed whole,
    whether or not it can run."""
    params = ", ".join(inspect.signature(helper.py_func).parameters)
    scope = {"helper": helper, "other": lambda code: literal_code(code) not in (None, value)}
    exec(f"def stub(code, {params}):\n    pass\n"
         f"def real(code, {params}):\n    return helper({params})\n"
         f"def stand_in(code, {params}):\n    return 0.0\n"
         f"def typer(code, {params}):\n    return stand_in if other(code) else real\n", scope)
    stub = scope["stub"]
    stub.__name__ = stub.__qualname__ = f"{helper.py_func.__name__}_only_for_{value}"
    overload(stub, jit_options=OVERLOAD, prefer_literal=True)(scope["typer"])
    return stub


def literal_code(code):
    """The literal integer ``code`` is typed as inside an overload, else None (a code known
    only at run time)."""
    return code.literal_value if isinstance(code, types.IntegerLiteral) else None


@overload(like, jit_options=OVERLOAD)
def _like(c, z):
    if z == types.float32:
        return lambda c, z: np.float32(c)
    return lambda c, z: float(c)


# --- max |a|, NaN and inf included ---------------------------------------------

@intrinsic
def _magnitude(typingctx, x):
    """The bits of x (float32 or float64) as a signed integer of its width, sign bit
    cleared: for one sign bit patterns order as the values do, and NaN and inf lie
    above every finite value, so an integer max finds max |x| and any NaN or inf."""
    if x not in (types.float32, types.float64):
        return None
    kind = types.int32 if x == types.float32 else types.int64

    def codegen(context, builder, sig, args):
        lt = ir.IntType(kind.bitwidth)
        bits = builder.bitcast(args[0], lt)
        return builder.and_(bits, ir.Constant(lt, (1 << (kind.bitwidth - 1)) - 1))

    return kind(x), codegen


@intrinsic
def _from_magnitude(typingctx, m):
    """The float whose bits are m (int32: float32, int64: float64)."""
    if m not in (types.int32, types.int64):
        return None
    kind = types.float32 if m == types.int32 else types.float64

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType() if m == types.int32 else ir.DoubleType())

    return kind(m), codegen


@kernel
def abs_max(A, r0, r1):
    """max |A[r0:r1]| (float64) over rows r0..r1 of A (n, k) C-contiguous, 0 when empty; inf when
    one is NaN or inf. An integer max over the magnitudes' bits (_magnitude), which
    vectorises; a float max that must see NaN does not."""
    m = _magnitude(A.dtype.type(0.0))
    a = flat(A, r0 * A.shape[1], r1 * A.shape[1])  # one loop: a narrow A's rows are short
    for i in range(a.shape[0]):
        v = _magnitude(a[i])
        m = v if v > m else m
    if m >= _magnitude(A.dtype.type(np.inf)):
        return np.inf
    return float(_from_magnitude(m))

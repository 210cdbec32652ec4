"""Which build of the Cython extension this processor runs (kernels/cython_mlp.py's choice).

See kernels/cython_mlp.py; setup.py holds each build's compiler flags.
"""
from __future__ import annotations

import importlib

# widest first; each build's name is _cython_mlp_<name>
BUILDS = ("avx512", "avx2", "base")
# NumPy's names (numpy._core._multiarray_umath.__cpu_features__) of what each build's
# compiler flags (setup.py) let it use; NumPy checks that the OS saves the registers too
NEEDS = {"avx512": ("AVX512_SKX", "AVX2", "FMA3", "F16C"),
         "avx2": ("AVX2", "FMA3", "F16C"),
         "base": ()}
ENV = "FASTMLP_CYTHON_ISA"


def cpu_features():
    """NumPy's run-time CPU feature table ({name: bool}); empty when it has none."""
    for where in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):
        try:
            return dict(importlib.import_module(where).__cpu_features__)
        except (ImportError, AttributeError):
            continue
    return {}


def runnable(features=None):
    """The builds this processor runs, widest first (``features``: as cpu_features())."""
    features = cpu_features() if features is None else features
    return [b for b in BUILDS if all(features.get(f, False) for f in NEEDS[b])]


def load(forced=None, features=None):
    """The build to use, imported: ``forced`` (a name of BUILDS) or the widest runnable one that
    was built. ImportError when none was built, or ``forced`` cannot run here."""
    ok = runnable(features)
    if forced:
        if forced not in BUILDS:
            raise ImportError(f"{ENV}={forced!r}: choose one of {', '.join(BUILDS)}")
        if forced not in ok:
            raise ImportError(f"{ENV}={forced!r}: this processor does not run that build "
                              f"(it runs: {', '.join(ok)})")
        ok = [forced]
    missing = []
    for name in ok:
        try:
            return importlib.import_module(f"{__package__}._cython_mlp_{name}")
        except ImportError as exc:
            if exc.name != f"{__package__}._cython_mlp_{name}":
                raise  # built, but it failed to import: say so, do not hide it
            missing.append(name)
    raise ImportError(f"no build of the Cython extension is importable (tried "
                      f"{', '.join(missing)}): install fastmlp with a C compiler",
                      name=f"{__package__}.cython_mlp")


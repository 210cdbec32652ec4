"""Only the compiled extensions live here; metadata is in pyproject.toml."""
from pathlib import Path

import numpy as np
from setuptools import Extension, setup

sources = sorted(Path("kernels").glob("*.pyx"))
ext_modules = []
if sources:
    from Cython.Build import cythonize

    extensions = [
        Extension(
            f"fastmlp.kernels.{src.stem}",
            [str(src)],
            include_dirs=[np.get_include()],
            # -fno-trapping-math lets GCC turn a ternary whose sides compute (p * z if
            # z < 0 else z) into a select, which the vectoriser needs; results, NaN and
            # inf are unchanged (unlike -ffast-math); only FP status flags may differ.
            extra_compile_args=["-O3", "-fno-trapping-math"],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        )
        for src in sources
    ]
    ext_modules = cythonize(extensions, include_path=["kernels"], language_level=3)

setup(ext_modules=ext_modules)

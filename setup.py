"""Builds the Cython kernels; each has a pure-Python twin, so a failed build degrades only."""

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

# module name -> .pyx source; every module here must have a NumPy fallback in the package.
EXTENSIONS = {
    "fedray._kernels": "fedray/_kernels.pyx",
    "fedray.pill._compose": "fedray/pill/_compose.pyx",
}


def _extensions():
    try:
        import numpy as np
        from Cython.Build import cythonize
        from setuptools import Extension
    except ImportError:  # no Cython/numpy in the build env: the pure-Python twins serve
        return []
    openmp = [] if sys.platform == "darwin" else ["-fopenmp"]
    exts = [
        Extension(
            name,
            [src],
            include_dirs=[np.get_include()],
            extra_compile_args=["-O3", *openmp],
            extra_link_args=openmp,
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        )
        for name, src in EXTENSIONS.items()
        if os.path.exists(src)
    ]
    return cythonize(exts, language_level=3, quiet=True)


class OptionalBuildExt(build_ext):
    """Build extensions, but warn instead of failing: fedray falls back to NumPy."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any compiler failure means "use the fallback"
            print(f"WARNING: Cython extensions not built ({exc}); using NumPy fallbacks")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            print(f"WARNING: could not build {ext.name} ({exc}); using its NumPy fallback")


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})

"""``python -m fastmlp ...`` is the ``fastmlp`` command.

Python imports the package (``fastmlp/__init__``: NumPy, SciPy, the kernels, about a third
of a second) before this module runs, so nothing here can guard that import against a
Ctrl-C: Python prints its traceback then. The ``fastmlp`` command's entry point
(``_fastmlp_command``, outside the package) guards it; here, the rest of the start-up is.
"""
import sys

try:
    from .cli import main
except KeyboardInterrupt:
    print("fastmlp: interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(main())

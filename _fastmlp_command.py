"""The ``fastmlp`` command's entry point, kept outside the package on purpose.

Importing ``fastmlp`` (NumPy, SciPy, the kernels) takes about a third of a second, and
an entry point inside the package runs only after that import: a Ctrl-C during it
printed Python's traceback. Here the import itself is guarded, so an interrupt at any
moment ends the command the same way, with one line on stderr and status 130, and a
setting the import refuses (a bad FASTMLP_BLAS) is one line and status 2, as a bad option.
"""
import sys


def main():
    """Import the command (see :mod:`fastmlp.cli`) and run it; returns the exit status."""
    try:
        from fastmlp.cli import main as command
    except KeyboardInterrupt:
        print("fastmlp: interrupted", file=sys.stderr)
        return 130
    except ValueError as exc:   # a setting the import refuses (FASTMLP_BLAS=foo): one line
        print(f"fastmlp: error: {exc}", file=sys.stderr)   # as for a bad option, status 2
        return 2
    return command()

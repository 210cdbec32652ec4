"""The ``fastmlp`` command's entry point, kept outside the package on purpose.

Importing ``fastmlp`` (NumPy, SciPy, the kernels) takes about a third of a second, and
an entry point inside the package runs only after that import: a Ctrl-C during it
printed Python's traceback. Here the import itself is guarded, so an interrupt at any
moment ends the command the same way, with one line on stderr and status 130.
"""
import sys


def main():
    """Import the command (see :mod:`fastmlp.cli`) and run it; returns the exit status."""
    try:
        from fastmlp.cli import main as command
    except KeyboardInterrupt:
        print("fastmlp: interrupted", file=sys.stderr)
        return 130
    return command()

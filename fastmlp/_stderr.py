"""The library's one-line notices, on stderr."""
import sys


def say(line):
    """``line`` on stderr, flushed; nothing where this process has no stderr (sys.stderr is
    None: pythonw, or descriptor 2 closed when Python started). ``print(file=None)``
    writes to stdout instead, which may be a program's data."""
    stream = sys.stderr
    if stream is not None:
        print(line, file=stream, flush=True)

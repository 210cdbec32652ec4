"""Ctrl-C, and every other signal with a Python handler, held back over statements that
must not be split."""
import contextlib
import functools
import signal
import sys
import threading

import _signal   # signal.signal without its Python wrapper: see _swap

_NOTES = set()   # the handlers deferring blocks have installed, while installed
_SIGNALS = tuple(signal.valid_signals())


def kept(first, exc):
    """Which of two signal handlers' exceptions goes on (None: none yet): the first, unless
    it is a Ctrl-C's and the other is not. A timeout's TimeoutError or a SIGTERM handler's
    SystemExit held back beside a Ctrl-C was lost behind it, and an estimator's fit turns a
    Ctrl-C into a warning and returns (hostile round 49); the other then carries the
    Ctrl-C as its context."""
    if first is None:
        return exc
    if isinstance(first, KeyboardInterrupt) and not isinstance(exc, KeyboardInterrupt):
        if exc.__context__ is None and exc is not first:
            exc.__context__ = first
        return exc
    return first


@contextlib.contextmanager
def signals_deferred(notice=None):
    """Every signal with a Python handler arriving in the block is handled once the block
    is over: Ctrl-C's KeyboardInterrupt, a SIGALRM timeout's TimeoutError, any handler.
    ``notice``: a line written to stderr when the first Ctrl-C arrives. A block inside
    another is the outer one's: it changes nothing.

    For blocks that must run whole: a descriptor made and handed to its owner (a Ctrl-C
    between the two left the file and the descriptor behind, unnamed), the pieces of a
    model's state written together, a rollback, and a Numba compile (an exception at an
    arbitrary bytecode left llvmlite or Numba's typing registry broken beyond the block;
    holding back Ctrl-C alone let a timeout's exception do the same damage).

    Python runs signal handlers in the main thread only, whichever thread the operating
    system gave the signal to (OpenBLAS's and the GEMV pool's workers take it too, so
    blocking it in the main thread with pthread_sigmask was not enough: 12 temporary
    files in 1,532 interrupted saves). So each handler is swapped for one that notes the
    signal; afterwards the handlers are put back and each handler whose signal was noted
    is called, in the order they came, as Python calls it (the first exception raised
    after every handler has run, but a Ctrl-C's gives way to another handler's: see
    kept). Called, not the signal raised again: the signal itself came once, and its
    wakeup byte (signal.set_wakeup_fd, asyncio's loop.add_signal_handler) was written
    then; raised again, it wrote a second, and asyncio ran the callback of one signal
    twice (a server's "second Ctrl-C forces the stop" forced by one). In other threads no
    handler ever runs: nothing to hold back. A signal whose handler an outer block
    already swapped is that block's.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handlers = {signum: handler for signum, handler in _python_handlers().items()
                if handler not in _NOTES}
    if not handlers:
        yield
        return
    caught = []

    def note(signum, frame):
        if signum == signal.SIGINT and notice is not None and signum not in caught:
            try:
                say(notice)
            except Exception:   # (stderr closed, or busy: a reentrant write) noted anyway
                pass
        if signum not in caught:
            caught.append(signum)

    note.caught = caught   # (what signal_held_back reads)
    _NOTES.add(note)
    swapped = []
    try:
        # SIGINT first: a KeyboardInterrupt can then no longer come out of a later swap
        for signum in sorted(handlers, key=lambda s: s != signal.SIGINT):
            swapped.append(signum)   # before: restoring one not yet swapped is harmless
            _swap(note, signum)
        yield
    finally:
        first = None
        for signum in swapped:
            try:
                _swap(handlers[signum], signum)
            except BaseException as exc:   # noted: its signal was held back too
                first = kept(first, exc)
        _NOTES.discard(note)
        for signum in caught:
            try:
                handlers[signum](signum, sys._getframe())   # as Python would have called it
            except BaseException as exc:
                first = kept(first, exc)
        if first is not None:
            raise first


def signal_held_back():
    """Whether a signal has arrived in a signals_deferred block still running, its handler
    waiting for the block's end: a block that waits on something else (another process's
    lock) can stop waiting, so that the Ctrl-C it announced comes."""
    return any(note.caught for note in list(_NOTES))


def _swap(handler, signum=signal.SIGINT):
    """Install ``handler`` for ``signum``, whatever another signal's handler raises meanwhile.

    Another handler's exception (a SIGALRM timeout raising TimeoutError, say) can come out
    of any call here. Out of signal.signal's Python wrapper after its C call had swapped
    the handlers, it left the note-only handler installed for good (every later Ctrl-C
    swallowed). The C function leaves no Python frame of its own, and the swap is
    retried until it has run, with the first such exception raised afterwards."""
    error = None
    while True:
        try:
            _signal.signal(signum, handler)
            if _signal.getsignal(signum) is handler:
                break
        except Exception as exc:   # (a KeyboardInterrupt cannot come while swapping)
            error = error or exc
    if error is not None:
        raise error


def from_a_handler(exc):
    """Whether a signal handler raised ``exc``: a KeyboardInterrupt (Python's own SIGINT
    handler), or an exception whose traceback passes through a Python function installed
    as a signal handler now (a SIGALRM handler's TimeoutError, pytest-timeout's Failed).
    Not told by type or errno: a callback's own socket timeout or urllib error is an
    OSError without an errno too, and is its own error."""
    if isinstance(exc, KeyboardInterrupt):
        return True
    tb = exc.__traceback__
    if tb is None:
        return False
    handlers = _handler_codes()
    while tb is not None:
        if tb.tb_frame.f_code in handlers:
            return True
        tb = tb.tb_next
    return False


def _python_handlers():
    """{signal number: handler} of every signal whose handler is a Python callable."""
    handlers = {}
    for signum in _SIGNALS:   # _signal's getsignal: 2 us for all 62, signal's 90 us
        try:
            handler = _signal.getsignal(signum)
        except ValueError:   # (not an OSError: a timeout landing here was swallowed)
            continue
        if callable(handler):
            handlers[signum] = handler
    return handlers


def _handler_codes():
    """The code objects of the Python functions installed as signal handlers."""
    codes = set()
    for handler in _python_handlers().values():
        while isinstance(handler, functools.partial):
            handler = handler.func
        handler = getattr(handler, "__func__", handler)   # a bound method's function
        code = getattr(handler, "__code__", None)
        if code is None:   # a callable object: its __call__'s
            code = getattr(getattr(type(handler), "__call__", None), "__code__", None)
        if code is not None:
            codes.add(code)
    return codes


def say(line):
    """``line`` on stderr, flushed: the library's one-line notices. Nothing where this
    process has no stderr (sys.stderr None: pythonw, or descriptor 2 closed when Python
    started; ``print(file=None)`` writes to stdout, which may be a program's data), nor
    where writing it fails (a closed or broken stream: a notice is only a notice), but a
    signal handler's exception raised meanwhile goes on."""
    stream = sys.stderr
    if stream is None:
        return
    try:
        print(line, file=stream, flush=True)
    except (OSError, ValueError) as exc:
        raise_if_signalled(exc)


def raise_if_signalled(exc):
    """For an ``except OSError`` meant for the system's errors: raise ``exc`` again when a
    signal handler raised it (from_a_handler: a handler's TimeoutError is an OSError). A
    timeout landing in such a block was lost (the folder's fsync after a save, a stat) or
    became the file's error."""
    if from_a_handler(exc):
        raise exc


# How often run_whole runs an undo again after one of its own errors (not a Ctrl-C):
# a signal handler's exception (a SIGALRM timeout) is met again only by chance, a real
# failure of the undo every time.
UNDO_RETRIES = 3
# How many Ctrl-Cs (or other handlers' exceptions) an undo is run again for, in run_whole
# and in its callers' loops, before it gives up and raises: far more than anyone presses,
# and an undo that raised KeyboardInterrupt itself on every call looped forever (hostile
# round 45).
UNDO_SIGNALS = 100


# The mark run_whole sets on an undo's own error (not a signal handler's) before raising
# it: its callers' retry loops test for it with no call (``UNDO_FAILED in exc.__dict__``),
# as a call's start is a point where a signal lands (from_a_handler there let a third
# signal of a burst escape the loop, the undo skipped: hostile round 47).
UNDO_FAILED = "_fastmlp_undo_failed"


def run_whole(undo):
    """Call ``undo()`` (idempotent: a rollback) to its end whatever Ctrl-Cs arrive meanwhile,
    then raise the first of them. A second Ctrl-C landing as a rollback began, before its
    signals_deferred block was entered, skipped the rollback (an epoch left half undone in
    7 of 379 fits interrupted twice); the rollback is now run again until it has run, up
    to UNDO_SIGNALS times. Another exception (a timeout's, raised by its signal handler,
    left the weights undone and Adam's buffers, step and generator not) runs it again
    too, up to UNDO_RETRIES times, then is raised as the first; when that first is the
    undo's own error (no handler raised it), marked with UNDO_FAILED.

    A Ctrl-C can land as this function itself begins (Python runs handlers at a
    function's start, after a call returns and at a loop's jump back), before any of it
    runs: a caller undoing after an exception ``exc`` calls it as

        late, tries = None, 0   # (no call before the try: a signal after it escaped)
        while tries < UNDO_SIGNALS:
            tries += 1
            try:
                run_whole(undo)
                break
            except BaseException as exc_late:
                if UNDO_FAILED in exc_late.__dict__:   # (no call here)
                    raise
                # (kept's rule, no call: a Ctrl-C gives way to what follows)
                late = (exc_late if late is None
                        or late.__class__ is KeyboardInterrupt else late)
        raise_after_undo(exc, late)

    inline (a helper would have the same first moment), so a second signal runs the
    undo again, a Ctrl-C's or a timeout's (catching KeyboardInterrupt alone, a
    TimeoutError there skipped the undo: hostile round 44), and an error of the undo's
    own is raised at once. The except clause makes no call, so a third signal can skip
    the undo only by landing at the loop's jump back, a point of one bytecode."""
    first, errors, signals = None, 0, 0
    while True:
        try:
            with signals_deferred():
                undo()
            break
        except KeyboardInterrupt as exc:
            first, signals = kept(first, exc), signals + 1
            if signals > UNDO_SIGNALS:
                raise first from None
        except BaseException as exc:   # (a SystemExit too: a SIGTERM handler's, or the undo's)
            first, errors = kept(first, exc), errors + 1
            if errors > UNDO_RETRIES:
                if not from_a_handler(first):   # (a signal here: the caller runs this again)
                    first.__dict__[UNDO_FAILED] = True
                raise first from None
    if first is not None:
        raise first


def raise_after_undo(exc, late):
    """Raise what an undo's loop (see run_whole) leaves: ``exc``, the exception that made
    the caller undo (None: an undo of its own, a diverged step's), unless ``late``, the
    first signal handler's exception that came during the undo, must go instead, chained
    to it: always, but when both are a stop already asked for (a second Ctrl-C after a
    Ctrl-C or a timeout). So a timeout or a SIGTERM handler's SystemExit that arrives as a
    diverged step, a failed save or a Ctrl-C is undone is raised, not lost behind
    TrainingDiverged, the OSError or the Ctrl-C (an estimator's fit turns a Ctrl-C into a
    warning and returns: hostile rounds 45 and 48). Returns when both are None."""
    if late is not None and (exc is None or not isinstance(late, KeyboardInterrupt)
                             or not from_a_handler(exc)):
        raise late from exc
    if exc is not None:
        raise exc

"""Replacing a file atomically, without surprises.

:func:`replace` writes a temporary file beside the target, flushes it to disk
and renames it over the target, so a crash leaves the old file or the new one,
never half of either. Around that:

- a symbolic link is followed: its target is replaced, the link stays;
- anything that exists and is not a regular file (a directory, a device, a
  fifo, a socket) is refused with ValueError, never replaced; so is a path that
  names a folder (``models/``: it would otherwise create a file ``models``);
- an error creating or renaming the temporary file names the caller's path,
  not the temporary file's;
- the new file keeps the old file's permission bits; a new file gets
  0666 & ~umask, as ``open(path, "w")`` would give it; a file this user may not
  write (``os.access``: read-only, as root may still write it) is refused with
  PermissionError and kept, as ``open(path, "wb")`` refuses it;
- the temporary file is named ``.fastmlp-<pid>-<random>.tmp``. A writer killed
  mid-save leaves it behind; every save first deletes such files whose writer
  process is gone, so repeated crashes leave at most one per folder.
  (A folder shared between machines could hold a live writer's file whose pid
  means nothing here: that writer's rename then fails, its old file is kept.)
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile
import threading

from ._signals import (UNDO_FAILED, UNDO_SIGNALS, raise_after_undo, raise_if_signalled,
                       run_whole, signals_deferred)

_TEMP = re.compile(r"\.fastmlp-(\d+)-[a-z0-9_]+\.tmp\Z")
_umask_lock = threading.Lock()

_KINDS = [(stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a fifo"), (stat.S_ISSOCK, "a socket")]


def kind(mode):
    """What a file of ``st_mode`` ``mode`` is, e.g. "a fifo"; None for a regular file."""
    for is_kind, name in _KINDS:
        if is_kind(mode):
            return name
    return None if stat.S_ISREG(mode) else "a special file"


def names_a_folder(path):
    """Why ``path`` (str) names a folder rather than a file, or None: it ends with a
    separator or with '.' or '..'. open() refuses such a path, but realpath drops the
    separator, so without this check ``save("models/")`` would write a file ``models``."""
    separators = os.sep + (os.altsep or "")
    if path.endswith(tuple(separators)):
        return f"it ends with {path[-1]!r}, so it names a folder, not a file"
    if os.path.basename(path) in (".", ".."):
        return f"it ends with {os.path.basename(path)!r}, so it names a folder, not a file"
    return None


def as_str(path):
    """``path`` (str, bytes or os.PathLike) as str: bytes are decoded as the file system
    encodes names (os.fsdecode), so one path mixes with str prefixes and patterns."""
    return os.fsdecode(os.fspath(path))


def replace(path, write):
    """Call ``write(f)`` on a new binary file ``f`` and rename it over ``path`` (str, bytes
    or os.PathLike)."""
    path = as_str(path)
    if not path:  # realpath("") is the working directory: refused as "a directory" otherwise
        raise ValueError("cannot save: the path is empty")
    if "\0" in path:   # (os calls say only "embedded null byte", naming no path)
        raise ValueError(f"cannot save to {path!r}: the path holds a NUL character")
    folder_problem = names_a_folder(path)
    if folder_problem:
        raise ValueError(f"cannot save to {path}: {folder_problem}; give a file name")
    with signals_deferred():   # realpath and isdir swallow an OSError, a timeout's too
        target = os.path.realpath(path)
        folder = os.path.dirname(target)
        is_folder = os.path.isdir(folder)
    shown = path if target == os.path.abspath(path) else f"{path} (a link to {target})"
    if not is_folder:
        if os.path.lexists(folder):   # e.g. save("notes.txt/m.fastmlp")
            raise NotADirectoryError(errno.ENOTDIR, f"cannot save {shown}: {folder} is not "
                                     "a folder", folder)
        raise FileNotFoundError(errno.ENOENT, f"cannot save {shown}: no such folder", folder)
    mode = _mode_for(target, shown)
    remove_stale_temporaries(folder)
    f = tmp = None
    try:
        with signals_deferred():  # until the file and its descriptor have owners here
            try:
                fd, tmp = tempfile.mkstemp(prefix=f".fastmlp-{os.getpid()}-", suffix=".tmp",
                                           dir=folder)
            except OSError as exc:  # e.g. /proc/<pid>: files there can be read, none created
                raise_if_signalled(exc)
                raise _naming(exc, f"cannot save {shown}: cannot create a file in "
                              f"{folder}") from None
            f = os.fdopen(fd, "wb")
        try:
            with f:
                os.fchmod(f.fileno(), mode)
                write(f)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:   # disk full, a file size limit, an I/O error
            raise_if_signalled(exc)
            raise _naming(exc, f"cannot save {shown}: writing it failed; the file there "
                          "is kept as it was") from None
        try:
            os.replace(tmp, target)
        except OSError as exc:
            raise_if_signalled(exc)
            raise _naming(exc, f"cannot save {shown}: cannot replace it") from None
    except BaseException as exc:
        def clean_up():
            if f is not None:
                f.close()
            if tmp is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        late, tries = None, 0   # (no call before the try: a signal after it escaped)
        while tries < UNDO_SIGNALS:   # again after a second signal (see run_whole): it
            tries += 1
            try:                        # left the temporary file behind
                run_whole(clean_up)
                break
            except BaseException as signalled:   # a Ctrl-C's or a timeout's
                if UNDO_FAILED in signalled.__dict__:   # (the clean-up's own; no call)
                    raise
                # (kept's rule, no call: a Ctrl-C gives way to what follows)
                late = (signalled if late is None
                        or late.__class__ is KeyboardInterrupt else late)
        raise_after_undo(exc, late)
    try:  # make the rename itself durable
        with signals_deferred():   # the descriptor closed whatever happens
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except OSError as exc:
        raise_if_signalled(exc)   # (held back over the fsync, raised as the block ends)
    _record_our_save(folder)


def _naming(exc, what):
    """``exc`` (an OSError about the temporary file) as the same kind of error saying
    ``what`` went wrong with the caller's path: the temporary file's name would only
    confuse."""
    message = f"{what} ({exc.strerror or exc})"
    return type(exc)(message) if exc.errno is None else type(exc)(exc.errno, message)


def _mode_for(target, shown):
    """Permission bits for the new file; ValueError if ``target`` is not a regular file."""
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return 0o666 & ~current_umask()
    what = kind(st.st_mode)
    if what:
        raise ValueError(f"cannot save to {shown}: it is {what}, not a regular file; "
                         "save replaces only regular files")
    # The rename needs only the folder's write permission; open(path, "wb") and np.save
    # refuse a file this user may not write (root may), and so does save: a model made
    # read-only (chmod a-w) to keep it is not replaced by the next checkpoint.
    if read_only(target):
        raise PermissionError(errno.EACCES, f"cannot save {shown}: {READ_ONLY}", target)
    return stat.S_IMODE(st.st_mode) & 0o777


READ_ONLY = ("the file there is read-only for this user and is kept; make it writable "
             "(chmod u+w) or choose another path")


def read_only(path):
    """Whether the existing file ``path`` is one this user may not write (``os.access``:
    root may write a read-only file, as ``open`` lets it): save refuses to replace it."""
    return not os.access(path, os.W_OK)


def current_umask():
    """The process umask, without changing it where Linux tells it (/proc)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError) as exc:
        raise_if_signalled(exc)
    # Reading it elsewhere means setting it: 0o077 for that instant, so a file another
    # thread creates meanwhile gets stricter permissions, never looser.
    with _umask_lock:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


# folder -> (pid, the folder's st_mtime_ns just after this process's last save there)
_AFTER_OUR_SAVE = {}


def _unchanged_since_our_save(folder):
    """True when nothing was added to or removed from ``folder`` since this process last
    saved there (its modification time is the one recorded then): no temporary file of
    a killed writer can have appeared, so there is nothing to sweep."""
    try:
        return _AFTER_OUR_SAVE.get(folder) == (os.getpid(), os.stat(folder).st_mtime_ns)
    except OSError as exc:
        raise_if_signalled(exc)
        return False


def _record_our_save(folder):
    try:
        _AFTER_OUR_SAVE[folder] = (os.getpid(), os.stat(folder).st_mtime_ns)
    except OSError as exc:
        raise_if_signalled(exc)


def remove_stale_temporaries(folder):
    """Delete ``.fastmlp-<pid>-*.tmp`` files in ``folder`` whose writer process is gone.
    Skipped when the folder has not changed since this process's last save there: listing
    costs in proportion to its files (8 ms for 10,000), which checkpoints saved every
    epoch into one folder paid at every save."""
    if os.name != "posix":  # elsewhere os.kill(pid, 0) would terminate the process
        return
    if _unchanged_since_our_save(folder):
        return
    try:
        names = os.listdir(folder)
    except OSError as exc:
        raise_if_signalled(exc)
        return
    for name in names:
        match = _TEMP.match(name)
        if match and not _alive(int(match.group(1))):
            try:
                os.unlink(os.path.join(folder, name))
            except OSError as exc:
                raise_if_signalled(exc)


def _alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError, OSError) as exc:
        raise_if_signalled(exc)
        return True  # exists but is not ours, or not a pid we can judge: keep its file
    return True

"""Reading a ``.npz`` archive with memory bounded by the file's size, and no pickle.

``np.load`` trusts the archive: it reads members nobody asked for, inflates
compressed members without limit and allocates whatever shape a member's
header claims. :class:`Archive` checks before it reads a byte of data:

- the member names: the required ones, each once, and nothing unknown;
- every member is stored uncompressed (``np.savez`` writes them so) and lies
  inside the file, so every byte read is a byte on disk: memory stays
  proportional to the file's size, whatever its headers claim;
- each member's ``.npy`` header (numpy caps it at 10,000 bytes) gives a dtype
  and shape, which the caller checks against what it expects (:meth:`describe`)
  before :meth:`read` reads exactly that many bytes; the member's size must
  match, and object (pickled) dtypes are refused.

Before any of that, the path must lead to a regular file: it is opened without
blocking (a fifo with no writer would wait forever) and the opened descriptor's
``fstat`` decides (``/dev/zero`` or a pipe would be read without end); and the
zip directory must list as many members as its end record counts (a damaged
length field makes ``zipfile`` stop early, which would drop members silently).

Every problem raises :class:`FormatError` saying why; ``fastmlp.load``
turns it into its documented ValueError.
"""
from __future__ import annotations

import math
import os
import struct
import sys
import zipfile
import zlib

import numpy as np

from ._aligned import aligned_empty
from ._atomic import kind, names_a_folder
from ._signals import raise_if_signalled, signals_deferred

_fmt = np.lib.format


class FormatError(ValueError):
    """The file is not a readable archive; ``str()`` says why."""


# zipfile and numpy's .npy header parser report damage through all of these.
_DAMAGE = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, KeyError, RuntimeError,
           NotImplementedError, TypeError, ValueError, struct.error, zlib.error, OverflowError,
           RecursionError)

def pass_on_callers(exc, outer):
    """Raise the exception behind ``exc`` if it is the caller's (:func:`raised_by_caller`),
    as it was raised; else return, for ``exc`` to be read as damage."""
    caller = raised_by_caller(exc, outer)
    if caller is not None:
        raise caller from None


def raised_by_caller(exc, outer):
    """The exception behind ``exc`` (one of _DAMAGE) if it says nothing of the file, else
    None: an OSError without an error number that is not one of io's ValueErrors, such as
    the TimeoutError a SIGALRM handler raises to time a call out, which was reported as a
    damaged member. Reading errors (EIO, ETIMEDOUT on a network drive) carry their number.
    ``outer``: the exception the caller was handling when the archive was opened (load
    called in an ``except TimeoutError:``), where the chain of contexts leaves the file's."""
    while exc is not None and exc is not outer:   # zipfile's BadZipFile over its OSError
        if isinstance(exc, OSError) and exc.errno is None and not isinstance(exc, ValueError):
            return exc
        exc = exc.__context__
    return None


# A zip member's local header (APPNOTE 4.3.7): its last two fields are the lengths of
# the name and the extra field that come between it and the member's data.
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")
assert _LOCAL_HEADER.size == zipfile.sizeFileHeader

_FOREIGN = ("damaged or truncated, or a foreign format (neither .npz nor a NumPy array; "
            "pickles are never loaded)")


class Archive:
    """The ``.npy`` members of a zip archive, by name without ``.npy``.

    ``required``: names that must be present; ``optional``: names that may be.
    A path that leads to no file (missing, a loop of symbolic links) or a denied
    permission raises what ``open`` raises; anything that is not a regular file (a
    directory, fifo, device, socket) is a FormatError.
    """

    def __init__(self, path, required, optional=()):
        self._outer = sys.exc_info()[1]   # what the caller is handling (raised_by_caller)
        self._file = _open_regular(path)
        try:
            size = os.fstat(self._file.fileno()).st_size
            _refuse_many_members(self._file, len(set(required) | set(optional)), self._outer)
            try:
                self._zip = zipfile.ZipFile(self._file)
            except _DAMAGE as exc:
                pass_on_callers(exc, self._outer)
                self._file.seek(0)
                if self._file.read(6) == b"\x93NUMPY":
                    raise FormatError("it holds a single NumPy array, not a fastmlp .npz archive") from None
                raise FormatError(_FOREIGN) from None
            _check_member_count(self._file, self._zip, self._outer)
            self._infos = _members(self._zip.infolist(), set(required), set(optional), size)
        except OSError as exc:   # opened, but reading fails (EIO: /proc/self/mem, a bad disk)
            self._file.close()
            pass_on_callers(exc, self._outer)
            raise FormatError(f"reading it failed ({exc.strerror or exc})") from None
        except BaseException:
            self._file.close()
            raise
        self._described = {}

    @property
    def names(self):
        return set(self._infos)

    def describe(self, name):
        """(dtype, shape) of member ``name`` from its .npy header, reading no data."""
        f = None
        try:
            f = self._zip.open(self._infos[name])
            version = _fmt.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = _fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = _fmt.read_array_header_2_0(f)
            else:
                raise FormatError(f"member {name!r} is .npy version {version}, not 1.0 or 2.0")
        except _DAMAGE as exc:
            if f is not None:
                f.close()
            if isinstance(exc, FormatError):
                raise
            pass_on_callers(exc, self._outer)
            raise FormatError(f"damaged or truncated (member {name!r}: {exc})") from None
        if dtype.hasobject:
            f.close()
            raise FormatError("it contains pickled objects, which fastmlp never loads")
        self._described[name] = (f, shape, fortran, dtype)
        return dtype, shape

    def read(self, name):
        """The array of member ``name``, after :meth:`describe` (whose dtype and shape
        the caller has accepted), in a buffer of its own size that only it uses (the
        caller may keep it: load's model takes its weights as they are read)."""
        f, shape, fortran, dtype = self._described.pop(name)
        info = self._infos[name]
        with f:
            nbytes = math.prod(shape) * dtype.itemsize
            if info.file_size != f.tell() + nbytes:
                raise FormatError(f"damaged or truncated (member {name!r} holds "
                                  f"{info.file_size} bytes, its header says "
                                  f"{f.tell()} + {nbytes})")
            try:
                array = self._stored_data(info, f.tell(), nbytes).view(dtype).reshape(
                    shape, order="F" if fortran else "C")
            except _DAMAGE as exc:   # (reshape: a crafted header's shape of bools)
                pass_on_callers(exc, self._outer)
                raise FormatError(f"damaged or truncated (member {name!r}: {exc})") from None
        return array

    def _stored_data(self, info, header_bytes, nbytes):
        """The ``nbytes`` after the first ``header_bytes`` of stored member ``info``, read
        from the file straight into one uint8 array (zipfile's reader made the data a
        bytes object through two more copies: a 2.8 MB model's load took three times
        np.load's time), the member's CRC-32 checked over every byte of it as zipfile
        checks it. (zipfile.open has already checked the member's local header.)"""
        self._file.seek(info.header_offset)
        local = self._file.read(_LOCAL_HEADER.size)
        if len(local) != _LOCAL_HEADER.size:
            raise EOFError("short local header")
        signature, *_, name_length, extra_length = _LOCAL_HEADER.unpack(local)
        if signature != zipfile.stringFileHeader:
            raise zipfile.BadZipFile("bad magic number for file header")
        self._file.seek(info.header_offset + _LOCAL_HEADER.size + name_length + extra_length)
        crc = zlib.crc32(self._file.read(header_bytes))
        data = aligned_empty(nbytes, np.uint8)   # (theta: see fastmlp._aligned)
        view, done = memoryview(data), 0
        while done < nbytes:
            got = self._file.readinto(view[done:])
            if not got:
                raise EOFError("short member")
            done += got
        if zlib.crc32(data, crc) != info.CRC:
            raise zipfile.BadZipFile(f"Bad CRC-32 for file {info.filename!r}")
        return data

    def close(self):
        for f, *_ in self._described.values():
            f.close()
        self._zip.close()
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _open_regular(path):
    """``path`` opened for binary reading, if it is a regular file; else FormatError."""
    problem = names_a_folder(path)
    if problem:
        raise FormatError(problem)
    # The descriptor is handed to its file object inside open() (C code, where no signal
    # handler runs), never through a Python variable: an exception from a handler (a
    # Ctrl-C, a SIGALRM timeout) landing between os.open and fdopen, with an except closing
    # the descriptor, closed it a second time once the file object owned it (EBADF, or
    # another file's descriptor closed). Signals are held back until open() has returned,
    # so the opener's descriptor is always closed or owned (a file object the exception
    # then drops closes it).
    with signals_deferred():
        return open(path, "rb", opener=_open_regular_descriptor)


def _open_regular_descriptor(path, flags):
    """open()'s opener: a read-only descriptor of ``path`` if it leads to a regular file."""
    fd = _open_without_blocking(path)
    try:
        what = kind(os.fstat(fd).st_mode)  # the descriptor's: the path may change meanwhile
        if what:
            raise FormatError(f"it is {what}, not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_without_blocking(path):
    """A read-only descriptor of ``path``, opened with O_NONBLOCK so that a fifo without a
    writer does not wait for one (no effect on regular files). A path that leads to no file
    (missing, a loop of symbolic links) or may not be read raises open()'s OSError, as
    save does for the same paths; a socket, which cannot be opened, is a FormatError."""
    try:
        return os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise_if_signalled(exc)
        try:
            what = kind(os.stat(path).st_mode)
        except OSError as exc:
            raise_if_signalled(exc)
            what = None
        if what:
            raise FormatError(f"it is {what}, not a regular file") from None
        raise


# A generous bound on one member's entry in the zip directory: 46 bytes, a name such as
# "feature_names.npy", and np.savez's zip64 extra field (about 100 bytes in all)
_DIRECTORY_BYTES_PER_MEMBER = 1024


def _refuse_many_members(file, most, outer):
    """FormatError if the end-of-central-directory record of ``file`` counts more than
    ``most`` members, or a directory larger than so many take, before zipfile reads the
    directory: it keeps a ZipInfo of some hundreds of bytes per entry, so a 46 MB file
    listing a million empty entries took 320 MB to refuse. Files without a readable
    record are left to zipfile's checks."""
    try:
        end = zipfile._EndRecData(file)  # zipfile's own reading of the record (zip64 too)
    except _DAMAGE as exc:
        pass_on_callers(exc, outer)
        return
    if end is None:
        return
    members, size = end[zipfile._ECD_ENTRIES_TOTAL], end[zipfile._ECD_SIZE]
    if members > most or size > most * _DIRECTORY_BYTES_PER_MEMBER:
        raise FormatError(f"its zip directory lists {members} members in {size} bytes; a "
                          f"fastmlp file holds at most {most} members")


def _check_member_count(file, archive, outer):
    """FormatError unless ``archive`` (a ZipFile of ``file``) read as many members as the
    end-of-central-directory record counts. zipfile reads the directory until its byte
    size is used up, so one damaged name, extra or comment length swallows the entries
    after it without an error: every member still present would load, and a model whose
    input scaling or classes vanished would predict different numbers."""
    try:
        end = zipfile._EndRecData(file)  # zipfile's own reading of the record (zip64 too)
    except _DAMAGE as exc:
        pass_on_callers(exc, outer)
        end = None
    if end is None:
        raise FormatError(_FOREIGN)
    counted, found = end[zipfile._ECD_ENTRIES_TOTAL], len(archive.infolist())
    if counted != found:
        raise FormatError(f"damaged zip directory: its end record counts {counted} members, "
                          f"but {found} could be read")


def _members(infos, required, optional, file_size):
    """{name: ZipInfo} after checking names, storage and sizes (the central directory only)."""
    names = [i.filename[:-4] if i.filename.endswith(".npy") else i.filename for i in infos]
    missing = required - set(names)
    if missing:
        raise FormatError(f"missing {sorted(missing)}")
    unknown = set(names) - required - set(optional)
    if unknown:
        raise FormatError(f"unknown member(s) {sorted(unknown)}; a fastmlp file holds only "
                          f"{sorted(required | set(optional))}")
    members = {}
    for name, info in zip(names, infos):
        if name in members:
            raise FormatError(f"member {name!r} appears twice")
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 1:
            raise FormatError(f"member {name!r} is compressed or encrypted; fastmlp reads only "
                              "the uncompressed archives it writes")
        if info.file_size != info.compress_size or info.header_offset + info.compress_size > file_size:
            raise FormatError(f"damaged or truncated (member {name!r} claims {info.file_size} "
                              f"bytes; the file has {file_size})")
        members[name] = info
    return members

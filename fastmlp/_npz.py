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

Every problem raises :class:`FormatError` saying why; ``fastmlp.load``
turns it into its documented ValueError.
"""
from __future__ import annotations

import math
import os
import struct
import zipfile
import zlib

import numpy as np

_fmt = np.lib.format


class FormatError(ValueError):
    """The file is not a readable archive; ``str()`` says why."""


# zipfile and numpy's .npy header parser report damage through all of these.
_DAMAGE = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, KeyError, RuntimeError,
           NotImplementedError, TypeError, ValueError, struct.error, zlib.error, OverflowError,
           RecursionError)

_FOREIGN = ("damaged or truncated, or a foreign format (neither .npz nor a NumPy array; "
            "pickles are never loaded)")


class Archive:
    """The ``.npy`` members of a zip archive, by name without ``.npy``.

    ``required``: names that must be present; ``optional``: names that may be.
    Opening errors of the file itself (missing, permission) propagate unchanged.
    """

    def __init__(self, path, required, optional=()):
        self._file = open(path, "rb")
        try:
            size = os.fstat(self._file.fileno()).st_size
            try:
                self._zip = zipfile.ZipFile(self._file)
            except _DAMAGE:
                self._file.seek(0)
                if self._file.read(6) == b"\x93NUMPY":
                    raise FormatError("it holds a single NumPy array, not a fastmlp .npz archive") from None
                raise FormatError(_FOREIGN) from None
            self._infos = _members(self._zip.infolist(), set(required), set(optional), size)
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
            raise FormatError(f"damaged or truncated (member {name!r}: {exc})") from None
        if dtype.hasobject:
            f.close()
            raise FormatError("it contains pickled objects, which fastmlp never loads")
        self._described[name] = (f, shape, fortran, dtype)
        return dtype, shape

    def read(self, name):
        """The array of member ``name``, after :meth:`describe` (whose dtype and shape
        the caller has accepted); read-only, backed by a bytes object of its size."""
        f, shape, fortran, dtype = self._described.pop(name)
        with f:
            nbytes = math.prod(shape) * dtype.itemsize
            if self._infos[name].file_size != f.tell() + nbytes:
                raise FormatError(f"damaged or truncated (member {name!r} holds "
                                  f"{self._infos[name].file_size} bytes, its header says "
                                  f"{f.tell()} + {nbytes})")
            try:
                data = f.read(nbytes)
                if len(data) != nbytes or f.read(1):  # reading to the end checks the CRC
                    raise EOFError("short member")
                return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")
            except _DAMAGE as exc:
                raise FormatError(f"damaged or truncated (member {name!r}: {exc})") from None

    def close(self):
        for f, *_ in self._described.values():
            f.close()
        self._zip.close()
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


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

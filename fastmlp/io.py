"""Saving and loading models: one ``.npz`` file, never pickle.

The file holds three numeric arrays (``theta``, the flat parameters;
``opt_buffers`` and ``opt_step``, the optimiser state) and ``header``, a UTF-8
JSON document stored as uint8: format version, architecture with activation
parameters, loss, optimiser and its settings, dtype, backend, seed and the
random generator's state. It is written to a temporary file in the same folder,
flushed to disk and renamed over the target, so a crash mid-save leaves the
previous file intact. Loading uses ``allow_pickle=False`` and checks every
piece against the header before building the model.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

from . import optimizers

FORMAT = "fastmlp-model"
VERSION = 1


def save(model, path):
    """Write ``model`` to ``path`` (any name; no suffix is added), atomically."""
    path = os.fspath(path)
    header = {
        "format": FORMAT, "version": VERSION,
        "network": model.net.config(),
        "optimizer": model.optimizer.config(),
        "dtype": model.dtype.name,
        "backend": model.backend,
        # JSON cannot hold np.int64 or a SeedSequence; rng_state restores the stream anyway
        "seed": (int(model.seed) if isinstance(model.seed, (int, np.integer))
                 and not isinstance(model.seed, bool) else None),
        "rng_state": model._rng.bit_generator.state,
    }
    blob = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".fastmlp-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, header=blob, theta=model._theta, opt_buffers=model._state.buffers,
                     opt_step=model._state.step)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def _bad(path, why):
    return ValueError(f"{path} is not a readable fastmlp model file: {why}")


def _read(path):
    try:
        npz = np.load(path, allow_pickle=False)
        if isinstance(npz, np.lib.npyio.NpzFile):
            with npz:
                return {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise
    except ValueError as exc:
        if "object arrays" in str(exc).lower():
            raise _bad(path, "it contains pickled objects, which fastmlp never loads") from None
        if "pickle" in str(exc).lower():  # numpy's guess for any file that is not .npz/.npy
            raise _bad(path, "damaged or truncated, or a foreign format (neither .npz nor "
                             "a NumPy array; pickles are never loaded)") from None
        raise _bad(path, f"damaged or truncated ({exc})") from None
    # zipfile raises RuntimeError / NotImplementedError for damaged flag / method fields
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, RuntimeError,
            NotImplementedError) as exc:
        raise _bad(path, f"damaged or truncated ({type(exc).__name__}: {exc})") from None
    raise _bad(path, "it holds a single NumPy array, not a fastmlp .npz archive")


def load(path, backend=None):
    """Read a model written by :meth:`fastmlp.Model.save`.

    ``backend`` overrides the saved backend name (a model saved on "numba" can
    be loaded on "numpy"). Damaged, truncated, foreign or pickled files raise
    ValueError; the file is never modified.
    """
    from .model import Model
    from .network import Network

    path = os.fspath(path)
    arrays = _read(path)
    missing = {"header", "theta", "opt_buffers", "opt_step"} - set(arrays)
    if missing:
        raise _bad(path, f"missing {sorted(missing)}")
    try:
        header = json.loads(arrays["header"].tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(path, f"damaged header ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise _bad(path, "not written by fastmlp")
    if header.get("version") != VERSION:
        raise _bad(path, f"format version {header.get('version')!r}; this fastmlp reads {VERSION}")
    try:
        net_cfg, dtype = header["network"], header["dtype"]
        model = Model(Network.layers_from_config(net_cfg), net_cfg["input_dim"], loss=net_cfg["loss"],
                      optimizer=optimizers.from_config(header["optimizer"]),
                      backend=backend or header["backend"], dtype=dtype, seed=header["seed"])
        model._rng.bit_generator.state = header["rng_state"]
    except (KeyError, TypeError, ValueError) as exc:
        raise _bad(path, f"invalid header ({exc})") from None
    theta, buffers, step = arrays["theta"], arrays["opt_buffers"], arrays["opt_step"]
    if theta.shape != model._theta.shape or theta.dtype != model.dtype:
        raise _bad(path, f"parameters have shape {theta.shape} and dtype {theta.dtype}, but the "
                         f"architecture needs {model._theta.shape} {model.dtype}")
    if buffers.shape != model._state.buffers.shape or step.shape != (1,):
        raise _bad(path, "optimiser state does not match the architecture")
    if not np.isfinite(theta).all():
        raise _bad(path, "parameters contain NaN or inf")
    model._theta[...] = theta
    model._state.buffers[...] = buffers
    model._state.step[...] = step
    return model

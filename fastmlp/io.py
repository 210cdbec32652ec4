"""Saving and loading models: one uncompressed ``.npz`` file, never pickle.

The file holds ``header``, a UTF-8 JSON document stored as uint8 (format
version, architecture with activation parameters, loss, optimiser and its
settings, dtype, backend, seed and the random generator's state), the flat
parameters ``theta`` (n_params,), the optimiser state ``opt_buffers``
(2, n_params) and ``opt_step`` int64 (1,), and, when the model has them,
``input_mean`` and ``input_scale`` float64 (input_dim,), ``classes`` (k,)
distinct numbers or strings (k = :func:`fastmlp.labels.n_classes`: one per
output unit, 2 for one sigmoid unit with binary cross-entropy) and
``feature_names`` (input_dim,) strings. A file with any of these last four
is format version 2 (an older fastmlp would ignore them and predict wrongly,
so it must refuse the file); one without is version 1, which every fastmlp
reads. load holds files to that rule too: a version 2 file without optional
members has lost them (a damaged zip directory can hide members), and a
version 1 file with them was not written by fastmlp.

save:
- refuses (ValueError, nothing written, an existing file kept) non-finite
  parameters or optimiser state, and anything else load would refuse;
- writes a temporary file beside the target and renames it over the target,
  so a crash mid-save leaves the previous file whole; follows a symbolic link
  to its target, and refuses to replace anything that is not a regular file;
- keeps an existing file's permission bits; a new file gets 0666 & ~umask;
- deletes the ``.fastmlp-<pid>-*.tmp`` files that killed saves left in the
  folder, once their writer process is gone (see :mod:`fastmlp._atomic`).

load reads no pickle and uses memory proportional to the file's real size:
every header field's type and range, every member's name, dtype and shape and
the parameter count the architecture implies are checked before any array is
read or the model built. Every damaged, truncated, foreign, pickled or crafted
file, and anything that is not a regular file (a fifo, device, socket or
directory: refused unread, without blocking), raises
``ValueError("<path> is not a readable fastmlp model file: ...")``; a path that
leads to no file raises what ``open`` raises (FileNotFoundError when missing).
The file is never modified.
"""
from __future__ import annotations

import json
import os  # noqa: F401  (tests patch fio.os.replace)
from collections import namedtuple
from reprlib import repr as _short

import numpy as np

from . import _atomic, labels, losses, optimizers
from . import activations as act
from ._npz import Archive, FormatError
from .network import Dense, param_too_large

FORMAT = "fastmlp-model"
VERSION = 2              # the newest version written; version 1 files have no optional members
READS = (1, 2)
REQUIRED = ("header", "theta", "opt_buffers", "opt_step")
OPTIONAL = ("input_mean", "input_scale", "classes", "feature_names")
MAX_HEADER_BYTES = 1 << 20
MAX_STEP = 2 ** 53       # Adam's bias correction takes the step as a float64

# What the arrays must match: from the model on save, from the header on load.
# n_classes: the length of ``classes`` (labels.n_classes of the output layer and loss).
Spec = namedtuple("Spec", "n_params input_dim dtype adam n_classes")


def save(model, path):
    """Write ``model`` to ``path`` (any name; no suffix is added), atomically."""
    path = _atomic.as_str(path)  # bytes too, as load takes them (replace refuses "")
    # What a pickle holds, read at one moment under the model's lock: the optimiser's
    # settings read apart from the state, after the checks below, were those of a later
    # step beside a partial_fit setting its weight decay (98 saves in 100). The Model's
    # own, not a subclass's __getstate__ (one saving itself recursed forever)
    held = model._held()
    state = held["state"]
    arrays = {"theta": state["theta"], "opt_buffers": state["opt_buffers"],
              "opt_step": state["opt_step"], **_optional_arrays(held)}
    spec = Spec(model.net.n_params, model.net.input_dim, model.dtype,
                isinstance(model.optimizer, optimizers.Adam),
                labels.n_classes(model.net.output_dim, model.net.loss.code))
    problem = _save_problem(arrays, spec)
    if problem:
        raise ValueError(f"{problem}: not saved to {path}, an existing file there is kept")
    header = {
        "format": FORMAT, "version": _version_for(arrays),
        "network": model.net.config(),
        "optimizer": held["config"]["optimizer"],
        "dtype": model.dtype.name,
        "backend": model.backend,
        # JSON cannot hold np.int64 or a SeedSequence; rng_state restores the stream anyway
        "seed": (int(model.seed) if isinstance(model.seed, (int, np.integer))
                 and not isinstance(model.seed, bool) and model.seed >= 0 else None),
        "rng_state": state["rng_state"],
    }
    blob = np.frombuffer(json.dumps(header, allow_nan=False).encode("utf-8"), dtype=np.uint8)
    if blob.size > MAX_HEADER_BYTES:
        raise ValueError(f"the model's description takes {blob.size} bytes, more than load "
                         f"reads ({MAX_HEADER_BYTES}): not saved to {path}")
    _atomic.replace(path, lambda f: _savez(f, blob, arrays))


def _savez(f, blob, arrays):
    """np.savez, with what stopped a member's write raised as itself: a Ctrl-C, or a
    signal handler's TimeoutError, landing there became the ValueError zipfile's own
    close raises over it ("Can't close the ZIP file while there is an open writing
    handle"), which ``except KeyboardInterrupt`` or ``except TimeoutError`` never sees."""
    try:
        np.savez(f, header=blob, **arrays)
    except Exception as exc:
        cause = exc.__context__
        if isinstance(cause, KeyboardInterrupt) or (
                cause is not None and "open writing handle" in str(exc)):
            raise cause from None
        raise


def _version_for(members):
    """The format version of a file holding ``members`` (names): 2 with an optional one."""
    return 2 if set(OPTIONAL) & set(members) else 1


def _optional_arrays(held):
    """The input scaling and labels of a model's _held() dict as the file's members."""
    arrays = {}
    if held["input_scaling"] is not None:
        mean, scale = held["input_scaling"]
        arrays["input_mean"] = np.asarray(mean, dtype=np.float64)
        arrays["input_scale"] = np.asarray(scale, dtype=np.float64)
    for name, value in (("classes", held["classes_"]),
                        ("feature_names", held["feature_names_in_"])):
        if value is not None:
            arrays[name] = np.asarray(value)
    return arrays


def read(path, backend=None):
    """(header, arrays, backend): a file written by :func:`save`, every member and header
    field checked (see the module docstring); ``backend`` is the one to build the model on
    (the saved one unless overridden). :func:`fastmlp.load` builds the Model from them.

    Damaged, truncated, foreign, pickled or crafted files raise ValueError; the file is
    never modified.
    """
    from .backends import available_backends, get_backend, resolve

    path = _atomic.as_str(path)
    if not path:  # as save and to_onnx say it (open("") would say FileNotFoundError: '')
        raise ValueError("cannot load: the path is empty")
    if backend is not None:
        backend = resolve(backend)   # "auto": the fastest here, as Model(backend="auto")
        get_backend(backend)  # a bad argument is the caller's error, not the file's
    try:
        with Archive(path, REQUIRED, OPTIONAL) as archive:
            header = _read_header(archive)
            spec = Spec(header["n_params"], header["input_dim"], np.dtype(header["dtype"]),
                        isinstance(header["optimizer"], optimizers.Adam),
                        labels.n_classes(header["layers"][-1].units,
                                         losses.get(header["loss"]).code))
            arrays = {}
            for name in [n for n in REQUIRED + OPTIONAL if n in archive.names and n != "header"]:
                problem = _layout_problem(name, *archive.describe(name), spec)
                if problem:
                    raise FormatError(problem)
                arrays[name] = archive.read(name)
        problem = _value_problem(arrays, spec)
        if problem:
            raise FormatError(problem)
        _check_version(header["version"], arrays)  # last: a bad member is the clearer news
    except FormatError as exc:
        raise bad_file(path, exc) from None
    if backend is None:
        backend = header["backend"] or "numpy"
        try:   # that backend alone: listing them all imported numba and numba.cuda (1 s)
            get_backend(backend)
        except ValueError:
            raise ValueError(f"{path} was saved for backend {backend!r}, which is not "
                             f"available here ({available_backends()}); pass backend= to "
                             "fm.load (backend='auto': the fastest here)") from None
    return header, arrays, backend


def bad_file(path, why):
    """The one error every unreadable model file gives."""
    return ValueError(f"{_atomic.as_str(path)} is not a readable fastmlp model file: {why}")


# -- the header ------------------------------------------------------------------------

def _read_header(archive):
    """The header's fields, each checked for type and range; FormatError if any is wrong."""
    dtype, shape = archive.describe("header")
    if dtype != np.uint8 or len(shape) != 1 or shape[0] > MAX_HEADER_BYTES:
        raise FormatError(f"damaged header (dtype {dtype}, shape {shape}; expected at most "
                          f"{MAX_HEADER_BYTES} bytes of UTF-8 JSON)")
    try:
        header = json.loads(archive.read("header").tobytes().decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # also bad UTF-8, and ints of 4300+ digits
        raise FormatError(f"damaged header ({type(exc).__name__}: {exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise FormatError("not written by fastmlp")
    version = header.get("version")
    if type(version) is not int or version not in READS:
        raise FormatError(f"format version {_short(version)}; this fastmlp reads {list(READS)}")
    try:
        return _check_fields(header)
    except KeyError as exc:
        raise FormatError(f"invalid header (missing field {exc})") from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise FormatError(f"invalid header ({exc})") from None


def _check_version(version, members):
    """FormatError unless ``version`` is the one save writes for ``members``."""
    if version == _version_for(members):
        return
    if version == 2:
        raise FormatError("format version 2, but it holds none of the members that version "
                          f"adds ({', '.join(OPTIONAL)}): they are missing")
    optional = sorted(set(OPTIONAL) & set(members))
    raise FormatError(f"format version 1, which has no {', '.join(optional)}, but the file "
                      "holds them")


def _check_fields(header):
    net = header["network"]
    _require(isinstance(net, dict), "network must be an object")
    input_dim = _positive_int(net["input_dim"], "network.input_dim")
    layers, n_params = _layers(net["layers"], input_dim)
    config = header["optimizer"]
    _require(isinstance(config, dict) and all(type(v) in (int, float, bool) for k, v in
                                              config.items() if k != "name"),
             lambda: f"optimizer must be an object of numbers, got {_short(config)}")
    dtype, backend, seed = header["dtype"], header["backend"], header["seed"]
    _require(dtype in ("float32", "float64"),
             lambda: f"dtype must be 'float32' or 'float64', got {_short(dtype)}")
    too_large = param_too_large(layers, dtype)  # it would make every output inf
    _require(too_large is None, too_large)
    _require(backend is None or isinstance(backend, str),
             lambda: f"backend must be a name, got {_short(backend)}")
    # save writes the backend a model ran on; "auto" names none (its load error's advice,
    # backend='auto', contradicted it)
    _require(backend != "auto", "backend must be the one the model ran on, got 'auto'")
    _require(seed is None or (type(seed) is int and seed >= 0),
             lambda: f"seed must be an integer >= 0 or null, got {_short(seed)}")
    return {"version": header["version"], "layers": layers, "input_dim": input_dim,
            "n_params": n_params,
            "loss": losses.get(net["loss"]).name, "optimizer": optimizers.from_config(config),
            "dtype": dtype, "backend": backend, "seed": seed,
            "rng_state": check_rng_state(header["rng_state"])}


def _layers(configs, input_dim):
    """The header's Dense layers and the parameter count they imply.

    The count is arithmetic on the header's numbers (Network counts the same way
    once built), so an absurd claim is refused before anything is allocated.
    """
    _require(isinstance(configs, list) and configs, "network.layers must be a non-empty list")
    layers, n_params, fan_in = [], 0, input_dim
    for i, config in enumerate(configs, 1):
        _require(isinstance(config, dict), f"layer {i} must be an object")
        params = dict(config)
        units = _positive_int(params.pop("units", None), f"layer {i} units")
        activation = act.get(params.pop("activation", None))
        for key, value in params.items():
            _require(type(value) in (int, float),
                     lambda: f"layer {i} {key} must be a number, got {_short(value)}")
        layers.append(Dense(units, activation.name, **params))  # checks names and finiteness
        n_params += (fan_in + (2 if activation.code == act.PRELU else 1)) * units
        fan_in = units
    return layers, n_params


def check_rng_state(state):
    """numpy's PCG64 state dict, exactly: {'bit_generator': 'PCG64', 'state': {'state': s,
    'inc': i}, 'has_uint32': 0 or 1, 'uinteger': u}, s and i in [0, 2**128), u in [0, 2**32)."""
    def uint(value, bits):
        return type(value) is int and 0 <= value < 2 ** bits

    inner = state.get("state") if isinstance(state, dict) else None
    _require(isinstance(state, dict)
             and set(state) == {"bit_generator", "state", "has_uint32", "uinteger"}
             and state["bit_generator"] == "PCG64"
             and isinstance(inner, dict) and set(inner) == {"state", "inc"}
             and uint(inner["state"], 128) and uint(inner["inc"], 128)
             and uint(state["has_uint32"], 1) and uint(state["uinteger"], 32),
             lambda: f"rng_state is not numpy's PCG64 state: {_short(state)}")
    return state


def _positive_int(value, name):
    _require(type(value) is int and value >= 1,
             lambda: f"{name} must be an integer >= 1, got {_short(value)}")
    return value


def _require(ok, why):
    """ValueError(why) unless ``ok``; ``why`` may be a function making the message, so a
    check that passes builds none (reprlib's repr of a state on every set_state and load
    cost time, and swallowed a timeout landing in its sorted(): except Exception)."""
    if not ok:
        raise ValueError(why() if callable(why) else why)


# -- the arrays: the same checks on save and on load -----------------------------------

_NAMES = {"theta": "parameters", "opt_buffers": "optimiser state (opt_buffers)",
          "opt_step": "optimiser state (opt_step)", "input_mean": "input_mean",
          "input_scale": "input_scale", "classes": "classes", "feature_names": "feature_names"}


def _layout_problem(name, dtype, shape, spec):
    """Why an array of this dtype and shape cannot be member ``name``, or None."""
    n, d, k = spec.n_params, spec.input_dim, spec.n_classes
    if name == "classes":
        ok, need = (dtype.kind in "biufU" and shape == (k,),
                    f"({k},) numbers or strings, one label per class of its output layer")
    elif name == "feature_names":
        ok, need = dtype.kind == "U" and shape == (d,), f"({d},) strings"
    else:
        want = {"theta": (spec.dtype, (n,)), "opt_buffers": (spec.dtype, (2, n)),
                "opt_step": (np.dtype(np.int64), (1,)), "input_mean": (np.dtype(np.float64), (d,)),
                "input_scale": (np.dtype(np.float64), (d,))}[name]
        ok, need = dtype == want[0] and shape == want[1], f"{want[1]} {want[0]}"
    if ok:
        return None
    return f"{_NAMES[name]} have shape {shape} and dtype {dtype}, but the model needs {need}"


def _save_problem(arrays, spec):
    """Why save must refuse these arrays (load checks the same, member by member), or None."""
    for name, array in arrays.items():
        problem = _layout_problem(name, array.dtype, array.shape, spec)
        if problem:
            return problem
    return _value_problem(arrays, spec)


def _value_problem(arrays, spec):
    """Why these arrays (with the right layouts) cannot be a model's state, or None."""
    buffers, step = arrays["opt_buffers"], int(arrays["opt_step"][0])
    if not np.isfinite(arrays["theta"]).all():
        return "parameters contain NaN or inf"
    if not np.isfinite(buffers).all():
        return "optimiser state (opt_buffers) contains NaN or inf"
    if spec.adam and (buffers[1] < 0).any():
        return "Adam's second-moment buffer (opt_buffers[1]) has negative values"
    if not 0 <= step < MAX_STEP:
        return f"optimiser step count {step} is outside [0, 2**53)"
    if ("input_mean" in arrays) != ("input_scale" in arrays):
        return "input_mean and input_scale come together or not at all"
    if "input_mean" in arrays and not (np.isfinite(arrays["input_mean"]).all()
                                       and np.isfinite(arrays["input_scale"]).all()
                                       and (arrays["input_scale"] > 0).all()):
        return "input scaling must be finite, with input_scale > 0"
    classes = arrays.get("classes")
    if classes is not None and classes.dtype.kind == "f" and not np.isfinite(classes).all():
        return "classes contain NaN or inf"
    if classes is not None and len(np.unique(classes)) != len(classes):
        # predict_classes would give two output units the same label
        return f"classes {_short(classes.tolist())} hold a label twice; each class needs its own"
    names = arrays.get("feature_names")
    if names is not None and len(np.unique(names)) != len(names):
        # (Model.fit refuses such names) predict could not tell two columns apart
        return f"feature_names {_short(names.tolist())} hold a name twice"
    return None

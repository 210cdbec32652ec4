"""What ``fastmlp train`` writes (--save, --plot): checked before training, written after.

A run that would fail at the end (a missing folder, matplotlib not installed,
the output path being the input) fails before training, in one line.
"""
from __future__ import annotations

import os
import tempfile

from fastmlp._atomic import READ_ONLY, names_a_folder, read_only


def _same_file(a, b):
    """Whether paths ``a`` and ``b`` name one file (also through a symlink, a hard link or
    another spelling)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist: not the same file
        return False


def _refuse_empty(option, path):
    """An empty path (``--save "$OUT"`` with OUT unset) names no file: say so, not skip it."""
    if path == "":
        raise ValueError(f"{option}: the path is empty; give a file name")


def check_output_path(option, path, data=None, data_name="the --data file"):
    """Refuse, before any training, an output ``path`` that would fail or destroy the input.

    ValueError naming ``option`` ("--save", "--plot") when the path is empty, the input
    file ``data`` (``data_name`` in the message: the --data file, or the shipped digits
    without --data), through a symlink or another spelling too, a directory or something
    else that is not a regular file, a file this user may not write, a folder's name
    (``outdir/``: realpath drops the slash, so it would become a file ``outdir``), or in
    a folder that is missing or where no file can be created.
    """
    _refuse_empty(option, path)
    where = f"{option} {path}"
    real = os.path.realpath(path)
    if data is not None and _same_file(path, data):
        raise ValueError(f"{where}: that is {data_name}; refusing to overwrite the "
                         "input (choose another path)")
    if os.path.isdir(real):
        example = {"--save": "model.fastmlp", "--plot": "curves.png"}.get(option, "out.json")
        raise ValueError(f"{where}: is a directory; give a file name, e.g. "
                         f"{os.path.join(path, example)}")
    folder_problem = names_a_folder(path)
    if folder_problem:
        raise ValueError(f"{where}: {folder_problem}; give a file name")
    if os.path.lexists(real) and not os.path.isfile(real):
        raise ValueError(f"{where}: exists and is not a regular file")
    if os.path.isfile(real) and read_only(real):   # as save refuses it
        raise ValueError(f"{where}: {READ_ONLY}")
    folder = os.path.dirname(real)
    if not os.path.isdir(folder):
        raise ValueError(f"{where}: " + (f"{folder} is not a folder" if os.path.lexists(folder)
                                         else f"the folder {folder} does not exist"))
    try:  # the truth about writability (ACLs, read-only mounts, root): create a file there
        fd, probe = tempfile.mkstemp(prefix=".fastmlp-check-", dir=folder)
    except OSError as exc:
        raise ValueError(f"{where}: cannot create a file in {folder} "
                         f"({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)


def check_save_path(save, data=None, data_name="the --data file"):
    """:func:`check_output_path` for --save."""
    check_output_path("--save", save, data, data_name)


def check_plot(plot, data=None, save=None, data_name="the --data file"):
    """Refuse, before any training, a --plot that cannot be written: matplotlib missing
    (an optional extra), the path being empty, the --data or the --save file, or a bad
    folder."""
    _refuse_empty("--plot", plot)
    try:  # what fastmlp.plot draws with
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError:
        raise ValueError(f"--plot {plot}: needs matplotlib, which is not installed here; "
                         "pip install fastmlp[plot] (or pip install matplotlib)") from None
    if save is not None and _same_file(plot, save):
        raise ValueError(f"--plot {plot}: that is the --save file; choose another path")
    check_output_path("--plot", plot, data, data_name)


def check_plot_format(plot):
    """Refuse, before any training, a --plot whose suffix names no image format
    (fastmlp.plot.image_format); after check_plot, whose words about the file say more."""
    from fastmlp.plot import image_format
    try:
        image_format(plot)
    except ValueError as exc:
        raise ValueError(f"--plot {plot}: {exc}") from None


def save_model(model, path):
    try:
        model.save(path)
    except OSError as exc:  # e.g. the disk filled up during training
        raise ValueError(f"--save {path}: {exc.strerror or exc}") from None


def write_plot(history, path):
    """The loss/metric curves and per-layer gradient norms of ``history`` to an image
    (its format from the suffix: fastmlp.plot.image_format)."""
    from fastmlp.plot import plot_history  # imports matplotlib: only when --plot is given
    try:
        plot_history(history, path)
    except OSError as exc:
        raise ValueError(f"--plot {path}: {exc.strerror or exc}") from None
    except ValueError as exc:   # e.g. a curve beyond what a plot's axis can span
        raise ValueError(f"--plot {path}: not written: {exc}") from None

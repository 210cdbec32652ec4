"""Training curves and per-layer gradient norms to an image (matplotlib, an optional extra).

:func:`plot_history` draws one panel per metric (the training curve and, when
recorded, its ``val_`` twin, per epoch) and, when ``fit(gradient_norms=True)``
recorded them, one panel of per-layer gradient norms per epoch on a log scale:
the lessons' vanishing gradients show as the first layers' lines lying far
below the last layers'.

The figure is drawn on matplotlib's Agg canvas directly (``Figure`` +
``FigureCanvasAgg``), so neither pyplot nor the global backend is touched:
safe in scripts, servers and threads.

>>> import fastmlp as fm, fastmlp.plot
>>> # history = model.fit(X, Y, epochs=20, validation_split=0.2, gradient_norms=True)
>>> # fastmlp.plot.plot_history(history, "curves.png")
"""
from __future__ import annotations

import os

import numpy as np

from . import _atomic

_NOT_CURVES = ("samples_per_s", "grad_norm")
# matplotlib's axis limits (with margins) overflow float64 for values near its maximum;
# NaN and inf are left out of the curves, as matplotlib does
DRAWABLE = 1e300
LEGEND_LAYERS = 24   # more layers than this get a colour bar instead of a legend
# the formats the path's suffix may name (matplotlib's savefig writes each from an Agg
# figure; pgf, raw and rgba left out: LaTeX or bare pixels); no suffix writes PNG
IMAGE_FORMATS = ("png", "pdf", "svg", "svgz", "eps", "ps", "jpg", "jpeg", "tif", "tiff",
                 "webp")


def image_format(path):
    """The image format ``path``'s suffix names ("curves.pdf": "pdf"; no suffix: "png"),
    as matplotlib's savefig reads it; ValueError for a suffix that is none of
    IMAGE_FORMATS (a PNG written as "curves.out" would open as nothing)."""
    suffix = os.path.splitext(os.fspath(path))[1]
    if not suffix:
        return "png"
    fmt = suffix[1:].lower()
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"the suffix {suffix!r} names no image format written here; "
                         f"end the path with one of "
                         f"{', '.join('.' + f for f in IMAGE_FORMATS)} (none: PNG)")
    return fmt


def _matplotlib():
    """(Figure, FigureCanvasAgg), or an ImportError that says how to install them."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("fastmlp.plot needs matplotlib: pip install fastmlp[plot] "
                          f"(or pip install matplotlib); {exc}") from None
    return Figure, FigureCanvasAgg


def _series(logs):
    """{name: float64 (epochs,)} of the history's per-epoch curves; a value that is not
    a number is named. grad_norm (per-layer lists) is read by plot_history."""
    series = {}
    for name, values in logs.items():
        if not isinstance(name, str):
            raise TypeError(f"plot_history: the history's keys are metric names (str), got "
                            f"{name!r}")
        if name in _NOT_CURVES:
            continue
        try:
            arr = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"plot_history: history[{name!r}] must hold one number per "
                             f"epoch, got {_short(values)}") from None
        if arr.ndim != 1:
            raise ValueError(f"plot_history: history[{name!r}] must hold one number per "
                             f"epoch, got an array of shape {arr.shape}")
        finite = np.abs(arr[np.isfinite(arr)])
        if finite.size and finite.max() > DRAWABLE:
            raise ValueError(f"plot_history: history[{name!r}] holds {finite.max():g} in "
                             f"size, beyond the {DRAWABLE:g} matplotlib's axes can span")
        if arr.size:
            series[name] = arr
    return series


def _short(values):
    text = repr(values)
    return text if len(text) <= 80 else text[:77] + "..."


def _curves(series, metrics):
    """Base metric names to draw, in order: loss first, then the others."""
    bases = []
    for name in series:
        base = name[4:] if name.startswith("val_") else name
        if base not in bases:
            bases.append(base)
    bases.sort(key=lambda b: b != "loss")
    if metrics is None:
        return bases
    if isinstance(metrics, str):
        metrics = [metrics]
    wrong = [m for m in metrics if not isinstance(m, str)]
    if wrong:
        raise TypeError(f"plot_history: metrics are names (str), got {_short(wrong)}")
    metrics = [m[4:] if m.startswith("val_") else m for m in metrics]
    unknown = [m for m in metrics if m not in bases]
    if unknown:
        raise ValueError(f"plot_history: no curve recorded for {unknown}; available: {bases}")
    return list(dict.fromkeys(metrics))


def plot_history(history, path, metrics=None):
    """Write the history's curves to an image at ``path`` and return ``path``.

    Parameters
    ----------
    history : the fm.History that fit returns (or its ``.history`` dict:
        name -> one value per epoch; "grad_norm" -> one list of per-layer norms
        per epoch).
    path : file to write, in the format its suffix names (".png", ".pdf", ".svg", ...:
        IMAGE_FORMATS; PNG without a suffix; another suffix is refused before anything
        is drawn), replaced only once the plot is written whole (as
        :meth:`fastmlp.Model.save` replaces files).
    metrics : names to draw (e.g. ["loss", "accuracy"]; each with its val_
        curve when recorded); None draws every recorded metric.
    """
    logs = getattr(history, "history", history)
    if not isinstance(logs, dict):
        raise TypeError(f"history must be an fm.History or its .history dict, got "
                        f"{type(history).__name__}")
    path = os.fspath(path)
    try:
        fmt = image_format(path)
    except ValueError as exc:
        raise ValueError(f"plot_history: {path!r}: {exc}") from None
    series = _series(logs)
    names = _curves(series, metrics)
    norms = _norms(logs.get("grad_norm"))
    if not names and norms is None:
        raise ValueError("plot_history: the history has no epochs to draw")

    Figure, FigureCanvasAgg = _matplotlib()
    panels = len(names) + (norms is not None)
    fig = Figure(figsize=(6.4, 3.2 * panels), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(panels, 1, squeeze=False)[:, 0]
    epochs = getattr(history, "epoch", None)

    def x_for(values):
        # 1-based epochs, as the progress bar prints them
        if epochs is not None and len(epochs) == len(values):
            return np.asarray(epochs) + 1
        return np.arange(1, len(values) + 1)

    for ax, base in zip(axes, names):
        for name, style in ((base, "-"), ("val_" + base, "--")):
            if name in series:
                ax.plot(x_for(series[name]), series[name], style, marker=".", label=name)
        ax.set_ylabel(base)
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(True, alpha=0.3)
    if norms is not None:
        _plot_norms(axes[-1], x_for(norms), norms)
    # through a temporary file renamed over path, as save and to_onnx write: a failed
    # write (a full disk) truncated the plot already there
    _atomic.replace(path, lambda f: fig.savefig(f, format=fmt, dpi=100))
    return path


def _norms(norms):
    """history["grad_norm"] as float64 (epochs, layers), or None when absent or empty."""
    if norms is None or len(norms) == 0:
        return None
    try:
        arr = np.asarray(norms, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.ndim != 2:
        raise ValueError("plot_history: history['grad_norm'] must hold one list of per-layer "
                         f"norms per epoch, all of one length; got {_short(norms)}")
    return arr


def _plot_norms(ax, x, norms):
    """One line per layer, coloured from the first layer (dark) to the last (light)."""
    from matplotlib import colormaps
    layers = norms.shape[1]
    colours = colormaps["viridis"](np.linspace(0.0, 0.9, layers))
    for i in range(layers):
        ax.plot(x, norms[:, i], color=colours[i], marker=".", label=f"layer {i + 1}")
    ax.set_yscale("log", nonpositive="mask")   # a dead layer's 0 is left out, not an error
    ax.set_xlabel("epoch")
    ax.set_ylabel("gradient norm")
    ax.set_title("per-layer gradient norm (log scale)")
    if layers <= LEGEND_LAYERS:
        # outside the axes: with many layers an inside legend hides the lines
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small",
                  ncols=1 if layers <= 12 else 2)
    else:   # a legend this long would not fit the figure: a colour bar of layer numbers
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize
        ax.figure.colorbar(ScalarMappable(Normalize(1, layers), colormaps["viridis"]),
                           ax=ax, label="layer")
    ax.grid(True, which="both", alpha=0.3)

"""Training curves and per-layer gradient norms to PNG (matplotlib, an optional extra).

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

import numbers
import os

import numpy as np

_NOT_CURVES = ("samples_per_s", "grad_norm")


def _matplotlib():
    """(Figure, FigureCanvasAgg), or an ImportError that says how to install them."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("fastmlp.plot needs matplotlib: pip install fastmlp[plot] "
                          f"(or pip install matplotlib); {exc}") from None
    return Figure, FigureCanvasAgg


def _curves(logs, metrics):
    """Base metric names to draw, in order: loss first, then the others."""
    def is_curve(name):
        values = logs[name]
        return (name not in _NOT_CURVES and len(values) > 0
                and all(isinstance(v, numbers.Real) for v in values))

    bases = []
    for name in logs:
        base = name[4:] if name.startswith("val_") else name
        if base not in bases and is_curve(name):
            bases.append(base)
    bases.sort(key=lambda b: b != "loss")
    if metrics is None:
        return bases
    if isinstance(metrics, str):
        metrics = [metrics]
    metrics = [m[4:] if m.startswith("val_") else m for m in metrics]
    unknown = [m for m in metrics if m not in bases]
    if unknown:
        raise ValueError(f"plot_history: no curve recorded for {unknown}; available: {bases}")
    return list(dict.fromkeys(metrics))


def plot_history(history, path, metrics=None):
    """Write the history's curves to a PNG at ``path`` and return ``path``.

    Parameters
    ----------
    history : the fm.History that fit returns (or its ``.history`` dict:
        name -> one value per epoch; "grad_norm" -> one list of per-layer norms
        per epoch).
    path : file to write (PNG, whatever the suffix).
    metrics : names to draw (e.g. ["loss", "accuracy"]; each with its val_
        curve when recorded); None draws every recorded metric.
    """
    logs = getattr(history, "history", history)
    if not isinstance(logs, dict):
        raise TypeError(f"history must be an fm.History or its .history dict, got "
                        f"{type(history).__name__}")
    path = os.fspath(path)
    names = _curves(logs, metrics)
    norms = logs.get("grad_norm")
    norms = np.asarray(norms, dtype=np.float64) if norms else None   # (epochs, layers)
    if norms is not None and norms.ndim != 2:
        raise ValueError(f"history['grad_norm'] must hold one list of per-layer norms per "
                         f"epoch, got an array of shape {norms.shape}")
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
            if logs.get(name):
                ax.plot(x_for(logs[name]), logs[name], style, marker=".", label=name)
        ax.set_ylabel(base)
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(True, alpha=0.3)
    if norms is not None:
        _plot_norms(axes[-1], x_for(norms), norms)
    fig.savefig(path, format="png", dpi=100)
    return path


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
    # outside the axes: with many layers an inside legend hides the lines
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small",
              ncols=1 if layers <= 12 else 2)
    ax.grid(True, which="both", alpha=0.3)

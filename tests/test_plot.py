"""fastmlp.plot: curves and per-layer gradient norms to an image; and lesson 13 in numbers:
a deep sigmoid network's first layers get vanishing gradients, a ReLU/He one's do not."""
import inspect
import subprocess
import sys

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import datasets
from fastmlp.plot import plot_history

matplotlib_image = pytest.importorskip("matplotlib.image")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PANEL_PX = (320, 640)          # plot_history: 6.4 x 3.2 inches per panel at 100 dpi


def _history(epochs=5, layers=None):
    h = fm.History()
    rng = np.random.default_rng(0)
    h.history["val_loss"], h.history["accuracy"], h.history["val_accuracy"] = [], [], []
    h.history["samples_per_s"] = []
    if layers:
        h.history["grad_norm"] = []
    for e in range(epochs):
        h.epoch.append(e)
        h.history["loss"].append(1.0 / (e + 1))
        h.history["val_loss"].append(1.2 / (e + 1))
        h.history["accuracy"].append(0.5 + 0.08 * e)
        h.history["val_accuracy"].append(0.45 + 0.08 * e)
        h.history["samples_per_s"].append(1e5)
        if layers:
            h.history["grad_norm"].append(list(10.0 ** -np.arange(layers, 0, -1)
                                               * rng.uniform(0.5, 2, layers)))
    return h


def _read_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    return matplotlib_image.imread(path)


def test_writes_a_png_with_one_panel_per_metric(tmp_path):
    path = tmp_path / "curves.png"
    assert plot_history(_history(), path) == str(path)
    image = _read_png(path)
    assert image.shape == (2 * PANEL_PX[0], PANEL_PX[1], 4)        # loss, accuracy
    assert image[..., :3].std() > 0.05                            # something was drawn


def test_gradient_norms_add_a_panel(tmp_path):
    path = plot_history(_history(layers=4), tmp_path / "norms.png")
    assert _read_png(path).shape == (3 * PANEL_PX[0], PANEL_PX[1], 4)


def test_metrics_selects_panels_and_accepts_the_dict(tmp_path):
    path = plot_history(_history().history, str(tmp_path / "loss.png"), metrics=["val_loss"])
    assert _read_png(path).shape == (PANEL_PX[0], PANEL_PX[1], 4)


# each format's first bytes, as the suffix names it (matplotlib's savefig reads suffixes
# so; the plot had been PNG data under any name, "curves.pdf" too)
MAGIC = {"png": PNG_MAGIC, "PNG": PNG_MAGIC, "pdf": b"%PDF", "svg": b"<?xml",
         "svgz": b"\x1f\x8b", "eps": b"%!PS", "ps": b"%!PS", "jpg": b"\xff\xd8\xff",
         "jpeg": b"\xff\xd8\xff", "tif": b"II*\x00", "tiff": b"II*\x00", "webp": b"RIFF"}


@pytest.mark.parametrize("suffix", sorted(MAGIC))
def test_the_suffix_names_the_format(tmp_path, suffix):
    path = plot_history(_history(epochs=1), tmp_path / f"curves.{suffix}")
    with open(path, "rb") as f:
        assert f.read(len(MAGIC[suffix])) == MAGIC[suffix]


def test_no_suffix_is_png(tmp_path):
    _read_png(plot_history(_history(epochs=1), tmp_path / "curves"))


@pytest.mark.parametrize("name", ["curves.out", "curves.pgf", "run.1", "curves.png.bak"])
def test_a_suffix_naming_no_format_is_refused_before_drawing(tmp_path, name):
    (tmp_path / name).write_bytes(b"kept")
    suffix = "." + name.rsplit(".", 1)[1]
    with pytest.raises(ValueError, match=rf"plot_history: '.*{name}': the suffix "
                                         rf"'\{suffix}' names no image format .*\.png, "
                                         rf"\.pdf, \.svg.* \(none: PNG\)"):
        plot_history(_history(epochs=1), tmp_path / name)
    assert (tmp_path / name).read_bytes() == b"kept"


def test_unknown_metric_names_the_recorded_ones(tmp_path):
    with pytest.raises(ValueError, match=r"no curve recorded for \['f1'\]; available: "
                                         r"\['loss', 'accuracy'\]"):
        plot_history(_history(), tmp_path / "x.png", metrics=["f1"])


def test_empty_history_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no epochs to draw"):
        plot_history(fm.History(), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_a_failed_write_keeps_the_plot_already_there(tmp_path, monkeypatch):
    # the write went straight into the file: a full disk left it truncated
    from matplotlib.figure import Figure
    path = tmp_path / "curves.png"
    plot_history(_history(), path)
    before = path.read_bytes()
    real = Figure.savefig

    def half_then_disk_full(self, f, **kwargs):
        real(self, f, **kwargs)
        f.truncate(len(before) // 2)
        raise OSError(27, "File too large")
    monkeypatch.setattr(Figure, "savefig", half_then_disk_full)
    with pytest.raises(OSError, match=f"cannot save {path}: writing it failed; the file "
                                      "there is kept"):
        plot_history(_history(epochs=9), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]   # no temporary file left


def test_metric_names_must_be_strings(tmp_path):
    with pytest.raises(TypeError, match=r"metrics are names \(str\), got \[None\]"):
        plot_history(_history(), tmp_path / "x.png", metrics=["loss", None])


def test_a_fifo_is_refused_as_save_refuses_it(tmp_path):
    import os
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="it is a fifo, not a regular file"):
        plot_history(_history(), fifo)


def test_not_a_history_is_refused(tmp_path):
    with pytest.raises(TypeError, match="history must be an fm.History"):
        plot_history([1.0, 0.5], tmp_path / "x.png")


def test_without_matplotlib_says_how_to_install(monkeypatch, tmp_path):
    for name in [m for m in sys.modules if m.split(".")[0] == "matplotlib"] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"pip install fastmlp\[plot\]"):
        plot_history(_history(), tmp_path / "x.png")


def test_pyplot_and_the_global_backend_are_left_alone(tmp_path):
    code = ("import sys, fastmlp as fm; from fastmlp.plot import plot_history; "
            "h = fm.History(); h.history['loss'] = [1.0, 0.5]; h.epoch = [0, 1]; "
            f"plot_history(h, {str(tmp_path / 'x.png')!r}); "
            "print('matplotlib.pyplot' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"
    _read_png(tmp_path / "x.png")


# -- lesson 13: vanishing gradients, seen in fit's recorded per-layer norms ----------------

fit_records_grad_norms = pytest.mark.skipif(
    "gradient_norms" not in inspect.signature(fm.Model.fit).parameters,
    reason="Model.fit does not record gradient norms yet (fit(gradient_norms=True), issue 11 "
           "wiring in fastmlp/model.py)")


def _deep(activation, backend, seed=0):
    """10 hidden layers of 32 units (Glorot for sigmoid, He for relu) and a softmax."""
    return fm.Model([fm.Dense(32, activation) for _ in range(10)] + [fm.Dense(10, "softmax")],
                    input_dim=64, loss="cross_entropy", optimizer=fm.Adam(1e-3),
                    backend=backend, seed=seed)


@fit_records_grad_norms
def test_deep_sigmoid_gradients_vanish_relu_he_do_not(backend, tmp_path):
    X, y = datasets.load_digits()
    X = X / 16.0
    ratios = {}
    for activation in ("sigmoid", "relu"):
        history = _deep(activation, backend).fit(X, y, epochs=3, gradient_norms=True)
        norms = np.asarray(history.history["grad_norm"])           # (epochs, layers)
        assert norms.shape == (3, 11) and np.isfinite(norms).all() and (norms > 0).all()
        ratios[activation] = norms[:, 0] / norms[:, -1]              # first over last layer
        plot_history(history, tmp_path / f"{activation}.png")
    # measured with the NumPy reference: sigmoid about 1e-6, relu/He about 1 (0.9 to 4)
    assert (ratios["sigmoid"] < 1e-3).all(), ratios
    assert (ratios["relu"] > 1e-1).all(), ratios

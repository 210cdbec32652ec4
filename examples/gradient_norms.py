"""Lesson 13 made visible: vanishing gradients in a deep sigmoid network, none with ReLU/He.

Two networks of 10 hidden layers x 32 units learn the 8x8 digits with the
same SGD (lr 0.01, momentum 0.9), recording each layer's gradient norm every
epoch (``fit(gradient_norms=True)``):

* sigmoid, Glorot-initialised: sigmoid' <= 1/4, so each layer shrinks the
  backpropagated error; the first layer's gradient is about 1e-6 of the
  last one's, the first layers hardly move and the loss stays at chance (ln 10).
* relu, He-initialised: relu' is 1 where a unit is active and He's scale keeps
  the signal's variance from layer to layer, so every layer gets a gradient
  of the same order, and the network learns.

    python examples/gradient_norms.py [--backend numba] [--epochs 15] [--out docs]

writes ``docs/vanishing_sigmoid.png`` and ``docs/relu_he.png`` (needs
matplotlib: ``pip install fastmlp[plot]``).
"""
import argparse
import os

import numpy as np

import fastmlp as fm
from fastmlp import _cli_options, _cli_outputs, datasets   # (the CLI's option types, checks)
from fastmlp.plot import plot_history

NETS = {"vanishing_sigmoid": "sigmoid", "relu_he": "relu"}   # file name -> hidden activation


def deep_net(activation, backend, seed):
    """64 -> 10 x 32 (activation) -> 10 softmax; fm.Dense picks Glorot or He by activation."""
    return fm.Model([fm.Dense(32, activation) for _ in range(10)] + [fm.Dense(10, "softmax")],
                    input_dim=64, loss="cross_entropy",
                    optimizer=fm.SGD(lr=0.01, momentum=0.9), backend=backend, seed=seed)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="numpy", choices=fm.available_backends())
    parser.add_argument("--epochs", type=_cli_options.positive_int, default=15)
    parser.add_argument("--seed", type=_cli_options.seed, default=0)
    parser.add_argument("--out", default="docs", help="folder for the two PNGs")
    args = parser.parse_args(argv)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        parser.error(f"--out {args.out}: not a folder")
    try:   # before training: "" or a folder under a file would fail only after it
        os.makedirs(args.out, exist_ok=True)
    except OSError as exc:
        parser.error(f"--out {args.out!r}: cannot make that folder ({exc.strerror or exc})")
    for name in NETS:   # each PNG as fastmlp train checks --plot: matplotlib, a folder in
        try:            # the way, a folder where no file can be made (round 60: after training)
            _cli_outputs.check_plot(os.path.join(args.out, name + ".png"))
        except ValueError as exc:
            parser.error(str(exc).replace("--plot", "--out", 1))

    X, y = datasets.load_digits()
    X_train, X_test, y_train, y_test = datasets.train_test_split(X, y, 0.2, seed=args.seed)
    X_train, X_test, _, _ = datasets.standardize(X_train, X_test)
    for name, activation in NETS.items():
        model = deep_net(activation, args.backend, args.seed)
        history = model.fit(X_train, y_train, epochs=args.epochs,
                            validation_data=(X_test, y_test), metrics=["accuracy"],
                            gradient_norms=True)
        norms = np.asarray(history.history["grad_norm"])           # (epochs, layers)
        ratio = norms[:, 0] / norms[:, -1]
        path = plot_history(history, os.path.join(args.out, name + ".png"))
        print(f"{activation:8s} held-out accuracy {history.history['val_accuracy'][-1]:.3f}  "
              f"first/last layer gradient norm: median {np.median(ratio):.1e} "
              f"(min {ratio.min():.1e}, max {ratio.max():.1e})  -> {path}")


if __name__ == "__main__":
    main()

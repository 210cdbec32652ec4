"""The lessons' toy example: tell cars from bikes by wheels, height and weight.

A 3-4-2 sigmoid network with the lessons' mean squared error, trained by
full-batch gradient descent until E <= epsilon. Each row's error per output,
(y_hat - y)^2 as in the lessons' (0.9 - 1)^2 = 0.01, is printed before and
after training.

    python examples/vehicles.py [--backend numpy] [--dtype float32]

(``fastmlp vehicles`` runs the same example from the installed package.)
"""
import argparse
import sys

import fastmlp as fm
from fastmlp import datasets


def show(model, X_raw, X, Y):
    """Print every row's prediction and squared error; return how many are right."""
    P = model.predict(X)
    right = 0
    for x, t, p in zip(X_raw, Y, P):
        truth = datasets.VEHICLE_CLASSES[t.argmax()]
        guess = datasets.VEHICLE_CLASSES[p.argmax()]
        right += truth == guess
        err = (p - t) ** 2
        print(f"  wheels {x[0]:.0f}  height {x[1]:3.1f}  weight {x[2]:3.0f}  {truth:4s}"
              f"  y_hat [{p[0]:.3f} {p[1]:.3f}]  (y_hat - y)^2 [{err[0]:.4f} {err[1]:.4f}]"
              f"  -> {guess}")
    print(f"  E = {model.evaluate(X, Y):.6f}")
    return right


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="numpy", choices=fm.available_backends())
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args(argv)

    X_raw, Y = datasets.load_vehicles()       # (6, 3) and one-hot (6, 2): car, bike
    X, mean, std = datasets.standardize(X_raw)  # weights in the hundreds would saturate sigmoids

    model = fm.Model([fm.Dense(4, activation="sigmoid"), fm.Dense(2, activation="sigmoid")],
                     input_dim=3, loss="mse", optimizer=fm.SGD(lr=0.5),
                     backend=args.backend, dtype=args.dtype, seed=0)

    print("before training:")
    show(model, X_raw, X, Y)
    history = model.fit(X, Y, epochs=5000, batch_size=6, tol=1e-3, shuffle=False)
    print(f"\ntrained for {len(history.epoch)} epochs (stop when E <= 0.001)\n\nafter training:")
    right = show(model, X_raw, X, Y)
    print(f"\n{right} of 6 rows classified correctly")
    return 0 if right == 6 else 1


if __name__ == "__main__":
    sys.exit(main())

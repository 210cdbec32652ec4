"""Data-parallel training of the digits model over MPI, checked against one process.

    mpiexec -n 2 python -m mpi4py examples/distributed.py [--backend numba] [--epochs 20]

Every rank loads the digits and takes its block of the training rows (a real job
would read only its own shard); the split, the standardisation, the 64-64-10
relu/softmax network, Adam(lr=0.003) and batch 32 are those of ``fastmlp train``.
``fastmlp.distributed.fit`` trains with the batch size global: every step uses the
rows a single process would use. Rank 0 then trains one process on all the training
rows the ordinary way (``Model.fit``) and prints both held-out accuracies.
"""
import argparse

import numpy as np
from mpi4py import MPI

import fastmlp as fm
from fastmlp import _cli_options, datasets, distributed  # (the CLI's option types)


def digits_model(backend, dtype):
    return fm.Model([fm.Dense(64, activation="relu"), fm.Dense(10, activation="softmax")],
                    input_dim=64, loss="cross_entropy", optimizer=fm.Adam(lr=3e-3),
                    backend=backend, dtype=dtype, seed=0)


def accuracy(model, X, y):
    return float(np.mean(model.predict_classes(X) == y))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="numpy", choices=fm.available_backends())
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--epochs", type=_cli_options.positive_int, default=20)
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()

    X, y = datasets.load_digits()
    X_train, X_test, y_train, y_test = datasets.train_test_split(X, y, 0.2, seed=0)
    mean, scale = datasets.standardization(X_train)
    mine = np.array_split(np.arange(len(X_train)), size)[rank]   # rank r: the r-th block

    model = digits_model(args.backend, args.dtype)
    model.set_input_scaling(mean, scale)
    history = distributed.fit(model, X_train[mine], y_train[mine], comm, epochs=args.epochs,
                              batch_size=32, check_consistency=True)
    counts = comm.allgather(len(mine))
    if rank != 0:
        return
    single = digits_model(args.backend, args.dtype)
    single.set_input_scaling(mean, scale)
    single_history = single.fit(X_train, y_train, epochs=args.epochs, batch_size=32)
    gap = max(float(np.abs(a - b).max()) for a, b in zip(model.get_weights(),
                                                          single.get_weights()))
    print(f"digits: {len(X_train)} training rows on {size} ranks "
          f"({' + '.join(map(str, counts))}), {len(X_test)} held out; {args.epochs} epochs, "
          f"global batch 32, backend {args.backend}, {args.dtype}")
    print(f"{size} ranks:     final loss {history.history['loss'][-1]:.6f}  held-out accuracy "
          f"{accuracy(model, X_test, y_test):.4f}")
    print(f"one process: final loss {single_history.history['loss'][-1]:.6f}  held-out "
          f"accuracy {accuracy(single, X_test, y_test):.4f}")
    print(f"largest weight difference: {gap:.3g}")


if __name__ == "__main__":
    main()

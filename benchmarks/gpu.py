"""fastmlp's "cuda" backend against PyTorch CUDA (eager and torch.compile), on one GPU.

    python benchmarks/gpu.py                 # on a machine with an NVIDIA GPU
    python benchmarks/gpu.py --smoke         # tiny sizes: checks the script runs
                                             # (fastmlp under NUMBA_ENABLE_CUDASIM=1 works)

Every row is one public call, float32, TF32 off in PyTorch (its matmuls then compute in
float32 as fastmlp's kernels do), both sides starting from the same weights and data:

* W1: the lessons' vehicles net 3-4-2, ``fit(epochs=E, batch_size=6)`` (PyTorch: the same
  epochs as a Python loop of steps on the device);
* tcnn-2^k: a tiny-cuda-nn-style net (64 inputs, 4 hidden layers of 64 ReLU units, 16
  outputs, MSE), one epoch of ``fit`` over 2^18 rows resident on the device in batches
  of 2^k (k = 14..18), so the training set is copied once, as a GPU user's would be;
* W2, W3, W4: the CPU benchmark's nets (benchmarks/workloads.py), fit over 2^16 resident
  rows in batches of 64 / 512 / 512;
* predict-2^16: the W2 net on 2^16 rows, a device array in and out.

Each cell: one untimed call (compiles, torch.compile traces), then the fastest of
``--rounds`` timed calls, each ended by a device synchronisation. Ratios are fastmlp's
speed over PyTorch eager and over torch.compile in this run. The report names the GPU,
driver and date; the README's GPU table is such a run.
"""
from __future__ import annotations

import argparse
import datetime
import sys
import time

import numpy as np

import fastmlp as fm

ROWS_TCNN = 1 << 18
ROWS_MNIST = 1 << 16


def rows_of(smoke):
    """The benchmark's (name, dims, hidden, output, loss, rows, batch, kind, epochs, lr)."""
    s = 64 if smoke else 1
    tcnn = (64, 64, 64, 64, 64, 16)
    mnist = (784, 256, 128, 10) if not smoke else (12, 8, 6, 3)
    wide = (2048, 2048, 2048, 10) if not smoke else (16, 16, 16, 3)
    rows = [("W1", (3, 4, 2), "sigmoid", "sigmoid", "mse", 6, 6, "fit", 1000 // s, 0.5)]
    for k in (range(14, 19) if not smoke else (4,)):
        rows.append((f"tcnn-2^{k}", tcnn if not smoke else (8, 8, 8, 8, 8, 4), "relu",
                     "linear", "mse", ROWS_TCNN // (s * s * 4), 1 << k, "fit", 1, 0.01))
    rows += [("W2", mnist, "relu", "softmax", "cross_entropy", ROWS_MNIST // (s * s), 64, "fit", 1, 0.01),
             ("W3", mnist, "relu", "softmax", "cross_entropy", ROWS_MNIST // (s * s), 512, "fit", 1, 0.01),
             ("W4", wide, "relu", "softmax", "cross_entropy", ROWS_MNIST // (s * s), 512, "fit", 1, 0.01),
             ("predict-2^16", mnist, "relu", "softmax", "cross_entropy", ROWS_MNIST // (s * s), 0,
              "predict", 0, 0.01)]
    return rows


def data(dims, loss, rows, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, dims[0])).astype(np.float32)
    if loss == "mse":
        T = rng.standard_normal((rows, dims[-1])).astype(np.float32)
    else:
        T = np.eye(dims[-1], dtype=np.float32)[rng.integers(0, dims[-1], rows)]
    return X, T


def fastmlp_case(dims, hidden, output, loss, X, T, batch, kind, epochs, lr):
    from numba import cuda

    acts = [hidden] * (len(dims) - 2) + [output]
    model = fm.Model([fm.Dense(u, activation=a) for u, a in zip(dims[1:], acts)],
                     input_dim=dims[0], loss=loss, optimizer=fm.SGD(lr=lr), backend="cuda",
                     seed=0)
    if kind == "predict":
        Xd = cuda.to_device(X)

        def run():
            out = model.predict(Xd)
            cuda.synchronize()
            return out
    else:
        def run():
            return model.fit(X, T, epochs=epochs, batch_size=batch, shuffle=True).history["loss"][-1]
    return model, run


def torch_case(model, loss, X, T, batch, kind, epochs, lr, compiled):
    import torch
    from torch import nn

    dev = torch.device("cuda")
    mods = []
    for i, (W, b, _) in enumerate(model.net.layer_views(model.get_state()["theta"])):
        lin = nn.Linear(*W.shape)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W.T.copy()))
            lin.bias.copy_(torch.from_numpy(b.copy()))
        mods.append(lin)
        act = model.net.layers[i].activation.name
        mods += {"relu": [nn.ReLU()], "sigmoid": [nn.Sigmoid()], "tanh": [nn.Tanh()]}.get(act, [])
    net = nn.Sequential(*mods).to(dev)
    Xd, Td = torch.from_numpy(X).to(dev), torch.from_numpy(T).to(dev)
    if loss == "mse":
        loss_fn = lambda y, t: ((y - t) ** 2).sum(dim=1).mean()  # noqa: E731 fastmlp's MSE
    else:
        Td = Td.argmax(dim=1)
        loss_fn = nn.functional.cross_entropy
    opt = torch.optim.SGD(net.parameters(), lr=lr)

    def step(x, t):
        opt.zero_grad(set_to_none=True)
        out = loss_fn(net(x), t)
        out.backward()
        opt.step()
        return out

    if compiled:
        step = torch.compile(step)
    if kind == "predict":
        forward = torch.compile(net) if compiled else net

        def run():
            with torch.no_grad():
                y = forward(Xd)
                if loss != "mse":
                    y = torch.softmax(y, dim=1)
            torch.cuda.synchronize()
            return y
        return run
    gen = torch.Generator(device=dev)
    gen.manual_seed(0)
    n = len(X)

    def run():
        total = torch.zeros((), device=dev)
        for _ in range(epochs):
            perm = torch.randperm(n, device=dev, generator=gen)
            total = torch.zeros((), device=dev)
            for i in range(0, n, batch):
                idx = perm[i:i + batch]
                total += step(Xd.index_select(0, idx), Td.index_select(0, idx)).detach() * len(idx)
        return float(total) / n   # one synchronisation per call, as fit's history
    return run


def best(run, rounds):
    run()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, fastmlp only")
    parser.add_argument("--only", default="", help="comma-separated row names")
    args = parser.parse_args(argv)
    columns = ["fastmlp cuda"]
    if not args.smoke:
        import torch
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        columns += ["torch eager", "torch.compile"]
        print(f"GPU: {torch.cuda.get_device_name(0)}, driver/CUDA {torch.version.cuda}, "
              f"torch {torch.__version__}, fastmlp {fm.__version__}, "
              f"{datetime.date.today().isoformat()}")
    print("| row | samples/call | " + " | ".join(f"{c} (samples/s)" for c in columns)
          + (" | vs eager | vs compile |" if len(columns) > 1 else " |"))
    print("|---" * (2 + len(columns) + (2 if len(columns) > 1 else 0)) + "|")
    only = set(filter(None, args.only.split(",")))
    for name, dims, hidden, output, loss, rows, batch, kind, epochs, lr in rows_of(args.smoke):
        if only and name not in only:
            continue
        X, T = data(dims, loss, rows)
        samples = rows * max(epochs, 1)
        model, run = fastmlp_case(dims, hidden, output, loss, X, T, batch, kind, epochs, lr)
        rates = [samples / best(run, args.rounds)]
        for compiled in ([False, True] if len(columns) > 1 else []):
            rates.append(samples / best(torch_case(model, loss, X, T, batch, kind, epochs, lr,
                                                   compiled), args.rounds))
        cells = " | ".join(f"{r:,.0f}" for r in rates)
        ratios = "".join(f" | {rates[0] / r:.2f}×" for r in rates[1:])
        print(f"| {name} | {samples:,} | {cells}{ratios} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

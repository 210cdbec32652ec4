"""fastmlp's "cuda" backend against PyTorch CUDA (eager and torch.compile), on one GPU.

    python benchmarks/gpu.py                 # on a machine with an NVIDIA GPU
    python benchmarks/gpu.py --smoke         # tiny sizes: checks the script runs
                                             # (fastmlp under NUMBA_ENABLE_CUDASIM=1 works)

Every row is one public call, float32, TF32 off in PyTorch (its matmuls then compute in
float32 as fastmlp's kernels do), both sides starting from the same weights and data
(PyTorch's net built from the fastmlp model's weights before it trains), each fit given
host rows that it copies to the device in the timed call (fastmlp's ``fit`` takes host
arrays; PyTorch's copy is timed too):

* W1: the lessons' vehicles net 3-4-2, ``fit(epochs=E, batch_size=6)`` (PyTorch: the same
  epochs as a Python loop of steps on the device);
* tcnn-2^k: a tiny-cuda-nn-style net (64 inputs, 4 hidden layers of 64 ReLU units, 16
  outputs, MSE), one epoch of ``fit`` over 2^18 rows in batches of 2^k (k = 14..18),
  the training set copied to the device once per call;
* W2, W3, W4: the CPU benchmark's nets (benchmarks/workloads.py), fit over 2^16 rows in
  batches of 64 / 512 / 512;
* predict-2^16: the W2 net on 2^16 rows, a device array in and out.

Before a row is timed, the same work is checked: from the same start, one call of each
side without shuffling (the identity order on both) must give the same weights (fit) or
outputs (predict) within float32 tolerance, or the row is reported as not the same work
and not timed. Each cell: one untimed call (compiles, torch.compile traces), then the
fastest of ``--rounds`` timed calls, each ended by a device synchronisation. Ratios are fastmlp's
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
from fastmlp._cli_options import positive_int   # (the CLI's option types)

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


# the same-work check's tolerance: float32 sums in other orders on the two sides
RTOL, ATOL = 2e-3, 2e-5


def fastmlp_case(dims, hidden, output, loss, X, T, batch, kind, epochs, lr, shuffle=True,
                 backend="cuda"):
    """(model, run): ``run()`` makes one timed call on a fresh model (seed 0)."""
    acts = [hidden] * (len(dims) - 2) + [output]
    model = fm.Model([fm.Dense(u, activation=a) for u, a in zip(dims[1:], acts)],
                     input_dim=dims[0], loss=loss, optimizer=fm.SGD(lr=lr), backend=backend,
                     seed=0)
    if kind == "predict":
        if backend == "cuda":
            from numba import cuda
            Xd = cuda.to_device(X)
            sync = cuda.synchronize
        else:
            Xd, sync = X, (lambda: None)

        def run():
            out = model.predict(Xd)
            sync()
            return out
    else:
        def run():
            return model.fit(X, T, epochs=epochs, batch_size=batch,
                             shuffle=shuffle).history["loss"][-1]
    return model, run


def torch_case(theta, net, loss, X, T, batch, kind, epochs, lr, compiled, shuffle=True,
               device="cuda"):
    """``run()`` making one timed call of PyTorch's net built from the weights ``theta``
    of the fastmlp network ``net``; ``run.net`` is that nn.Sequential."""
    import torch
    from torch import nn

    dev = torch.device(device)
    mods = []
    for i, (W, b, _) in enumerate(net.layer_views(theta)):
        lin = nn.Linear(*W.shape)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W.T.copy()))
            lin.bias.copy_(torch.from_numpy(b.copy()))
        mods.append(lin)
        act = net.layers[i].activation.name
        # the vehicles net's sigmoid output is its last module: its MSE is on the outputs
        mods += {"relu": [nn.ReLU()], "sigmoid": [nn.Sigmoid()], "tanh": [nn.Tanh()]}.get(act, [])
    seq = nn.Sequential(*mods).to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if loss == "mse":
        loss_fn = lambda y, t: ((y - t) ** 2).sum(dim=1).mean()  # noqa: E731 fastmlp's MSE
    else:
        loss_fn = nn.functional.cross_entropy
    opt = torch.optim.SGD(seq.parameters(), lr=lr)

    def step(x, t):
        opt.zero_grad(set_to_none=True)
        out = loss_fn(seq(x), t)
        out.backward()
        opt.step()
        return out

    if compiled:
        step = torch.compile(step)
    if kind == "predict":
        forward = torch.compile(seq) if compiled else seq
        Xd = torch.from_numpy(X).to(dev)   # (fastmlp's predict is given a device array)

        def run():
            with torch.no_grad():
                y = forward(Xd)
                if loss != "mse":
                    y = torch.softmax(y, dim=1)
            sync()
            return y
        run.net = seq
        return run
    gen = torch.Generator(device=dev)
    gen.manual_seed(0)
    n = len(X)

    def run():
        # the host rows to the device in the call, as fastmlp's fit copies them
        Xd, Td = torch.from_numpy(X).to(dev), torch.from_numpy(T).to(dev)
        if loss != "mse":
            Td = Td.argmax(dim=1)
        total = torch.zeros((), device=dev)
        for _ in range(epochs):
            perm = (torch.randperm(n, device=dev, generator=gen) if shuffle
                    else torch.arange(n, device=dev))
            total = torch.zeros((), device=dev)
            for i in range(0, n, batch):
                idx = perm[i:i + batch]
                total += step(Xd.index_select(0, idx), Td.index_select(0, idx)).detach() * len(idx)
        return float(total) / n   # one synchronisation per call, as fit's history
    run.net = seq
    return run


def torch_weights(seq):
    """An nn.Sequential's weights in fastmlp's flat order ([W1 (in, out), b1, ...])."""
    parts = []
    for mod in seq:
        if hasattr(mod, "weight"):
            parts += [mod.weight.detach().cpu().numpy().T.ravel(),
                      mod.bias.detach().cpu().numpy().ravel()]
    return np.concatenate(parts)


def check_same_work(row, X, T, compiled, backend="cuda", device="cuda"):
    """Raise AssertionError unless one call of each side, from the same start and in the
    identity order, gives the same weights (fit) or outputs (predict)."""
    name, dims, hidden, output, loss, rows, batch, kind, epochs, lr = row
    model, run = fastmlp_case(dims, hidden, output, loss, X, T, batch, kind, epochs, lr,
                              shuffle=False, backend=backend)
    theta = model.get_state()["theta"].copy()
    other = torch_case(theta, model.net, loss, X, T, batch, kind, epochs, lr, compiled,
                       shuffle=False, device=device)
    got, want = other(), run()
    if kind == "predict":
        got, want = got.cpu().numpy(), np.asarray(want)
    else:
        got, want = torch_weights(other.net), model.get_state()["theta"]
        if np.array_equal(want, theta):
            raise AssertionError(f"{name}: fastmlp's weights did not change")
    if not np.isfinite(want).all():
        raise AssertionError(f"{name}: fastmlp's result is not finite")
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, equal_nan=False,
                               err_msg=f"{name}: PyTorch ({'compiled' if compiled else 'eager'})"
                                       " and fastmlp differ after the same call")


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
    parser.add_argument("--rounds", type=positive_int, default=5)
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
    unknown = only - {row[0] for row in rows_of(args.smoke)}
    if unknown:
        parser.error(f"--only: unknown rows {sorted(unknown)}; choose from "
                     f"{[row[0] for row in rows_of(args.smoke)]}")
    for row in rows_of(args.smoke):
        name, dims, hidden, output, loss, rows, batch, kind, epochs, lr = row
        if only and name not in only:
            continue
        X, T = data(dims, loss, rows)
        samples = rows * max(epochs, 1)
        try:
            for compiled in ([False, True] if len(columns) > 1 else []):
                check_same_work(row, X, T, compiled)
        except AssertionError as exc:
            print(f"| {name} | not the same work, not timed: {exc} |", flush=True)
            continue
        model, run = fastmlp_case(dims, hidden, output, loss, X, T, batch, kind, epochs, lr)
        theta = model.get_state()["theta"].copy()   # PyTorch starts here too
        rates = [samples / best(run, args.rounds)]
        for compiled in ([False, True] if len(columns) > 1 else []):
            rates.append(samples / best(torch_case(theta, model.net, loss, X, T, batch, kind,
                                                   epochs, lr, compiled), args.rounds))
        cells = " | ".join(f"{r:,.0f}" for r in rates)
        ratios = "".join(f" | {rates[0] / r:.2f}×" for r in rates[1:])
        print(f"| {name} | {samples:,} | {cells}{ratios} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

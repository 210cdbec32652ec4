"""The workloads in PyTorch eager mode, for comparison only (torch is optional).

nn.Sequential of Linear layers started from the workload's weights (columns.py
checks the work is the same), torch.optim.SGD (or torch.optim.Adam with the same
betas and eps), float32, the same data. Cross-entropy takes logits (softmax
fused into the loss, as in fastmlp); MSE is
fastmlp's: mean over rows of the sum over outputs. fit draws each epoch's
permutation from the same generator state as fastmlp and indexes the batch
with ``index_select``. Threads: the caller's ``torch.set_num_threads``.
"""
from __future__ import annotations

import numpy as np

from workloads import ADAM, make_data, scaling, start, start_rng


def available():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


class TorchCase:
    """A workload in PyTorch: ``run()`` does one timed call."""

    def __init__(self, w):
        import torch
        from torch import nn

        self.workload, self.torch = w, torch
        acts = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "softmax": None}
        theta, pos, mods, self.linears = start(w)[0], 0, [], []
        for i, (a, b) in enumerate(zip(w.dims[:-1], w.dims[1:])):
            lin = nn.Linear(a, b)
            with torch.no_grad():   # fastmlp's W is (in, out); torch's weight is (out, in)
                lin.weight.copy_(torch.from_numpy(theta[pos:pos + a * b].reshape(a, b).T.copy()))
                lin.bias.copy_(torch.from_numpy(theta[pos + a * b:pos + a * b + b].copy()))
            pos += a * b + b
            mods.append(lin)
            self.linears.append(lin)
            act = acts[w.hidden if i < len(w.dims) - 2 else w.output]
            if act is not None:
                mods.append(act())
        self.net = nn.Sequential(*mods)
        if w.optimizer == "adam":
            self.opt = torch.optim.Adam(self.net.parameters(), lr=w.lr,
                                        betas=(ADAM["beta1"], ADAM["beta2"]), eps=ADAM["eps"])
        else:
            self.opt = torch.optim.SGD(self.net.parameters(), lr=w.lr)
        X, T, labels = make_data(w)
        # (a Fortran X stays so: strided; a float64 X stays float64, cast in every predict)
        self.X = torch.from_numpy(X.copy(order="K"))
        self.scaling = None if not w.scaled else tuple(
            torch.from_numpy(a.astype(np.float32)) for a in scaling(w))
        if w.loss == "mse":
            self.target = torch.from_numpy(T.copy())
            self.loss = lambda y, t: ((y - t) ** 2).sum(dim=1).mean()
        else:
            self.target = torch.from_numpy(labels.copy())
            self.loss = nn.functional.cross_entropy
        self.rng = start_rng(w)
        self.run = {"step": self._step, "fit": self._fit, "predict": self._predict}[w.kind]

    def _train(self, X, target):
        self.opt.zero_grad()
        loss = self.loss(self.net(X), target)
        loss.backward()
        self.opt.step()
        return loss.item()

    def _step(self):
        return self._train(self.X, self.target)

    def _fit(self):
        w, torch = self.workload, self.torch
        loss = 0.0
        for _ in range(w.epochs):
            perm = torch.from_numpy(self.rng.permutation(w.rows))
            total = 0.0
            for i in range(0, w.rows, w.batch_size):
                idx = perm[i:i + w.batch_size]
                total += self._train(self.X.index_select(0, idx),
                                     self.target.index_select(0, idx)) * len(idx)
            loss = total / w.rows
        return loss

    def _predict(self):
        with self.torch.inference_mode():
            X = self.X.float()   # no copy for a float32 X
            if self.scaling is not None:
                X = (X - self.scaling[0]) / self.scaling[1]
            y = self.net(X)
            y = self.torch.softmax(y, dim=1) if self.workload.output == "softmax" else y
            return y.numpy()

    def weights(self):
        """Flat float32 (n_params,) in fastmlp's get_weights() order."""
        parts = []
        for lin in self.linears:
            parts += [lin.weight.detach().numpy().T.ravel(), lin.bias.detach().numpy()]
        return np.concatenate(parts)

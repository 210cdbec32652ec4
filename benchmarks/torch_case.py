"""The same workloads in PyTorch, for comparison only (torch is optional).

nn.Sequential of Linear layers, torch.optim.SGD(lr=0.01), float32, the same
data as the fastmlp cases. Cross-entropy takes logits (softmax fused into the
loss, as in fastmlp); MSE is fastmlp's: mean over rows of the sum over outputs.
"""
from __future__ import annotations

from workloads import LR, make_data


class TorchCase:
    """A workload in PyTorch: ``run()`` does one timed call."""

    def __init__(self, w, seed=0):
        import torch
        from torch import nn

        self.workload, self.backend = w, "torch"
        torch.manual_seed(seed)
        acts = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "softmax": None}
        mods = []
        for i, (a, b) in enumerate(zip(w.dims[:-1], w.dims[1:])):
            mods.append(nn.Linear(a, b))
            act = acts[w.hidden if i < len(w.dims) - 2 else w.output]
            if act is not None:
                mods.append(act())
        self.net = nn.Sequential(*mods)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=LR)
        X, T, labels = make_data(w, seed)
        self.X = torch.from_numpy(X)
        if w.loss == "mse":
            self.target = torch.from_numpy(T)
            self.loss = lambda y, t: ((y - t) ** 2).sum(dim=1).mean()
        else:
            self.target = torch.from_numpy(labels)
            self.loss = nn.functional.cross_entropy
        self.torch = torch
        self.run = {"step": self._step, "epoch": self._epoch, "predict": self._predict}[w.kind]

    def _train(self, X, target):
        self.opt.zero_grad()
        loss = self.loss(self.net(X), target)
        loss.backward()
        self.opt.step()
        return loss.item()

    def _step(self):
        return self._train(self.X, self.target)

    def _epoch(self):
        n, bs, total = len(self.X), self.workload.epoch_batch, 0.0
        for i in range(0, n, bs):
            rows = min(bs, n - i)
            total += self._train(self.X[i:i + bs], self.target[i:i + bs]) * rows
        return total / n

    def _predict(self):
        with self.torch.inference_mode():
            y = self.net(self.X)
            return self.torch.softmax(y, dim=1) if self.workload.output == "softmax" else y

    def check(self, result):
        import numpy as np

        if not np.isfinite(np.asarray(result)).all():
            raise AssertionError(f"{self.workload.name} on torch: non-finite result")

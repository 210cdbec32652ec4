"""The baseline of every ratio: an MLP as a competent NumPy user writes it.

Not fastmlp's reference backend (the test oracle, written for clarity): this
one allocates every buffer once, multiplies with ``np.matmul(a, W, out=z)``,
adds the bias and applies the activation and its derivative in place, and
updates the parameters in place (plain SGD: ``grad *= lr; theta -= grad``; Adam:
its two moment vectors and one scratch vector allocated once, 13 in-place elementwise passes).
Parameters live in one flat float32 vector in fastmlp's get_weights() order
([W1 (in, out), b1, W2, b2, ...]), so its weights can be compared with a
fastmlp model's after the same work.

``Inputs`` converts X as such a user would before the network reads it: a float64 X
cast, a standardised model's (X - mean) / scale, into one preallocated float32 buffer.

Supported: hidden relu, sigmoid or tanh; output sigmoid (with MSE) or softmax
(with cross-entropy, computed from the logits); SGD without momentum, or Adam.
"""
from __future__ import annotations

import numpy as np


class NumpyMLP:
    """Forward, backward and SGD on preallocated buffers sized for ``max_rows`` rows.

    theta: (n_params,) float32, copied. dims: input width, then each layer's units.
    """

    def __init__(self, dims, hidden, output, loss, lr, theta, max_rows, adam=None):
        """adam: None (SGD) or {"beta1", "beta2", "eps"} for Adam with bias correction."""
        if (loss, output) not in (("cross_entropy", "softmax"), ("mse", "sigmoid")):
            raise ValueError(f"unsupported output/loss pair {output}/{loss}")
        self.dims, self.hidden, self.output, self.loss = tuple(dims), hidden, output, loss
        self.lr = np.float32(lr)
        self.theta = np.array(theta, dtype=np.float32)
        self.grad = np.empty_like(self.theta)
        self.W, self.b = self._views(self.theta)
        self.gW, self.gb = self._views(self.grad)
        self.adam = adam
        if adam is not None:
            self.m, self.v, self.tmp = (np.zeros_like(self.theta) for _ in range(3))
            self.t = 0
        self._allocate(max_rows)

    def _views(self, flat):
        W, b, pos = [], [], 0
        for n_in, n_out in zip(self.dims[:-1], self.dims[1:]):
            W.append(flat[pos:pos + n_in * n_out].reshape(n_in, n_out))
            pos += n_in * n_out
            b.append(flat[pos:pos + n_out])
            pos += n_out
        return W, b

    def _allocate(self, rows):
        """Activations f (rows, units) per layer, backprop deltas, a scratch buffer,
        the ReLU mask and the gathered batch (X, T) for fit."""
        units = self.dims[1:]
        self.rows = rows
        self.f = [np.empty((rows, u), np.float32) for u in units]
        self.delta = [np.empty((rows, u), np.float32) for u in units]
        self.scratch = [np.empty((rows, u), np.float32) for u in units]
        self.mask = [np.empty((rows, u), np.bool_) for u in units]
        self.rowsum = np.empty((rows, 1), np.float32)
        self.Xb = np.empty((rows, self.dims[0]), np.float32)
        self.Tb = np.empty((rows, self.dims[-1]), np.float32)

    # -- forward -------------------------------------------------------------------
    def forward(self, X):
        """Outputs (n, outputs): a view of this object's buffer, overwritten next call."""
        n = len(X)
        a = X
        last = len(self.W) - 1
        for i, (W, b) in enumerate(zip(self.W, self.b)):
            z = self.f[i][:n]
            np.matmul(a, W, out=z)
            z += b
            if i < last:
                self._activate(self.hidden, z)
            elif self.output == "sigmoid":
                self._activate("sigmoid", z)
            else:
                self._softmax(z, n)
            a = z
        return a

    @staticmethod
    def _activate(name, z):
        if name == "relu":
            np.maximum(z, 0, out=z)
        elif name == "tanh":
            np.tanh(z, out=z)
        elif name == "sigmoid":
            np.negative(z, out=z)
            np.exp(z, out=z)    # inf for z < -88: 1 / inf = 0, the right limit
            z += 1
            np.reciprocal(z, out=z)
        else:
            raise ValueError(f"unsupported activation {name!r}")

    def _softmax(self, z, n):
        """In place: z -> softmax(z), shifted by the row maximum so exp cannot overflow."""
        s = self.rowsum[:n]
        np.max(z, axis=1, keepdims=True, out=s)
        z -= s
        np.exp(z, out=z)
        np.sum(z, axis=1, keepdims=True, out=s)
        z /= s

    def predict(self, X):
        return self.forward(X)

    # -- training ------------------------------------------------------------------
    def _loss(self, y, T, n):
        """Mean over rows of the summed loss: MSE sum (y - t)^2; CE -sum t log p."""
        d = self.scratch[-1][:n]
        if self.loss == "mse":
            np.subtract(y, T, out=d)
            return float(np.vdot(d, d)) / n
        # log p, floored at float32's smallest normal so a p that underflowed stays finite
        np.log(np.maximum(y, np.finfo(np.float32).tiny, out=d), out=d)
        return -float(np.vdot(T, d)) / n

    def train_step(self, X, T):
        """One SGD step on (X, T); returns the batch loss before the step."""
        n = len(X)
        y = self.forward(X)
        loss = self._loss(y, T, n)
        last = len(self.W) - 1
        delta = self.delta[last][:n]
        np.subtract(y, T, out=delta)
        if self.loss == "mse":          # dE/dz = 2 (y - t) / n * y (1 - y)
            d = self.scratch[last][:n]
            np.subtract(1, y, out=d)
            d *= y
            delta *= d
            delta *= 2.0 / n
        else:                           # softmax + CE: dE/dz = (p - t) / n
            delta *= 1.0 / n
        for i in range(last, -1, -1):
            a_prev = X if i == 0 else self.f[i - 1][:n]
            np.matmul(a_prev.T, delta, out=self.gW[i])
            np.sum(delta, axis=0, out=self.gb[i])
            if i == 0:
                break
            back = self.delta[i - 1][:n]
            np.matmul(delta, self.W[i].T, out=back)
            self._derivative(self.hidden, a_prev, back, i - 1, n)
            delta = back
        if self.adam is None:
            self.grad *= self.lr
            self.theta -= self.grad
        else:
            self._adam_update()
        return loss

    def _adam_update(self):
        """theta -= lr * m_hat / (sqrt(v_hat) + eps), the bias corrections folded into
        two scalars: m_hat = m / (1 - b1^t), sqrt(v_hat) = sqrt(v) / sqrt(1 - b2^t)."""
        b1, b2, eps = (self.adam[k] for k in ("beta1", "beta2", "eps"))
        g, m, v, tmp = self.grad, self.m, self.v, self.tmp
        self.t += 1
        m *= np.float32(b1)
        np.multiply(g, np.float32(1 - b1), out=tmp)
        m += tmp
        v *= np.float32(b2)
        np.multiply(g, g, out=tmp)
        tmp *= np.float32(1 - b2)
        v += tmp
        np.sqrt(v, out=tmp)
        tmp *= np.float32(1 / np.sqrt(1 - b2 ** self.t))
        tmp += np.float32(eps)
        np.divide(m, tmp, out=tmp)
        tmp *= np.float32(self.lr / (1 - b1 ** self.t))
        self.theta -= tmp

    def _derivative(self, name, f, back, i, n):
        """back *= f'(z), written from the activation's output f."""
        if name == "relu":
            m = self.mask[i][:n]
            np.greater(f, 0, out=m)
            np.multiply(back, m, out=back)
            return
        d = self.scratch[i][:n]
        if name == "tanh":              # 1 - f^2
            np.multiply(f, f, out=d)
            np.subtract(1, d, out=d)
        else:                           # sigmoid: f (1 - f)
            np.subtract(1, f, out=d)
            d *= f
        back *= d

    def fit(self, X, T, epochs, batch_size, rng):
        """``epochs`` epochs of mini-batch SGD, each over a fresh permutation
        ``rng.permutation(n)`` (fastmlp's order); returns the last epoch's mean loss."""
        n = len(X)
        loss = 0.0
        for _ in range(epochs):
            perm = rng.permutation(n)
            total = 0.0
            for start in range(0, n, batch_size):
                idx = perm[start:start + batch_size]
                m = len(idx)
                Xb, Tb = self.Xb[:m], self.Tb[:m]
                np.take(X, idx, axis=0, out=Xb, mode="clip")  # clip: unbuffered
                np.take(T, idx, axis=0, out=Tb, mode="clip")
                total += self.train_step(Xb, Tb) * m
            loss = total / n
        return loss


class Inputs:
    """X (rows, width) as the network reads it: float32 rows, written per call into one
    buffer allocated here. ``scaling``: None, or (mean, scale) (width,) arrays, applied as
    (X - mean) / scale in float32 (two in-place passes); otherwise X is cast (float64 to
    float32, or Fortran order to rows) in one pass."""

    def __init__(self, rows, width, scaling=None):
        self.buf = np.empty((rows, width), np.float32)
        self.scaling = None if scaling is None else tuple(
            np.asarray(a, dtype=np.float32) for a in scaling)

    def __call__(self, X):
        buf = self.buf[:len(X)]
        if self.scaling is None:
            np.copyto(buf, X, casting="same_kind")
        else:
            mean, scale = self.scaling
            np.subtract(X, mean, out=buf)
            buf /= scale
        return buf

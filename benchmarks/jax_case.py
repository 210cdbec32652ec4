"""The workloads in JAX, for comparison only (jax is optional).

What a competent JAX user writes: the train step (``value_and_grad`` of the
loss, then the SGD update) and the predict function each compiled once with
``jax.jit``, parameters donated to the step (updated in place), results
waited for with ``block_until_ready``. A fit row's epoch is one jitted
``lax.scan`` over its batches (rows gathered by the permutation inside the
compiled code); the epoch loop and the permutations (same generator state as
fastmlp's) are Python. JAX runs its own CPU thread pool (all cores): it has no
run-time thread setting.
"""
from __future__ import annotations

import numpy as np

from workloads import make_data, start, start_rng


def available():
    try:
        import jax  # noqa: F401
    except ImportError:
        return False
    return True


def _functions(w):
    import jax
    import jax.numpy as jnp

    acts = {"relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh}

    def logits(params, X):
        a = X
        for i, (W, b) in enumerate(params):
            z = a @ W + b
            if i == len(params) - 1:
                return z
            a = acts[w.hidden](z)

    def loss(params, X, T):
        z = logits(params, X)
        if w.loss == "mse":
            return jnp.sum((jax.nn.sigmoid(z) - T) ** 2) / X.shape[0]
        return -jnp.sum(T * jax.nn.log_softmax(z)) / X.shape[0]

    def predict(params, X):
        z = logits(params, X)
        return jax.nn.softmax(z) if w.output == "softmax" else jax.nn.sigmoid(z)

    def step(params, X, T):
        value, grads = jax.value_and_grad(loss)(params, X, T)
        params = jax.tree_util.tree_map(lambda p, g: p - w.lr * g, params, grads)
        return params, value

    def epoch(params, X, T, batches):
        """batches: (steps, batch_size) row indices; mean loss over the rows."""
        def body(params, idx):
            params, value = step(params, X[idx], T[idx])
            return params, value
        params, values = jax.lax.scan(body, params, batches)
        return params, jnp.mean(values)   # equal batches: the mean over rows

    return (jax.jit(step, donate_argnums=0), jax.jit(epoch, donate_argnums=0),
            jax.jit(predict))


class JaxCase:
    """A workload in JAX: ``run()`` does one timed call."""

    def __init__(self, w):
        import jax
        import warnings

        warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
        self.workload, self.jax = w, jax
        if w.kind == "fit" and w.rows % w.batch_size:
            raise ValueError("the JAX fit needs rows divisible by batch_size")
        theta, pos, params = start(w)[0], 0, []
        for a, b in zip(w.dims[:-1], w.dims[1:]):
            params.append((jax.numpy.asarray(theta[pos:pos + a * b].reshape(a, b)),
                           jax.numpy.asarray(theta[pos + a * b:pos + a * b + b])))
            pos += a * b + b
        self.params = params
        X, T, _ = make_data(w)
        self.X, self.T = jax.numpy.asarray(X), jax.numpy.asarray(T)
        self._step, self._epoch, self._predict = _functions(w)
        self.rng = start_rng(w)
        self.run = {"step": self.step, "fit": self.fit, "predict": self.predict}[w.kind]

    def step(self):
        self.params, value = self._step(self.params, self.X, self.T)
        return float(value.block_until_ready())

    def fit(self):
        w, value = self.workload, None
        for _ in range(w.epochs):
            batches = self.rng.permutation(w.rows).reshape(-1, w.batch_size)
            self.params, value = self._epoch(self.params, self.X, self.T, batches)
        return float(value.block_until_ready())

    def predict(self):
        return np.asarray(self._predict(self.params, self.X).block_until_ready())

    def weights(self):
        return np.concatenate([np.asarray(p).ravel() for layer in self.params for p in layer])

"""The workloads in JAX, for comparison only (jax is optional).

What a competent JAX user writes: the train step (``value_and_grad`` of the
loss, then the SGD update, or Adam's written out) and the predict function each compiled once with
``jax.jit``, parameters donated to the step (updated in place), results
waited for with ``block_until_ready``. A fit row's call is one jitted
``lax.scan`` over its epochs, each a ``lax.scan`` over its batches (rows gathered
by the permutation inside the compiled code), given every epoch's order drawn at
once from fastmlp's generator state (the same numbers as a permutation per epoch),
as fastmlp's own fit runs its epochs in one compiled call (one jitted call per epoch
from a Python loop had timed 1,000 dispatches: 12-19x slower). Every timed call is
given the caller's NumPy rows, as every other column is (the rows put on the device
once, before the timing, had left JAX's copy of them untimed: 2.6x of a
narrow-8192 predict). JAX runs its own CPU thread pool (all cores): it has no
run-time thread setting.
"""
from __future__ import annotations

import numpy as np

from workloads import ADAM, make_data, scaling, start, start_rng


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

    if w.scaled:
        mean, scale = (jnp.asarray(a, dtype=jnp.float32) for a in scaling(w))

    def predict(params, X):
        if w.scaled:
            X = (X - mean) / scale
        z = logits(params, X)
        return jax.nn.softmax(z) if w.output == "softmax" else jax.nn.sigmoid(z)

    def step(params, X, T):
        value, grads = jax.value_and_grad(loss)(params, X, T)
        params = jax.tree_util.tree_map(lambda p, g: p - w.lr * g, params, grads)
        return params, value

    def adam_step(carry, X, T):
        """carry: (params, m, v, t); Adam with bias correction, fastmlp's formula."""
        params, m, v, t = carry
        b1, b2, eps = ADAM["beta1"], ADAM["beta2"], ADAM["eps"]
        value, grads = jax.value_and_grad(loss)(params, X, T)
        t = t + 1
        m = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, m, grads)
        v = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, v, grads)
        c1, c2 = 1 - b1 ** t, 1 - b2 ** t
        params = jax.tree_util.tree_map(
            lambda p, m, v: p - w.lr * (m / c1) / (jnp.sqrt(v / c2) + eps), params, m, v)
        return (params, m, v, t), value

    def epoch(params, X, T, batches):
        """batches: (steps, batch_size) row indices; mean loss over the rows."""
        def body(params, idx):
            params, value = step(params, X[idx], T[idx])
            return params, value
        params, values = jax.lax.scan(body, params, batches)
        return params, jnp.mean(values)   # equal batches: the mean over rows

    def epochs(params, X, T, orders):
        """orders: (epochs, steps, batch_size) row indices; the last epoch's mean loss."""
        def body(params, batches):
            return epoch(params, X, T, batches)
        params, values = jax.lax.scan(body, params, orders)
        return params, values[-1]

    one_step = adam_step if w.optimizer == "adam" else step
    return (jax.jit(one_step, donate_argnums=0), jax.jit(epochs, donate_argnums=0),
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
        if w.kind == "fit" and w.optimizer != "sgd":
            raise ValueError("the JAX fit runs SGD only")
        theta, pos, params = start(w)[0], 0, []
        for a, b in zip(w.dims[:-1], w.dims[1:]):
            params.append((jax.numpy.asarray(theta[pos:pos + a * b].reshape(a, b)),
                           jax.numpy.asarray(theta[pos + a * b:pos + a * b + b])))
            pos += a * b + b
        self.params, self.carry = params, None
        if w.optimizer == "adam":   # (params, m, v, t): the moments start at zero
            def zeros():
                return [tuple(jax.numpy.zeros_like(p) for p in layer) for layer in params]
            self.carry = (params, zeros(), zeros(), jax.numpy.float32(0))
        # the caller's NumPy rows, given to every call: JAX copies them to its device
        # (and a float64 X casts to float32, its default, a Fortran X to row-major) on
        # the way in, inside the timed call, as the other columns read them there
        self.X, self.T, _ = make_data(w)
        self._step, self._epochs, self._predict = _functions(w)
        self.rng = start_rng(w)
        self.run = {"step": self.step, "fit": self.fit, "predict": self.predict}[w.kind]

    def step(self):
        if self.carry is not None:
            self.carry, value = self._step(self.carry, self.X, self.T)
            self.params = self.carry[0]
        else:
            self.params, value = self._step(self.params, self.X, self.T)
        return float(value.block_until_ready())

    def fit(self):
        w = self.workload
        # every epoch's order at once: the numbers of one permutation(rows) per epoch
        orders = np.empty((w.epochs, w.rows), dtype=np.int64)
        orders[...] = np.arange(w.rows)
        self.rng.permuted(orders, axis=1, out=orders)
        self.params, value = self._epochs(self.params, self.X, self.T,
                                          orders.reshape(w.epochs, -1, w.batch_size))
        return float(value.block_until_ready())

    def predict(self):
        return np.asarray(self._predict(self.params, self.X).block_until_ready())

    def weights(self):
        return np.concatenate([np.asarray(p).ravel() for layer in self.params for p in layer])

"""The ``Model``: a thin Python API over one backend.

The model owns the flat parameter vector, the optimiser state and the random
generator; the backend does the arithmetic. Inputs are validated and converted
here, once per call, so the backends never see a bad shape.
"""
from __future__ import annotations

import warnings

import numpy as np

from . import activations as act
from . import optimizers, validation
from .backends import get_backend
from .network import Network

_DTYPES = {"float32": np.float32, "float64": np.float64}


class TrainingDiverged(FloatingPointError):
    """Raised by :meth:`Model.fit` when the loss or a weight stops being finite."""


class History:
    """What :meth:`Model.fit` returns: ``history["loss"]`` is one mean loss per epoch."""

    def __init__(self):
        self.history = {"loss": []}
        self.epoch = []

    def __repr__(self):
        return f"History(epochs={len(self.epoch)}, loss={self.history['loss'][-1:]})"


def _dtype(dtype):
    key = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if key not in _DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return np.dtype(_DTYPES[key])


class Model:
    """A multilayer perceptron: Dense layers, a loss, an optimiser and a backend.

    Parameters
    ----------
    layers : list of fm.Dense
    input_dim : int, number of input features.
    loss : "mse", "cross_entropy" (softmax output) or "binary_cross_entropy" (sigmoid output).
    optimizer : fm.SGD or fm.Adam (default SGD(lr=0.01)).
    backend : a name from fm.available_backends().
    dtype : "float32" (default) or "float64", kept end to end.
    seed : int or None; makes initialisation and shuffling reproducible.

    >>> import numpy as np, fastmlp as fm
    >>> m = fm.Model([fm.Dense(4, activation="tanh"), fm.Dense(1)], input_dim=2, seed=0)
    >>> m.predict(np.zeros((3, 2))).shape
    (3, 1)
    """

    def __init__(self, layers, input_dim, loss="mse", optimizer=None, backend="numpy",
                 dtype="float32", seed=None):
        self.net = Network(layers, input_dim, loss)
        self.dtype = _dtype(dtype)
        self.optimizer = optimizers.get(optimizer)
        self.backend = backend
        self._engine = get_backend(backend)(self.net, self.dtype)
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._theta = self.net.init_params(self._rng, self.dtype)
        self._state = optimizers.OptimizerState.new(self.optimizer, self.net.n_params, self.dtype)

    # -- inspection --------------------------------------------------------------
    @property
    def layers(self):
        return self.net.layers

    @property
    def loss(self):
        return self.net.loss.name

    @property
    def n_params(self):
        return self.net.n_params

    def __repr__(self):
        return (f"Model({self.net.layers}, input_dim={self.net.input_dim}, loss={self.loss!r}, "
                f"optimizer={self.optimizer!r}, backend={self.backend!r}, dtype={self.dtype.name!r})")

    def get_weights(self):
        """Copies of [W1 (in, out), b1 (out,), (prelu alpha1 (out,)), W2, b2, ...]."""
        return [v.copy() for v in self.net.split(self._theta)]

    def set_weights(self, weights):
        """Replace all parameters; shapes must match :meth:`get_weights`."""
        weights = list(weights)
        if len(weights) != len(self.net.shapes):
            raise ValueError(f"set_weights: expected {len(self.net.shapes)} arrays, got "
                             f"{len(weights)} (weight shapes {self.net.shapes})")
        new = []
        for i, (w, shape) in enumerate(zip(weights, self.net.shapes)):
            w = np.asarray(w)
            if w.shape != shape:
                raise ValueError(f"weight {i} has shape {w.shape}, expected {shape}")
            if not np.issubdtype(w.dtype, np.number) or not np.isfinite(w).all():
                raise ValueError(f"weight {i} must be finite numbers")
            new.append(w)
        for view, w in zip(self.net.split(self._theta), new):
            view[...] = w

    # -- computing ---------------------------------------------------------------
    def predict(self, X):
        """Network outputs (n, outputs) for inputs X (n, input_dim).

        Large inputs go through the backend in blocks of rows written into one
        preallocated output, so memory stays bounded by the output plus one
        block's activations, however many rows X has.
        """
        X = validation.check_inputs(X, self.net.input_dim, self.dtype)
        rows = self._predict_block_rows()
        if len(X) <= rows:
            return self._engine.predict(self._theta, X)
        out = np.empty((len(X), self.net.output_dim), dtype=self.dtype)
        for start in range(0, len(X), rows):
            out[start:start + rows] = self._engine.predict(self._theta, X[start:start + rows])
        return out

    def _predict_block_rows(self):
        """Rows per predict block: about 32 MiB of activations (z and f of every layer)."""
        per_row = 2 * int(self.net.dims[1:].sum()) * self.dtype.itemsize
        return int(min(65536, max(256, (32 << 20) // per_row)))

    def evaluate(self, X, Y):
        """Mean loss over (X, Y), a float."""
        X, T = self._data(X, Y)
        return float(self._engine.evaluate(self._theta, X, T))

    def gradients(self, X, Y):
        """(loss, grads): the mean loss and its gradient, in get_weights() order. No update."""
        X, T = self._data(X, Y)
        grad = np.empty(self.net.n_params, dtype=self.dtype)
        loss = self._engine.loss_and_gradient(self._theta, X, T, grad)
        return float(loss), [g.copy() for g in self.net.split(grad)]

    def train_on_batch(self, X, Y):
        """One optimiser step on (X, Y); returns the batch loss before the step."""
        X, T = self._data(X, Y)
        loss = float(self._engine.train_step(self._theta, self._state, X, T))
        if not np.isfinite(loss):
            raise TrainingDiverged(f"the batch loss is {loss}: the weights are no longer finite "
                                   "(try a smaller learning rate)")
        return loss

    def fit(self, X, Y, epochs=1, batch_size=32, tol=None, shuffle=True,
            validation_data=None, verbose=0):
        """Train by mini-batch gradient descent.

        Each epoch visits every row once in batches of ``batch_size`` (None =
        the whole set, 1 = per-sample SGD), shuffled when ``shuffle``. Stops after
        ``epochs`` or as soon as an epoch's mean loss is <= ``tol`` (the
        lessons' E <= epsilon). If the loss, a weight or the optimiser state becomes
        NaN or inf, the weights and optimiser state of the last finite epoch are
        restored and TrainingDiverged (naming the epoch and layer) is raised.
        """
        X, T = self._data(X, Y)
        epochs = validation.check_count(epochs, "epochs")
        batch_size = validation.check_batch_size(batch_size, len(X))
        if tol is not None and (not np.isscalar(tol) or not np.isfinite(tol) or tol < 0):
            raise ValueError(f"tol must be a finite number >= 0 or None, got {tol!r}")
        if validation_data is not None:
            Xv, Tv = self._data(*validation_data)
        self._warn_if_untrainable()
        history = History()
        if validation_data is not None:
            history.history["val_loss"] = []
        perm = np.arange(len(X), dtype=np.int64)
        saved_theta = np.empty_like(self._theta)
        saved_state = optimizers.OptimizerState.new(self.optimizer, self.net.n_params, self.dtype)
        for epoch in range(epochs):
            if shuffle:
                # a fresh permutation (not a reshuffle of the last one), so the order depends
                # only on the generator and fit(1) + save/load + fit(1) == fit(2)
                perm = self._rng.permutation(len(X)).astype(np.int64, copy=False)
            np.copyto(saved_theta, self._theta)
            saved_state.copy_from(self._state)
            try:
                # Overflow on the way to divergence is reported once, as TrainingDiverged,
                # not as NumPy warnings (which, as errors, would stop mid-epoch).
                with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                    loss = float(self._engine.train_epoch(self._theta, self._state, X, T,
                                                          perm, batch_size))
                self._check_finite(loss, epoch + 1)
            except BaseException:
                # Diverged or interrupted: never leave the weights half an epoch updated.
                np.copyto(self._theta, saved_theta)
                self._state.copy_from(saved_state)
                raise
            history.epoch.append(epoch)
            history.history["loss"].append(loss)
            message = f"epoch {epoch + 1}/{epochs}  loss {loss:.6g}"
            if validation_data is not None:
                val = float(self._engine.evaluate(self._theta, Xv, Tv))
                history.history["val_loss"].append(val)
                message += f"  val_loss {val:.6g}"
            if verbose:
                print(message, flush=True)
            if tol is not None and loss <= tol:
                break
        return history

    # -- saving ------------------------------------------------------------------
    def save(self, path):
        """Write the model to one file, atomically (see fastmlp.io)."""
        from .io import save
        save(self, path)

    # -- helpers -----------------------------------------------------------------
    def _data(self, X, Y):
        X = validation.check_inputs(X, self.net.input_dim, self.dtype)
        return X, validation.check_targets(Y, len(X), self.net, self.dtype)

    def _check_finite(self, loss, epoch):
        where = f"in epoch {epoch}"
        bad = [i + 1 for i, (W, b, alpha) in enumerate(self.net.layer_views(self._theta))
               if not (np.isfinite(W).all() and np.isfinite(b).all()
                       and (alpha is None or np.isfinite(alpha).all()))]
        # Name the first layer whose weights went bad, also when the loss did.
        layer = f"layer {bad[0]}'s weights became NaN or inf" if bad else ""
        if not np.isfinite(loss):
            raise TrainingDiverged(f"training diverged {where}: the loss became {loss}"
                                   f"{' and ' + layer if layer else ''}; "
                                   "the weights of the last finite epoch were kept "
                                   "(try a smaller learning rate)")
        if bad:
            raise TrainingDiverged(f"training diverged {where}: {layer}; the weights of the "
                                   "last finite epoch were kept (try a smaller learning rate)")
        # An inf in Adam's v (g^2 overflowed) freezes weights silently: also divergence.
        if not np.isfinite(self._state.buffers).all():
            raise TrainingDiverged(f"training diverged {where}: the optimiser state became NaN "
                                   "or inf (gradients overflowed); the weights and state of the "
                                   "last finite epoch were kept (try a smaller learning rate "
                                   "or rescale the data)")

    def _warn_if_untrainable(self):
        dead = [i + 1 for i, l in enumerate(self.net.layers)
                if l.activation.code in (act.STEP, act.SIGN)]
        if dead:
            warnings.warn(f"layer(s) {dead} use step/sign, whose derivative is 0: no gradient "
                          "flows through them, so the layers before them cannot learn",
                          RuntimeWarning, stacklevel=3)

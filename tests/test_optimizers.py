"""Optimisers: each backend's update against the formulas written out by hand, descent
on a convex problem, and the optimiser settings' validation."""
import numpy as np
import pytest

import fastmlp as fm
from fastmlp import optimizers as opt


class HandSGD:
    """PyTorch's SGD written out: g += wd theta; v = mu v + g; step = v or g + mu v."""

    def __init__(self, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
        self.lr, self.mu, self.nesterov, self.wd = lr, momentum, nesterov, weight_decay
        self.v = None

    def step(self, theta, g):
        g = g + self.wd * theta
        if self.mu:
            self.v = g.copy() if self.v is None else self.mu * self.v + g
            g = g + self.mu * self.v if self.nesterov else self.v
        return theta - self.lr * g


class HandAdam:
    def __init__(self, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
        self.lr, self.b1, self.b2, self.eps, self.wd = lr, beta1, beta2, eps, weight_decay
        self.m = self.v = 0.0
        self.t = 0

    def step(self, theta, g):
        g = g + self.wd * theta
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g * g
        m_hat = self.m / (1 - self.b1 ** self.t)
        v_hat = self.v / (1 - self.b2 ** self.t)
        return theta - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


CASES = {
    "sgd": (fm.SGD, HandSGD, dict(lr=0.1)),
    "momentum": (fm.SGD, HandSGD, dict(lr=0.05, momentum=0.9)),
    "nesterov": (fm.SGD, HandSGD, dict(lr=0.05, momentum=0.8, nesterov=True)),
    "weight_decay": (fm.SGD, HandSGD, dict(lr=0.1, weight_decay=0.01)),
    "momentum_wd": (fm.SGD, HandSGD, dict(lr=0.05, momentum=0.5, weight_decay=0.05)),
    "adam": (fm.Adam, HandAdam, dict(lr=0.01)),
    "adam_custom": (fm.Adam, HandAdam, dict(lr=0.02, beta1=0.8, beta2=0.99, eps=1e-6,
                                            weight_decay=0.01)),
}


def _flat(weights):
    return np.concatenate([w.ravel() for w in weights])


def _unflat(theta, like):
    out, pos = [], 0
    for w in like:
        out.append(theta[pos:pos + w.size].reshape(w.shape))
        pos += w.size
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_update_matches_hand_written_formula(case, backend, dtype, tol, rng):
    cls, hand_cls, kw = CASES[case]
    model = fm.Model([fm.Dense(5, "tanh"), fm.Dense(4, "prelu"), fm.Dense(3, "softmax")],
                     input_dim=4, loss="cross_entropy", optimizer=cls(**kw), backend=backend,
                     dtype=dtype, seed=2)
    hand = hand_cls(**kw)
    X, Y = rng.normal(size=(10, 4)), rng.integers(0, 3, size=10)
    for step in range(5):
        before = _flat(model.get_weights()).astype(np.float64)
        loss, grads = model.gradients(X, Y)
        expected = hand.step(before, _flat(grads).astype(np.float64))
        batch_loss = model.train_on_batch(X, Y)
        np.testing.assert_allclose(batch_loss, loss, **tol)
        after = _flat(model.get_weights())
        assert after.dtype == np.dtype(dtype)
        # compare the step taken, so the tolerance applies to the update, not to theta
        np.testing.assert_allclose(after - before, expected - before, **tol,
                                   err_msg=f"{case}, step {step + 1}")
        assert np.any(after != before)


@pytest.mark.parametrize("case", list(CASES))
def test_every_optimiser_descends_on_a_convex_problem(case, backend, rng):
    """Linear least squares: the lessons' '+' would climb; every optimiser here descends."""
    cls, _, kw = CASES[case]
    X = rng.normal(size=(64, 3))
    Y = X @ np.array([[1.0], [-2.0], [0.5]]) + 0.3
    kw = dict(kw, lr=0.05 if cls is fm.SGD else 0.1)  # Adam's steps are ~lr per weight
    model = fm.Model([fm.Dense(1, "linear")], input_dim=3, optimizer=cls(**kw),
                     backend=backend, dtype="float64", seed=0)
    start = model.evaluate(X, Y)
    model.train_on_batch(X, Y)
    assert model.evaluate(X, Y) < start
    history = model.fit(X, Y, epochs=60, batch_size=None, shuffle=False)
    assert history.history["loss"][-1] < 0.25 * start
    if case == "sgd":
        assert np.all(np.diff(history.history["loss"]) < 0)


def test_plain_sgd_moves_against_the_gradient(backend, rng):
    model = fm.Model([fm.Dense(2, "sigmoid")], input_dim=3, optimizer=fm.SGD(lr=0.5),
                     backend=backend, dtype="float64", seed=0)
    X, Y = rng.normal(size=(6, 3)), rng.uniform(size=(6, 2))
    before = model.get_weights()
    _, grads = model.gradients(X, Y)
    model.train_on_batch(X, Y)
    for b, g, a in zip(before, grads, model.get_weights()):
        np.testing.assert_allclose(a, b - 0.5 * g, rtol=1e-12, atol=1e-15)


# -- settings ----------------------------------------------------------------------

def test_hyper_layout_is_what_the_kernels_read():
    h = fm.SGD(lr=0.3, momentum=0.7, nesterov=True, weight_decay=0.01).hyper()
    assert (h[opt.LR], h[opt.MOMENTUM], h[opt.NESTEROV], h[opt.WEIGHT_DECAY]) == (0.3, 0.7, 1.0, 0.01)
    h = fm.Adam(lr=0.002, beta1=0.8, beta2=0.95, eps=1e-7, weight_decay=0.02).hyper()
    assert (h[opt.LR], h[opt.BETA1], h[opt.BETA2], h[opt.EPS], h[opt.WEIGHT_DECAY]) == \
        (0.002, 0.8, 0.95, 1e-7, 0.02)


@pytest.mark.parametrize("o", [fm.SGD(lr=0.3, momentum=0.7, nesterov=True, weight_decay=0.01),
                               fm.Adam(lr=0.002, beta1=0.8, beta2=0.95, eps=1e-7)])
def test_config_round_trip(o):
    again = opt.from_config(o.config())
    assert type(again) is type(o) and again.config() == o.config()
    np.testing.assert_array_equal(again.hyper(), o.hyper())


def test_names_give_default_optimisers():
    m = fm.Model([fm.Dense(1)], input_dim=1, optimizer="adam")
    assert isinstance(m.optimizer, fm.Adam) and m.optimizer.lr == 1e-3
    m = fm.Model([fm.Dense(1)], input_dim=1, optimizer="SGD")
    assert isinstance(m.optimizer, fm.SGD)
    assert isinstance(fm.Model([fm.Dense(1)], input_dim=1).optimizer, fm.SGD)


@pytest.mark.parametrize("make,match", [
    (lambda: fm.SGD(lr=0), "lr must be a finite number > 0"),
    (lambda: fm.SGD(lr=-0.1), "lr must be a finite number > 0"),
    (lambda: fm.SGD(lr=float("nan")), "lr must be a finite number > 0"),
    (lambda: fm.Adam(lr=0.0), "lr must be a finite number > 0"),
    (lambda: fm.SGD(lr=0.1, momentum=1.0), r"momentum must be in \[0, 1\)"),
    (lambda: fm.SGD(lr=0.1, momentum=-0.1), r"momentum must be in \[0, 1\)"),
    (lambda: fm.SGD(lr=0.1, nesterov=True), "nesterov=True needs momentum > 0"),
    (lambda: fm.Adam(beta1=1.0), r"beta1 must be in \[0, 1\)"),
    (lambda: fm.Adam(beta2=1.5), r"beta2 must be in \[0, 1\)"),
    (lambda: fm.Adam(eps=0.0), "eps must be a finite number > 0"),
    (lambda: fm.Adam(weight_decay=-1.0), r"weight_decay must be in \[0, 1\)"),
])
def test_bad_settings_are_value_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("make", [lambda: fm.SGD(lr="0.1"), lambda: fm.SGD(lr=True),
                                  lambda: fm.Adam(lr=None)])
def test_non_numeric_settings_are_type_errors(make):
    with pytest.raises(TypeError, match="lr must be a number"):
        make()


@pytest.mark.parametrize("value", [0.5, 1.5, float("nan"), "yes", None, 2, -1, 10**300])
def test_nesterov_must_be_a_bool(value):
    """nesterov was read by its truth: 0.5, NaN or 10**300 (from a crafted file too)
    turned Nesterov on; refused now, bools and the ints 0 and 1 taken."""
    with pytest.raises((TypeError, ValueError), match="nesterov must be True or False"):
        fm.SGD(lr=0.1, momentum=0.9, nesterov=value)
    for flag in (True, False, np.bool_(True), 1, 0, np.int8(1)):
        assert fm.SGD(lr=0.1, momentum=0.9, nesterov=flag).nesterov is bool(flag)

"""An epoch undone by a Ctrl-C or an error restores every optimiser buffer its callbacks
changed: also the rows its snapshot did not save because the optimiser then used none
(plain SGD), once a callback's new optimiser put them in use (momentum) and trained, or
its set_state wrote them. (Round 42: the momentum a callback's nested step wrote
outlived the undo.)"""
import numpy as np
import pytest

import fastmlp as fm


def make(backend, dtype, optimizer):
    return fm.Model([fm.Dense(8, "tanh"), fm.Dense(2, "sigmoid")], input_dim=3, loss="mse",
                    optimizer=optimizer, backend=backend, dtype=dtype, seed=0)


def data(dtype):
    return (np.random.default_rng(0).standard_normal((16, 3)).astype(dtype),
            np.random.default_rng(1).random((16, 2)).astype(dtype))


def momentum_then(action):
    """A callback: after epoch 0 it keeps the state; in epoch 1 it turns momentum on,
    does ``action(model, X, Y)`` (training nested in the fit) and raises ``error``."""
    class Callback:
        def set_model(self, model):
            self.model = model

        def on_epoch_end(self, epoch, logs):
            m = self.model
            if epoch == 0:
                self.kept = m.get_state()
            if epoch == 1:
                m.optimizer = fm.SGD(lr=0.1, momentum=0.9)
                action(m, *self.data)
                raise self.error
    return Callback()


ACTIONS = {
    "train_on_batch": lambda m, X, Y: m.train_on_batch(X[:4], Y[:4]),
    "fit": lambda m, X, Y: m.fit(X[:8], Y[:8], epochs=2, batch_size=4),
    "apply_gradient": lambda m, X, Y: m.apply_gradient(m.gradient_vector(X, Y)[1]),
}


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_a_callbacks_momentum_is_undone_with_the_epoch(backend, dtype, action, error):
    X, Y = data(dtype)
    m = make(backend, dtype, fm.SGD(lr=0.1))
    cb = momentum_then(ACTIONS[action])
    cb.data, cb.error = (X, Y), error("stop")
    with pytest.raises(error):
        m.fit(X, Y, epochs=3, callbacks=[cb])
    after = m.get_state()
    if error is KeyboardInterrupt:   # the epoch undone whole, its nested training too
        assert len(m.history.history["loss"]) == 1
        np.testing.assert_array_equal(after["theta"], cb.kept["theta"])
        np.testing.assert_array_equal(after["opt_buffers"], cb.kept["opt_buffers"])
        np.testing.assert_array_equal(after["opt_step"], cb.kept["opt_step"])
        assert after["rng_state"] == cb.kept["rng_state"]
    else:   # a callback's own error keeps the trained epoch (as Keras): the momentum too
        assert len(m.history.history["loss"]) == 1
        assert np.abs(after["opt_buffers"]).max() > 0


def test_a_callbacks_set_state_is_undone_with_the_epoch(backend, dtype):
    """set_state writes every buffer row, those not in use too."""
    X, Y = data(dtype)
    donor = make(backend, dtype, fm.SGD(lr=0.1, momentum=0.9))
    donor.fit(X, Y, epochs=2)
    m = make(backend, dtype, fm.SGD(lr=0.1))

    class Callback:
        def set_model(self, model):
            self.model = model

        def on_epoch_end(self, epoch, logs):
            if epoch == 0:
                self.kept = self.model.get_state()
            if epoch == 1:
                self.model.set_state(donor.get_state())
                raise KeyboardInterrupt
    cb = Callback()
    with pytest.raises(KeyboardInterrupt):
        m.fit(X, Y, epochs=3, callbacks=[cb])
    after = m.get_state()
    np.testing.assert_array_equal(after["theta"], cb.kept["theta"])
    np.testing.assert_array_equal(after["opt_buffers"], cb.kept["opt_buffers"])
    # and momentum turned on later starts from the buffers the undo put back
    m.optimizer = fm.SGD(lr=0.1, momentum=0.9)
    twin = make(backend, dtype, fm.SGD(lr=0.1))
    twin.fit(X, Y, epochs=1, callbacks=[])
    twin.set_state(cb.kept)
    twin.optimizer = fm.SGD(lr=0.1, momentum=0.9)
    m.fit(X, Y, epochs=2)
    twin.fit(X, Y, epochs=2)
    np.testing.assert_array_equal(m.get_state()["theta"], twin.get_state()["theta"])

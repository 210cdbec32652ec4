"""Class labels of any kind, and fit's feedback: validation split, metrics, callbacks,
history, on every backend."""
import pickle

import numpy as np
import pytest

import fastmlp as fm


def blobs(n=90, seed=0):
    """Three well separated clusters in 2-D; integer class 0, 1, 2 per row."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    X = rng.normal(scale=0.3, size=(n, 2)) + np.array([[0, 3], [3, 0], [-3, -3]])[y]
    return X, y


def classifier(backend, k=3, loss="cross_entropy"):
    out = "softmax" if loss == "cross_entropy" else "sigmoid"
    return fm.Model([fm.Dense(8, "tanh"), fm.Dense(k, out)], input_dim=2, loss=loss,
                    optimizer=fm.Adam(lr=0.05), backend=backend, seed=0)


@pytest.mark.parametrize("names", [["cat", "dog", "eel"], [10, 20, 30], [-7, 3, 99]])
def test_labels_of_any_kind(backend, names):
    X, y = blobs()
    labels = np.array(names)[y]
    m = classifier(backend)
    m.fit(X, labels, epochs=60, batch_size=16)
    np.testing.assert_array_equal(m.classes_, np.sort(np.array(names)))
    assert np.mean(m.predict_classes(X) == labels) > 0.95
    # the same labels map to the same classes afterwards, and evaluate takes them too
    one_hot = np.eye(3)[np.searchsorted(m.classes_, labels)]
    assert m.evaluate(X, labels) == pytest.approx(m.evaluate(X, one_hot))
    unknown = np.array(["zebra", names[0]]) if isinstance(names[0], str) else np.array([12345, names[0]])
    with pytest.raises(ValueError, match="labels the model does not know"):
        m.evaluate(X[:2], unknown)


def test_pandas_series_labels_and_feature_names(backend):
    pd = pytest.importorskip("pandas")
    X, y = blobs()
    frame = pd.DataFrame(X, columns=["width", "height"])
    species = pd.Series(np.array(["setosa", "versicolor", "virginica"])[y])
    m = classifier(backend)
    m.fit(frame, species, epochs=40)
    assert m.feature_names_in_.tolist() == ["width", "height"]
    assert m.classes_.tolist() == ["setosa", "versicolor", "virginica"]
    assert np.mean(m.predict_classes(frame) == species.to_numpy()) > 0.95
    swapped = frame[["height", "width"]]   # the same data, columns in another order
    for call in (m.predict_classes, m.predict, lambda X: m.evaluate(X, species)):
        with pytest.raises(ValueError, match="feature names"):
            call(swapped)
    c = pickle.loads(pickle.dumps(m))
    assert c.classes_.tolist() == m.classes_.tolist()


def test_binary_string_labels_with_one_sigmoid_unit(backend):
    X, y = blobs()
    labels = np.where(y == 0, "spam", "ham")
    m = classifier(backend, k=1, loss="binary_cross_entropy")
    m.fit(X, labels, epochs=60, batch_size=16)
    assert m.classes_.tolist() == ["ham", "spam"]
    assert np.mean(m.predict_classes(X) == labels) > 0.95


def test_predict_classes_needs_a_classification_loss(backend):
    m = fm.Model([fm.Dense(1)], input_dim=2, backend=backend)
    with pytest.raises(ValueError, match="predict_classes needs a classification loss"):
        m.predict_classes(np.zeros((1, 2)))


def test_validation_split_metrics_and_history(backend):
    X, y = blobs()
    m = classifier(backend)
    h = m.fit(X, y, epochs=5, validation_split=0.2, metrics=["accuracy"])
    assert set(h.history) == {"loss", "accuracy", "val_loss", "val_accuracy", "samples_per_s"}
    assert all(len(v) == 5 for v in h.history.values()) and h.epoch == list(range(5))
    assert m.history is h
    # val_* are the last 20 % of the rows, before any shuffling
    assert h.history["val_loss"][-1] == pytest.approx(m.evaluate(X[-18:], y[-18:]))
    P = m.predict(X[-18:])
    assert h.history["val_accuracy"][-1] == pytest.approx(np.mean(P.argmax(1) == y[-18:]))
    with pytest.raises(ValueError, match="not both"):
        m.fit(X, y, validation_split=0.2, validation_data=(X, y))
    with pytest.raises(ValueError, match="validation_split must be in"):
        m.fit(X, y, validation_split=1.0)
    with pytest.raises(ValueError, match="unknown metric 'f1'"):
        m.fit(X, y, metrics=["f1"])


def test_callbacks_see_every_epoch_and_can_stop(backend):
    X, y = blobs()
    seen = []

    class StopAtThree:
        def set_model(self, model):
            self.model = model

        def on_epoch_end(self, epoch, logs):
            seen.append((epoch, dict(logs)))
            if epoch == 2:
                self.model.stop_training = True

    m = classifier(backend)
    h = m.fit(X, y, epochs=10, callbacks=[StopAtThree()])
    assert [e for e, _ in seen] == [0, 1, 2] and len(h.history["loss"]) == 3
    assert [logs["loss"] for _, logs in seen] == h.history["loss"]
    with pytest.raises(TypeError, match="callbacks must define one of"):
        m.fit(X, y, callbacks=[object()])


def test_verbose_two_prints_one_line_per_epoch(backend, capsys):
    X, y = blobs()
    classifier(backend).fit(X, y, epochs=3, verbose=2)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("epoch 1/3  loss ")

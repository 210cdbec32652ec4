"""Counting scikit-learn's input checks, for the tests of the shortcuts past them."""
from fastmlp import _sklearn_base


def counting_checks(monkeypatch):
    """A list that gains an item at every call of scikit-learn's validate_data the
    estimators make from now on (in this test)."""
    calls = []
    real = _sklearn_base.validate_data

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(_sklearn_base, "validate_data", counted)
    return calls

"""A backend that fails to import must fail CI, not silently drop out of every test."""
import os

import fastmlp as fm


def test_required_backends_are_available():
    required = [b for b in os.environ.get("FASTMLP_REQUIRE_BACKENDS", "numpy").split(",") if b]
    available = fm.available_backends()
    missing = [b for b in required if b not in available]
    assert not missing, f"backends {missing} failed to import: {fm.backends._import_errors}"


def test_unknown_backend_is_a_clear_error():
    import pytest
    with pytest.raises(ValueError, match="unknown backend 'tensorflow'"):
        fm.Model([fm.Dense(1)], input_dim=1, backend="tensorflow")

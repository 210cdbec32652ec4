"""Agreement with the NumPy reference, per dtype, on values of order 1.

A module of its own (not conftest) so test files can import it by a name no
other folder's conftest shadows.
"""
TOLERANCES = {
    "float32": {"rtol": 2e-4, "atol": 2e-5},
    "float64": {"rtol": 1e-9, "atol": 1e-11},
}

"""One layout, one set of rules (issue 9).

* Network builds the layout once (``layer_table``, ``plan(cap)``, fields named in
  fastmlp.codes) and both compiled backends run on it: the Numba plan IS
  ``net.plan(cap, ...)``, and the Cython Net and Work structs, read back, hold the
  same numbers; for random architectures.
* fastmlp.rules decides, for every backend: which losses fuse with their output
  activation, when plain SGD folds into the GEMM (weight decay included), the
  training chunk and the predict/evaluate chunk.
* predict writes into a caller's output, in one backend call.
"""
import numpy as np
import pytest

import fastmlp as fm
from fastmlp import activations, codes, losses, network, rules
from fastmlp.backends import available_backends, get_backend
from fastmlp.network import Network
from fastmlp.optimizers import OptimizerState
from helpers import spy_on_engine

BACKENDS = available_backends()
HIDDEN = [a for a in activations.ACTIVATIONS if a != "softmax"]
OPTIMIZERS = {"sgd": lambda: fm.SGD(lr=0.1), "sgd_wd": lambda: fm.SGD(lr=0.1, weight_decay=0.01),
              "momentum": lambda: fm.SGD(lr=0.1, momentum=0.5), "adam": lambda: fm.Adam()}


def random_network(seed):
    """A valid Network of 1-4 layers of 1-40 units, random activations and loss."""
    rng = np.random.default_rng(seed)
    loss = losses.LOSSES[rng.choice(sorted(losses.LOSSES))]
    widths = rng.integers(1, 41, size=rng.integers(1, 5)).tolist()
    layers = [fm.Dense(int(w), str(rng.choice(HIDDEN))) for w in widths[:-1]]
    out = loss.output or str(rng.choice(HIDDEN + ["softmax"]))
    units = max(2, widths[-1]) if out == "softmax" else widths[-1]
    layers.append(fm.Dense(int(units), out))
    return Network(layers, int(rng.integers(1, 30)), loss.name)


def _build(backend, net, optimizer, dtype="float64"):
    theta = net.init_params(np.random.default_rng(0), np.float64).astype(dtype)
    state = OptimizerState.new(optimizer, net.n_params, np.dtype(dtype))
    return get_backend(backend)(net, np.dtype(dtype), theta, state)


def _data(net, rows, dtype="float64"):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(rows, net.input_dim)).astype(dtype)
    T = rng.uniform(0, 1, size=(rows, net.output_dim)).astype(dtype)
    return X, T


def _rows(plan):
    return plan[codes.PLAN_HEAD:].reshape(-1, codes.LAYER_FIELDS)


# -- the layout -------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("cap", [1, 7, 1024])
def test_plan_describes_the_network_and_a_disjoint_workspace(seed, cap):
    net = random_network(seed)
    plan = net.plan(cap, fold_rows=rules.TRAIN_ROWS)
    L = len(net.layers)
    assert plan[codes.PLAN_LAYERS] == L and plan[codes.PLAN_LOSS] == net.loss.code
    assert plan[codes.PLAN_FUSED] == (net.loss.output is not None)
    assert plan[codes.PLAN_N_PARAMS] == net.n_params
    assert plan[codes.PLAN_WIDEST] == max(net.dims[1:])
    assert plan[codes.PLAN_CAP] == cap and plan[codes.PLAN_FOLD_ROWS] == min(cap, rules.TRAIN_ROWS)
    rows = _rows(plan)
    # theta fields: the table's, which are where get_weights() finds each piece
    np.testing.assert_array_equal(rows[:, :codes.LAYER_Z], net.layer_table[:, :codes.LAYER_Z])
    np.testing.assert_array_equal(rows[:, codes.LAYER_N_IN], net.dims[:-1])
    np.testing.assert_array_equal(rows[:, codes.LAYER_N_OUT], net.dims[1:])
    np.testing.assert_array_equal(rows[:, codes.LAYER_ACT], [l.activation.code for l in net.layers])
    theta = np.arange(net.n_params, dtype=np.float64)
    for row, (W, b, alpha) in zip(rows, net.layer_views(theta)):
        assert W.shape == (row[codes.LAYER_N_IN], row[codes.LAYER_N_OUT])
        assert W[0, 0] == row[codes.LAYER_W] and b[0] == row[codes.LAYER_B]
        assert (alpha is None) == (row[codes.LAYER_ALPHA] < 0)
        if alpha is not None:
            assert alpha[0] == row[codes.LAYER_ALPHA]
    # workspace: every buffer inside it, none overlapping another
    widest = int(max(net.dims[1:]))
    spans = [(plan[codes.WS_ACT_PARAMS], L), (plan[codes.WS_GRAD], net.n_params),
             (plan[codes.WS_XB], 2 * cap * net.input_dim),
             (plan[codes.WS_TB], 2 * cap * net.output_dim),
             (plan[codes.WS_D0], cap * widest), (plan[codes.WS_D1], cap * widest)]
    spans += [(row[f], cap * row[codes.LAYER_N_OUT]) for row in rows
              for f in (codes.LAYER_Z, codes.LAYER_F)]
    spans.sort()
    # each on a cache line (a multiple of 16 elements in), padded by less than one
    line = network.LINE_ELEMENTS
    assert spans[0][0] == 0 and all(start % line == 0 for start, _ in spans)
    ends = [after for after, _ in spans[1:]] + [plan[codes.PLAN_WS_SIZE]]
    for (start, size), end in zip(spans, ends):
        assert start + size <= end < start + size + line


def test_codes_and_offsets_are_views_of_the_one_table():
    net = Network([fm.Dense(3, "prelu"), fm.Dense(2, "softmax")], 4, "cross_entropy")
    assert np.shares_memory(net.act_codes, net.layer_table)
    assert np.shares_memory(net.offsets, net.layer_table)
    net.act_codes[0] = activations.ELU
    assert net.plan(2)[codes.PLAN_HEAD + codes.LAYER_ACT] == activations.ELU


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_both_compiled_backends_run_on_the_networks_plan(seed, optimizer):
    """The Numba plan is net.plan(cap, fold_rows) itself; the Cython structs, read
    back, hold the same numbers; for the first workspace and a grown one."""
    compiled = [b for b in BACKENDS if b != "numpy"]
    if not compiled:
        pytest.skip("no compiled backend")
    net = random_network(seed)
    fold = rules.sgd_fold_rows(OptimizerState.new(OPTIMIZERS[optimizer](), 1, np.float64))
    X, T = _data(net, 37)
    for backend in compiled:
        engine = _build(backend, net, OPTIMIZERS[optimizer]())
        for cap in (1, 37):
            if cap == 37:
                engine.train_step(X, T)           # grows the training workspace
            want = net.plan(cap, fold)
            if backend == "numba":
                plan, ws, grad, _ = engine._train
                # then each layer's activation pass addresses, the guard's (0 until a
                # guarded step asks for it), the loss's, each optimiser's update's, the
                # gradient norms' and the guarded step's input check's:
                # numba_train.new_workspace; after a step, those it needs are armed
                from fastmlp.kernels.numba_train import UPDATES
                np.testing.assert_array_equal(plan[:len(want)], want)
                layers = 2 * len(net.layers)
                assert len(plan) == len(want) + layers + 2 + len(UPDATES) + 2
                if cap == 37:
                    assert np.all(plan[len(want):len(want) + layers] != 0)
                    loss, updates = plan[len(want) + layers + 1], plan[len(want) + layers + 2:-2]
                    assert loss != 0 and updates[OPTIMIZERS[optimizer]().code] != 0
                assert len(ws) == want[codes.PLAN_WS_SIZE]
                assert np.shares_memory(grad, ws) and len(grad) == net.n_params
            else:
                _check_cython_structs(engine.engine.layout(), want)


def _check_cython_structs(got, plan):
    for name, value in got["net"].items():
        if name == "layers":
            np.testing.assert_array_equal(value[:, :codes.LAYER_Z], _rows(plan)[:, :codes.LAYER_Z])
        else:
            assert value == plan[getattr(codes, name)], name
    for name, value in got["work"].items():
        if name == "layers":
            np.testing.assert_array_equal(value, _rows(plan))
        else:
            assert value == plan[getattr(codes, name)], name


# -- the rules ----------------------------------------------------------------------------

def test_fusion_is_the_loss_rows_output():
    for loss in losses.LOSSES.values():
        assert rules.fused_output(loss) == (loss.output is not None)
    assert rules.fused_output(losses.LOSSES["cross_entropy"])
    assert not rules.fused_output(losses.LOSSES["mse"])


def test_plain_sgd_folds_with_or_without_weight_decay_and_nothing_else():
    def fold(optimizer):
        return rules.sgd_fold_rows(OptimizerState.new(optimizer, 3, np.float64))
    assert fold(fm.SGD(lr=0.1)) == fold(fm.SGD(lr=0.1, weight_decay=0.1)) == rules.TRAIN_ROWS
    assert fold(fm.SGD(lr=0.1, momentum=0.9)) == 0
    assert fold(fm.Adam()) == 0
    net = Network([fm.Dense(2)], 3, "mse")
    assert net.plan(5, rules.TRAIN_ROWS)[codes.PLAN_FOLD_ROWS] == 5   # a folded batch fits one chunk


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "numpy"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_folded_sgd_with_weight_decay_matches_the_reference(backend, dtype):
    """Both kernels now fold weight decay into the GEMM (Cython once refused to);
    steps on batches that fold, and on one that does not (2500 rows), match."""
    from tolerances import TOLERANCES
    tol = {k: 10 * v for k, v in TOLERANCES[dtype].items()}
    models = [fm.Model([fm.Dense(9, "prelu"), fm.Dense(3, "softmax")], input_dim=5,
                       loss="cross_entropy", optimizer=fm.SGD(lr=0.2, weight_decay=0.05),
                       backend=b, dtype=dtype, seed=3) for b in ("numpy", backend)]
    rng = np.random.default_rng(2)
    for rows in (1, 16, 2500, 16):
        X = rng.normal(size=(rows, 5))
        y = rng.integers(0, 3, size=rows)
        losses_ = [m.train_on_batch(X, y) for m in models]
        np.testing.assert_allclose(losses_[1], losses_[0], **tol)
    for got, want in zip(models[1].get_weights(), models[0].get_weights()):
        np.testing.assert_allclose(got, want, **tol)


def test_chunk_sizes():
    w2 = Network([fm.Dense(256, "relu"), fm.Dense(128, "relu"), fm.Dense(10, "softmax")], 784,
                 "cross_entropy")
    assert rules.predict_rows(w2, np.float32) == 512   # as both compiled backends had
    assert rules.predict_rows(w2, np.float64) == 256
    # wider layers: the GEMMs' rows, whatever the dtype (W4's 2048 units in float32 were
    # 64 rows by the byte rule, 256 by the old floor)
    wide = Network([fm.Dense(4096, "relu"), fm.Dense(10)], 8, "mse")
    assert rules.predict_rows(wide, np.float64) == rules.PREDICT_WIDE_ROWS == 512
    w4 = Network([fm.Dense(2048, "relu"), fm.Dense(2048, "relu"), fm.Dense(10, "softmax")], 2048,
                 "cross_entropy")
    assert rules.predict_rows(w4, np.float32) == rules.predict_rows(w4, np.float64) == 512
    edge = Network([fm.Dense(513, "relu"), fm.Dense(1)], 4, "mse")   # 255 rows by bytes
    assert rules.predict_rows(edge, np.float32) == 512
    tiny = Network([fm.Dense(4, "sigmoid"), fm.Dense(2, "sigmoid")], 3, "mse")
    assert rules.predict_rows(tiny, np.float32) == rules.PREDICT_BYTES // 16
    # a narrow net on wide inputs: no more rows than CONVERT_BYTES of float64 inputs,
    # the least predict converts at a time (131,072 rows by its 1-unit output alone)
    logistic = Network([fm.Dense(1, "sigmoid")], 784, "binary_cross_entropy")
    assert rules.predict_rows(logistic, np.float32) == rules.CONVERT_BYTES // (8 * 784)
    assert rules.convert_rows(logistic, np.float32) == rules.CONVERT_BYTES // (8 * 784)
    assert rules.train_rows(1, w4, np.float64) == 1
    assert rules.train_rows(10**6, w4, np.float64) == rules.TRAIN_ROWS == 1024
    # a very wide layer: as many rows as fit TRAIN_BYTES / PREDICT_MAX_BYTES (1,024 rows
    # of 1-200000-1 took 3.3 GB to train; 512 of 1-2000000-1 7.6 GiB to predict)
    very_wide = Network([fm.Dense(200_000, "relu"), fm.Dense(1)], 1, "mse")
    rows = rules.train_rows(10**6, very_wide, np.float32)
    assert rows * very_wide.workspace_row_elements() * 4 <= rules.TRAIN_BYTES
    assert rows > 0.8 * rules.TRAIN_BYTES / (very_wide.workspace_row_elements() * 4)
    assert 3 * rules.predict_rows(very_wide, np.float32) * 200_000 * 4 <= rules.PREDICT_MAX_BYTES
    assert rules.train_rows(10**6, Network([fm.Dense(10**8)], 10**8, "mse"), np.float64) == 1


# -- predict writes into the caller's output ------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_predict_writes_into_out_in_one_backend_call(backend, dtype):
    model = fm.Model([fm.Dense(7, "tanh"), fm.Dense(2, "sigmoid")], input_dim=3,
                     loss="binary_cross_entropy", backend=backend, dtype=dtype, seed=0)
    rows = 2 * rules.predict_rows(model.net, model.dtype) + 5     # three chunks
    X = np.random.default_rng(0).normal(size=(rows, 3)).astype(dtype)
    out = np.full((rows, 2), np.nan, dtype=dtype)
    assert model.engine.predict(X, out) is out
    assert np.isfinite(out).all()
    called = spy_on_engine(model.engine)
    # a backend that checks X as it reads it (predict_checked) is called instead of predict
    one_call = "predict_checked" if hasattr(model.engine, "predict_checked") else "predict"
    if one_call == "predict_checked":
        real = model.engine.predict_checked
        model.engine.predict_checked = lambda X, out: called.append(one_call) or real(X, out)
    y = model.predict(X)
    assert called == [one_call]
    np.testing.assert_array_equal(y, out)
    # the Model's output is a fresh array each call, not a buffer it reuses
    assert not np.shares_memory(model.predict(X), y)

"""backprop.nn.losses: each named loss's per-sample form and gradient, against PyTorch, fit and sklearn."""

import ast
import inspect
import itertools
import math
from pathlib import Path

import numpy as np
import pytest

import backprop as bp
from backprop import nn
from backprop.nn import functional as F
from backprop.nn import losses as L

N, C = 6, 4


# ============================================================================ every registered loss
def _labels(rng):
    return rng.integers(0, C, size=N)


def _poisson_const(y):
    return np.where(y > 0, y * np.log(np.where(y > 0, y, 1)), 0) - y


def _dense(r):
    return r.normal(size=(N, C)), r.normal(size=(N, C))


def _logits_bits(r):
    return r.normal(size=(N, C)) * 3, r.integers(0, 2, size=(N, C)).astype(np.float64)


def _counts(r):
    return r.normal(size=(N, C)), np.where(r.uniform(size=(N, C)) < 0.3, 0.0, r.poisson(3.0, (N, C)))


def _tf(T):
    return T.nn.functional


# name -> (output and target from a generator, the loss per sample in PyTorch: (torch, out, target) -> (N,)).
# NOTE: a loss added to LOSS_REGISTRY without a row here fails test_every_loss_has_a_case.
CASES = {
    "cross_entropy": (lambda r: (r.normal(size=(N, C)), _labels(r)),
                      lambda T, o, y: _tf(T).cross_entropy(o, T.tensor(y), reduction="none")),
    "nll": (lambda r: (np.log(r.dirichlet(np.ones(C), size=N)), _labels(r)),
            lambda T, o, y: _tf(T).nll_loss(o, T.tensor(y), reduction="none")),
    "mse": (_dense, lambda T, o, y: _tf(T).mse_loss(o, T.tensor(y), reduction="none").mean(1)),
    "quadratic": (_dense, lambda T, o, y: 0.5 * _tf(T).mse_loss(o, T.tensor(y), reduction="none").sum(1)),
    "l1": (_dense, lambda T, o, y: _tf(T).l1_loss(o, T.tensor(y), reduction="none").mean(1)),
    "bce": (lambda r: (r.normal(size=(N, C)) * 3, r.uniform(size=(N, C))),
            lambda T, o, y: _tf(T).binary_cross_entropy_with_logits(o, T.tensor(y), reduction="none")
            .mean(1)),
    "binary_cross_entropy_with_logits": (
        _logits_bits,
        lambda T, o, y: _tf(T).binary_cross_entropy_with_logits(o, T.tensor(y), reduction="none").mean(1)),
    "binary_cross_entropy": (lambda r: (r.uniform(0.05, 0.95, size=(N, C)), r.uniform(size=(N, C))),
                             lambda T, o, y: _tf(T).binary_cross_entropy(o, T.tensor(y), reduction="none")
                             .mean(1)),
    "log_loss": (lambda r: (r.normal(size=(N, C)), _labels(r)),
                 lambda T, o, y: _tf(T).cross_entropy(o, T.tensor(y), reduction="none")),
    "binary_log_loss": (
        _logits_bits,
        lambda T, o, y: _tf(T).binary_cross_entropy_with_logits(o, T.tensor(y), reduction="none").sum(1)),
    "squared_error": (_dense,
                      lambda T, o, y: 0.5 * _tf(T).mse_loss(o, T.tensor(y), reduction="none").mean(1)),
    # NOTE: PyTorch's Poisson NLL (log input) drops y log y - y, which makes ours 0 at a perfect fit
    "poisson": (_counts,
                lambda T, o, y: (_tf(T).poisson_nll_loss(o, T.tensor(y), log_input=True, reduction="none")
                                 + T.tensor(_poisson_const(y))).mean(1)),
}


def _case(name, seed=0):
    out, y = CASES[name][0](np.random.default_rng(seed))
    return np.asarray(out, dtype=np.float64), y


def test_every_loss_has_a_case():
    assert set(CASES) == set(L.LOSSES) == set(L.LOSS_REGISTRY)
    # fit's names of today are all still there
    fit_names = {"cross_entropy", "nll", "mse", "quadratic", "l1", "bce", "binary_cross_entropy_with_logits"}
    assert fit_names <= set(L.LOSSES)


@pytest.mark.parametrize("name", L.LOSSES)
def test_per_sample_form_averages_to_the_batch_loss(name):
    out, y = _case(name)
    per = L.per_sample_loss(name)(bp.tensor(out), y)
    batch = L.get_loss(name)(bp.tensor(out), y)
    assert per.shape == (N,) and per.dtype == np.float64
    assert batch.shape == () and batch.dtype == np.float64
    np.testing.assert_allclose(per.data.mean(), batch.item(), rtol=1e-13)
    np.testing.assert_allclose(L.LOSS_REGISTRY[name].per_sample(bp.tensor(out), y).data, per.data, rtol=0)
    # "sum" is the total of what "mean" averages
    total = L.LOSS_REGISTRY[name](bp.tensor(out), y, reduction="sum").item()
    np.testing.assert_allclose(total / L.LOSS_REGISTRY[name](bp.tensor(out), y, reduction="none").data.size,
                               batch.item(), rtol=1e-13)


@pytest.mark.parametrize("name", L.LOSSES)
def test_gradcheck(name):
    out, y = _case(name, seed=1)
    assert bp.gradcheck(lambda o: L.per_sample_loss(name)(o, y), [out])
    assert bp.gradcheck(lambda o: L.get_loss(name)(o, y), [out])


@pytest.mark.parametrize("name", L.LOSSES)
def test_matches_torch(name):
    torch = pytest.importorskip("torch")
    out, y = _case(name, seed=2)
    w = np.random.default_rng(3).uniform(0.5, 1.5, size=N)
    ours = bp.tensor(out, requires_grad=True)
    per = L.per_sample_loss(name)(ours, y)
    theirs = torch.tensor(out, requires_grad=True)
    ref = CASES[name][1](torch, theirs, y)
    np.testing.assert_allclose(per.data, ref.detach().numpy(), rtol=1e-10, atol=1e-12)
    per.backward(w)
    ref.backward(torch.tensor(w))
    np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), rtol=1e-10, atol=1e-12)
    # the batch loss is PyTorch's mean of the per-sample values, gradient included
    ours, theirs = bp.tensor(out, requires_grad=True), torch.tensor(out, requires_grad=True)
    lo, lt = L.get_loss(name)(ours, y), CASES[name][1](torch, theirs, y).mean()
    np.testing.assert_allclose(lo.item(), lt.item(), rtol=1e-10)
    lo.backward()
    lt.backward()
    np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", L.LOSSES)
def test_float32_by_default(name):
    out, y = _case(name, seed=4)
    o = bp.tensor(out.astype(np.float32), requires_grad=True)
    per = L.per_sample_loss(name)(o, y)
    loss = L.get_loss(name)(o, y)
    assert per.dtype == np.float32 and loss.dtype == np.float32
    loss.backward()
    assert o.grad.dtype == np.float32
    np.testing.assert_allclose(loss.item(), L.get_loss(name)(bp.tensor(out), y).item(), rtol=1e-5)


@pytest.mark.parametrize("name", [n for n in L.LOSSES if L.LOSS_REGISTRY[n].targets == "one_hot"])
def test_class_labels_become_one_hot_rows(name):
    out = np.random.default_rng(5).uniform(0.1, 0.9, size=(N, C))
    labels = np.array([0, 3, 1, 1, 2, 0])
    onehot = np.eye(C)[labels]
    for form in (L.get_loss, L.per_sample_loss):
        np.testing.assert_array_equal(form(name)(bp.tensor(out), labels).data,
                                      form(name)(bp.tensor(out), onehot).data)
    # one output: 0/1 labels are a column
    col = out[:, :1]
    bits = np.array([0, 1, 1, 0, 1, 0])
    np.testing.assert_array_equal(L.get_loss(name)(bp.tensor(col), bits).data,
                                  L.get_loss(name)(bp.tensor(col), bits.reshape(-1, 1) * 1.0).data)
    np.testing.assert_array_equal(L.get_loss(name)(bp.tensor(col), np.array([False, True] * 3)).data,
                                  L.get_loss(name)(bp.tensor(col), np.array([0, 1] * 3)).data)
    with pytest.raises(ValueError, match="class label 4 is outside \\[0, 3\\]"):
        L.get_loss(name)(bp.tensor(out), np.array([0, 1, 4, 0, 0, 0]))
    with pytest.raises(ValueError, match="class label -1 is outside \\[0, 1\\]"):
        L.get_loss(name)(bp.tensor(col), np.array([0, 1, -1, 0, 0, 0]))


def test_label_losses_keep_labels_and_value_losses_want_values():
    out = bp.tensor(np.random.default_rng(6).normal(size=(N, C)))
    labels = np.array([0, 3, 1, 1, 2, 0])
    assert L.one_hot_labels(out, labels).shape == (N, C)
    y = np.random.default_rng(7).normal(size=(N, C))
    assert L.one_hot_labels(out, y) is y
    for name in ("squared_error", "poisson"):
        with pytest.raises(ValueError, match="input has shape \\(6, 4\\) but target has shape \\(6,\\)"):
            L.get_loss(name)(out, labels)


# ============================================================================== names and callables
def test_unknown_loss():
    msg = "unknown loss 'hinge'; expected one of cross_entropy, nll, mse, quadratic, l1, bce, "
    for f in (L.get_loss, L.per_sample_loss):
        with pytest.raises(ValueError, match=msg):
            f("hinge")
        with pytest.raises(ValueError, match="unknown loss None"):
            f(None)


def test_callables():
    out, y = _case("cross_entropy")

    def plain(o, t):
        return F.cross_entropy(o, t)

    def with_reduction(o, t, reduction="mean"):
        return F.mse_loss(o, np.eye(C)[t], reduction=reduction)

    assert L.get_loss(plain) is plain
    with pytest.raises(ValueError, match="callable that accepts reduction='none'"):
        L.per_sample_loss(plain)
    per = L.per_sample_loss(with_reduction)(bp.tensor(out), y)
    np.testing.assert_array_equal(per.data, ((out - np.eye(C)[y]) ** 2).mean(axis=1))
    # a Loss record is a callable with reduction, and a function of this module works as is
    np.testing.assert_array_equal(L.per_sample_loss(L.LOSS_REGISTRY["mse"])(bp.tensor(out), y).data, per.data)
    np.testing.assert_array_equal(L.per_sample_loss(L.cross_entropy)(bp.tensor(out), y).data,
                                  L.per_sample_loss("cross_entropy")(bp.tensor(out), y).data)


def test_weighted_loss():
    out, y = _case("cross_entropy")
    w = np.array([1.0, 0.0, 2.0, 0.5, 3.0, 1.5])
    o = bp.tensor(out, requires_grad=True)
    per = L.per_sample_loss("cross_entropy")(o, y)
    loss, total = L.weighted_loss(per, w)
    assert total == 8.0 and isinstance(total, float)
    np.testing.assert_allclose(loss.item(), (per.data * w).sum() / 8.0, rtol=1e-14)
    loss.backward()
    assert not o.grad[1].any()  # a sample of weight 0 has no gradient
    # weights summing to 0: a loss of 0 and a zero gradient, not 0/0
    o = bp.tensor(out, requires_grad=True)
    loss, total = L.weighted_loss(L.per_sample_loss("cross_entropy")(o, y), np.zeros(N))
    loss.backward()
    assert (loss.item(), total) == (0.0, 0.0) and not o.grad.any()
    # the weights take the loss's dtype
    loss, _ = L.weighted_loss(L.per_sample_loss("cross_entropy")(bp.tensor(out.astype(np.float32)), y), w)
    assert loss.dtype == np.float32
    with pytest.raises(ValueError, match="the per-sample loss has shape \\(6, 4\\), expected \\(6,\\)"):
        L.weighted_loss(F.mse_loss(bp.tensor(out), np.zeros((N, C)), reduction="none"), w)


# ===================================================================== per-sample semantics, errors
@pytest.mark.parametrize("fn", [L.quadratic_loss, L.squared_error_loss, L.poisson_loss, L.binary_log_loss])
def test_none_is_per_sample_for_the_non_torch_losses(fn):
    out = bp.tensor(np.random.default_rng(8).normal(size=(N, 3, 2)))
    y = np.random.default_rng(9).uniform(size=(N, 3, 2))
    assert fn(out, y, reduction="none").shape == (N,)
    np.testing.assert_allclose(fn(out, y, reduction="sum").item(), fn(out, y, reduction="none").data.sum(),
                               rtol=1e-13)
    assert fn(out[:, 0, 0], y[:, 0, 0], reduction="none").shape == (N,)  # one output: one value each


def test_torch_named_losses_keep_elementwise_none():
    out = bp.tensor(np.random.default_rng(10).uniform(0.1, 0.9, size=(N, C)))
    y = np.random.default_rng(11).uniform(size=(N, C))
    for fn in (L.mse_loss, L.l1_loss, L.binary_cross_entropy_with_logits, L.binary_cross_entropy):
        assert fn(out, y, reduction="none").shape == (N, C)


@pytest.mark.parametrize("fn", [L.mse_loss, L.l1_loss, L.binary_cross_entropy_with_logits,
                                L.binary_cross_entropy, L.quadratic_loss, L.squared_error_loss,
                                L.poisson_loss, L.binary_log_loss])
def test_bad_targets_and_reductions(fn):
    name = fn.__name__
    out = bp.tensor(np.full((N, C), 0.5))
    shapes = "input has shape \\(6, 4\\) but target has shape \\(6, 3\\)"
    with pytest.raises(ValueError, match=f"{name}: {shapes}"):
        fn(out, np.zeros((N, 3)))
    reductions = "reduction must be one of \\('mean', 'sum', 'none'\\), got 'avg'"
    with pytest.raises(ValueError, match=f"{name}: {reductions}"):
        fn(out, np.zeros((N, C)), reduction="avg")


def test_class_index_errors():
    z = bp.tensor(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="target class 4 is outside \\[0, 3\\] for 4 classes"):
        L.cross_entropy(z, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match="class-index target must be integers"):
        L.nll_loss(z, np.array([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="probabilities of shape \\(3, 4\\)"):
        L.cross_entropy(z, np.zeros((3, 2)))
    with pytest.raises(ValueError, match="label_smoothing must be in \\[0, 1\\]"):
        L.cross_entropy(z, np.array([0, 1, 1]), label_smoothing=1.5)
    with pytest.raises(ValueError, match="cross_entropy: reduction must be one of"):
        L.cross_entropy(z, np.array([0, 1, 1]), reduction="avg")


def test_poisson_needs_non_negative_targets():
    with pytest.raises(ValueError, match="poisson_loss: target must be >= 0, got -1.0"):
        L.poisson_loss(bp.tensor(np.zeros((2, 2))), np.array([[1.0, 0.0], [-1.0, 2.0]]))


def test_poisson_is_zero_at_a_perfect_fit():
    y = np.array([[0.0, 1.0], [2.5, 7.0]])
    z = np.log(np.where(y > 0, y, 1e-300))
    np.testing.assert_allclose(L.poisson_loss(bp.tensor(z), y, reduction="none").data, 0.0, atol=1e-12)


# ========================================================================== numerical stability
def test_cross_entropy_huge_logits():
    z = bp.tensor(np.array([[1e8, 0.0], [0.0, 1e8]], dtype=np.float32), requires_grad=True)
    loss = F.cross_entropy(z, np.array([1, 1]))
    # sample 0: -log softmax = 1e8, sample 1: 0 -> mean 5e7
    assert math.isfinite(loss.item())
    np.testing.assert_allclose(loss.item(), 5e7, rtol=1e-6)
    loss.backward()
    np.testing.assert_allclose(z.grad, [[0.5, -0.5], [0.0, 0.0]], atol=1e-7)


def test_cross_entropy_huge_logits_single_row():
    z = bp.tensor(np.array([[1e8, 0.0]], dtype=np.float32), requires_grad=True)
    loss = F.cross_entropy(z, np.array([1]))
    np.testing.assert_allclose(loss.item(), 1e8, rtol=1e-6)
    loss.backward()
    np.testing.assert_allclose(z.grad, [[1.0, -1.0]], atol=1e-7)


def test_bce_with_logits_extremes():
    x = bp.tensor(np.array([1e4, -1e4, 1e4, -1e4], dtype=np.float32), requires_grad=True)
    y = np.array([1.0, 0.0, 0.0, 1.0], dtype=np.float32)
    loss = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    np.testing.assert_allclose(loss.data, [0.0, 0.0, 1e4, 1e4], rtol=1e-6, atol=1e-6)
    loss.sum().backward()
    # d/dx = sigmoid(x) - y
    np.testing.assert_allclose(x.grad, [0.0, 0.0, 1.0, -1.0], atol=1e-6)


def test_binary_log_loss_extremes():
    z = bp.tensor(np.array([[1e4, -1e4], [-1e4, 1e4]], dtype=np.float32), requires_grad=True)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss = L.binary_log_loss(z, np.array([[1.0, 0.0], [1.0, 1.0]]), reduction="none")
        loss.sum().backward()
    np.testing.assert_allclose(loss.data, [0.0, 1e4], rtol=1e-6)
    np.testing.assert_allclose(z.grad, [[0.0, 0.0], [-1.0, 0.0]], atol=1e-6)


# ========================================== the numbers fit and sklearn computed before this module
# NOTE: the formulas below are copies of training/fit.py's and sklearn.py's loss code as it was when the
# losses moved here: the registry must give the same bits, values and gradients, in float32 and float64.
def _old_one_hot(fn):
    def loss(out, y):
        if y.dtype.kind in "iub" and y.ndim == 1:
            c = out.shape[-1]
            y = np.eye(c, dtype=out.dtype)[y] if c > 1 else y.reshape(-1, 1).astype(out.dtype)
        return fn(out, y)
    return loss


def _old_quadratic(output, target):
    d = output - F._as_target(target, output, "quadratic_loss")
    return (d * d).sum() * (0.5 / output.shape[0])


def _old_per_sample(t):
    return t if t.ndim == 1 else t.reshape(t.shape[0], -1).mean(axis=1)


def _old_quadratic_per_sample(out, y):
    d = out - F._as_target(y, out, "quadratic_loss")
    d2 = d * d
    return (d2 if d2.ndim == 1 else d2.reshape(d2.shape[0], -1).sum(axis=1)) * 0.5


_OLD_DENSE = {"mse": F.mse_loss, "quadratic": _old_quadratic, "l1": F.l1_loss,
              "bce": F.binary_cross_entropy_with_logits,
              "binary_cross_entropy_with_logits": F.binary_cross_entropy_with_logits}
OLD_FIT_BATCH = {"cross_entropy": F.cross_entropy, "nll": F.nll_loss,
                 **{k: _old_one_hot(f) for k, f in _OLD_DENSE.items()}}
OLD_FIT_PER_SAMPLE = {
    "cross_entropy": lambda out, y: F.cross_entropy(out, y, reduction="none"),
    "nll": lambda out, y: F.nll_loss(out, y, reduction="none"),
    "quadratic": _old_one_hot(_old_quadratic_per_sample),
    **{k: _old_one_hot(lambda out, y, fn=f: _old_per_sample(fn(out, y, reduction="none")))
       for k, f in _OLD_DENSE.items() if k != "quadratic"},
}


def _old_weighted(per_sample):
    def loss(out, y, w):
        per = per_sample(out, y)
        total = float(w.sum())
        return (per * bp.Tensor(w.astype(per.dtype))).sum() * (1.0 / total if total > 0 else 0.0), total
    return loss


def _old_classifier(out, target):
    if target.ndim == 1:
        return F.cross_entropy(out, target, reduction="none")
    return F.binary_cross_entropy_with_logits(out, target.astype(out.dtype), reduction="none").sum(axis=1)


def _old_regressor(loss):
    def per_sample(out, target):
        y = target.astype(out.dtype)
        if loss == "poisson":
            const = np.where(y > 0, y * np.log(np.where(y > 0, y, 1)), 0) - y
            return (out.exp() - out * bp.Tensor(y) + bp.Tensor(const)).mean(axis=1)
        d = out - bp.Tensor(y)
        return (d * d).mean(axis=1) * 0.5
    return per_sample


def _same_bits(new, old, out, y):
    """new(out, y) and old(out, y): equal values and equal gradients, bit for bit."""
    a, b = bp.tensor(out, requires_grad=True), bp.tensor(out, requires_grad=True)
    va, vb = new(a, y), old(b, y)
    assert va.dtype == vb.dtype
    np.testing.assert_array_equal(va.data, vb.data)
    g = np.random.default_rng(12).uniform(0.5, 1.5, size=va.shape).astype(va.dtype)
    va.backward(g)
    vb.backward(g)
    np.testing.assert_array_equal(a.grad, b.grad)


def _fit_targets(name, rng, n_out):
    if name in ("cross_entropy", "nll"):
        return rng.integers(0, n_out, size=17)
    if name in ("bce", "binary_cross_entropy_with_logits") and rng.uniform() < 0.5:
        return rng.integers(0, 2, size=(17, n_out)).astype(np.float32)
    return rng.integers(0, max(n_out, 2), size=17)  # labels: one-hot rows (a column for one output)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(OLD_FIT_BATCH))
def test_fit_losses_bit_for_bit(name, dtype):
    rng = np.random.default_rng(13)
    for n_out, dense in itertools.product((1, 3), (False, True)):
        if n_out == 1 and name in ("cross_entropy", "nll"):
            continue
        out = rng.normal(size=(17, n_out)).astype(dtype)
        y = rng.normal(size=(17, n_out)).astype(dtype) if dense and name in _OLD_DENSE else _fit_targets(
            name, rng, n_out)
        _same_bits(L.get_loss(name), OLD_FIT_BATCH[name], out, y)
        _same_bits(L.per_sample_loss(name), OLD_FIT_PER_SAMPLE[name], out, y)
        w = rng.uniform(0, 2, size=17)
        _same_bits(lambda o, t: L.weighted_loss(L.per_sample_loss(name)(o, t), w)[0],
                   lambda o, t: _old_weighted(OLD_FIT_PER_SAMPLE[name])(o, t, w)[0], out, y)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sklearn_losses_bit_for_bit(dtype):
    rng = np.random.default_rng(14)
    z = rng.normal(size=(23, 3)).astype(dtype)
    labels = rng.integers(0, 3, size=23)
    multilabel = rng.integers(0, 2, size=(23, 3)).astype(np.float64)  # sklearn passes float64 targets
    values = rng.normal(size=(23, 3))
    counts = rng.poisson(2.0, size=(23, 3)).astype(np.float64)
    _same_bits(L.per_sample_loss("log_loss"), _old_classifier, z, labels)
    _same_bits(L.per_sample_loss("binary_log_loss"), _old_classifier, z, multilabel)
    _same_bits(L.per_sample_loss("binary_log_loss"), _old_classifier, z[:, :1], multilabel[:, :1])
    _same_bits(L.per_sample_loss("squared_error"), _old_regressor("squared_error"), z, values)
    _same_bits(L.per_sample_loss("poisson"), _old_regressor("poisson"), z, counts)
    _same_bits(L.per_sample_loss("poisson"), _old_regressor("poisson"), z[:, :1], counts[:, :1])
    # sklearn's weighting: (per_sample * w).sum() * (1 / sum(w))
    w = rng.uniform(0.1, 2.0, size=23)
    _same_bits(lambda o, t: L.weighted_loss(L.per_sample_loss("poisson")(o, t), w)[0],
               lambda o, t: (_old_regressor("poisson")(o, t) * bp.Tensor(w.astype(dtype))).sum()
               * (1.0 / float(w.sum())), z, counts)


def test_matches_sklearns_own_losses():
    base = pytest.importorskip("sklearn.neural_network._base")
    rng = np.random.default_rng(15)
    z = rng.normal(size=(9, 3))
    labels = rng.integers(0, 3, size=9)
    y = rng.normal(size=(9, 3))
    bits = rng.integers(0, 2, size=(9, 3)).astype(np.float64)
    counts = rng.poisson(2.0, size=(9, 1)).astype(np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(L.get_loss("squared_error")(bp.tensor(z), y).item(), base.squared_loss(y, z),
                               rtol=1e-12)
    np.testing.assert_allclose(L.get_loss("log_loss")(bp.tensor(z), labels).item(),
                               base.log_loss(np.eye(3)[labels], p), rtol=1e-12)
    np.testing.assert_allclose(L.get_loss("binary_log_loss")(bp.tensor(z), bits).item(),
                               base.binary_log_loss(bits, 1 / (1 + np.exp(-z))), rtol=1e-12)
    # NOTE: sklearn sums the Poisson loss over outputs where MLPRegressor here averages: one output agrees
    np.testing.assert_allclose(L.get_loss("poisson")(bp.tensor(z[:, :1]), counts).item(),
                               base.poisson_loss(counts, np.exp(z[:, :1])), rtol=1e-12)


# ============================================================================= the module's place
def test_losses_import_only_the_engine():
    """nn.functional imports nn.losses, so nn.losses must not import nn (or anything above the engine)."""
    tree = ast.parse(Path(inspect.getfile(L)).read_text())
    imported = {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    ours = {m for m in imported if m.split(".")[0] == "backprop"}
    assert ours and all(m.startswith("backprop.engine") for m in ours), ours


def test_functional_reexports_the_losses():
    for name in ("cross_entropy", "nll_loss", "mse_loss", "l1_loss", "binary_cross_entropy_with_logits",
                 "binary_cross_entropy", "CrossEntropy"):
        assert getattr(F, name) is getattr(L, name)
    assert bp.nn.losses is L


# ============================================================================= network vs PyTorch
def _pair(torch, sizes=(5, 7, 6, 4), act="tanh"):
    """A float64 backprop MLP and a torch MLP with the same weights."""
    acts = {"tanh": (nn.Tanh, torch.nn.Tanh), "relu": (nn.ReLU, torch.nn.ReLU)}[act]
    ours_layers, their_layers = [], []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        if i:
            ours_layers.append(acts[0]())
            their_layers.append(acts[1]())
        ours_layers.append(nn.Linear(a, b))
        their_layers.append(torch.nn.Linear(a, b))
    ours = nn.Sequential(*ours_layers).double()
    theirs = torch.nn.Sequential(*their_layers).double()
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    return ours, theirs


def _compare(torch, ours, theirs, x, loss_ours, loss_theirs, weight=None):
    out = ours(bp.tensor(x))
    ref = theirs(torch.tensor(x))
    np.testing.assert_allclose(out.data, ref.detach().numpy(), rtol=1e-10, atol=1e-12)
    lo, lt = loss_ours(out), loss_theirs(ref)
    np.testing.assert_allclose(lo.data, lt.detach().numpy(), rtol=1e-10, atol=1e-12)
    if weight is None:
        lo.backward()
        lt.backward()
    else:
        lo.backward(weight)
        lt.backward(torch.tensor(weight))
    theirs_grads = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        assert p.grad.dtype == np.float64
        np.testing.assert_allclose(p.grad, theirs_grads[name].grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)


REDUCTIONS = ["mean", "sum", "none"]


class TestMatchesTorch:
    @pytest.fixture(autouse=True)
    def _setup(self):
        self.torch = pytest.importorskip("torch")
        self.torch.manual_seed(0)
        rng = np.random.default_rng(0)
        self.x = rng.normal(size=(8, 5))
        self.labels = rng.integers(0, 4, size=8)
        self.dense = rng.normal(size=(8, 4))
        self.binary = rng.integers(0, 2, size=(8, 4)).astype(np.float64)
        self.w_none = rng.uniform(0.5, 1.5, size=8)
        self.w_none2 = rng.uniform(0.5, 1.5, size=(8, 4))

    def _run(self, ours_loss, their_loss, reduction, weight2d=False, act="tanh"):
        ours, theirs = _pair(self.torch, act=act)
        w = None if reduction != "none" else (self.w_none2 if weight2d else self.w_none)
        _compare(self.torch, ours, theirs, self.x, ours_loss, their_loss, w)

    @pytest.mark.parametrize("reduction", REDUCTIONS)
    @pytest.mark.parametrize("smoothing", [0.0, 0.1])
    def test_cross_entropy(self, reduction, smoothing):
        T = self.torch
        y = self.labels
        self._run(lambda o: F.cross_entropy(o, y, reduction=reduction, label_smoothing=smoothing),
                  lambda o: T.nn.functional.cross_entropy(o, T.tensor(y), reduction=reduction,
                                                          label_smoothing=smoothing),
                  reduction)

    def test_cross_entropy_probability_targets(self):
        T = self.torch
        q = np.random.default_rng(3).dirichlet(np.ones(4), size=8)
        self._run(lambda o: F.cross_entropy(o, q, label_smoothing=0.2),
                  lambda o: T.nn.functional.cross_entropy(o, T.tensor(q), label_smoothing=0.2), "mean")

    @pytest.mark.parametrize("reduction", REDUCTIONS)
    def test_mse(self, reduction):
        T = self.torch
        y = self.dense
        self._run(lambda o: F.mse_loss(o, y, reduction=reduction),
                  lambda o: T.nn.functional.mse_loss(o, T.tensor(y), reduction=reduction), reduction, True, "relu")

    @pytest.mark.parametrize("reduction", REDUCTIONS)
    def test_l1(self, reduction):
        T = self.torch
        y = self.dense
        self._run(lambda o: F.l1_loss(o, y, reduction=reduction),
                  lambda o: T.nn.functional.l1_loss(o, T.tensor(y), reduction=reduction), reduction, True)

    @pytest.mark.parametrize("reduction", REDUCTIONS)
    def test_nll_log_softmax(self, reduction):
        T = self.torch
        y = self.labels
        self._run(lambda o: F.nll_loss(F.log_softmax(o, 1), y, reduction=reduction),
                  lambda o: T.nn.functional.nll_loss(T.log_softmax(o, 1), T.tensor(y), reduction=reduction),
                  reduction)

    @pytest.mark.parametrize("reduction", REDUCTIONS)
    def test_bce_with_logits(self, reduction):
        T = self.torch
        y = self.binary
        self._run(lambda o: F.binary_cross_entropy_with_logits(o, y, reduction=reduction),
                  lambda o: T.nn.functional.binary_cross_entropy_with_logits(o, T.tensor(y), reduction=reduction),
                  reduction, True)

    def test_bce_probabilities(self):
        T = self.torch
        y = self.binary
        self._run(lambda o: F.binary_cross_entropy(o.sigmoid(), y),
                  lambda o: T.nn.functional.binary_cross_entropy(o.sigmoid(), T.tensor(y)), "mean")

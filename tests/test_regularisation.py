"""Gradient clipping (vs PyTorch), clip_norm / clip_value in fit, class_weight and sample_weight."""

import numpy as np
import pytest

import backprop as bp
from backprop import nn
from backprop.nn import functional as F
from backprop.nn.utils import clip_grad_norm_, clip_grad_value_

torch = pytest.importorskip("torch")


def blobs(n=40, seed=0, classes=2):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = (y[:, None] * 1.5 + rng.normal(size=(n, 2))).astype(np.float32)
    return x, y.astype(np.int64)


def small_mlp(seed=0, n_out=2):
    bp.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, n_out))


def torch_copy(model):
    t = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, model[2].out_features))
    t.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in model.state_dict().items()})
    return t


def params_with_grads(seed, scale):
    rng = np.random.default_rng(seed)
    shapes = [(4, 3), (3,), (2, 5)]
    ours, theirs = [], []
    for s in shapes:
        g = (rng.normal(size=s) * scale).astype(np.float32)
        p = nn.Parameter(np.zeros(s, dtype=np.float32))
        p.grad = g.copy()
        t = torch.zeros(s, requires_grad=True)
        t.grad = torch.from_numpy(g.copy())
        ours.append(p)
        theirs.append(t)
    return ours, theirs


# ======================================================================================== clip utilities
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, float("inf")])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_matches_torch(norm_type, max_norm):
    ours, theirs = params_with_grads(0, 2.0)
    total = clip_grad_norm_(ours, max_norm, norm_type=norm_type)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type=norm_type)
    assert isinstance(total, float)
    assert total == pytest.approx(float(expected), rel=1e-5)
    for p, t in zip(ours, theirs):
        np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_clip_grad_norm_skips_missing_grads_and_takes_one_parameter():
    ours, theirs = params_with_grads(1, 3.0)
    ours[1].grad, theirs[1].grad = None, None
    assert clip_grad_norm_(ours, 1.0) == pytest.approx(float(torch.nn.utils.clip_grad_norm_(theirs, 1.0)), rel=1e-5)
    assert ours[1].grad is None
    one = nn.Parameter(np.zeros(2, dtype=np.float32))
    one.grad = np.array([3.0, 4.0], dtype=np.float32)
    assert clip_grad_norm_(one, 1.0) == pytest.approx(5.0)
    np.testing.assert_allclose(one.grad, [0.6, 0.8], rtol=1e-5)
    assert clip_grad_norm_([], 1.0) == 0.0


def test_clip_grad_norm_nonfinite():
    ours, _ = params_with_grads(2, 1.0)
    ours[0].grad[0, 0] = np.inf
    with pytest.raises(RuntimeError, match="non-finite"):
        clip_grad_norm_(ours, 1.0, error_if_nonfinite=True)
    assert clip_grad_norm_(ours, 1.0) == np.inf


def test_clip_grad_value_matches_torch():
    ours, theirs = params_with_grads(3, 2.0)
    clip_grad_value_(ours, 0.7)
    torch.nn.utils.clip_grad_value_(theirs, 0.7)
    for p, t in zip(ours, theirs):
        np.testing.assert_array_equal(p.grad, t.grad.numpy())
    assert max(np.abs(p.grad).max() for p in ours) == pytest.approx(0.7)


def test_clip_read_only_grad_is_replaced():
    p = nn.Parameter(np.zeros(3, dtype=np.float32))
    g = np.array([3.0, -4.0, 12.0], dtype=np.float32)
    g.flags.writeable = False
    p.grad = g
    clip_grad_norm_([p], 1.0)
    np.testing.assert_allclose(np.linalg.norm(p.grad), 1.0, rtol=1e-5)
    assert g.tolist() == [3.0, -4.0, 12.0]


# ================================================================================================ in fit
def one_step_torch(model, x, y, lr, *, clip_norm=None, clip_value=None, weight=None, sample_weight=None):
    """The weights after one full-batch SGD step, computed by PyTorch."""
    t = torch_copy(model)
    out = t(torch.from_numpy(x))
    if sample_weight is not None:
        per = torch.nn.functional.cross_entropy(out, torch.from_numpy(y), reduction="none")
        w = torch.from_numpy(sample_weight.astype(np.float32))
        loss = (per * w).sum() / w.sum()
    else:
        w = None if weight is None else torch.from_numpy(weight.astype(np.float32))
        loss = torch.nn.functional.cross_entropy(out, torch.from_numpy(y), weight=w)
    loss.backward()
    if clip_value is not None:
        torch.nn.utils.clip_grad_value_(t.parameters(), clip_value)
    if clip_norm is not None:
        norm = float(torch.nn.utils.clip_grad_norm_(t.parameters(), clip_norm))
        assert norm > clip_norm  # the test exercises clipping
    with torch.no_grad():
        for p in t.parameters():
            p -= lr * p.grad
    return {k: v.numpy() for k, v in t.state_dict().items()}, float(loss.detach())


def assert_state(model, expected):
    for k, v in model.state_dict().items():
        np.testing.assert_allclose(v, expected[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("kw", [{"clip_norm": 0.05}, {"clip_value": 0.01}, {"clip_norm": 0.02, "clip_value": 0.01}])
def test_fit_clipping_matches_torch(kw):
    x, y = blobs()
    model = small_mlp()
    expected, _ = one_step_torch(model, x, y, 0.5, **kw)
    bp.fit(model, x, y, lr=0.5, batch_size=len(x), epochs=1, shuffle=False, verbose=0, **kw)
    assert_state(model, expected)


@pytest.mark.parametrize("bad", [{"clip_norm": 0}, {"clip_norm": -1.0}, {"clip_value": float("nan")}])
def test_fit_bad_clip(bad):
    with pytest.raises(ValueError, match="clip_"):
        bp.fit(small_mlp(), *blobs(), verbose=0, **bad)


def test_class_weight_matches_torch_weighted_cross_entropy():
    x, y = blobs(30, classes=3)
    model = small_mlp(n_out=3)
    cw = {0: 1.0, 1: 3.0, 2: 0.5}
    expected, loss = one_step_torch(model, x, y, 0.5, weight=np.array([1.0, 3.0, 0.5]))
    h = bp.fit(model, x, y, lr=0.5, batch_size=len(x), epochs=1, shuffle=False, verbose=0, class_weight=cw)
    assert h.history["loss"][0] == pytest.approx(loss, rel=1e-5)
    assert_state(model, expected)


def test_class_weight_balanced_is_sklearns():
    from sklearn.utils.class_weight import compute_class_weight

    x, y = blobs(30, classes=3)
    y = np.where(np.arange(30) < 20, 0, y)  # unbalanced: mostly class 0
    balanced = compute_class_weight("balanced", classes=np.unique(y), y=y)
    model = small_mlp(n_out=3)
    expected, _ = one_step_torch(model, x, y, 0.5, weight=balanced)
    bp.fit(model, x, y, lr=0.5, batch_size=len(x), epochs=1, shuffle=False, verbose=0, class_weight="balanced")
    assert_state(model, expected)


def test_sample_weight_matches_torch_and_combines_with_class_weight():
    x, y = blobs(24)
    sw = np.random.default_rng(5).uniform(0.1, 2.0, size=len(x))
    model = small_mlp()
    expected, loss = one_step_torch(model, x, y, 0.5, sample_weight=sw * np.where(y == 1, 2.0, 1.0))
    h = bp.fit(model, x, y, lr=0.5, batch_size=len(x), epochs=1, shuffle=False, verbose=0, sample_weight=sw,
               class_weight={1: 2.0})
    assert h.history["loss"][0] == pytest.approx(loss, rel=1e-5)
    assert_state(model, expected)


def test_weighted_epoch_loss_and_minibatches():
    # several shuffled batches: the epoch loss is sum(w * loss) / sum(w) over the epoch
    x, y = blobs(40)
    sw = np.random.default_rng(1).uniform(0.5, 1.5, size=len(x))
    losses = []

    class Rec(bp.Callback):
        def on_train_batch_end(self, batch, logs=None):
            losses.append(logs["loss"])

    model = small_mlp()
    h = bp.fit(model, x, y, lr=0.1, batch_size=8, epochs=1, seed=0, verbose=0, sample_weight=sw, callbacks=[Rec()])
    assert len(losses) == 5 and np.isfinite(h.history["loss"][0])
    order = np.random.default_rng(np.random.SeedSequence(0).spawn(3)[0]).permutation(len(x))
    wsum = [sw[order[i:i + 8]].sum() for i in range(0, 40, 8)]
    assert h.history["loss"][0] == pytest.approx(np.dot(losses, wsum) / sum(wsum), rel=1e-6)


def test_unit_weights_equal_the_unweighted_path():
    x, y = blobs(40)
    a, b = small_mlp(), small_mlp()
    ha = bp.fit(a, x, y, batch_size=8, epochs=2, seed=0, verbose=0)
    hb = bp.fit(b, x, y, batch_size=8, epochs=2, seed=0, verbose=0, sample_weight=np.ones(len(x)))
    np.testing.assert_allclose(ha.history["loss"], hb.history["loss"], rtol=1e-5)
    assert_state(b, a.state_dict())


@pytest.mark.parametrize("loss", ["mse", "l1", "quadratic", "bce"])
def test_dense_losses_with_sample_weight(loss):
    x, y = blobs(16)
    sw = np.random.default_rng(2).uniform(0.1, 2.0, size=len(x))
    model = small_mlp()
    out = model(bp.tensor(x))
    target = np.eye(2, dtype=np.float32)[y]
    per_sample = {
        "mse": lambda: ((out.data - target) ** 2).mean(axis=1),
        "l1": lambda: np.abs(out.data - target).mean(axis=1),
        "quadratic": lambda: 0.5 * ((out.data - target) ** 2).sum(axis=1),
        "bce": lambda: F.binary_cross_entropy_with_logits(out, target, reduction="none").data.mean(axis=1),
    }[loss]()
    ev = bp.fit(model, x, y, loss=loss, optimizer=bp.optim.SGD(model.parameters(), lr=0.0), batch_size=16,
                epochs=1, verbose=0, sample_weight=sw, metrics=())
    assert ev.history["loss"][0] == pytest.approx(np.dot(per_sample, sw) / sw.sum(), rel=1e-5)


def test_sample_weight_follows_the_validation_split():
    x, y = blobs(40)
    h = bp.fit(small_mlp(), x, y, epochs=1, verbose=0, seed=3, validation_split=0.25)
    sw = np.zeros(len(x))
    sw[h.validation_indices] = 1.0  # only held-out samples weigh: training sees zero weights
    model = small_mlp()
    before = model.state_dict()
    h2 = bp.fit(model, x, y, epochs=2, verbose=0, seed=3, validation_split=0.25, sample_weight=sw)
    np.testing.assert_array_equal(h2.validation_indices, h.validation_indices)
    assert h2.history["loss"] == [0.0, 0.0]
    assert_state(model, before)


def test_weights_errors():
    x, y = blobs(10)
    with pytest.raises(ValueError, match="sample_weight"):
        bp.fit(small_mlp(), x, y, verbose=0, sample_weight=np.ones(9))
    with pytest.raises(ValueError, match="sample_weight"):
        bp.fit(small_mlp(), x, y, verbose=0, sample_weight=-np.ones(10))
    with pytest.raises(ValueError, match="class_weight"):
        bp.fit(small_mlp(), x, y, verbose=0, class_weight={-1: 2.0})
    with pytest.raises(ValueError, match="balanced"):
        bp.fit(small_mlp(), x, y, verbose=0, class_weight="auto")
    with pytest.raises(ValueError, match="reduction"):
        bp.fit(small_mlp(), x, y, verbose=0, loss=lambda out, t: F.cross_entropy(out, t), class_weight={0: 2.0})


def test_custom_loss_with_reduction_is_weighted():
    x, y = blobs(20)
    sw = np.linspace(0.5, 2.0, 20)
    a, b = small_mlp(), small_mlp()
    ha = bp.fit(a, x, y, batch_size=5, epochs=1, seed=0, verbose=0, sample_weight=sw)
    hb = bp.fit(b, x, y, batch_size=5, epochs=1, seed=0, verbose=0, sample_weight=sw,
                loss=lambda out, t, reduction="mean": F.cross_entropy(out, t, reduction=reduction))
    assert ha.history["loss"] == pytest.approx(hb.history["loss"], rel=1e-6)
    assert_state(b, a.state_dict())

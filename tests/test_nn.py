"""Modules and layers: registration, state dicts, modes, dtypes, initialisation, and equality with PyTorch."""

import itertools
import math

import numpy as np
import pytest

import backprop as bp
from backprop import nn
from backprop.nn import functional as F


def mlp(sizes=(4, 8, 3), act=nn.ReLU):
    layers = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        if i:
            layers.append(act())
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


class Net(nn.Module):
    """Nested modules, a list of modules and a bare Parameter."""

    def __init__(self):
        self.encoder = nn.Sequential(nn.Linear(4, 6), nn.Tanh())
        self.blocks = [nn.Linear(6, 6), nn.Linear(6, 5)]
        self.scale = nn.Parameter(np.ones(5, dtype=np.float32))
        self.head = nn.Linear(5, 2, bias=False)
        self.not_a_param = bp.tensor([1.0, 2.0])  # a plain Tensor is not a parameter
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        x = self.encoder(x)
        for b in self.blocks:
            x = b(x).relu()
        return self.head(self.drop(x) * self.scale)


# ============================================================================================ registration
class TestRegistration:
    def test_named_parameters_of_nested_module(self):
        names = [n for n, _ in Net().named_parameters()]
        # a module's own parameters first, then its children's (PyTorch's order)
        assert names == ["scale", "encoder.0.weight", "encoder.0.bias", "blocks.0.weight", "blocks.0.bias",
                         "blocks.1.weight", "blocks.1.bias", "head.weight"]
        net = Net()
        assert sum(p.size for p in net.parameters()) == net.num_parameters() == (
            4 * 6 + 6 + 6 * 6 + 6 + 6 * 5 + 5 + 5 + 5 * 2)

    def test_names_match_torch(self):
        torch = pytest.importorskip("torch")
        ours = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
        theirs = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8), torch.nn.Tanh(),
                                     torch.nn.Linear(8, 3))
        assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
        assert [n for n, _ in ours.named_parameters()][:3] == ["0.weight", "0.bias", "2.weight"]
        for (n, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
            assert p.shape == tuple(q.shape), n
        assert list(ours.state_dict()) == list(theirs.state_dict())

    def test_nested_names_match_torch(self):
        torch = pytest.importorskip("torch")

        class TNet(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.encoder = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh())
                self.blocks = torch.nn.ModuleList([torch.nn.Linear(6, 6), torch.nn.Linear(6, 5)])
                self.scale = torch.nn.Parameter(torch.ones(5))
                self.head = torch.nn.Linear(5, 2, bias=False)
                self.drop = torch.nn.Dropout(0.5)

        assert [n for n, _ in Net().named_parameters()] == [n for n, _ in TNet().named_parameters()]

    def test_shared_parameter_listed_once(self):
        class Tied(nn.Module):
            def __init__(self):
                self.a = nn.Linear(3, 3)
                self.b = nn.Linear(3, 3)
                self.b.weight = self.a.weight

        names = [n for n, _ in Tied().named_parameters()]
        assert names == ["a.weight", "a.bias", "b.bias"]

    def test_modulelist(self):
        ml = nn.ModuleList([nn.Linear(2, 3), nn.Linear(3, 1)])
        assert len(ml) == 2
        assert [n for n, _ in ml.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias"]
        with pytest.raises(TypeError):
            ml.append("not a module")

    def test_sequential_rejects_non_module(self):
        with pytest.raises(TypeError, match="layer 1"):
            nn.Sequential(nn.Linear(2, 2), lambda x: x)

    def test_sequential_indexing(self):
        a, b = nn.Linear(2, 3), nn.Linear(3, 1)
        s = nn.Sequential(a, nn.ReLU(), b)
        assert len(s) == 3 and s[0] is a and s[2] is b and list(s)[1].__class__ is nn.ReLU


# ============================================================================================= state dict
class TestStateDict:
    def test_round_trip(self):
        bp.manual_seed(1)
        a = Net()
        bp.manual_seed(2)
        b = Net()
        x = bp.tensor(np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32))
        a.eval()
        b.eval()
        assert not np.allclose(a(x).data, b(x).data)
        sd = a.state_dict()
        b.load_state_dict(sd)
        np.testing.assert_array_equal(a(x).data, b(x).data)
        for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
            np.testing.assert_array_equal(p.data, q.data, err_msg=n)

    def test_state_dict_is_a_copy(self):
        m = nn.Linear(2, 2)
        sd = m.state_dict()
        sd["weight"][...] = 123
        assert not np.any(m.weight.data == 123)

    def test_load_is_in_place(self):
        m = nn.Linear(2, 2)
        w = m.weight
        arr = w.data
        m.load_state_dict({"weight": np.ones((2, 2)), "bias": np.zeros(2)})
        assert m.weight is w and m.weight.data is arr
        np.testing.assert_array_equal(arr, np.ones((2, 2)))
        assert arr.dtype == np.float32

    def test_load_into_torch(self):
        torch = pytest.importorskip("torch")
        ours = mlp((4, 8, 3)).double()
        theirs = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).double()
        theirs.load_state_dict({k: torch.tensor(v) for k, v in ours.state_dict().items()})
        x = np.random.default_rng(0).normal(size=(5, 4))
        np.testing.assert_allclose(ours(bp.tensor(x)).data, theirs(torch.tensor(x)).detach().numpy(), rtol=1e-12)

    def test_wrong_shape(self):
        m = mlp((4, 8, 3))
        before = {k: v.copy() for k, v in m.state_dict().items()}
        sd = m.state_dict()
        sd["0.weight"] = sd["0.weight"] + 1  # a valid change listed first: must not be applied either
        sd["2.weight"] = np.zeros((3, 7), dtype=np.float32)
        with pytest.raises(ValueError) as err:
            m.load_state_dict(sd)
        msg = str(err.value)
        assert "2.weight" in msg and "(3, 7)" in msg and "(3, 8)" in msg
        for k, v in m.state_dict().items():
            np.testing.assert_array_equal(v, before[k], err_msg=k)

    def test_missing_key(self):
        m = mlp((4, 8, 3))
        before = {k: v.copy() for k, v in m.state_dict().items()}
        sd = {k: v + 1 for k, v in m.state_dict().items()}
        del sd["2.bias"]
        with pytest.raises((KeyError, ValueError), match="2.bias"):
            m.load_state_dict(sd)
        for k, v in m.state_dict().items():
            np.testing.assert_array_equal(v, before[k], err_msg=k)

    def test_unexpected_key(self):
        m = mlp((4, 8, 3))
        before = {k: v.copy() for k, v in m.state_dict().items()}
        sd = {k: v + 1 for k, v in m.state_dict().items()}
        sd["4.weight"] = np.zeros((2, 2))
        with pytest.raises((KeyError, ValueError), match="4.weight"):
            m.load_state_dict(sd)
        for k, v in m.state_dict().items():
            np.testing.assert_array_equal(v, before[k], err_msg=k)


# ================================================================================== modes, dtypes, misc
class TestModuleState:
    def test_train_eval_propagate(self):
        net = Net()
        assert all(m.training for m in net.modules())
        assert net.eval() is net
        assert not any(m.training for m in net.modules())
        assert not net.drop.training and not net.blocks[1].training and not net.encoder[1].training
        net.train()
        assert all(m.training for m in net.modules())
        net.train(False)
        assert not net.drop.training

    @pytest.mark.parametrize("cast, dtype", [
        (lambda m: m.to(np.float64), np.float64),
        (lambda m: m.double(), np.float64),
        (lambda m: m.double().float(), np.float32),
        (lambda m: m.to("float64"), np.float64),
    ])
    def test_dtype_casts(self, cast, dtype):
        net = Net()
        before = [p.data.copy() for p in net.parameters()]
        assert cast(net) is net
        assert net.dtype == dtype
        for p, b in zip(net.parameters(), before):
            assert p.dtype == dtype
            np.testing.assert_array_equal(p.data, b.astype(dtype))
        net.eval()
        out = net(bp.tensor(np.ones((2, 4), dtype=dtype)))
        assert out.dtype == dtype

    def test_to_int_rejected(self):
        with pytest.raises(TypeError):
            nn.Linear(2, 2).to(np.int64)

    def test_to_casts_existing_grads(self):
        m = nn.Linear(2, 2)
        F.mse_loss(m(bp.tensor([[1.0, 2.0]])), np.zeros((1, 2))).backward()
        m.double()
        assert m.weight.grad.dtype == np.float64

    def test_zero_grad(self):
        net = mlp()
        F.cross_entropy(net(bp.tensor(np.ones((2, 4), dtype=np.float32))), np.array([0, 1])).backward()
        assert all(p.grad is not None for p in net.parameters())
        net.zero_grad()
        assert all(p.grad is None for p in net.parameters())

    def test_repr(self):
        net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        r = repr(net)
        assert "Sequential" in r and "Linear" in r and "ReLU" in r
        assert "in_features=4" in r and "out_features=2" in r
        assert "15 params" in r and "8 params" in r  # 4*3+3 and 3*2+2
        assert "23 parameters" in r
        assert "(0)" in r and "(2)" in r
        assert "p=0.5" in repr(nn.Dropout(0.5))


# ================================================================================================ Linear
class TestLinear:
    def test_shapes(self):
        layer = nn.Linear(5, 3)
        assert layer.weight.shape == (3, 5) and layer.bias.shape == (3,)
        assert layer.weight.dtype == np.float32
        assert layer.weight.requires_grad and layer.bias.requires_grad
        assert layer(bp.tensor(np.ones((7, 5), dtype=np.float32))).shape == (7, 3)
        assert nn.Linear(5, 3, bias=False).bias is None
        assert [n for n, _ in nn.Linear(5, 3, bias=False).named_parameters()] == ["weight"]

    @pytest.mark.parametrize("bad", [0, -1, 2.5, True])
    def test_bad_sizes(self, bad):
        with pytest.raises(ValueError):
            nn.Linear(bad, 3)

    def test_feature_mismatch_message(self):
        with pytest.raises(ValueError, match="5"):
            nn.Linear(4, 2)(bp.tensor(np.ones((3, 5), dtype=np.float32)))

    def test_default_init_like_torch(self):
        bp.manual_seed(0)
        layer = nn.Linear(100, 200)
        bound = 1 / math.sqrt(100)
        w, b = layer.weight.data, layer.bias.data
        assert np.abs(w).max() <= bound and np.abs(b).max() <= bound
        assert np.abs(w).max() > 0.95 * bound  # it uses the whole range...
        assert abs(w.std() - bound / math.sqrt(3)) < 0.05 * bound  # ...uniformly
        assert abs(w.mean()) < 0.02 * bound

    def test_kaiming_normal(self):
        w = nn.Parameter(np.zeros((400, 300), dtype=np.float32))
        nn.init.kaiming_normal_(w, nonlinearity="relu")
        assert abs(w.data.std() - math.sqrt(2 / 300)) < 0.02 * math.sqrt(2 / 300)
        assert abs(w.data.mean()) < 0.01 * math.sqrt(2 / 300)
        nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")
        assert abs(w.data.std() - math.sqrt(2 / 400)) < 0.02 * math.sqrt(2 / 400)

    def test_xavier_uniform(self):
        w = nn.Parameter(np.zeros((400, 300), dtype=np.float32))
        nn.init.xavier_uniform_(w)
        a = math.sqrt(6 / 700)
        assert np.abs(w.data).max() <= a
        assert np.abs(w.data).max() > 0.99 * a
        assert abs(w.data.std() - a / math.sqrt(3)) < 0.02 * a

    def test_init_matches_torch_formulas(self):
        torch = pytest.importorskip("torch")
        assert nn.init.calculate_gain("relu") == pytest.approx(torch.nn.init.calculate_gain("relu"))
        assert nn.init.calculate_gain("tanh") == pytest.approx(torch.nn.init.calculate_gain("tanh"))
        assert nn.init.calculate_gain("leaky_relu", 0.2) == pytest.approx(
            torch.nn.init.calculate_gain("leaky_relu", 0.2))

    def test_init_rejects_1d(self):
        with pytest.raises(ValueError, match="2 dimensions"):
            nn.init.xavier_uniform_(nn.Parameter(np.zeros(3)))


# ============================================================================================ vs PyTorch
ACTIVATIONS = [
    ("ReLU", lambda: nn.ReLU(), lambda T: T.nn.ReLU()),
    ("LeakyReLU(0.2)", lambda: nn.LeakyReLU(0.2), lambda T: T.nn.LeakyReLU(0.2)),
    ("LeakyReLU()", lambda: nn.LeakyReLU(), lambda T: T.nn.LeakyReLU()),
    ("Sigmoid", lambda: nn.Sigmoid(), lambda T: T.nn.Sigmoid()),
    ("Tanh", lambda: nn.Tanh(), lambda T: T.nn.Tanh()),
    ("GELU", lambda: nn.GELU(), lambda T: T.nn.GELU()),
    ("GELU(tanh)", lambda: nn.GELU("tanh"), lambda T: T.nn.GELU(approximate="tanh")),
    ("Softmax(1)", lambda: nn.Softmax(1), lambda T: T.nn.Softmax(dim=1)),
    ("Softmax(0)", lambda: nn.Softmax(0), lambda T: T.nn.Softmax(dim=0)),
    ("Softmax(-1)", lambda: nn.Softmax(-1), lambda T: T.nn.Softmax(dim=-1)),
    ("LogSoftmax(1)", lambda: nn.LogSoftmax(1), lambda T: T.nn.LogSoftmax(dim=1)),
    ("Flatten", lambda: nn.Flatten(), lambda T: T.nn.Flatten()),
    ("Identity", lambda: nn.Identity(), lambda T: T.nn.Identity()),
]


@pytest.mark.parametrize("name, make, make_torch", ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_activation_modules_match_torch(name, make, make_torch):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    shape = (3, 2, 4) if name == "Flatten" else (3, 5)
    x = rng.normal(scale=2.0, size=shape)
    x[np.abs(x) < 0.05] = 0.3  # away from kinks
    w = rng.uniform(0.5, 1.5, size=shape if name != "Flatten" else (3, 8))
    ours_x = bp.tensor(x, requires_grad=True)
    their_x = torch.tensor(x, requires_grad=True)
    out, ref = make()(ours_x), make_torch(torch)(their_x)
    assert out.shape == tuple(ref.shape)
    np.testing.assert_allclose(out.data, ref.detach().numpy(), rtol=1e-10, atol=1e-12)
    (out * w).sum().backward()
    (ref * torch.tensor(w)).sum().backward()
    np.testing.assert_allclose(ours_x.grad, their_x.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_gelu_rejects_unknown_approximation():
    with pytest.raises(ValueError, match="approximate"):
        nn.GELU("fast")


# ================================================================================================ Dropout
class TestDropout:
    def test_train_mode_drops_and_scales(self):
        bp.manual_seed(0)
        d = nn.Dropout(0.25)
        x = bp.tensor(np.ones((200, 100), dtype=np.float32), requires_grad=True)
        y = d(x)
        vals = np.unique(y.data)
        np.testing.assert_allclose(vals, [0.0, 1 / 0.75], rtol=1e-6)
        zero_frac = (y.data == 0).mean()
        assert abs(zero_frac - 0.25) < 0.01
        assert abs(y.data.mean() - 1.0) < 0.02
        y.sum().backward()
        np.testing.assert_allclose(x.grad, y.data)  # d(x*mask)/dx = mask

    def test_eval_mode_is_identity(self):
        d = nn.Dropout(0.5).eval()
        x = bp.tensor(np.arange(12.0, dtype=np.float32).reshape(3, 4), requires_grad=True)
        y = d(x)
        np.testing.assert_array_equal(y.data, x.data)
        y.sum().backward()
        np.testing.assert_array_equal(x.grad, np.ones((3, 4)))

    def test_inside_model_follows_mode(self):
        net = nn.Sequential(nn.Identity(), nn.Dropout(0.5))
        x = bp.tensor(np.ones((50, 50), dtype=np.float32))
        assert (net(x).data == 0).any()
        net.eval()
        np.testing.assert_array_equal(net(x).data, x.data)
        net.train()
        assert (net(x).data == 0).any()

    def test_p_zero_is_identity(self):
        x = bp.tensor(np.ones((10, 10), dtype=np.float32))
        np.testing.assert_array_equal(nn.Dropout(0.0)(x).data, x.data)

    @pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
    def test_bad_p(self, p):
        with pytest.raises(ValueError):
            nn.Dropout(p)

    def test_reproducible_with_manual_seed(self):
        x = bp.tensor(np.ones((20, 20), dtype=np.float32))
        d = nn.Dropout(0.5)
        bp.manual_seed(7)
        a = d(x).data.copy()
        b = d(x).data.copy()
        bp.manual_seed(7)
        c = d(x).data.copy()
        assert not np.array_equal(a, b)  # a fresh mask every call
        np.testing.assert_array_equal(a, c)

    def test_keeps_dtype(self):
        x = bp.tensor(np.ones((4, 4)))
        assert nn.Dropout(0.5)(x).dtype == np.float64


# ============================================================================================ manual_seed
def test_manual_seed_reproducible_init():
    bp.manual_seed(123)
    a = Net().state_dict()
    bp.manual_seed(123)
    b = Net().state_dict()
    bp.manual_seed(124)
    c = Net().state_dict()
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert not np.array_equal(a["encoder.0.weight"], c["encoder.0.weight"])


@pytest.mark.parametrize("bad", [-1, 1.5, "0", True])
def test_manual_seed_rejects_bad_seeds(bad):
    with pytest.raises(ValueError):
        bp.manual_seed(bad)


def test_flatten_and_unflatten_take_an_empty_batch():
    """0 rows (an MPI rank's empty shard): sizes are computed, not left to NumPy's -1, which cannot infer them."""
    x = bp.tensor(np.zeros((0, 2, 4, 4), dtype=np.float32), requires_grad=True)
    flat = nn.Flatten()(x)
    assert flat.shape == (0, 32)
    assert nn.Unflatten(1, (-1, 4, 4))(flat).shape == (0, 2, 4, 4)
    flat.sum().backward()
    assert x.grad.shape == (0, 2, 4, 4)
    with pytest.raises(ValueError, match=r"size 30, which is not \(-1, 4, 4\)"):
        nn.Unflatten(1, (-1, 4, 4))(bp.tensor(np.zeros((1, 30))))
    with pytest.raises(ValueError, match="one may be -1"):
        nn.Unflatten(1, (-1, -1))

"""BatchNorm1d/2d, LayerNorm and Embedding: equality with PyTorch (values, gradients, running statistics),
train/eval behaviour, state dicts, dtypes and errors."""

import numpy as np
import pytest

import backprop as bp
from backprop import nn
from backprop.nn.embedding import Embedding, embedding
from backprop.nn.normalization import BatchNorm1d, BatchNorm2d, LayerNorm, batch_norm, layer_norm


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def close(ours, theirs, tol=1e-5):
    """Within 1e-5 (relative and absolute) of a PyTorch tensor or array."""
    ref = theirs.detach().numpy() if hasattr(theirs, "detach") else np.asarray(theirs)
    ours = ours.data if isinstance(ours, bp.Tensor) else np.asarray(ours)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=tol, atol=tol)


def pair(torch, x, dtype=np.float64):
    return bp.tensor(x.astype(dtype), requires_grad=True), torch.tensor(x.astype(dtype), requires_grad=True)


def twin_batchnorm(torch, cls, tcls, c, seed=0, **kw):
    """Our layer and PyTorch's, float64, with the same random weight and bias (when affine)."""
    ours, theirs = cls(c, dtype=np.float64, **kw), tcls(c, dtype=torch.float64, **kw)
    if ours.affine:
        rng = np.random.default_rng(seed)
        w, b = rng.uniform(0.5, 1.5, c), rng.normal(size=c)
        ours.weight.data[...], ours.bias.data[...] = w, b
        with torch.no_grad():
            theirs.weight.copy_(torch.tensor(w))
            theirs.bias.copy_(torch.tensor(b))
    return ours, theirs


def step_and_compare(torch, ours, theirs, x, g):
    """One forward/backward on both; outputs, input gradients and parameter gradients agree."""
    xo, xt = pair(torch, x)
    yo, yt = ours(xo), theirs(xt)
    close(yo, yt)
    yo.backward(g)
    yt.backward(torch.tensor(g))
    close(xo.grad, xt.grad)
    if getattr(ours, "weight", None) is not None:
        close(ours.weight.grad, theirs.weight.grad)
    if getattr(ours, "bias", None) is not None:
        close(ours.bias.grad, theirs.bias.grad)
    ours.zero_grad()
    theirs.zero_grad()


def compare_buffers(ours, theirs):
    close(ours.running_mean, theirs.running_mean)
    close(ours.running_var, theirs.running_var)
    assert ours.num_batches_tracked.dtype == np.int64
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked)


# ============================================================================================ batch norm
BN_SHAPES = [
    ("1d", [(8, 3), (5, 3), (2, 3), (16, 3)]),            # (N, C), changing batch sizes
    ("1d", [(4, 3, 5), (2, 3, 1), (3, 3, 2)]),            # (N, C, L)
    ("2d", [(4, 3, 2, 3), (1, 3, 2, 2), (2, 3, 1, 1)]),   # (N, C, H, W); N=1 is fine with H*W > 1
]


class TestBatchNormVsTorch:
    @pytest.mark.parametrize("affine", [True, False], ids=["affine", "no-affine"])
    @pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum0.1", "cumulative"])
    @pytest.mark.parametrize("kind, shapes", BN_SHAPES, ids=["NC", "NCL", "NCHW"])
    def test_training_steps_then_eval(self, torch, kind, shapes, momentum, affine):
        cls, tcls = (BatchNorm1d, torch.nn.BatchNorm1d) if kind == "1d" else (BatchNorm2d, torch.nn.BatchNorm2d)
        ours, theirs = twin_batchnorm(torch, cls, tcls, 3, momentum=momentum, affine=affine)
        rng = np.random.default_rng(1)
        for shape in shapes:
            x = rng.normal(size=shape) * rng.uniform(0.5, 3.0, size=(1, 3) + (1,) * (len(shape) - 2)) + 2.0
            step_and_compare(torch, ours, theirs, x, rng.normal(size=shape))
            compare_buffers(ours, theirs)
        assert int(ours.num_batches_tracked) == len(shapes)
        ours.eval()
        theirs.eval()
        for shape in shapes[:2]:
            step_and_compare(torch, ours, theirs, rng.normal(size=shape) + 1.0, rng.normal(size=shape))
        compare_buffers(ours, theirs)  # evaluation leaves the running statistics alone
        assert int(ours.num_batches_tracked) == len(shapes)

    def test_float32_default(self, torch):
        ours, theirs = BatchNorm2d(4), torch.nn.BatchNorm2d(4)
        assert ours.weight.dtype == ours.running_mean.dtype == ours.running_var.dtype == np.float32
        x = np.random.default_rng(2).normal(size=(3, 4, 5, 5)).astype(np.float32) * 3 + 1
        xo, xt = bp.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
        yo, yt = ours(xo), theirs(xt)
        assert yo.dtype == np.float32
        close(yo, yt, 1e-4)
        (yo * yo).sum().backward()
        (yt * yt).sum().backward()
        assert xo.grad.dtype == ours.weight.grad.dtype == np.float32
        close(xo.grad, xt.grad, 1e-3)
        close(ours.weight.grad, theirs.weight.grad, 1e-3)
        assert ours.running_mean.dtype == ours.running_var.dtype == np.float32
        close(ours.running_mean, theirs.running_mean, 1e-5)
        close(ours.running_var, theirs.running_var, 1e-5)

    def test_no_running_stats_uses_batch_statistics_in_eval(self, torch):
        ours, theirs = twin_batchnorm(torch, BatchNorm1d, torch.nn.BatchNorm1d, 3, track_running_stats=False)
        assert ours.running_mean is None and ours.num_batches_tracked is None
        assert list(ours.state_dict()) == list(theirs.state_dict()) == ["weight", "bias"]
        rng = np.random.default_rng(3)
        for mode in (True, False):
            ours.train(mode)
            theirs.train(mode)
            step_and_compare(torch, ours, theirs, rng.normal(size=(6, 3)) * 2, rng.normal(size=(6, 3)))

    def test_functional_updates_running_stats_in_place(self, torch):
        F = torch.nn.functional
        rng = np.random.default_rng(4)
        rm, rv = np.zeros(3), np.ones(3)
        trm, trv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
        w, b = rng.uniform(0.5, 1.5, 3), rng.normal(size=3)
        for n in (5, 3, 7):
            x = rng.normal(size=(n, 3, 2)) + 1
            xo, xt = pair(torch, x)
            yo = batch_norm(xo, rm, rv, bp.tensor(w), bp.tensor(b), training=True, momentum=0.3, eps=1e-3)
            yt = F.batch_norm(xt, trm, trv, torch.tensor(w), torch.tensor(b), training=True, momentum=0.3, eps=1e-3)
            close(yo, yt)
            close(rm, trm)
            close(rv, trv)
        x = rng.normal(size=(4, 3, 2))
        close(batch_norm(bp.tensor(x), rm, rv, w, b, eps=1e-3),
              F.batch_norm(torch.tensor(x), trm, trv, torch.tensor(w), torch.tensor(b), eps=1e-3))
        # Tensors as running statistics are updated in place too
        trm_bp = bp.tensor(np.zeros(3))
        batch_norm(bp.tensor(x), trm_bp, None, training=True)
        close(trm_bp, 0.1 * x.mean(axis=(0, 2)))

    def test_network_gradients_match_torch(self, torch):
        """Linear -> BatchNorm1d -> ReLU -> Linear: every parameter's gradient."""
        ours = nn.Sequential(nn.Linear(4, 6), BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2)).double()
        theirs = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.ReLU(),
                                     torch.nn.Linear(6, 2)).double()
        ours.load_state_dict(theirs.state_dict())
        x = np.random.default_rng(5).normal(size=(10, 4))
        ours(bp.tensor(x)).sum().backward()
        theirs(torch.tensor(x)).sum().backward()
        for (n, p), (m, q) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
            assert n == m
            close(p.grad, q.grad)
        compare_buffers(ours[1], theirs[1])


class TestBatchNormModule:
    def test_state_dict_names_match_torch_and_torch_state_loads(self, torch):
        ours, theirs = BatchNorm2d(3), torch.nn.BatchNorm2d(3)
        assert list(ours.state_dict()) == list(theirs.state_dict()) == [
            "weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
        theirs.train()
        rng = np.random.default_rng(6)
        for _ in range(3):
            theirs(torch.tensor(rng.normal(size=(4, 3, 2, 2)) * 2 + 1, dtype=torch.float32))
        with torch.no_grad():
            theirs.weight.mul_(1.5)
            theirs.bias.add_(0.25)
        ours.load_state_dict(theirs.state_dict())
        compare_buffers(ours, theirs)
        assert int(ours.num_batches_tracked) == 3
        ours.eval()
        theirs.eval()
        x = rng.normal(size=(2, 3, 2, 2)).astype(np.float32)
        close(ours(bp.tensor(x)), theirs(torch.tensor(x)))

    def test_state_dict_keys_in_a_network_match_torch(self, torch):
        ours = nn.Sequential(nn.Linear(4, 6), BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 6), BatchNorm1d(6, affine=False))
        theirs = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.ReLU(),
                                     torch.nn.Linear(6, 6), torch.nn.BatchNorm1d(6, affine=False))
        assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
        ours.load_state_dict(theirs.state_dict())
        ours_state = ours.state_dict()
        for k, v in theirs.state_dict().items():
            assert ours_state[k].shape == tuple(v.shape), k
        assert ours_state["4.num_batches_tracked"].dtype == np.int64

    def test_state_dict_is_a_copy_and_round_trips(self):
        bn = BatchNorm1d(2)
        bn(bp.tensor([[1.0, 2.0], [3.0, 5.0]]))
        state = bn.state_dict()
        state["running_mean"][...] = 99
        assert not (bn.running_mean == 99).any()
        other = BatchNorm1d(2)
        other.load_state_dict(bn.state_dict())
        np.testing.assert_array_equal(other.running_var, bn.running_var)
        assert int(other.num_batches_tracked) == 1

    def test_eval_switches_behaviour(self):
        net = nn.Sequential(nn.Linear(3, 4), BatchNorm1d(4))
        x = bp.tensor(np.random.default_rng(7).normal(size=(8, 3)).astype(np.float32))
        y_train = net(x).data
        np.testing.assert_allclose(y_train.mean(axis=0), 0, atol=1e-5)  # batch statistics
        bn = net[1]
        stats = bn.running_mean.copy(), bn.running_var.copy()
        net.eval()
        assert not bn.training
        y_eval = net(x).data
        assert not np.allclose(y_train, y_eval)
        np.testing.assert_array_equal(bn.running_mean, stats[0])  # eval does not update
        np.testing.assert_array_equal(bn.running_var, stats[1])
        assert int(bn.num_batches_tracked) == 1
        # with running stats at their first update, eval is the affine map with those statistics
        expected = (net[0](x).data - stats[0]) / np.sqrt(stats[1] + bn.eps)
        np.testing.assert_allclose(y_eval, expected, rtol=1e-5, atol=1e-5)
        net.train()
        net(x)
        assert int(bn.num_batches_tracked) == 2

    def test_double_casts_buffers(self):
        bn = BatchNorm2d(3).double()
        assert bn.weight.dtype == bn.running_mean.dtype == bn.running_var.dtype == np.float64
        assert bn.num_batches_tracked.dtype == np.int64
        y = bn(bp.tensor(np.random.default_rng(8).normal(size=(2, 3, 2, 2))))
        assert y.dtype == np.float64 and bn.running_mean.dtype == np.float64
        nf = BatchNorm1d(3, affine=False).double()
        assert nf.running_var.dtype == np.float64
        assert bn.float().running_mean.dtype == np.float32

    def test_one_value_per_channel_raises_in_training(self):
        bn = BatchNorm1d(3)
        with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
            bn(bp.tensor(np.ones((1, 3), dtype=np.float32)))
        assert int(bn.num_batches_tracked) == 0
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            BatchNorm2d(3)(bp.tensor(np.ones((1, 3, 1, 1), dtype=np.float32)))
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            batch_norm(bp.tensor(np.ones((1, 3))), None, None, training=True)
        bn.eval()
        assert bn(bp.tensor(np.ones((1, 3), dtype=np.float32))).shape == (1, 3)  # fine in eval

    def test_input_checks(self):
        with pytest.raises(ValueError, match="expected 2D or 3D input"):
            BatchNorm1d(3)(bp.tensor(np.ones((2, 3, 2, 2))))
        with pytest.raises(ValueError, match="expected 4D input"):
            BatchNorm2d(3)(bp.tensor(np.ones((2, 3, 2))))
        with pytest.raises(ValueError, match="4 channels"):
            BatchNorm1d(3)(bp.tensor(np.ones((2, 4))))
        with pytest.raises(ValueError, match="num_features"):
            BatchNorm1d(0)
        with pytest.raises(ValueError, match="running_mean and running_var"):
            batch_norm(bp.tensor(np.ones((2, 3))), None, None, training=False)
        with pytest.raises(ValueError, match="running_var has shape"):
            batch_norm(bp.tensor(np.ones((2, 3))), np.zeros(3), np.ones(4))

    def test_accepts_arrays_and_repr(self):
        bn = BatchNorm1d(2, momentum=None)
        assert bn(np.array([[1.0, 2.0], [3.0, 4.0]])).dtype == np.float32
        assert repr(bn) == "BatchNorm1d(2, eps=1e-05, momentum=None, affine=True, track_running_stats=True)"
        assert bn.num_parameters() == 4


# ============================================================================================ layer norm
class TestLayerNorm:
    @pytest.mark.parametrize("shape, normalized", [((4, 5), 5), ((2, 3, 4), (3, 4)), ((2, 2, 3, 4), (4,))])
    @pytest.mark.parametrize("affine, bias", [(True, True), (True, False), (False, True)],
                             ids=["affine", "no-bias", "no-affine"])
    def test_matches_torch(self, torch, shape, normalized, affine, bias):
        ours = LayerNorm(normalized, eps=1e-4, elementwise_affine=affine, bias=bias, dtype=np.float64)
        theirs = torch.nn.LayerNorm(normalized, eps=1e-4, elementwise_affine=affine, bias=bias, dtype=torch.float64)
        assert list(ours.state_dict()) == list(theirs.state_dict())
        rng = np.random.default_rng(9)
        if affine:
            w = rng.uniform(0.5, 1.5, ours.weight.shape)
            ours.weight.data[...] = w
            with torch.no_grad():
                theirs.weight.copy_(torch.tensor(w))
                if bias:
                    theirs.bias.copy_(torch.tensor(rng.normal(size=ours.bias.shape)))
            ours.load_state_dict(theirs.state_dict())
        for _ in range(2):  # same in both modes
            step_and_compare(torch, ours, theirs, rng.normal(size=shape) * 3 + 1, rng.normal(size=shape))
            ours.eval()
            theirs.eval()

    def test_functional_and_checks(self, torch):
        x = np.random.default_rng(10).normal(size=(3, 4))
        close(layer_norm(bp.tensor(x), 4), torch.nn.functional.layer_norm(torch.tensor(x), (4,)))
        with pytest.raises(ValueError, match="does not end with normalized_shape"):
            layer_norm(bp.tensor(x), (3,))
        with pytest.raises(ValueError, match="weight has shape"):
            layer_norm(bp.tensor(x), (4,), weight=np.ones(3))
        with pytest.raises(ValueError, match="normalized_shape"):
            LayerNorm(())

    def test_defaults_and_dtype(self):
        ln = LayerNorm((2, 3))
        assert ln.weight.shape == ln.bias.shape == (2, 3) and ln.weight.dtype == np.float32
        np.testing.assert_array_equal(ln.weight.data, 1)
        np.testing.assert_array_equal(ln.bias.data, 0)
        y = ln(np.random.default_rng(11).normal(size=(4, 2, 3)))
        assert y.dtype == np.float32
        np.testing.assert_allclose(y.data.reshape(4, -1).mean(axis=1), 0, atol=1e-6)
        assert ln.double()(bp.tensor(np.ones((1, 2, 3)))).dtype == np.float64
        assert LayerNorm(3, bias=False).bias is None


# ============================================================================================= embedding
class TestEmbedding:
    def test_matches_torch_with_repeats_and_padding(self, torch):
        theirs = torch.nn.Embedding(6, 3, padding_idx=1, dtype=torch.float64)
        ours = Embedding(6, 3, padding_idx=1, dtype=np.float64)
        assert list(ours.state_dict()) == list(theirs.state_dict()) == ["weight"]
        ours.load_state_dict(theirs.state_dict())
        idx = np.array([[0, 1, 2, 2], [5, 1, 0, 2]])
        yo, yt = ours(idx), theirs(torch.tensor(idx))
        assert yo.shape == (2, 4, 3)
        close(yo, yt)
        g = np.random.default_rng(12).normal(size=(2, 4, 3))
        yo.backward(g)
        yt.backward(torch.tensor(g))
        close(ours.weight.grad, theirs.weight.grad)
        np.testing.assert_array_equal(ours.weight.grad[1], 0)  # padding gets no gradient
        np.testing.assert_allclose(ours.weight.grad[2], g[0, 2] + g[0, 3] + g[1, 3])  # repeats add up
        np.testing.assert_array_equal(ours.weight.grad[[3, 4]], 0)  # unused rows

    def test_init_and_padding_row(self):
        bp.manual_seed(0)
        a = Embedding(2000, 16, padding_idx=-1)
        assert a.padding_idx == 1999 and a.weight.dtype == np.float32
        np.testing.assert_array_equal(a.weight.data[-1], 0)
        w = a.weight.data[:-1]
        assert abs(w.mean()) < 0.02 and abs(w.std() - 1) < 0.02  # N(0, 1) as in PyTorch
        bp.manual_seed(0)
        np.testing.assert_array_equal(Embedding(2000, 16, padding_idx=-1).weight.data, a.weight.data)

    def test_functional_and_tensor_indices(self, torch):
        w = np.random.default_rng(13).normal(size=(4, 2))
        wo, wt = pair(torch, w)
        idx = np.array([3, 3, 0])
        yo = embedding(bp.Tensor(idx), wo)
        yt = torch.nn.functional.embedding(torch.tensor(idx), wt)
        close(yo, yt)
        yo.sum().backward()
        yt.sum().backward()
        close(wo.grad, wt.grad)
        assert embedding(np.array(2), wo).shape == (2,)
        assert embedding(np.zeros((0,), dtype=np.int64), wo).shape == (0, 2)

    def test_bad_indices(self):
        emb = Embedding(5, 2)
        with pytest.raises(IndexError, match=r"index 5 .*num_embeddings=5"):
            emb(np.array([0, 5]))
        with pytest.raises(IndexError, match=r"index -1 .*num_embeddings=5"):
            emb(np.array([[-1, 2]]))
        with pytest.raises(TypeError, match="integers"):
            emb(np.array([0.0, 1.0]))
        with pytest.raises(ValueError, match="padding_idx"):
            Embedding(5, 2, padding_idx=5)
        with pytest.raises(ValueError, match="embedding_dim"):
            Embedding(5, 0)

    def test_from_pretrained_and_repr(self):
        emb = Embedding.from_pretrained(np.eye(3), freeze=True)
        assert not emb.weight.requires_grad and emb.num_embeddings == 3
        np.testing.assert_array_equal(emb(np.array([2])).data, [[0, 0, 1]])
        trainable = Embedding.from_pretrained(np.eye(3), freeze=False)
        trainable(np.array([0, 0])).sum().backward()
        np.testing.assert_array_equal(trainable.weight.grad[0], [2, 2, 2])
        assert repr(Embedding(4, 2, padding_idx=0)) == "Embedding(4, 2, padding_idx=0)"

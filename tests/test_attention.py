"""MultiheadAttention, TransformerEncoderLayer/TransformerEncoder and the positional encoding against PyTorch.

Values and gradients (of query, key, value, float masks and every weight) equal PyTorch's within 1e-6 in
float64 over a grid of sizes, layouts and masks; weights move both ways through safetensors; the ONNX graphs
(masks as graph inputs) agree with onnxruntime within 1e-5; a captured training step equals the eager one;
and a one-layer transformer learns to reverse a sequence. The registry's generic checks (save/load, ONNX,
PyTorch on the registered examples) run in tests/test_layer_registry.py.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

import backprop as bp
from backprop import io as bio
from backprop import nn
from backprop.nn.attention import masked_softmax

torch = pytest.importorskip("torch")

F = nn.functional
TOL = {"rtol": 1e-6, "atol": 1e-9}
# NOTE: PyTorch warns when a bool key_padding_mask meets a float attn_mask; backprop combines them silently
pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched")


# ------------------------------------------------------------------------------------------- helpers
def _pair(make_ours, make_theirs, seed: int = 0):
    """Our module and PyTorch's, float64, with the same (random, non-default) weights."""
    bp.manual_seed(seed)
    ours = make_ours().double()
    theirs = make_theirs().double()
    rng = np.random.default_rng(seed)
    state = {k: v + rng.uniform(-0.3, 0.3, size=v.shape) for k, v in ours.state_dict().items()}
    ours.load_state_dict(state)
    assert list(theirs.state_dict()) == list(state)  # the same names, in the same order
    theirs.load_state_dict({k: torch.tensor(v) for k, v in state.items()})
    return ours, theirs


def _mask(rng, shape, kind: str, ensure_rows: bool = True):
    """A bool mask (True: not allowed) or a float mask (-inf there, small values elsewhere); with
    ``ensure_rows`` the last axis always keeps its first position allowed (no row fully masked)."""
    m = rng.random(shape) < 0.35
    if ensure_rows:
        m[..., 0] = False
    if kind == "bool":
        return m
    return np.where(m, -np.inf, rng.uniform(-0.5, 0.5, shape))


def _compare_grads(ours_named, theirs_named, what=""):
    theirs = dict(theirs_named)
    for name, p in ours_named:
        ref = theirs[name].grad
        assert p.grad is not None and ref is not None, name
        np.testing.assert_allclose(p.grad, ref.numpy(), **TOL, err_msg=f"{what}{name}")


def _run_mha(ours, theirs, q, k, v, self_attn=False, **kw):
    """Forward and backward through both; returns (outputs, weights) of ours and theirs (weights may be None)."""
    tkw = {key: torch.tensor(val) if isinstance(val, np.ndarray) else val for key, val in kw.items()}
    bq, tq = bp.tensor(q, requires_grad=True), torch.tensor(q, requires_grad=True)
    if self_attn:
        bk = bv = bq
        tk = tv = tq
    else:
        bk, bv = bp.tensor(k, requires_grad=True), bp.tensor(v, requires_grad=True)
        tk, tv = torch.tensor(k, requires_grad=True), torch.tensor(v, requires_grad=True)
    out, w = ours(bq, bk, bv, **kw)
    ref, rw = theirs(tq, tk, tv, **tkw)
    np.testing.assert_allclose(out.data, ref.detach().numpy(), **TOL)
    assert (w is None) == (rw is None)
    rng = np.random.default_rng(7)
    g_out = rng.uniform(0.5, 1.5, out.shape)
    loss, tloss = (out * bp.tensor(g_out)).sum(), (ref * torch.tensor(g_out)).sum()
    if w is not None:
        np.testing.assert_allclose(w.data, rw.detach().numpy(), **TOL)
        g_w = rng.uniform(0.5, 1.5, w.shape)
        loss, tloss = loss + (w * bp.tensor(g_w)).sum(), tloss + (rw * torch.tensor(g_w)).sum()
    loss.backward()
    tloss.backward()
    leaves = [(bq, tq)] if self_attn else [(bq, tq), (bk, tk), (bv, tv)]
    for i, (a, b) in enumerate(leaves):
        np.testing.assert_allclose(a.grad, b.grad.numpy(), **TOL, err_msg=f"gradient of input {i}")
    _compare_grads(ours.named_parameters(), theirs.named_parameters())
    return out, w, ref, rw


# ------------------------------------------------------------------------------------------ the grid
MASKS = ["none", "kpm-bool", "kpm-float", "2d-bool", "2d-float", "3d-bool", "3d-float", "both", "causal",
         "causal+kpm"]
SIZES = [(8, 2, None, None), (6, 3, None, None), (4, 1, None, None), (8, 4, 5, 7)]
GRID = [
    pytest.param(e, h, kd, vd, bf, masks, id=f"E{e}H{h}{'-kv' if kd else ''}-{'bf' if bf else 'LNE'}-{masks}")
    for (e, h, kd, vd), bf, masks in itertools.product(SIZES, [False, True], MASKS)
]


def _grid_masks(rng, masks, n, h, tgt, src, batched=True):
    kw = {}
    if masks in ("kpm-bool", "kpm-float", "both", "causal+kpm"):
        kw["key_padding_mask"] = _mask(rng, (n, src) if batched else (src,), "float" if masks == "kpm-float" else "bool")
    if masks in ("2d-bool", "2d-float", "both"):
        kw["attn_mask"] = _mask(rng, (tgt, src), "float" if masks == "2d-float" else "bool")
    if masks in ("3d-bool", "3d-float"):
        kw["attn_mask"] = _mask(rng, (n * h if batched else h, tgt, src), "float" if masks == "3d-float" else "bool")
    return kw


@pytest.mark.parametrize("e, h, kdim, vdim, batch_first, masks", GRID)
def test_multihead_attention_matches_torch(e, h, kdim, vdim, batch_first, masks):
    ours, theirs = _pair(lambda: nn.MultiheadAttention(e, h, batch_first=batch_first, kdim=kdim, vdim=vdim),
                         lambda: torch.nn.MultiheadAttention(e, h, batch_first=batch_first, kdim=kdim, vdim=vdim))
    rng = np.random.default_rng(1)
    n, tgt, src = 3, 4, 5
    if masks.startswith("causal"):
        src = tgt  # NOTE: PyTorch's hint: the mask it is given must be the causal one
    layout = (lambda length, d: (n, length, d)) if batch_first else (lambda length, d: (length, n, d))
    q = rng.standard_normal(layout(tgt, e))
    k = rng.standard_normal(layout(src, kdim or e))
    v = rng.standard_normal(layout(src, vdim or e))
    kw = _grid_masks(rng, masks, n, h, tgt, src)
    if masks.startswith("causal"):
        ours_kw = {**kw, "is_causal": True}
        torch_kw = {**kw, "is_causal": True, "attn_mask": torch.nn.Transformer.generate_square_subsequent_mask(
            tgt, dtype=torch.float64).numpy()}
        bq = bp.tensor(q, requires_grad=True)
        out, w = ours(bq, bp.tensor(k), bp.tensor(v), **ours_kw)
        ref, rw = theirs(torch.tensor(q), torch.tensor(k), torch.tensor(v),
                         **{a: torch.tensor(b) if isinstance(b, np.ndarray) else b for a, b in torch_kw.items()})
        np.testing.assert_allclose(out.data, ref.detach().numpy(), **TOL)
        np.testing.assert_allclose(w.data, rw.detach().numpy(), **TOL)
        assert np.all(w.data[:, np.triu_indices(tgt, 1)[0], np.triu_indices(tgt, 1)[1]] == 0)
        return
    _run_mha(ours, theirs, q, k, v, **kw)


@pytest.mark.parametrize("need_weights, average", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("masks", ["none", "both", "3d-float"])
def test_self_attention_and_weight_options(need_weights, average, batch_first, masks):
    """q is k is v (one projection GEMM); the weights averaged, per head, or not returned."""
    ours, theirs = _pair(lambda: nn.MultiheadAttention(8, 2, batch_first=batch_first),
                         lambda: torch.nn.MultiheadAttention(8, 2, batch_first=batch_first), seed=3)
    rng = np.random.default_rng(2)
    n, length = 2, 5
    x = rng.standard_normal((n, length, 8) if batch_first else (length, n, 8))
    kw = _grid_masks(rng, masks, n, 2, length, length)
    _, w, _, _ = _run_mha(ours, theirs, x, None, None, self_attn=True, need_weights=need_weights,
                          average_attn_weights=average, **kw)
    if need_weights:
        assert w.shape == ((n, length, length) if average else (n, 2, length, length))


@pytest.mark.parametrize("masks", ["none", "kpm-bool", "2d-float", "3d-bool", "both"])
@pytest.mark.parametrize("kv", [False, True])
def test_unbatched_inputs(masks, kv):
    kdim = 5 if kv else None
    ours, theirs = _pair(lambda: nn.MultiheadAttention(6, 3, kdim=kdim, vdim=kdim),
                         lambda: torch.nn.MultiheadAttention(6, 3, kdim=kdim, vdim=kdim), seed=4)
    rng = np.random.default_rng(3)
    tgt, src = 4, 3
    q, k, v = rng.standard_normal((tgt, 6)), rng.standard_normal((src, kdim or 6)), rng.standard_normal((src, kdim or 6))
    kw = _grid_masks(rng, masks, 1, 3, tgt, src, batched=False)
    for average in (True, False):
        ours.zero_grad()
        theirs.zero_grad()
        out, w, _, _ = _run_mha(ours, theirs, q, k, v, average_attn_weights=average, **kw)
        assert out.shape == (tgt, 6) and w.shape == ((tgt, src) if average else (3, tgt, src))


def test_no_bias_and_key_value_defaults():
    ours, theirs = _pair(lambda: nn.MultiheadAttention(6, 2, bias=False, batch_first=True),
                         lambda: torch.nn.MultiheadAttention(6, 2, bias=False, batch_first=True), seed=5)
    assert [n for n, _ in ours.named_parameters()] == ["in_proj_weight", "out_proj.weight"]
    x = np.random.default_rng(4).standard_normal((2, 3, 6))
    _run_mha(ours, theirs, x, x, x)
    # NOTE: an extension of PyTorch's signature: key and value default to the query (self-attention)
    np.testing.assert_array_equal(ours(bp.tensor(x))[0].data, ours(bp.tensor(x), bp.tensor(x), bp.tensor(x))[0].data)


def test_a_fully_masked_row_gives_zeros_as_pytorchs_sdpa():
    """Every key of sequence 0 masked: weights 0 and the output the out_proj bias; PyTorch's need_weights=False
    path (scaled_dot_product_attention) agrees, its need_weights=True path gives NaN there."""
    ours, theirs = _pair(lambda: nn.MultiheadAttention(4, 2), lambda: torch.nn.MultiheadAttention(4, 2), seed=6)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 2, 4))
    kpm = np.array([[True, True, True], [False, True, False]])
    bx, tx = bp.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    out, w = ours(bx, key_padding_mask=kpm)
    ref, _ = theirs(tx, tx, tx, key_padding_mask=torch.tensor(kpm), need_weights=False)
    np.testing.assert_allclose(out.data, ref.detach().numpy(), **TOL)
    assert np.all(w.data[0] == 0) and np.all(np.isfinite(out.data))
    np.testing.assert_allclose(out.data[:, 0], np.broadcast_to(ours.out_proj.bias.data, (3, 4)), **TOL)
    assert torch.isnan(theirs(tx, tx, tx, key_padding_mask=torch.tensor(kpm))[0][:, 0]).all()
    g = rng.uniform(0.5, 1.5, out.shape)
    (out * bp.tensor(g)).sum().backward()
    (ref * torch.tensor(g)).sum().backward()
    np.testing.assert_allclose(bx.grad, tx.grad.numpy(), **TOL)
    _compare_grads(ours.named_parameters(), theirs.named_parameters())
    assert np.all(np.isfinite(bx.grad))


def test_float_masks_that_require_grad_get_their_gradient():
    ours, theirs = _pair(lambda: nn.MultiheadAttention(4, 2, batch_first=True),
                         lambda: torch.nn.MultiheadAttention(4, 2, batch_first=True), seed=7)
    rng = np.random.default_rng(6)
    x, m = rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 3, 3))
    bm, tm = bp.tensor(m, requires_grad=True), torch.tensor(m, requires_grad=True)
    out, _ = ours(bp.tensor(x), attn_mask=bm)
    ref, _ = theirs(torch.tensor(x), torch.tensor(x), torch.tensor(x), attn_mask=tm)
    np.testing.assert_allclose(out.data, ref.detach().numpy(), **TOL)
    out.sum().backward()
    ref.sum().backward()
    np.testing.assert_allclose(bm.grad, tm.grad.numpy(), **TOL)


def test_masked_softmax_is_stable():
    x = bp.tensor(np.array([[1e4, -1e4, 0.0], [-np.inf, -np.inf, -np.inf], [3.0, 3.0, 3.0]]), requires_grad=True)
    y = masked_softmax(x)
    np.testing.assert_allclose(y.data, [[1, 0, 0], [0, 0, 0], [1 / 3, 1 / 3, 1 / 3]])
    y.sum().backward()
    assert np.all(np.isfinite(x.grad))
    assert bp.gradcheck(lambda t: masked_softmax(t, (np.array([False, True, False, False]),)),
                        [np.random.default_rng(0).standard_normal((3, 4))])


def test_dropout_on_the_weights_uses_the_seeded_generator():
    mha = nn.MultiheadAttention(8, 2, dropout=0.5, batch_first=True)
    x = bp.tensor(np.random.default_rng(0).standard_normal((2, 6, 8)).astype(np.float32))
    runs = []
    for seed in (1, 1, 2):
        bp.manual_seed(seed)
        runs.append(mha(x, average_attn_weights=False))
    np.testing.assert_array_equal(runs[0][0].data, runs[1][0].data)
    assert not np.array_equal(runs[0][0].data, runs[2][0].data)
    w = runs[0][1].data  # the weights after dropout: zeros, and the kept ones scaled by 1 / (1 - p)
    assert 0.3 < np.mean(w == 0) < 0.7
    mha.eval()
    out_a, w_eval = mha(x)
    np.testing.assert_allclose(w_eval.data.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(out_a.data, mha(x)[0].data)


def test_clear_errors():
    with pytest.raises(ValueError, match=r"embed_dim \(10\) must be divisible by num_heads \(3\)"):
        nn.MultiheadAttention(10, 3)
    with pytest.raises(ValueError, match="dropout must be a number in"):
        nn.MultiheadAttention(4, 2, dropout=1.0)
    mha = nn.MultiheadAttention(4, 2)
    x = bp.tensor(np.zeros((3, 2, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(2, 3\)"):
        mha(x, key_padding_mask=np.zeros((3, 2), dtype=bool))
    with pytest.raises(ValueError, match=r"2-D attn_mask must have shape \(L, S\) = \(3, 3\)"):
        mha(x, attn_mask=np.zeros((3, 4), dtype=bool))
    with pytest.raises(ValueError, match=r"3-D attn_mask must have shape \(N \* num_heads, L, S\) = \(4, 3, 3\)"):
        mha(x, attn_mask=np.zeros((2, 3, 3), dtype=bool))
    with pytest.raises(TypeError, match="attn_mask must be a bool mask"):
        mha(x, attn_mask=np.zeros((3, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="query has 5 features"):
        mha(bp.tensor(np.zeros((3, 2, 5), dtype=np.float32)))
    with pytest.raises(ValueError, match="unbatched 2-D"):
        mha(bp.tensor(np.zeros((4,), dtype=np.float32)))
    with pytest.raises(ValueError, match="activation must be 'relu' or 'gelu'"):
        nn.TransformerEncoderLayer(4, 2, activation="tanh")


# ------------------------------------------------------------------------------------- encoder layer
ENC_GRID = [
    pytest.param(norm_first, act, bf, masks, id=f"{'pre' if norm_first else 'post'}-{act}-{'bf' if bf else 'LNE'}-{masks}")
    for norm_first, act, bf, masks in itertools.product(
        [False, True], ["relu", "gelu"], [False, True], ["none", "kpm", "causal", "src_mask+kpm"])
]


def _encoder_inputs(rng, bf, masks, n=3, length=5, d=8):
    x = rng.standard_normal((n, length, d) if bf else (length, n, d))
    kw, tkw = {}, {}
    if masks in ("kpm", "src_mask+kpm"):
        kpm = _mask(rng, (n, length), "bool")
        kw["src_key_padding_mask"] = kpm
        tkw["src_key_padding_mask"] = torch.tensor(kpm)
    if masks == "src_mask+kpm":
        m = _mask(rng, (length, length), "float")
        kw["src_mask"] = m
        tkw["src_mask"] = torch.tensor(m)
    if masks == "causal":  # NOTE: PyTorch needs the mask with its is_causal hint; backprop makes it
        kw["is_causal"] = True
        tkw.update(is_causal=True, src_mask=torch.nn.Transformer.generate_square_subsequent_mask(
            length, dtype=torch.float64))
    return x, kw, tkw


@pytest.mark.parametrize("norm_first, activation, batch_first, masks", ENC_GRID)
def test_encoder_layer_matches_torch(norm_first, activation, batch_first, masks):
    args = {"dim_feedforward": 16, "dropout": 0.1, "activation": activation, "batch_first": batch_first,
            "norm_first": norm_first}
    ours, theirs = _pair(lambda: nn.TransformerEncoderLayer(8, 2, **args),
                         lambda: torch.nn.TransformerEncoderLayer(8, 2, **args), seed=8)
    ours.eval()
    theirs.eval()
    rng = np.random.default_rng(9)
    x, kw, tkw = _encoder_inputs(rng, batch_first, masks)
    bx, tx = bp.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    out, ref = ours(bx, **kw), theirs(tx, **tkw)
    np.testing.assert_allclose(out.data, ref.detach().numpy(), **TOL)
    g = rng.uniform(0.5, 1.5, out.shape)
    (out * bp.tensor(g)).sum().backward()
    (ref * torch.tensor(g)).sum().backward()
    np.testing.assert_allclose(bx.grad, tx.grad.numpy(), **TOL)
    _compare_grads(ours.named_parameters(), theirs.named_parameters())


def test_encoder_layer_unbatched_and_without_bias():
    args = {"dim_feedforward": 12, "dropout": 0.0, "bias": False, "layer_norm_eps": 1e-3, "norm_first": True}
    ours, theirs = _pair(lambda: nn.TransformerEncoderLayer(6, 3, **args),
                         lambda: torch.nn.TransformerEncoderLayer(6, 3, **args), seed=9)
    x = np.random.default_rng(10).standard_normal((4, 6))
    kpm = np.array([False, True, False, False])
    bx, tx = bp.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    out, ref = ours(bx, src_key_padding_mask=kpm), theirs(tx, src_key_padding_mask=torch.tensor(kpm))
    np.testing.assert_allclose(out.data, ref.detach().numpy(), **TOL)
    out.sum().backward()
    ref.sum().backward()
    np.testing.assert_allclose(bx.grad, tx.grad.numpy(), **TOL)
    _compare_grads(ours.named_parameters(), theirs.named_parameters())


@pytest.mark.parametrize("norm", [False, True])
def test_encoder_stack_matches_torch(norm):
    def ours_make():
        return nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 3,
                                     norm=nn.LayerNorm(8) if norm else None)

    def theirs_make():
        return torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 3,
                                           norm=torch.nn.LayerNorm(8) if norm else None, enable_nested_tensor=False)

    ours, theirs = _pair(ours_make, theirs_make, seed=10)
    assert "layers.2.self_attn.in_proj_weight" in ours.state_dict()
    ours.eval()
    theirs.eval()
    rng = np.random.default_rng(11)
    x, kw, tkw = _encoder_inputs(rng, True, "src_mask+kpm")
    kw["mask"], tkw["mask"] = kw.pop("src_mask"), tkw.pop("src_mask")
    bx, tx = bp.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    out, ref = ours(bx, **kw), theirs(tx, **tkw)
    np.testing.assert_allclose(out.data, ref.detach().numpy(), **TOL)
    out.sum().backward()
    ref.sum().backward()
    np.testing.assert_allclose(bx.grad, tx.grad.numpy(), **TOL)
    _compare_grads(ours.named_parameters(), theirs.named_parameters())


def test_encoder_clones_its_layer_as_pytorch_does():
    layer = nn.TransformerEncoderLayer(4, 2, 8)
    enc = nn.TransformerEncoder(layer, 2)
    a, b = enc.layers[0].linear1.weight, enc.layers[1].linear1.weight
    assert a is not b and a is not layer.linear1.weight
    np.testing.assert_array_equal(a.data, b.data)


# ------------------------------------------------------------------------------- safetensors round trips
CONFIGS = {
    "mha": (lambda: nn.MultiheadAttention(8, 2, batch_first=True),
            lambda: torch.nn.MultiheadAttention(8, 2, batch_first=True)),
    "mha-kv": (lambda: nn.MultiheadAttention(8, 4, kdim=8, vdim=5, batch_first=True),
               lambda: torch.nn.MultiheadAttention(8, 4, kdim=8, vdim=5, batch_first=True)),
    "encoder-layer": (lambda: nn.TransformerEncoderLayer(8, 2, 16, activation="gelu", batch_first=True, norm_first=True),
                      lambda: torch.nn.TransformerEncoderLayer(8, 2, 16, activation="gelu", batch_first=True,
                                                               norm_first=True)),
    "encoder": (lambda: nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 2, nn.LayerNorm(8)),
                lambda: torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 2,
                                                    torch.nn.LayerNorm(8), enable_nested_tensor=False)),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_safetensors_round_trip_with_torch(name, tmp_path):
    from safetensors.torch import load_file, save_file

    make_ours, make_theirs = CONFIGS[name]
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 5, 8)).astype(np.float32)

    def run_ours(m):
        m.eval()
        with bp.no_grad():
            if name == "mha-kv":
                return m(bp.tensor(x), bp.tensor(x), bp.tensor(x[..., :5]))[0].data
            y = m(bp.tensor(x))
            return (y[0] if isinstance(y, tuple) else y).data

    def run_theirs(m):
        m.eval()
        t = torch.tensor(x)
        with torch.enable_grad():  # NOTE: grad on: PyTorch's inference fast path is not the reference
            if name.startswith("mha"):
                return m(t, t, t[..., :5] if name == "mha-kv" else t)[0].detach().numpy()
            return m(t.requires_grad_()).detach().numpy()

    # backprop -> file -> PyTorch
    bp.manual_seed(0)
    ours = make_ours()
    for p in ours.parameters():
        p.data += rng.uniform(-0.3, 0.3, p.shape).astype(np.float32)
    bio.save(ours, tmp_path / "ours.safetensors")
    theirs = make_theirs()
    theirs.load_state_dict(load_file(str(tmp_path / "ours.safetensors")))
    np.testing.assert_allclose(run_theirs(theirs), run_ours(ours), rtol=1e-5, atol=1e-5)
    loaded = bio.load(tmp_path / "ours.safetensors")  # and the architecture comes back too
    np.testing.assert_array_equal(run_ours(loaded), run_ours(ours))
    # PyTorch -> file -> backprop
    theirs = make_theirs()
    save_file(theirs.state_dict(), str(tmp_path / "theirs.safetensors"))
    ours = bio.load_weights(make_ours(), tmp_path / "theirs.safetensors")
    np.testing.assert_allclose(run_ours(ours), run_theirs(theirs), rtol=1e-5, atol=1e-5)


def test_a_crafted_encoder_config_is_checked_before_anything_is_built():
    def build(layer, max_weights=10_000):
        return bio.model_from_config({"type": "TransformerEncoder", "args": {"encoder_layer": layer, "num_layers": 2}},
                                     max_weights=max_weights)

    with pytest.raises(ValueError, match="needs at least"):
        build({"d_model": 4096, "nhead": 1})
    with pytest.raises(ValueError, match="argument 'd_model': expected an integer"):
        build({"d_model": "x", "nhead": 1})
    with pytest.raises(ValueError, match="takes no argument 'colour'"):
        build({"d_model": 4, "nhead": 2, "dim_feedforward": 8, "colour": 1})
    with pytest.raises(ValueError, match=r"lacks \['d_model'\]"):
        build({"nhead": 2})
    assert build({"d_model": 4, "nhead": 2, "dim_feedforward": 8}).layers[1].linear1.weight.shape == (8, 4)


# --------------------------------------------------------------------------------------------- ONNX
def _ort(path):
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("opset", [13, 17, 18])
@pytest.mark.parametrize("case", ["kpm+3d", "float-masks", "causal", "unbatched", "cross-kv"])
def test_onnx_attention_with_masks_as_inputs(case, opset, tmp_path):
    pytest.importorskip("onnx")
    import backprop.onnx as bonnx

    rng = np.random.default_rng(13)
    bp.manual_seed(1)
    bf = case != "causal"
    kdim = 5 if case == "cross-kv" else None
    mha = nn.MultiheadAttention(8, 2, batch_first=bf, kdim=kdim, vdim=kdim)
    for p in mha.parameters():
        p.data += rng.uniform(-0.3, 0.3, p.shape).astype(np.float32)
    n, src = 3, 6

    def sample(batch, tgt=4):
        shape = (lambda length, d: (batch, length, d)) if bf else (lambda length, d: (length, batch, d))
        if case == "unbatched":
            shape = lambda length, d: (length, d)
        q = rng.standard_normal(shape(tgt, 8)).astype(np.float32)
        k = rng.standard_normal(shape(src, kdim or 8)).astype(np.float32)
        args = {"query": q, "key": k, "value": k.copy()}
        if case == "kpm+3d":
            args |= {"key_padding_mask": _mask(rng, (batch, src), "bool"),
                     "attn_mask": _mask(rng, (batch * 2, tgt, src), "bool")}
        elif case == "float-masks":
            args |= {"key_padding_mask": _mask(rng, (batch, src), "float").astype(np.float32),
                     "attn_mask": _mask(rng, (tgt, src), "float").astype(np.float32)}
        elif case == "unbatched":
            args |= {"key_padding_mask": _mask(rng, (src,), "bool"), "attn_mask": _mask(rng, (2, tgt, src), "bool")}
        elif case == "causal":
            args = {"query": q, "is_causal": True, "average_attn_weights": False}
        return args

    example = sample(n)
    path = tmp_path / "mha.onnx"
    bonnx.export(mha, path, example, opset=opset, output_name=("attn_output", "attn_weights"))
    sess = _ort(path)
    assert [i.name for i in sess.get_inputs()] == [k for k, v in example.items() if isinstance(v, np.ndarray)]
    mha.eval()
    # NOTE: the first dimension is the dynamic one: the batch, or the sequence length for (L, N, E) and (L, E)
    # (unbatched: the length is also a fixed dimension of its masks, so only new values)
    again = sample(n) if case == "unbatched" else sample(n + 2) if bf else sample(n, tgt=7)
    for args in (example, again):
        feeds = {k: v for k, v in args.items() if isinstance(v, np.ndarray)}
        got_out, got_w = sess.run(None, feeds)
        out, w = mha(**{k: bp.tensor(v) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v
                        for k, v in args.items()})
        np.testing.assert_allclose(got_out, out.data, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got_w, w.data, rtol=1e-5, atol=1e-5)


def test_onnx_fully_masked_row_and_one_output(tmp_path):
    pytest.importorskip("onnx")
    import backprop.onnx as bonnx

    mha = nn.MultiheadAttention(4, 2, batch_first=True)
    x = np.random.default_rng(14).standard_normal((2, 3, 4)).astype(np.float32)
    kpm = np.array([[True, True, True], [False, True, False]])
    path = tmp_path / "m.onnx"
    bonnx.export(mha, path, {"query": x, "key_padding_mask": kpm, "need_weights": False})
    sess = _ort(path)
    (got,) = sess.run(None, {"query": x, "key_padding_mask": kpm})
    mha.eval()
    np.testing.assert_allclose(got, mha(bp.tensor(x), key_padding_mask=kpm)[0].data, rtol=1e-5, atol=1e-5)
    assert np.all(np.isfinite(got))


@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("norm_first, activation, bf", [(False, "relu", False), (True, "gelu", True)])
def test_onnx_encoder_with_masks(norm_first, activation, bf, opset, tmp_path):
    pytest.importorskip("onnx")
    import backprop.onnx as bonnx

    rng = np.random.default_rng(15)
    bp.manual_seed(2)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, activation=activation, batch_first=bf,
                                                           norm_first=norm_first), 2, nn.LayerNorm(8))
    for p in enc.parameters():
        p.data += rng.uniform(-0.3, 0.3, p.shape).astype(np.float32)
    n, length = 3, 5

    def sample(batch):
        x = rng.standard_normal((batch, length, 8) if bf else (length, batch, 8)).astype(np.float32)
        return {"src": x, "src_key_padding_mask": _mask(rng, (batch, length), "bool"), "is_causal": True}

    example = sample(n)
    path = tmp_path / "enc.onnx"
    bonnx.export(enc, path, example, opset=opset)
    sess = _ort(path)
    enc.eval()
    for args in (example, sample(n + 1) if bf else example):
        (got,) = sess.run(None, {k: v for k, v in args.items() if isinstance(v, np.ndarray)})
        want = enc(bp.tensor(args["src"]), src_key_padding_mask=args["src_key_padding_mask"], is_causal=True).data
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_onnx_a_model_with_an_encoder_in_a_sequential(tmp_path):
    """Embedding -> PositionalEncoding -> TransformerEncoder -> Linear: one input, one output, any batch."""
    pytest.importorskip("onnx")
    import backprop.onnx as bonnx

    bp.manual_seed(3)
    model = nn.Sequential(nn.Embedding(10, 8), nn.PositionalEncoding(8, max_len=16, batch_first=True),
                          nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 2),
                          nn.Linear(8, 10))
    tokens = np.random.default_rng(16).integers(0, 10, (2, 7))
    path = tmp_path / "model.onnx"
    bonnx.export(model, path, tokens)
    sess = _ort(path)
    model.eval()
    for batch in (tokens, np.random.default_rng(17).integers(0, 10, (5, 7))):
        (got,) = sess.run(None, {"input": batch})
        np.testing.assert_allclose(got, model(batch).data, rtol=1e-5, atol=1e-5)


def test_onnx_refusals_name_the_problem(tmp_path):
    pytest.importorskip("onnx")
    import backprop.onnx as bonnx

    mha = nn.MultiheadAttention(4, 2)
    with pytest.raises(ValueError, match=r"MultiheadAttention.*expected a query of shape"):
        bonnx.export(nn.Sequential(mha), tmp_path / "m.onnx", np.zeros((2, 3, 3, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="key_padding_mask must be a graph input"):
        bonnx.export(mha, tmp_path / "m.onnx", {"query": np.zeros((3, 2, 4), dtype=np.float32),
                                                "key_padding_mask": [[False, True, False]] * 2})
    with pytest.raises(ValueError, match="output_name names 2"):
        bonnx.export(mha, tmp_path / "m.onnx", {"query": np.zeros((3, 2, 4), dtype=np.float32),
                                                "need_weights": False}, output_name=["a", "b"])


# ------------------------------------------------------------------------------- positional encoding
def test_sinusoidal_table_is_the_papers():
    length, d = 7, 9
    table = nn.sinusoidal_positional_encoding(length, d, dtype=np.float64)
    for pos in range(length):
        for i in range(d):
            angle = pos / 10000 ** ((i - i % 2) / d)
            assert math.isclose(table[pos, i], math.sin(angle) if i % 2 == 0 else math.cos(angle), abs_tol=1e-12)
    with pytest.raises(ValueError, match="positive integers"):
        nn.sinusoidal_positional_encoding(0, 4)


@pytest.mark.parametrize("batch_first", [False, True])
def test_positional_encoding_adds_the_table(batch_first):
    pe = nn.PositionalEncoding(6, max_len=10, batch_first=batch_first)
    x = np.random.default_rng(18).standard_normal((2, 5, 6) if batch_first else (5, 2, 6)).astype(np.float32)
    table = nn.sinusoidal_positional_encoding(5, 6)
    want = x + (table[None] if batch_first else table[:, None])
    np.testing.assert_allclose(pe(bp.tensor(x)).data, want, rtol=1e-6)
    np.testing.assert_allclose(pe(bp.tensor(x[:, 0] if not batch_first else x[0])).data, x[:, 0] + table
                               if not batch_first else x[0] + table, rtol=1e-6)
    assert pe.state_dict() == {}  # the table is rebuilt, not saved
    with pytest.raises(ValueError, match="max_len=10"):
        pe(bp.tensor(np.zeros((11, 2, 6) if not batch_first else (2, 11, 6), dtype=np.float32)))


# ------------------------------------------------------------------------------ captured step, learning
def _reverser(seed=0, d=32, vocab=10, length=8):
    bp.manual_seed(seed)
    return nn.Sequential(nn.Embedding(vocab, d), nn.PositionalEncoding(d, max_len=length, batch_first=True),
                         nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.1, batch_first=True), nn.Linear(d, vocab))


def test_captured_transformer_step_equals_eager():
    """Embedding, positional encoding, an encoder layer with dropout and a causal mask, cross-entropy, Adam:
    the captured step (bp.jit) gives bit-identical losses and weights."""
    import warnings

    vocab, length = 7, 6
    models = [_reverser(d=8, vocab=vocab, length=length) for _ in range(2)]
    opts = [bp.optim.Adam(m.parameters(), lr=1e-2) for m in models]

    def make_step(model, opt):
        def step(x, y):
            logits = model[3](model[2](model[1](model[0](x)), is_causal=True))
            loss = F.cross_entropy(logits.reshape(-1, vocab), y)  # NOTE: y flat already: a view would be fixed
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss

        return step

    eager = make_step(models[0], opts[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        jitted = bp.jit(make_step(models[1], opts[1]), fallback="error")
        rng = np.random.default_rng(19)
        for i in range(4):
            x = rng.integers(0, vocab, (4, length))
            y = x[:, ::-1].reshape(-1)
            bp.manual_seed(100 + i)  # the same dropout masks in both
            a = eager(x, y)
            bp.manual_seed(100 + i)
            b = jitted(x, y)
            assert a.item() == b.item()
    assert jitted.captures == 1
    for (name, p), q in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        np.testing.assert_array_equal(p, q, err_msg=name)


def test_captured_step_follows_a_mask_passed_in_and_refuses_one_made_inside():
    """A key_padding_mask given to the step is an input of the captured plan (new masks, new results); one made
    from the batch with NumPy inside the step would be frozen by a replay, so the capture refuses it."""
    from backprop.engine.capture import CaptureError

    def make():
        bp.manual_seed(0)
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        return layer, bp.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)

    def make_step(layer, opt, inside=False):
        def step(x, kpm):
            if inside:
                kpm = x[..., 0] > 0.5
            out = layer(bp.Tensor(x), src_key_padding_mask=kpm)
            loss = (out * out).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss

        return step

    eager, jitted = make_step(*make()), bp.jit(make_step(*make()), fallback="error")
    rng = np.random.default_rng(20)
    for _ in range(4):
        x = rng.standard_normal((3, 5, 8)).astype(np.float32)
        kpm = _mask(rng, (3, 5), "bool")
        assert eager(x, kpm).item() == jitted(x, kpm).item()
    assert jitted.captures == 1
    refused = bp.jit(make_step(*make(), inside=True), fallback="error")
    with pytest.raises(CaptureError, match="shaped like the batch"):
        refused(x, kpm)


def test_one_layer_transformer_learns_to_reverse_sequences():
    """Embedding + positional encoding + one encoder layer + Linear: reversing 8 tokens of 10 needs attention
    to the mirrored position; 300 Adam steps (about a second) reach >= 99% of tokens and >= 95% of sequences."""
    vocab, length = 10, 8
    model = _reverser(vocab=vocab, length=length)
    model[2].dropout.p = model[2].dropout1.p = model[2].dropout2.p = model[2].self_attn.dropout = 0.0
    opt = bp.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    for _ in range(300):
        x = rng.integers(0, vocab, (32, length))
        loss = F.cross_entropy(model(x).reshape(-1, vocab), x[:, ::-1].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    test = rng.integers(0, vocab, (500, length))
    model.eval()
    with bp.no_grad():
        pred = model(test).data.argmax(-1)
    right = pred == test[:, ::-1]
    assert right.mean() >= 0.99 and right.all(axis=1).mean() >= 0.95, (right.mean(), right.all(axis=1).mean())

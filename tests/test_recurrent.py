"""RNN, LSTM, GRU and their cells against PyTorch: values and gradients in float64 over a grid of configurations,
variable lengths against ``pack_padded_sequence``, weights through safetensors both ways, ONNX, the captured
step, dropout, and the errors. The op itself (``nn.recurrence.Recurrence``) is also checked from its
registration: finite differences, PyTorch and captured replays (tests/test_ops_gradcheck.py, test_jit.py).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import backprop as bp
from backprop import nn

torch = pytest.importorskip("torch")
pack = torch.nn.utils.rnn.pack_padded_sequence
unpack = torch.nn.utils.rnn.pad_packed_sequence

T, B, I, H = 5, 3, 4, 3
LENGTHS = [5, 2, 4]  # unsorted, one full
KINDS = {  # name -> (backprop maker, torch maker, extra kwargs)
    "rnn_tanh": (nn.RNN, torch.nn.RNN, {}),
    "rnn_relu": (nn.RNN, torch.nn.RNN, {"nonlinearity": "relu"}),
    "lstm": (nn.LSTM, torch.nn.LSTM, {}),
    "lstm_proj": (nn.LSTM, torch.nn.LSTM, {"proj_size": 2}),
    "gru": (nn.GRU, torch.nn.GRU, {}),
}


def _pair(kind: str, seed: int = 0, **kw):
    """The same layer in backprop and PyTorch (float64), PyTorch's weights copied from backprop's."""
    ours_cls, theirs_cls, extra = KINDS[kind]
    kw = {**extra, **kw}
    bp.manual_seed(seed)
    ours = ours_cls(I, H, **kw).double()
    theirs = theirs_cls(I, H, **kw).double()
    names = [n for n, _ in theirs.named_parameters()]
    assert [n for n, _ in ours.named_parameters()] == names  # PyTorch's names, in PyTorch's order
    theirs.load_state_dict({k: torch.tensor(v) for k, v in ours.state_dict().items()})
    return ours, theirs


def _run_both(ours, theirs, x, hx, lengths, batch_first, rng):
    """Forward and backward of both with the same upstream gradients; returns (ours, theirs) outputs."""
    lstm = isinstance(ours, nn.LSTM)
    a = bp.tensor(x, requires_grad=True)
    b = torch.tensor(x, requires_grad=True)
    if hx is None:
        hs_a = hs_b = None
    elif lstm:
        hs_a = tuple(bp.tensor(h, requires_grad=True) for h in hx)
        hs_b = tuple(torch.tensor(h, requires_grad=True) for h in hx)
    else:
        hs_a, hs_b = bp.tensor(hx, requires_grad=True), torch.tensor(hx, requires_grad=True)
    out_a, st_a = ours(a, hs_a, lengths=lengths)
    if lengths is None:
        out_b, st_b = theirs(b, hs_b)
    else:
        packed, st_b = theirs(pack(b, torch.tensor(lengths), batch_first=batch_first, enforce_sorted=False), hs_b)
        out_b, _ = unpack(packed, batch_first=batch_first, total_length=x.shape[1 if batch_first else 0])
    ours_parts = [out_a, *(st_a if lstm else (st_a,))]
    theirs_parts = [out_b, *(st_b if lstm else (st_b,))]
    loss_a = loss_b = 0
    for pa, pb in zip(ours_parts, theirs_parts):
        assert pa.shape == tuple(pb.shape)
        w = rng.uniform(0.5, 1.5, size=pa.shape)
        loss_a = loss_a + (pa * bp.Tensor(w)).sum()
        loss_b = loss_b + (pb * torch.tensor(w)).sum()
    loss_a.backward()
    loss_b.backward()
    leaves = [(a, b)]
    if hx is not None:
        leaves += list(zip(hs_a, hs_b)) if lstm else [(hs_a, hs_b)]
    return ours_parts, theirs_parts, leaves


def _assert_close(ours, theirs, what):
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-9, err_msg=what)


GRID = list(itertools.product(KINDS, (1, 2), (False, True), (False, True), (False, True)))


@pytest.mark.parametrize("kind, layers, bidirectional, batch_first, lengths", GRID,
                         ids=[f"{k}-L{n}-{'bi' if b else 'uni'}-{'bf' if f else 'sf'}-{'len' if ln else 'full'}"
                              for k, n, b, f, ln in GRID])
def test_matches_torch(kind, layers, bidirectional, batch_first, lengths):
    """Outputs, h_n (c_n), and the gradients of the input, the initial states and every weight."""
    ours, theirs = _pair(kind, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I))
    D = 2 if bidirectional else 1
    P = ours.proj_size or H
    h0 = rng.standard_normal((layers * D, B, P)) * 0.5
    hx = (h0, rng.standard_normal((layers * D, B, H)) * 0.5) if isinstance(ours, nn.LSTM) else h0
    lens = LENGTHS if lengths else None
    got, want, leaves = _run_both(ours, theirs, x, hx, lens, batch_first, rng)
    for i, (g, w) in enumerate(zip(got, want)):
        _assert_close(g.data, w.detach().numpy(), f"output {i}")
    for i, (a, b) in enumerate(leaves):
        _assert_close(a.grad, b.grad.numpy(), f"gradient of input {i} (x, h_0, c_0)")
    grads = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        _assert_close(p.grad, grads[name].grad.numpy(), f"gradient of {name}")


@pytest.mark.parametrize("kind", list(KINDS))
def test_zero_initial_state_by_default(kind):
    ours, theirs = _pair(kind, num_layers=2, bidirectional=True, seed=3)
    x = np.random.default_rng(2).standard_normal((T, B, I))
    got, want, _ = _run_both(ours, theirs, x, None, LENGTHS, False, np.random.default_rng(0))
    for g, w in zip(got, want):
        _assert_close(g.data, w.detach().numpy(), kind)


@pytest.mark.parametrize("kind", list(KINDS))
def test_unbatched_input(kind):
    """(T, features) with a state of (num_layers * D, hidden), as PyTorch allows; batch_first does not apply."""
    ours, theirs = _pair(kind, num_layers=2, bidirectional=True, batch_first=True, seed=4)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((T, I))
    P = ours.proj_size or H
    h0 = rng.standard_normal((4, P))
    hx = (h0, rng.standard_normal((4, H))) if isinstance(ours, nn.LSTM) else h0
    got, want, leaves = _run_both(ours, theirs, x, hx, None, True, rng)
    for g, w in zip(got, want):
        assert g.shape == tuple(w.shape)
        _assert_close(g.data, w.detach().numpy(), kind)
    for a, b in leaves:
        _assert_close(a.grad, b.grad.numpy(), "input/state gradient")


# ------------------------------------------------------------------------------------------- lengths
@pytest.mark.parametrize("kind", ["rnn_tanh", "lstm", "gru"])
def test_padded_steps_change_nothing_and_get_no_gradient(kind):
    """Values at padded steps neither change any output nor receive gradient; outputs there are zero; each
    sequence's h_n is its own last step's output (forward) and the reverse direction starts at its end."""
    ours, _ = _pair(kind, bidirectional=True, batch_first=True, seed=6)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((B, T, I))
    lens = np.array(LENGTHS)
    pad = np.arange(T)[None, :] >= lens[:, None]  # (B, T)
    x2 = x.copy()
    x2[pad] = 100.0
    a, a2 = bp.tensor(x, requires_grad=True), bp.tensor(x2)
    out, st = ours(a, lengths=lens)
    out2, st2 = ours(a2, lengths=lens)
    h_n = st[0] if isinstance(st, tuple) else st
    np.testing.assert_array_equal(out.data, out2.data)
    np.testing.assert_array_equal(h_n.data, (st2[0] if isinstance(st2, tuple) else st2).data)
    assert np.all(out.data[pad] == 0)
    for b, n in enumerate(lens):
        np.testing.assert_array_equal(h_n.data[0, b], out.data[b, n - 1, :H])  # forward: its own last step
        np.testing.assert_array_equal(h_n.data[1, b], out.data[b, 0, H:])  # reverse: ends at step 0
    (out.sum() + h_n.sum()).backward()
    assert np.all(a.grad[pad] == 0) and np.all(a.grad[~pad] != 0)


def test_one_sequence_with_lengths_equals_it_alone():
    """A sequence padded in a batch gives what it gives alone, trimmed to its length."""
    ours, _ = _pair("lstm", num_layers=2, bidirectional=True)
    x = np.random.default_rng(8).standard_normal((T, B, I))
    out, (h_n, c_n) = ours(bp.tensor(x), lengths=LENGTHS)
    for b, n in enumerate(LENGTHS):
        alone, (h1, c1) = ours(bp.tensor(x[:n, b:b + 1]))
        np.testing.assert_allclose(out.data[:n, b], alone.data[:, 0], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(h_n.data[:, b], h1.data[:, 0], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(c_n.data[:, b], c1.data[:, 0], rtol=1e-12, atol=1e-14)


def test_layer_gradcheck_with_lengths():
    """Finite differences through the whole layer (two layers, both directions, projection, lengths, batch_first),
    of the input, the initial states and every weight."""
    bp.manual_seed(0)
    lstm = nn.LSTM(2, 2, num_layers=2, bidirectional=True, batch_first=True, proj_size=1).double()
    names = [n for n, _ in lstm.named_parameters()]
    rng = np.random.default_rng(9)
    inputs = [rng.standard_normal((3, 4, 2)), rng.standard_normal((4, 3, 1)), rng.standard_normal((4, 3, 2))]

    def fn(x, h0, c0, *weights):
        for name, w in zip(names, weights):
            object.__setattr__(lstm, name, w)  # NOTE: the checked tensors stand in for the Parameters
        out, (h, c) = lstm(x, (h0, c0), lengths=[4, 1, 3])
        return (out * 1.3).sum() + (h * h).sum() + c.sum()

    assert bp.gradcheck(fn, [*inputs, *[p.data for p in lstm.parameters()]])


@pytest.mark.parametrize("kind, hidden, batch", [("lstm", 128, 32), ("gru", 128, 24), ("rnn_tanh", 200, 32),
                                                   ("lstm", 40, 70)])
def test_matches_torch_at_sizes_that_split_the_step_products(kind, hidden, batch):
    """Sizes where a step's product (G*H, P) @ (P, B) is computed in row chunks (see recurrence._row_chunks), and
    a batch of 64+ where it is one call with the BLAS's own threads."""
    from backprop.nn.recurrence import _row_chunks

    ours_cls, theirs_cls, extra = KINDS[kind]
    G = {"lstm": 4, "gru": 3}.get(kind, 1)
    k = hidden + (0 if kind == "gru" else 17 + 1)  # the step's operand: h, and for RNN/LSTM also x and a one
    assert (len(_row_chunks(G * hidden, k, batch)) > 1) == (batch <= 32)
    bp.manual_seed(0)
    ours = ours_cls(17, hidden, bidirectional=True, **extra).double()
    theirs = theirs_cls(17, hidden, bidirectional=True, **extra).double()
    theirs.load_state_dict({name: torch.tensor(v) for name, v in ours.state_dict().items()})
    rng = np.random.default_rng(16)
    x = rng.standard_normal((6, batch, 17))
    lens = rng.integers(1, 7, batch)
    got, want, leaves = _run_both(ours, theirs, x, None, lens, False, rng)
    for g, w in zip(got, want):
        _assert_close(g.data, w.detach().numpy(), "value")
    _assert_close(leaves[0][0].grad, leaves[0][1].grad.numpy(), "input gradient")
    grads = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        _assert_close(p.grad, grads[name].grad.numpy(), name)


# -------------------------------------------------------------------------------------------- cells
CELLS = [("rnn_tanh", nn.RNNCell, torch.nn.RNNCell, {}), ("rnn_relu", nn.RNNCell, torch.nn.RNNCell,
         {"nonlinearity": "relu"}), ("lstm", nn.LSTMCell, torch.nn.LSTMCell, {}), ("gru", nn.GRUCell, torch.nn.GRUCell, {})]


@pytest.mark.parametrize("name, ours_cls, theirs_cls, kw", CELLS, ids=[c[0] for c in CELLS])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("with_state", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_cells_match_torch(name, ours_cls, theirs_cls, kw, batched, with_state, bias):
    bp.manual_seed(0)
    ours = ours_cls(I, H, bias=bias, **kw).double()
    theirs = theirs_cls(I, H, bias=bias, **kw).double()
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    theirs.load_state_dict({k: torch.tensor(v) for k, v in ours.state_dict().items()})
    rng = np.random.default_rng(10)
    lead = (B,) if batched else ()
    x = rng.standard_normal((*lead, I))
    lstm = name == "lstm"
    states = [rng.standard_normal((*lead, H)) for _ in range(2 if lstm else 1)] if with_state else []
    a, b = bp.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    sa = [bp.tensor(s, requires_grad=True) for s in states]
    sb = [torch.tensor(s, requires_grad=True) for s in states]
    hx_a = (tuple(sa) if lstm else sa[0]) if states else None
    hx_b = (tuple(sb) if lstm else sb[0]) if states else None
    got, want = ours(a, hx_a), theirs(b, hx_b)
    got = got if lstm else (got,)
    want = want if lstm else (want,)
    la = lb = 0
    for g, w in zip(got, want):
        assert g.shape == tuple(w.shape)
        _assert_close(g.data, w.detach().numpy(), "value")
        u = rng.uniform(0.5, 1.5, size=g.shape)
        la, lb = la + (g * bp.Tensor(u)).sum(), lb + (w * torch.tensor(u)).sum()
    la.backward()
    lb.backward()
    for p, q in [(a, b), *zip(sa, sb)]:
        _assert_close(p.grad, q.grad.numpy(), "input/state gradient")
    grads = dict(theirs.named_parameters())
    for n, p in ours.named_parameters():
        _assert_close(p.grad, grads[n].grad.numpy(), n)


def test_lstm_cell_unrolled_equals_the_layer():
    """LSTMCell stepped by hand with the layer's weights gives the layer's outputs."""
    bp.manual_seed(1)
    layer = nn.LSTM(I, H).double()
    cell = nn.LSTMCell(I, H).double()
    cell.load_state_dict({k[:-3]: v for k, v in layer.state_dict().items()})
    x = np.random.default_rng(11).standard_normal((T, B, I))
    out, (_, c_n) = layer(bp.tensor(x))
    h = c = None
    for t in range(T):
        h, c = cell(bp.tensor(x[t]), None if h is None else (h, c))
        np.testing.assert_allclose(h.data, out.data[t], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(c.data, c_n.data[0], rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------------------- weights to and fro
@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("kind", list(KINDS))
def test_safetensors_round_trip_with_torch(kind, tmp_path):
    """bp.io.save -> safetensors.torch.load_file -> the same-configured torch module, and back."""
    st = pytest.importorskip("safetensors.torch")
    ours_cls, theirs_cls, extra = KINDS[kind]
    kw = {**extra, "num_layers": 2, "bidirectional": True, "batch_first": True}
    bp.manual_seed(2)
    ours = ours_cls(I, H, **kw)
    x = np.random.default_rng(12).standard_normal((B, T, I)).astype(np.float32)
    path = tmp_path / "ours.safetensors"
    bp.io.save(ours, path)
    theirs = theirs_cls(I, H, **kw)
    theirs.load_state_dict(st.load_file(path))
    with bp.no_grad(), torch.no_grad():
        np.testing.assert_allclose(ours(bp.tensor(x))[0].data, theirs(torch.tensor(x))[0].numpy(), rtol=1e-5,
                                   atol=1e-6)
        # and back: PyTorch's weights (fresh, its own initialisation) into a backprop layer
        fresh = theirs_cls(I, H, **kw)
        back = tmp_path / "theirs.safetensors"
        st.save_file({k: v.contiguous() for k, v in fresh.state_dict().items()}, back)
        mine = bp.io.load_weights(ours_cls(I, H, **kw), back)
        np.testing.assert_allclose(mine(bp.tensor(x))[0].data, fresh(torch.tensor(x))[0].numpy(), rtol=1e-5,
                                   atol=1e-6)
    loaded = bp.io.load(path)  # and backprop's own file rebuilds the layer
    assert type(loaded) is ours_cls and repr(loaded) == repr(ours)


def test_default_initialisation_is_pytorchs_distribution():
    bp.manual_seed(3)
    lstm = nn.LSTM(10, 64, num_layers=2, bidirectional=True, proj_size=16)
    k = 1 / np.sqrt(64)
    values = np.concatenate([p.data.ravel() for p in lstm.parameters()])
    assert values.min() >= -k and values.max() <= k and abs(values.mean()) < 0.01
    assert abs(values.std() - k / np.sqrt(3)) < 0.01 * k  # U(-k, k)
    assert lstm.weight_hr_l1_reverse.shape == (16, 64) and lstm.weight_ih_l1.shape == (256, 32)


# --------------------------------------------------------------------------------------------- ONNX
ONNX_CASES = [
    ("lstm 2 layers bidirectional batch_first", lambda: nn.LSTM(I, H, num_layers=2, bidirectional=True,
                                                                   batch_first=True), (B, T, I)),
    ("gru bidirectional", lambda: nn.GRU(I, H, bidirectional=True), (T, B, I)),
    ("rnn relu 2 layers no bias", lambda: nn.RNN(I, H, num_layers=2, nonlinearity="relu", bias=False), (T, B, I)),
    ("lstm cell", lambda: nn.LSTMCell(I, H), (B, I)),
    ("gru cell", lambda: nn.GRUCell(I, H), (B, I)),
]


@pytest.mark.parametrize("label, make, shape", ONNX_CASES, ids=[c[0] for c in ONNX_CASES])
def test_onnx_matches_onnxruntime(label, make, shape, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import backprop.onnx as bonnx

    bp.manual_seed(4)
    model = nn.Sequential(make())
    rng = np.random.default_rng(13)
    x = rng.standard_normal(shape).astype(np.float32)
    bonnx.export(model, tmp_path / "m.onnx", x)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    bigger = rng.standard_normal((shape[0] + 3, *shape[1:])).astype(np.float32)
    model.eval()
    for batch in (x, bigger):
        (got,) = sess.run(None, {"input": batch})
        with bp.no_grad():
            out = model(bp.tensor(batch))
        want = (out[0] if isinstance(out, tuple) else out).data
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_onnx_refuses_proj_size_and_unbatched(tmp_path):
    pytest.importorskip("onnx")
    import backprop.onnx as bonnx

    with pytest.raises(ValueError, match="no output projection"):
        bonnx.export(nn.Sequential(nn.LSTM(I, H, proj_size=2)), tmp_path / "m.onnx", np.zeros((T, B, I), np.float32))
    with pytest.raises(ValueError, match="batched input"):
        bonnx.export(nn.Sequential(nn.GRU(I, H)), tmp_path / "m.onnx", np.zeros((T, I), np.float32),
                     dynamic_batch=False)


# ------------------------------------------------------------------------------------- training step
class _Tagger(nn.Module):
    """An LSTM over the sequence and a Linear head on its last state: a small classifier."""

    def __init__(self):
        self.lstm = nn.LSTM(I, 8, num_layers=2, bidirectional=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x, lengths=None):
        _, (h, _) = self.lstm(x, lengths=lengths)
        return self.head(bp.concatenate([h[-2], h[-1]], axis=1))


def _train(jit: bool, steps: int = 4, lengths: bool = False):
    bp.manual_seed(5)
    model = _Tagger()
    opt = bp.optim.Adam(model.parameters(), lr=0.01)
    rng = np.random.default_rng(14)
    data = [(rng.standard_normal((T, B, I)).astype(np.float32), rng.integers(0, 3, B),
             rng.integers(1, T + 1, B)) for _ in range(steps)]

    def step(x, y, lens):
        opt.zero_grad()
        loss = bp.nn.functional.cross_entropy(model(bp.Tensor(x), lens if lengths else None), y)
        loss.backward()
        bp.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    run = bp.jit(step, fallback="error") if jit else step
    losses = [float(run(x, y, lens).data) for x, y, lens in data]
    return model, losses, run


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("lengths", [False, True])
def test_captured_training_step_equals_eager(lengths):
    """A small LSTM training step (Adam, gradient clipping) captured by bp.jit: bit-identical to eager, also with
    lengths that change from step to step (an input of the step, not a constant of the capture)."""
    (m0, l0, _), (m1, l1, jitted) = _train(False, lengths=lengths), _train(True, lengths=lengths)
    assert l0 == l1
    for (name, a), b in zip(m0.state_dict().items(), m1.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert jitted.captures == 1


# ---------------------------------------------------------------------------------------- dropout
def test_dropout_between_layers_in_training_only():
    bp.manual_seed(6)
    lstm = nn.LSTM(I, H, num_layers=3, dropout=0.5)
    theirs = torch.nn.LSTM(I, H, num_layers=3, dropout=0.5)
    theirs.load_state_dict({k: torch.tensor(v) for k, v in lstm.state_dict().items()})
    x = np.random.default_rng(15).standard_normal((T, B, I)).astype(np.float32)
    lstm.eval()
    theirs.eval()
    with bp.no_grad(), torch.no_grad():
        np.testing.assert_allclose(lstm(bp.tensor(x))[0].data, theirs(torch.tensor(x))[0].numpy(), rtol=1e-5,
                                   atol=1e-6)
    lstm.train()
    evaluated = lstm.eval()(bp.tensor(x))[0].data
    lstm.train()
    bp.manual_seed(7)
    first = lstm(bp.tensor(x))[0].data
    bp.manual_seed(7)
    again = lstm(bp.tensor(x))[0].data
    np.testing.assert_array_equal(first, again)  # from backprop's seeded generator
    assert not np.allclose(first, evaluated)
    with pytest.warns(UserWarning, match="num_layers=1 does nothing"):
        nn.GRU(I, H, dropout=0.2)


# ----------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("call, match", [
    (lambda m: m(np.zeros((T, B, I + 1))), r"5 features .* expected input_size=4"),
    (lambda m: m(np.zeros((T, B, 1, I))), "3-D input"),
    (lambda m: m(np.zeros((T, B, I)), (np.zeros((1, B, H)), np.zeros((2, B, H)))), r"h_0 of shape \(2, 3, 3\)"),
    (lambda m: m(np.zeros((T, B, I)), np.zeros((2, B, H))), "hx must be a tuple"),
    (lambda m: m(np.zeros((T, B, I)), lengths=[5, 2]), "one length per sequence"),
    (lambda m: m(np.zeros((T, B, I)), lengths=[5, 0, 1]), r"in \[1, 5\]"),
    (lambda m: m(np.zeros((T, B, I)), lengths=[6, 1, 1]), r"in \[1, 5\]"),
    (lambda m: m(np.zeros((T, B, I)), lengths=[1.5, 1, 1]), "integers"),
    (lambda m: m(np.zeros((T, I)), lengths=[5]), "batched input"),
])
def test_clear_errors(call, match):
    lstm = nn.LSTM(I, H, num_layers=2)
    with pytest.raises((ValueError, TypeError), match=match):
        call(lstm)


def test_constructor_errors():
    with pytest.raises(ValueError, match="proj_size"):
        nn.LSTM(I, H, proj_size=H)
    with pytest.raises(ValueError, match="nonlinearity"):
        nn.RNN(I, H, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="hidden_size"):
        nn.GRU(I, 0)
    with pytest.raises(ValueError, match="dropout"):
        nn.LSTM(I, H, num_layers=2, dropout=1.5)
    with pytest.raises(ValueError, match=r"expected an input of shape \(batch, 4\)"):
        nn.GRUCell(I, H)(np.zeros((B, I + 1)))
    with pytest.raises(ValueError, match=r"hidden state of shape \(3, 3\)"):
        nn.RNNCell(I, H)(np.zeros((B, I)), np.zeros((B + 1, H)))


def test_repr_and_config():
    lstm = nn.LSTM(I, H, num_layers=2, bidirectional=True, batch_first=True, proj_size=2, dropout=0.1)
    assert repr(lstm) == "LSTM(4, 3, proj_size=2, num_layers=2, batch_first=True, bidirectional=True, dropout=0.1)"
    config = bp.io.model_to_config(lstm)
    assert config["args"] == {"input_size": 4, "hidden_size": 3, "num_layers": 2, "bias": True, "batch_first": True,
                              "dropout": 0.1, "bidirectional": True, "proj_size": 2}
    assert repr(nn.RNNCell(2, 3, nonlinearity="relu")) == "RNNCell(2, 3, nonlinearity='relu')"


def test_exploding_gradients_tamed_by_clipping():
    """A plain RNN with large recurrent weights over a long sequence: the gradient norm explodes, and
    clip_grad_norm_ brings it back to max_norm."""
    bp.manual_seed(8)
    rnn = nn.RNN(1, 16, nonlinearity="relu")
    for p in (rnn.weight_hh_l0,):
        p.data[...] = np.eye(16, dtype=np.float32) * 1.5
    out, _ = rnn(bp.tensor(np.ones((60, 2, 1), np.float32)))
    out[-1].sum().backward()
    norm = bp.nn.utils.clip_grad_norm_(rnn.parameters(), 1.0)
    assert norm > 1e6
    total = np.sqrt(sum(float((p.grad.astype(np.float64) ** 2).sum()) for p in rnn.parameters()))
    assert abs(total - 1.0) < 1e-3

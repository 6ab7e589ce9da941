"""backprop.viz.draw_graph: the computational graph as Graphviz DOT, SVG and PNG."""

import re
import shutil
import subprocess

import numpy as np
import pytest

import backprop as bp
from backprop import nn
from backprop.viz import GraphvizNotFoundWarning, draw_graph, graph, to_dot

HAS_DOT = shutil.which("dot") is not None
RENDERED = graph.RENDERED_FORMATS


def mlp_loss():
    bp.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Sigmoid(), nn.Linear(3, 2))
    x = bp.tensor(np.linspace(-1, 1, 20, dtype=np.float32).reshape(5, 4))
    logits = model(x)
    loss = nn.functional.cross_entropy(logits, np.array([0, 1, 1, 0, 1]))
    return model, logits, loss


def labels(src: str) -> list[str]:
    return re.findall(r'\[label="((?:[^"\\]|\\.)*)"', src)


def test_ops_shapes_dtypes_and_parameter_names():
    model, _, loss = mlp_loss()
    src = draw_graph(loss, params=model)
    assert src.startswith("digraph") and src.rstrip().endswith("}")
    for op in ("Linear", "Sigmoid", "CrossEntropy"):
        assert f'label="{op}"' in src
    assert src.count('label="Linear"') == 2
    for name, shape in (("0.weight", "(3, 4)"), ("0.bias", "(3,)"), ("2.weight", "(2, 3)"), ("2.bias", "(2,)")):
        assert f"{name}\\n{shape} float32" in src
    assert "(5, 4) float32" in src and "(5, 3) float32" in src  # the input and the hidden activations
    assert "output\\n() float32\\nvalue " in src
    assert "||grad||" not in src  # before backward there are no gradients
    # 4 ops; 5 leaves (x and four parameters), 3 intermediates and the output
    assert len(labels(src)) == 4 + 5 + 3 + 1


def test_edges_run_from_inputs_to_ops_to_outputs():
    a = bp.tensor([1.0, 2.0], requires_grad=True)
    b = bp.tensor([3.0, 4.0], requires_grad=True)
    out = (a - b).sum()
    src = draw_graph(out, params={"a": a, "b": b})
    nodes = re.findall(r'^\s+(\w+) \[label="([^"]*)"', src, re.MULTILINE)
    ids = {lab.split("\\n")[0]: nid for nid, lab in nodes}
    assert f"{ids['a']} -> {ids['Sub']};" in src and f"{ids['b']} -> {ids['Sub']};" in src
    assert f"{ids['Sum']} -> {ids['output']};" in src


def test_a_tensor_used_twice_gets_two_edges_and_constants_are_drawn():
    x = bp.tensor([1.0, 2.0], requires_grad=True)
    y = (x * x + 1.0).sum()
    src = draw_graph(y, params={"x": x})
    node = re.search(r'(\w+) \[label="x\\n', src).group(1)
    assert len(re.findall(rf"^\s+{node} -> ", src, re.MULTILINE)) == 2
    assert "() float32" in src  # the constant 1.0
    assert 'fillcolor="#eeeeee"' in src


def test_gradient_norms_after_backward_with_retain_graph():
    model, logits, loss = mlp_loss()
    logits.retain_grad()
    loss.backward(retain_graph=True)
    src = draw_graph(loss, params=model)
    for name, p in model.named_parameters():
        norm = float(np.linalg.norm(p.grad.astype(np.float64)))
        assert f"{name}\\n{p.shape if p.ndim > 1 else '(' + str(p.shape[0]) + ',)'} float32\\n||grad|| {norm:.4g}" in src
    assert f"(5, 2) float32\\n||grad|| {np.linalg.norm(logits.grad.astype(np.float64)):.4g}" in src
    assert src.count("||grad||") == 4 + 1  # the input x does not require grad; (5, 3) grads were not retained
    assert "freed" not in src


def test_after_a_plain_backward_it_draws_what_is_left_and_says_why():
    _, _, loss = mlp_loss()
    loss.backward()
    src = draw_graph(loss)
    assert "CrossEntropy\\n(graph freed by backward())" in src
    assert "retain_graph=True" in src
    assert "Linear" not in src


def test_leaves_without_names_and_requires_grad_are_marked():
    w = bp.tensor(np.ones((2, 2)), requires_grad=True)
    src = draw_graph((w @ w).sum())
    assert "(2, 2) float64" in src and 'fillcolor="#fff2cc"' in src


def test_deep_graph_does_not_recurse():
    x = bp.tensor([0.5], requires_grad=True)
    y = x
    for _ in range(3000):  # three times the default recursion limit
        y = y.tanh()
    src = draw_graph(y.sum(), params={"x": x})
    assert src.count('label="Tanh"') == 3000
    assert src.count("->") == 2 * 3001


def test_dot_file_holds_the_source_and_its_path_is_returned(tmp_path):
    _, _, loss = mlp_loss()
    for name in ("g.dot", "g.gv", "noext"):
        assert draw_graph(loss, tmp_path / name) == str(tmp_path / name)
        assert (tmp_path / name).read_text() == to_dot(loss)


def test_a_dot_file_never_needs_graphviz(tmp_path, monkeypatch, recwarn):
    monkeypatch.setattr(graph.shutil, "which", lambda name: None)
    _, _, loss = mlp_loss()
    assert draw_graph(loss, tmp_path / "g.dot") == str(tmp_path / "g.dot")
    assert (tmp_path / "g.dot").read_text().startswith("digraph")
    assert not recwarn.list  # nothing to say: the DOT file is what was asked for


def test_unknown_format_and_bad_arguments():
    _, _, loss = mlp_loss()
    with pytest.raises(ValueError, match="unknown format 'jpeg'"):
        draw_graph(loss, "g.jpeg")
    with pytest.raises(TypeError, match="expected a Tensor"):
        draw_graph(np.ones(3))
    with pytest.raises(TypeError, match="params must be"):
        draw_graph(loss, params=[1, 2])


def without_graphviz(monkeypatch: pytest.MonkeyPatch) -> None:
    """Graphviz's ``dot`` absent, as graph.py finds it (shutil.which); the subprocess must not even run."""
    monkeypatch.setattr(graph.shutil, "which", lambda name: None)
    monkeypatch.setattr(graph.subprocess, "run", lambda *a, **k: pytest.fail("dot was run"))


@pytest.mark.parametrize("fmt", RENDERED)
def test_without_graphviz_the_dot_file_is_written_and_the_warning_says_how_to_render(tmp_path, monkeypatch, fmt):
    without_graphviz(monkeypatch)
    model, _, loss = mlp_loss()
    with pytest.warns(GraphvizNotFoundWarning) as caught:
        written = draw_graph(loss, tmp_path / f"graph.{fmt}", params=model)
    assert written == str(tmp_path / "graph.dot")
    assert (tmp_path / "graph.dot").read_text() == to_dot(loss, model)
    assert not (tmp_path / f"graph.{fmt}").exists()
    (message,) = [str(w.message) for w in caught]
    assert "\n" not in message  # one line
    assert f"render it with: dot -T{fmt} {tmp_path / 'graph.dot'} -o {tmp_path / f'graph.{fmt}'}" in message
    assert "install Graphviz: apt-get install graphviz, brew install graphviz" in message


def test_without_graphviz_relative_paths_and_explicit_formats(tmp_path, monkeypatch):
    without_graphviz(monkeypatch)
    monkeypatch.chdir(tmp_path)
    _, _, loss = mlp_loss()
    with pytest.warns(GraphvizNotFoundWarning, match=r"render it with: dot -Tsvg graph\.dot -o graph\.svg \("):
        assert draw_graph(loss, "graph.svg") == "graph.dot"  # the README's call
    with pytest.warns(GraphvizNotFoundWarning, match=r"dot -Tpng picture\.dot -o picture \("):
        assert draw_graph(loss, "picture", format="png") == "picture.dot"
    with pytest.warns(GraphvizNotFoundWarning, match=r"dot -Tsvg g\.dot\.dot -o g\.dot \("):
        assert draw_graph(loss, "g.dot", format="svg") == "g.dot.dot"  # never the name it will be rendered to
    with pytest.warns(GraphvizNotFoundWarning, match=r"-o 'my graph\.pdf'"):  # quoted for the shell
        assert draw_graph(loss, "my graph.pdf") == "my graph.dot"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.dot.dot", "graph.dot", "my graph.dot", "picture.dot"]


def test_a_failing_dot_still_raises(tmp_path, monkeypatch):
    monkeypatch.setattr(graph.shutil, "which", lambda name: "/usr/bin/dot")
    monkeypatch.setattr(graph.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a[0], 1, b"", b"Error: syntax error"))
    _, _, loss = mlp_loss()
    with pytest.raises(RuntimeError, match="dot -Tsvg failed: Error: syntax error"):
        draw_graph(loss, tmp_path / "g.svg")
    assert not list(tmp_path.iterdir())


def test_viz_is_reachable_from_a_bare_import_backprop():
    assert bp.viz.draw_graph is draw_graph and bp.viz.GraphvizNotFoundWarning is GraphvizNotFoundWarning


@pytest.mark.skipif(not HAS_DOT, reason="Graphviz's dot is not installed")
def test_svg_and_png_are_rendered(tmp_path):
    model, _, loss = mlp_loss()
    loss.backward(retain_graph=True)
    assert draw_graph(loss, tmp_path / "g.svg", params=model) == str(tmp_path / "g.svg")
    svg = (tmp_path / "g.svg").read_text()
    assert "<svg" in svg and "CrossEntropy" in svg and "0.weight" in svg
    draw_graph(loss, tmp_path / "g.png", params=model)
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    draw_graph(loss, tmp_path / "picture", format="svg")
    assert "<svg" in (tmp_path / "picture").read_text()

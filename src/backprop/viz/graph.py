"""Draw the computational graph behind a tensor, as Graphviz DOT (and SVG/PNG/PDF when ``dot`` is installed).

``draw_graph(loss, "graph.svg")`` renders with Graphviz's ``dot`` program; without it, it writes
``graph.dot`` and warns with the one command that renders it (``dot -Tsvg graph.dot -o graph.svg``).

>>> import backprop as bp
>>> from backprop.viz import draw_graph
>>> w = bp.tensor([[0.5, -1.0]], requires_grad=True)
>>> x = bp.tensor([[2.0], [3.0]])
>>> loss = (w @ x).sigmoid().sum()
>>> src = draw_graph(loss, None, params={"w": w})     # None: just return the DOT source
>>> all(s in src for s in ("MatMul", "Sigmoid", "(1, 2) float32"))
True

Tensors are boxes (parameters blue, other leaves that require grad yellow, constants grey, the drawn tensor
red), operations are ellipses named by their :class:`~backprop.engine.tensor.Function` class, and edges run
from the inputs of each operation to the operation and on to its result.

**Draw before backward, or backward with retain_graph=True.** ``backward()`` frees the graph as it goes (each
operation forgets its inputs), so after a plain ``backward()`` only the drawn tensor and the operation that
made it are left, marked "graph freed by backward()". With ``loss.backward(retain_graph=True)`` the whole
graph stays, and the drawing also shows the gradient norm ``||grad||`` of every leaf and of every
intermediate tensor whose gradient was kept with ``retain_grad()``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from backprop.engine.tensor import Function, Tensor
from backprop.io import write_bytes_atomic, write_text_atomic
from backprop.nn.module import Parameter

RENDERED_FORMATS = ("svg", "png", "pdf")
DOT_SUFFIXES = ("dot", "gv")
_INSTALL_GRAPHVIZ = "install Graphviz: apt-get install graphviz, brew install graphviz or conda install graphviz"


class GraphvizNotFoundWarning(UserWarning):
    """:func:`draw_graph` wrote a ``.dot`` file instead of SVG/PNG/PDF: Graphviz's ``dot`` is not installed."""

_STYLE = {
    "root": 'shape=box, style="rounded,filled", fillcolor="#f4cccc"',
    "parameter": 'shape=box, style="rounded,filled", fillcolor="#cfe2f3"',
    "leaf": 'shape=box, style="rounded,filled", fillcolor="#fff2cc"',
    "constant": 'shape=box, style="rounded,filled", fillcolor="#eeeeee"',
    "intermediate": 'shape=box, style="rounded"',
    "op": 'shape=ellipse, style=filled, fillcolor="#d9ead3"',
    "freed": 'shape=ellipse, style="filled,dashed", fillcolor="#eeeeee"',
}


def _quote(text: str) -> str:
    """A DOT string literal; ``\\n`` in ``text`` (a real newline) becomes a line break."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _param_names(params: Mapping[str, Tensor] | Any | None) -> dict[int, str]:
    if params is None:
        return {}
    if hasattr(params, "named_parameters"):
        items = params.named_parameters()
    elif isinstance(params, Mapping):
        items = params.items()
    else:
        raise TypeError(
            f"draw_graph: params must be a dict of name -> Tensor or a Module, got {type(params).__name__}"
        )
    names: dict[int, str] = {}
    for name, t in items:
        if not isinstance(t, Tensor):
            raise TypeError(f"draw_graph: params[{name!r}] is a {type(t).__name__}, not a Tensor")
        names.setdefault(id(t), str(name))
    return names


def _shape(t: Tensor) -> str:
    return "(" + ", ".join(map(str, t.shape)) + ("," if t.ndim == 1 else "") + ")"


def _norm(g: np.ndarray) -> str:
    return f"{float(np.linalg.norm(np.asarray(g, dtype=np.float64).reshape(-1))):.4g}"


def to_dot(tensor: Tensor, params: Mapping[str, Tensor] | Any | None = None, name: str = "backprop") -> str:
    """The DOT source of ``tensor``'s graph (see :func:`draw_graph`)."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"draw_graph: expected a Tensor, got {type(tensor).__name__}")
    names = _param_names(params)

    node_ids: dict[int, str] = {}  # id(tensor or Function) -> node name, in the order first met
    keep: list[Any] = []  # the objects behind node_ids stay alive, so their ids stay unique
    nodes: list[str] = []
    edges: list[str] = []
    freed = False

    def tensor_node(t: Tensor) -> str:
        key = id(t)
        if key in node_ids:
            return node_ids[key]
        nid = f"t{len(node_ids)}"
        node_ids[key] = nid
        keep.append(t)
        lines = []
        if key in names:
            lines.append(names[key])
        elif t is tensor:
            lines.append("output")
        lines.append(f"{_shape(t)} {t.dtype}")
        if t.size == 1 and t is tensor:
            lines.append(f"value {float(t.data.reshape(-1)[0]):.6g}")
        if t.grad is not None:
            lines.append(f"||grad|| {_norm(t.grad)}")
        if t is tensor:
            kind = "root"
        elif t._ctx is not None:
            kind = "intermediate"
        elif isinstance(t, Parameter) or key in names:
            kind = "parameter"
        elif t.requires_grad:
            kind = "leaf"
        else:
            kind = "constant"
        nodes.append(f"  {nid} [label={_quote(chr(10).join(lines))}, {_STYLE[kind]}];")
        return nid

    def op_node(ctx: Function) -> str:
        nonlocal freed
        nid = f"op{len(node_ids)}"
        node_ids[id(ctx)] = nid
        keep.append(ctx)
        label = type(ctx).__name__
        if ctx.parents is None:
            freed = True
            nodes.append(f"  {nid} [label={_quote(label + chr(10) + '(graph freed by backward())')}, "
                         f"{_STYLE['freed']}];")
        else:
            nodes.append(f"  {nid} [label={_quote(label)}, {_STYLE['op']}];")
        return nid

    # Depth-first with an explicit stack (no recursion: a chain of 100,000 ops is fine).
    tensor_node(tensor)
    stack = [tensor]
    while stack:
        t = stack.pop()
        ctx = t._ctx
        if ctx is None or id(ctx) in node_ids:
            continue
        op = op_node(ctx)
        edges.append(f"  {op} -> {node_ids[id(t)]};")
        for p in ctx.parents or ():
            seen = id(p) in node_ids
            edges.append(f"  {tensor_node(p)} -> {op};")
            if not seen:
                stack.append(p)

    head = [f"digraph {_quote(name)} {{",
            "  // made by backprop.viz.draw_graph: tensors are boxes, operations ellipses",
            '  graph [rankdir=TB, fontname="Helvetica"];',
            '  node [fontname="Helvetica", fontsize=10];',
            '  edge [arrowsize=0.7];']
    if freed:
        head.append("  // the graph was freed by backward(): draw before backward, or call "
                    "backward(retain_graph=True)")
    return "\n".join([*head, *nodes, *edges, "}"]) + "\n"


def draw_graph(
    tensor: Tensor,
    path: str | os.PathLike[str] | None = None,
    format: str | None = None,
    params: Mapping[str, Tensor] | Any | None = None,
) -> str:
    """Write the computational graph of ``tensor`` to ``path`` and return the path written.

    ``format`` is ``"dot"`` (also for ``.gv``), ``"svg"``, ``"png"`` or ``"pdf"``; by default it follows the
    suffix of ``path`` (no suffix: DOT). The rendered formats run Graphviz's ``dot`` program; when it is not
    installed the DOT file is written beside ``path`` instead (``graph.svg`` -> ``graph.dot``), a
    :class:`GraphvizNotFoundWarning` says in one line how to render it (``dot -Tsvg graph.dot -o graph.svg``)
    and how to install Graphviz, and that ``.dot`` path is returned. ``path=None`` writes nothing and returns
    the DOT source (as :func:`to_dot`). ``params`` names the leaves: a dict ``{name: tensor}`` or a Module
    (its ``named_parameters()``).

    Call it before ``backward()``, or after ``backward(retain_graph=True)`` to see the gradient norms:
    a plain ``backward()`` frees the graph, leaving only the last operation to draw.

    >>> import os, tempfile, warnings
    >>> import backprop as bp
    >>> loss = (bp.tensor([1.0, 2.0], requires_grad=True) * 3.0).sum()
    >>> folder = tempfile.mkdtemp()
    >>> os.path.basename(draw_graph(loss, os.path.join(folder, "graph.dot")))
    'graph.dot'
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore", GraphvizNotFoundWarning)
    ...     written = draw_graph(loss, os.path.join(folder, "graph.svg"))   # graph.dot without Graphviz
    >>> os.path.basename(written) in ("graph.svg", "graph.dot") and os.path.exists(written)
    True
    """
    source = to_dot(tensor, params)
    if path is None:
        return source
    path = os.fspath(path)
    fmt = (format or os.path.splitext(path)[1].lstrip(".") or "dot").lower()
    if fmt in DOT_SUFFIXES:
        write_text_atomic(path, source)
        return path
    if fmt not in RENDERED_FORMATS:
        raise ValueError(
            f"draw_graph: unknown format {fmt!r}; use one of {', '.join(DOT_SUFFIXES + RENDERED_FORMATS)}"
        )
    dot = shutil.which("dot")
    if dot is None:
        # NOTE: Graphviz is a system program, not a Python dependency, so its absence is common (pip cannot
        # install it); rather than fail after the graph was built, write what needs no Graphviz (the DOT
        # source, which is the whole drawing) and say in one line how to turn it into the requested picture.
        dot_path = os.path.splitext(path)[0] + ".dot"
        if os.path.abspath(dot_path) == os.path.abspath(path):  # "g.dot" asked for as SVG: keep both names apart
            dot_path = path + ".dot"
        write_text_atomic(dot_path, source)
        warnings.warn(
            f"draw_graph: Graphviz's 'dot' program is not on PATH, so wrote {dot_path} instead of {path}; "
            f"render it with: dot -T{fmt} {shlex.quote(dot_path)} -o {shlex.quote(path)} "
            f"({_INSTALL_GRAPHVIZ})",
            GraphvizNotFoundWarning,
            stacklevel=2,
        )
        return dot_path
    proc = subprocess.run([dot, f"-T{fmt}"], input=source.encode("utf-8"), capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"draw_graph: dot -T{fmt} failed: {proc.stderr.decode(errors='replace').strip()}")

    write_bytes_atomic(path, proc.stdout)
    return path

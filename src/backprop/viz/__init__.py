"""Pictures of what backprop computes: the computational graph behind a tensor.

``import backprop`` is enough: ``backprop.viz`` is imported on first use.

>>> import backprop as bp
>>> loss = (bp.tensor([1.0, 2.0], requires_grad=True) ** 2).sum()
>>> bp.viz.draw_graph(loss).startswith("digraph")   # draw_graph(loss, "graph.svg", params=model) writes a file
True
"""

from backprop.viz.graph import GraphvizNotFoundWarning, draw_graph, to_dot

__all__ = ["GraphvizNotFoundWarning", "draw_graph", "to_dot"]

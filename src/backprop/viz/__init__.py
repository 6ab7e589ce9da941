"""Pictures of what backprop computes: the computational graph behind a tensor.

>>> from backprop.viz import draw_graph    # draw_graph(loss, "graph.svg", params=model)
"""

from backprop.viz.graph import draw_graph, to_dot

__all__ = ["draw_graph", "to_dot"]

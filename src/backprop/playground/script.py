"""The playground's "export as Python": a script that trains the page's network with backprop's own API.

The script draws the same data (or carries it, for an uploaded file or added points), builds the same
``bp.nn.Sequential`` after ``bp.manual_seed(seed)``, and runs the same number of iterations of
``bp.training.Step`` over ``bp.training.batches``: it reaches the page's weights to the bit, then prints
the losses and saves the model (``backprop.io.load`` reads it back).

>>> from backprop.playground import Config, Session
>>> text = script(Session(Config(hidden=(3,), activations=("relu",))))
>>> "bp.nn.Linear(2, 3, dtype=np.float64), bp.nn.ReLU()," in text and "step.train_step(batch)" in text
True
>>> compile(text, "playground.py", "exec") is not None
True
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["script"]

_FEATURE_CODE = {"x1": "x1", "x2": "x2", "x1sq": "x1 * x1", "x2sq": "x2 * x2", "x1x2": "x1 * x2",
                 "sinx1": "np.sin(x1)", "sinx2": "np.sin(x2)"}
_ACT_CODE = {"tanh": "bp.nn.Tanh()", "relu": "bp.nn.ReLU()", "sigmoid": "bp.nn.Sigmoid()",
             "linear": "bp.nn.Identity()", "gelu": "bp.nn.GELU()"}
_OPT_CODE = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop"}


def _array(a: np.ndarray) -> str:
    """NumPy source for ``a``, exact (repr of float64 round-trips)."""
    dtype = "np.int64" if a.dtype.kind in "iu" else "np.float64"
    return f"np.array({a.tolist()!r}, dtype={dtype})"


def script(session: Any) -> str:
    """The Python source that retrains ``session`` (a :class:`~backprop.playground.session.Session`)."""
    c, d = session.config, session.data
    q = c.to_query() if c.dataset != "csv" else "(an uploaded CSV file: the data are written out below)"
    lines = [
        '"""Train the network of a backprop playground run with backprop\'s own API, to the same weights.',
        "",
        f"Exported at iteration {session.iteration}; the page's configuration (the URL's query):",
        f"    {q}",
        "Run:  python this_file.py [model.safetensors]",
        '"""',
        "import sys",
        "",
        "import numpy as np",
        "",
        "import backprop as bp",
    ]
    generated = c.dataset != "csv"
    if generated:
        lines.append("from backprop.playground.datasets import make, split")
    lines += ["", f"SEED = {c.seed}", f"ITERATIONS = {session.iteration}", ""]
    if generated:
        lines += [
            (f"# the data: the {c.dataset!r} set, {c.samples} points, noise {c.noise}%, {c.train_percent}% of them "
             "for training (drawn from the seed)"),
            (f"x, y, task, classes = make({c.dataset!r}, samples={c.samples}, noise={c.noise}, seed=SEED, "
             f"classes={c.classes})"),
            f"(x_train, y_train), (x_test, y_test) = split(x, y, train_percent={c.train_percent}, seed=SEED)",
        ]
        if c.points:
            n = len(c.points)
            lines += [
                f"# the {n} point(s) added in the page, appended to the training set",
                f"x_train = np.concatenate([x_train, {_array(d.x_train[-n:])}])",
                f"y_train = np.concatenate([y_train, {_array(d.y_train[-n:])}])",
            ]
    else:
        lines += [
            "# the data of the uploaded file, as the page split it",
            f"x_train = {_array(d.x_train)}",
            f"y_train = {_array(d.y_train)}",
            f"x_test = {_array(d.x_test)}",
            f"y_test = {_array(d.y_test)}",
        ]
    feats = ", ".join(_FEATURE_CODE[f] for f in c.features)
    lines += [
        "",
        "",
        "def inputs(x):",
        f'    """What the input layer sees: {", ".join(c.features)}."""',
        "    x1, x2 = x[:, 0], x[:, 1]",
        f"    return np.stack([{feats}], axis=1)",
        "",
        "",
        "f_train, f_test = inputs(x_train), inputs(x_test)",
    ]
    if d.task == "regression":
        lines.append("y_train, y_test = y_train[:, None], y_test[:, None]  # one output unit")
    sizes = [len(c.features), *c.hidden, session.n_out]
    layer_lines = []
    for i in range(len(sizes) - 1):
        parts = [f"bp.nn.Linear({sizes[i]}, {sizes[i + 1]}, dtype=np.float64)"]
        if i < len(c.hidden):
            parts.append(_ACT_CODE[c.activations[i]])
            if c.dropout > 0:
                parts.append(f"bp.nn.Dropout({c.dropout!r})")
        layer_lines.append("    " + ", ".join(parts) + ",")
    if session.out_act == "sigmoid" and c.loss == "quadratic":
        layer_lines.append("    bp.nn.Sigmoid(),  # the quadratic cost compares sigmoid outputs with one-hot targets")
    lines += ["", "bp.manual_seed(SEED)  # the initial weights and the dropout masks", "model = bp.nn.Sequential(",
              *layer_lines, ")"]
    init = {"xavier": ["bp.nn.init.xavier_uniform_(layer.weight)", "bp.nn.init.zeros_(layer.bias)"],
            "he": ['bp.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")', "bp.nn.init.zeros_(layer.bias)"],
            "zeros": ["bp.nn.init.zeros_(layer.weight)", "bp.nn.init.zeros_(layer.bias)"]}.get(c.init)
    if init:
        lines += ["for layer in model.layers:", "    if isinstance(layer, bp.nn.Linear):",
                  *("        " + s for s in init)]
    else:
        lines.append("# initialisation: nn.Linear's own, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as in PyTorch")
    momentum = f", momentum={c.momentum!r}" if c.optimizer in ("sgd", "rmsprop") else ""
    lines.append(f"optimizer = bp.optim.{_OPT_CODE[c.optimizer]}(model.parameters(), lr={c.lr!r}{momentum}, "
                 f"weight_decay={c.l2!r})  # weight_decay: the L2 term")
    sched = {"step": f"bp.optim.lr_scheduler.StepLR(optimizer, step_size={c.decay_steps}, gamma=0.5)",
             "exponential": f"bp.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.5 ** (1.0 / {c.decay_steps}))",
             "cosine": f"bp.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max={c.decay_steps})"}.get(c.schedule)
    if sched:
        lines.append(f"scheduler = {sched}  # stepped every iteration")
    n_train = len(d.x_train)
    per_epoch = -(-n_train // c.batch_size)
    lines += [
        f'step = bp.training.Step(model, optimizer, "{c.loss}")  # forward, loss, backward, update: one mini-batch',
        f"data = bp.training.batches(f_train, y_train, batch_size={c.batch_size}, seed=SEED)  # reshuffled every epoch",
        "",
        (f"# {n_train} training samples, batch {c.batch_size}: ceil({n_train}/{c.batch_size}) = {per_epoch} "
         "iterations per epoch"),
        "iteration = 0",
        "while iteration < ITERATIONS:",
        "    for batch in data:",
        "        step.train_step(batch)",
        *(["        scheduler.step()"] if sched else []),
        "        iteration += 1",
        "        if iteration == ITERATIONS:",
        "            break",
        "",
        "model.eval()",
        f'loss = bp.nn.losses.get_loss("{c.loss}")',
        "with bp.no_grad():",
        "    out_train, out_test = model(bp.tensor(f_train)), model(bp.tensor(f_test))",
        "    train_loss, test_loss = loss(out_train, y_train).item(), loss(out_test, y_test).item()",
        'print(f"iteration {iteration}: train loss {train_loss:.6f}, test loss {test_loss:.6f}")',
    ]
    if d.task == "classification":
        pred = ("(out_test.data[:, 0] > 0).astype(int)" if c.loss == "bce" else "out_test.data.argmax(axis=1)")
        lines.append(f'print(f"test accuracy {{np.mean({pred} == y_test):.4f}}")')
    lines += [
        'path = sys.argv[1] if len(sys.argv) > 1 else "playground-model.safetensors"',
        "bp.io.save(model, path)",
        'print(f"saved {path}")',
        "",
    ]
    return "\n".join(lines)

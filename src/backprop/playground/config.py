"""The playground's configuration: every field, its range, its check, and its form in the page's URL.

A :class:`Config` is everything that decides a run: the data (set, size, noise, split, seed, added points),
the input features, the network, the loss, the optimizer and its schedule, the batch size, L2, dropout, the
initialisation and the stop condition. With the same Config a run is the same to the bit, so the page keeps
it in its URL (:meth:`Config.to_query` / :meth:`Config.from_query`) and a link reproduces the run. Every value
from the page is checked here (:meth:`Config.with_field`); a bad one raises :class:`ConfigError` naming the
field and what it accepts.

>>> c = Config()
>>> c.with_field("lr", 0.1).lr
0.1
>>> config, errors = Config.from_query(c.with_field("hidden", [8, 8]).to_query())
>>> config.hidden, config.activations, errors
((8, 8), ('tanh', 'tanh'), [])
>>> try:
...     c.with_field("lr", -1)
... except ConfigError as e:
...     print(e)
lr: expected a number in (0, 10], got -1
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

from backprop.playground.datasets import DATASETS, DOMAIN, FEATURES, REGRESSION

__all__ = ["ACTIVATIONS", "INITS", "LOSSES", "MAX_LAYERS", "MAX_NEURONS", "MAX_POINTS", "OPTIMIZERS", "SCHEDULES",
           "Config", "ConfigError"]

ACTIVATIONS = ("tanh", "relu", "sigmoid", "linear", "gelu")
LOSSES = ("cross_entropy", "bce", "quadratic")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "step", "exponential", "cosine")
INITS = ("xavier", "he", "pytorch", "zeros")
MAX_LAYERS, MAX_NEURONS, MAX_POINTS = 6, 8, 200


class ConfigError(ValueError):
    """A value the playground does not accept: ``field`` names it; the message says what it accepts."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


# ------------------------------------------------------------------------------------------- the checks
def _int(lo: int, hi: int) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if isinstance(v, str):
            v = v.strip()
            v = int(v) if v.lstrip("-").isdigit() else v
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ValueError(f"expected a whole number from {lo} to {hi}, got {v!r}")
        return int(v)
    return check


def _float(lo: float, hi: float, lo_open: bool = False) -> Callable[[Any], float]:
    def check(v: Any) -> float:
        try:
            f = float(v) if not isinstance(v, bool) else math.nan
        except (TypeError, ValueError):
            f = math.nan
        if not math.isfinite(f) or f > hi or f < lo or (lo_open and f == lo):
            where = f"({lo:g}, {hi:g}]" if lo_open else f"[{lo:g}, {hi:g}]"
            raise ValueError(f"expected a number in {where}, got {v!r}")
        return f
    return check


def _optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def opt(v: Any) -> Any:
        return None if v is None or v == "" or v == "none" else check(v)
    return opt


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if not isinstance(v, str) or v not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {v!r}")
        return v
    return check


def _list(item: Callable[[Any], Any], lo: int, hi: int, what: str) -> Callable[[Any], tuple]:
    def check(v: Any) -> tuple:
        if isinstance(v, str):
            v = [s for s in v.split(",") if s != ""]
        if not isinstance(v, (list, tuple)) or not lo <= len(v) <= hi:
            raise ValueError(f"expected {lo} to {hi} {what}, got {v!r}"[:200])
        return tuple(item(x) for x in v)
    return check


def _features(v: Any) -> tuple[str, ...]:
    names = _list(_choice(tuple(FEATURES)), 1, len(FEATURES), "features")(v)
    if len(set(names)) != len(names):
        raise ValueError(f"a feature is listed twice: {', '.join(names)}")
    return tuple(n for n in FEATURES if n in names)  # the page's order


def _points(v: Any) -> tuple[tuple[float, float, float], ...]:
    """Added points: [[x1, x2, label], ...] or, in the URL, 'x1:x2:label;...'."""
    if isinstance(v, str):
        v = [p.split(":") for p in v.split(";") if p]
    if not isinstance(v, (list, tuple)) or len(v) > MAX_POINTS:
        raise ValueError(f"expected at most {MAX_POINTS} points [x1, x2, label]")
    coordinate = _float(-DOMAIN, DOMAIN)
    out = []
    for p in v:
        if not isinstance(p, (list, tuple)) or len(p) != 3:
            raise ValueError(f"a point is [x1, x2, label], got {p!r}"[:120])
        out.append((round(coordinate(p[0]), 3), round(coordinate(p[1]), 3), round(_float(-1.0, 9.0)(p[2]), 3)))
    return tuple(out)


#: field -> (check, URL key). The checks take the page's JSON values or the URL's strings.
FIELDS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "dataset": (_choice((*DATASETS, "csv")), "dataset"),
    "classes": (_int(3, 5), "classes"),
    "samples": (_int(20, 2000), "samples"),
    "noise": (_int(0, 50), "noise"),
    "train_percent": (_int(10, 90), "train"),
    "seed": (_int(0, 2**31 - 1), "seed"),
    "features": (_features, "features"),
    "hidden": (_list(_int(1, MAX_NEURONS), 0, MAX_LAYERS, "hidden layer sizes"), "hidden"),
    "activations": (_list(_choice(ACTIVATIONS), 0, MAX_LAYERS, "activations"), "act"),
    "loss": (_choice(LOSSES), "loss"),
    "optimizer": (_choice(OPTIMIZERS), "opt"),
    "lr": (_float(0.0, 10.0, lo_open=True), "lr"),
    "momentum": (_float(0.0, 0.99), "momentum"),
    "schedule": (_choice(SCHEDULES), "schedule"),
    "decay_steps": (_int(1, 1_000_000), "decay"),
    "batch_size": (_int(1, 2000), "batch"),
    "l2": (_float(0.0, 1.0), "l2"),
    "dropout": (_float(0.0, 0.9), "dropout"),
    "init": (_choice(INITS), "init"),
    "stop_loss": (_optional(_float(0.0, 100.0)), "stop_loss"),
    "stop_accuracy": (_optional(_float(0.0, 100.0, lo_open=True)), "stop_acc"),
    "stop_iterations": (_optional(_int(1, 10_000_000)), "stop_iter"),
    "points": (_points, "points"),
}
_BY_KEY = {key: name for name, (_, key) in FIELDS.items()}


@dataclass(frozen=True)
class Config:
    """Everything that decides a run (see the module's docstring); checked as a whole by :meth:`checked`."""

    dataset: str = "circle"
    classes: int = 3
    samples: int = 500
    noise: int = 0
    train_percent: int = 50
    seed: int = 1
    features: tuple[str, ...] = ("x1", "x2")
    hidden: tuple[int, ...] = (4, 2)
    activations: tuple[str, ...] = ("tanh", "tanh")
    loss: str = "cross_entropy"
    optimizer: str = "sgd"
    lr: float = 0.03
    momentum: float = 0.0
    schedule: str = "constant"
    decay_steps: int = 1000
    batch_size: int = 10
    l2: float = 0.0
    dropout: float = 0.0
    init: str = "xavier"
    stop_loss: float | None = None
    stop_accuracy: float | None = None
    stop_iterations: int | None = None
    points: tuple[tuple[float, float, float], ...] = ()

    # ------------------------------------------------------------------------------------- derived
    @property
    def task(self) -> str:
        """"classification" or "regression" (a CSV upload's task is the session's, see Session)."""
        return "regression" if self.dataset in REGRESSION else "classification"

    # ------------------------------------------------------------------------------------- checks
    def checked(self, task: str | None = None, classes: int | None = None) -> Config:
        """The whole configuration checked for consistency (the loss against the task, the activations against
        the layers); raises ConfigError. ``task``/``classes``: those of the data when they are not the set's
        (an uploaded CSV file)."""
        task = task or self.task
        k = classes if classes is not None else (self.classes if self.dataset == "blobs" else 2)
        if len(self.activations) != len(self.hidden):
            raise ConfigError("activations", f"one activation per hidden layer: {len(self.hidden)} layer(s), "
                              f"{len(self.activations)} activation(s)")
        if task == "regression" and self.loss != "quadratic":
            raise ConfigError("loss", f"a regression set is trained with the squared error (quadratic), not {self.loss}")
        if task == "classification" and self.loss == "bce" and k != 2:
            raise ConfigError("loss", f"binary cross-entropy is for 2 classes; this set has {k}: use cross_entropy")
        for x1, x2, label in self.points:
            if task == "classification" and (label != int(label) or not 0 <= label < k):
                raise ConfigError("points", f"a point's class must be 0 to {k - 1}, got {label:g}")
            if task == "regression" and not -1 <= label <= 1:
                raise ConfigError("points", f"a point's target must be in [-1, 1], got {label:g}")
        return self

    def with_field(self, name: str, value: Any) -> Config:
        """A copy with ``name`` set to ``value`` (checked); raises ConfigError for an unknown field or a bad value.

        Changing the number of hidden layers keeps the activations in step (a new layer takes the last one's);
        changing the data set to one of another task picks that task's loss.
        """
        if name not in FIELDS:
            raise ConfigError(str(name)[:40], f"not a setting of the playground (settings: {', '.join(FIELDS)})")
        try:
            value = FIELDS[name][0](value)
        except ValueError as e:
            raise ConfigError(name, str(e)) from None
        changes: dict[str, Any] = {name: value}
        if name == "hidden":
            acts = list(self.activations[: len(value)])
            acts += [acts[-1] if acts else "tanh"] * (len(value) - len(acts))
            changes["activations"] = tuple(acts)
        if name == "dataset" and value != "csv":
            new_task = "regression" if value in REGRESSION else "classification"
            if new_task != self.task or value != self.dataset:
                changes["points"] = ()  # points of another set (their classes) do not carry over
            if new_task == "regression":
                changes["loss"] = "quadratic"
            elif self.loss == "quadratic" and self.task == "regression" or (self.loss == "bce" and value == "blobs"):
                changes["loss"] = "cross_entropy"
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------------------------- JSON and URL
    def to_json(self) -> dict[str, Any]:
        return {name: (list(map(list, v)) if name == "points" else list(v) if isinstance(v, tuple) else v)
                for name, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Config:
        """A Config from the page's JSON (every field checked); unknown fields are errors."""
        config = cls()
        for name, value in data.items():
            config = config.with_field(name, value)
        return config.checked() if config.dataset != "csv" else config

    def to_query(self) -> str:
        """The URL query string (without "?") that :meth:`from_query` reads back to this Config."""
        pairs = []
        for name, (_, key) in FIELDS.items():
            v = getattr(self, name)
            if v is None:
                continue
            if name == "points":
                if not v:
                    continue
                v = ";".join(":".join(f"{c:g}" for c in p) for p in v)
            elif isinstance(v, tuple):
                v = ",".join(str(i) for i in v)
            elif isinstance(v, float):
                v = repr(v)
            pairs.append((key, str(v)))
        return urlencode(pairs, safe=",:;")

    @classmethod
    def from_query(cls, query: str) -> tuple[Config, list[ConfigError]]:
        """The Config of a URL query (a leading "?" is fine) and the errors of the fields that were left at
        their defaults because their value was bad or their key unknown."""
        config, errors = cls(), []
        pairs = parse_qsl(query.lstrip("?"), keep_blank_values=True)
        hidden = [v for k, v in pairs if k == "hidden"]
        if hidden:  # NOTE: the layers first, so that the activations that follow are checked against them
            pairs = [("hidden", hidden[-1])] + [(k, v) for k, v in pairs if k != "hidden"]
        for key, value in pairs:
            name = _BY_KEY.get(key)
            try:
                if name is None:
                    raise ConfigError(key[:40], "not a setting of the playground")
                config = config.with_field(name, value)
            except ConfigError as e:
                errors.append(e)
        for _ in range(3):  # NOTE: an inconsistent whole: reset the field at fault to what fits, and say so
            try:
                return (config.checked() if config.dataset != "csv" else config), errors
            except ConfigError as e:
                errors.append(e)
                fixes = {"loss": "quadratic" if config.task == "regression" else "cross_entropy",
                         "activations": (config.activations + ("tanh",) * len(config.hidden))[: len(config.hidden)],
                         "points": ()}
                config = dataclasses.replace(config, **{e.field: fixes[e.field]})
        return cls(), errors

"""The playground's messages, checked field by field, and the worker thread that runs a session for one page.

The page sends JSON objects with a ``type`` (:data:`MESSAGES` lists each type with its fields); anything
else (an unknown type or field, a value of the wrong kind or out of range, a message over
:data:`MAX_MESSAGE` bytes) is refused by :func:`parse` with a :class:`ProtocolError` that the page shows,
and nothing reaches the worker. A :class:`Worker` owns one :class:`~backprop.playground.session.Session`
and runs it in its own thread; it answers through an :class:`Outbox`: messages in order (errors, exports,
explanations) and frames of which only the latest is kept, so a slow page never makes the worker wait or
memory grow. While playing it runs as many steps as fit in a frame's time and sends at most
:data:`FPS` frames a second. No error stops the worker: it reports it and waits for the next message.

>>> parse('{"type": "set", "field": "lr", "value": 0.1}')
{'type': 'set', 'field': 'lr', 'value': 0.1}
>>> try:
...     parse('{"type": "step", "speed": 3}')
... except ProtocolError as e:
...     print(e)
step: unknown field 'speed' (fields: type)
>>> box = Outbox(); w = Worker(box); w.submit(parse('{"type": "hello", "query": "hidden=3&act=relu"}'))
>>> w.submit({"type": "step"}); got = []
>>> while not any(m["type"] == "frame" and m["iteration"] == 1 for m in got):
...     got += box.take(); time.sleep(0.01)
>>> w.close(); [m["type"] for m in got][:2], got[-1]["phase"]
(['hello', 'model'], 'update')
"""

from __future__ import annotations

import base64
import json
import math
import queue
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from backprop.playground.config import FIELDS, Config, ConfigError
from backprop.playground.datasets import CSV_MAX_BYTES, DOMAIN, CSVError, parse_csv
from backprop.playground.session import Diverged, Session

__all__ = ["FPS", "MAX_MESSAGE", "MESSAGES", "Outbox", "ProtocolError", "Worker", "dumps", "parse"]

FPS = 30
MAX_MESSAGE = CSV_MAX_BYTES + 64_000  # an upload is the largest message: the file and a little JSON
SPEEDS = ("max",) + tuple(str(n) for n in (1, 2, 5, 10, 20, 50, 100))


class ProtocolError(ValueError):
    """A message the playground does not accept; ``field`` names the bad field (or "message")."""

    def __init__(self, message: str, field: str = "message") -> None:
        super().__init__(message)
        self.field = field


# ------------------------------------------------------------------------------------------- the checks
def _int(lo: int, hi: int) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ValueError(f"expected a whole number from {lo} to {hi}, got {v!r}"[:160])
        return v
    return check


def _number(lo: float, hi: float) -> Callable[[Any], float]:
    def check(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
            raise ValueError(f"expected a number from {lo:g} to {hi:g}, got {v!r}"[:160])
        return float(v)
    return check


def _text(limit: int) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if not isinstance(v, str) or len(v) > limit:
            raise ValueError(f"expected text of at most {limit} characters")
        return v
    return check


def _one_of(options: tuple[str, ...]) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if v not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {v!r}"[:160])
        return v
    return check


def _field_name(v: Any) -> str:
    if v not in FIELDS:
        raise ValueError(f"not a setting of the playground, got {v!r}"[:120])
    return v


def _any_json(v: Any) -> Any:
    return v  # NOTE: checked by Config.with_field against the field it is for


#: type -> {field: check} (``type`` itself aside). Every field is required.
MESSAGES: dict[str, dict[str, Callable[[Any], Any]]] = {
    "hello": {"query": _text(8000)},
    "set": {"field": _field_name, "value": _any_json},
    "play": {}, "pause": {}, "reset": {}, "step": {}, "substep": {},
    "speed": {"value": _one_of(SPEEDS)},
    "sample": {"index": _int(0, 1999)},
    "explain": {"layer": _int(1, 7), "from": _int(0, 7), "to": _int(0, 9)},
    "export": {"what": _one_of(("model", "script"))},
    "upload": {"name": _text(200), "text": _text(CSV_MAX_BYTES)},
    "add_point": {"x1": _number(-DOMAIN, DOMAIN), "x2": _number(-DOMAIN, DOMAIN), "label": _number(-1, 9)},
    "clear_points": {},
}


def parse(text: str | bytes) -> dict[str, Any]:
    """A message from the page, checked: its type known, its fields exactly those of the type, each in range."""
    if len(text) > MAX_MESSAGE:
        raise ProtocolError(f"the message is {len(text)} bytes; at most {MAX_MESSAGE} are accepted")
    try:
        msg = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("a message must be a JSON object") from None
    if not isinstance(msg, dict):
        raise ProtocolError("a message must be a JSON object")
    kind = msg.get("type")
    if kind not in MESSAGES:
        raise ProtocolError(f"unknown message type {str(kind)[:40]!r} (types: {', '.join(MESSAGES)})", "type")
    spec = MESSAGES[kind]
    for key in msg:
        if key != "type" and key not in spec:
            raise ProtocolError(f"{kind}: unknown field {str(key)[:40]!r} (fields: {', '.join(['type', *spec])})", key)
    out: dict[str, Any] = {"type": kind}
    for key, check in spec.items():
        if key not in msg:
            raise ProtocolError(f"{kind}: the field {key!r} is missing", key)
        try:
            out[key] = check(msg[key])
        except ValueError as e:
            raise ProtocolError(f"{kind}: {key}: {e}", key) from None
    return out


def _finite(v: Any) -> Any:
    """``v`` with every NaN or infinity replaced by None (JSON has neither)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def dumps(msg: dict[str, Any]) -> str:
    """A message as JSON text (non-finite numbers as null)."""
    try:
        return json.dumps(msg, allow_nan=False, separators=(",", ":"))
    except ValueError:
        return json.dumps(_finite(msg), allow_nan=False, separators=(",", ":"))


# ------------------------------------------------------------------------------------------- the outbox
class Outbox:
    """What the worker sends: messages in order (at most 64 waiting) and the latest frame.

    ``notify`` (optional) is called, from the worker's thread, whenever there is something to take.
    """

    def __init__(self, notify: Callable[[], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._messages: deque[dict[str, Any]] = deque(maxlen=64)
        self._frame: dict[str, Any] | None = None
        self.notify = notify

    def put(self, msg: dict[str, Any]) -> None:
        with self._lock:
            self._messages.append(msg)
        if self.notify is not None:
            self.notify()

    def put_frame(self, frame: dict[str, Any]) -> None:
        with self._lock:
            self._frame = frame  # NOTE: an unsent older frame is dropped: the page only needs the latest
        if self.notify is not None:
            self.notify()

    def take(self) -> list[dict[str, Any]]:
        """Everything waiting: the messages in order, then the latest frame."""
        with self._lock:
            out = list(self._messages)
            self._messages.clear()
            if self._frame is not None:
                out.append(self._frame)
                self._frame = None
        return out


def error(message: str, field: str | None = None) -> dict[str, Any]:
    return {"type": "error", "message": message, "field": field}


# ------------------------------------------------------------------------------------------- the worker
_CLOSE = object()


class Worker:
    """One page's session in its own thread (see the module docstring); ``submit`` checked messages."""

    def __init__(self, outbox: Outbox, fps: float = FPS) -> None:
        self.outbox, self.fps = outbox, fps
        self.id = uuid.uuid4().hex
        self.session: Session | None = None
        self.running = False
        self.speed = "max"
        self._dirty = False
        self._inbox: queue.Queue[Any] = queue.Queue(maxsize=256)
        self._thread = threading.Thread(target=self._loop, name=f"playground-{self.id[:8]}", daemon=True)
        self._thread.start()

    def submit(self, msg: dict[str, Any]) -> None:
        """Queue a message parsed by :func:`parse` (a full queue: an error, the message dropped)."""
        try:
            self._inbox.put_nowait(msg)
        except queue.Full:
            self.outbox.put(error("too many messages at once: this one was dropped"))

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread (after the messages already queued) and wait for it."""
        self._inbox.put(_CLOSE)
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # ---------------------------------------------------------------------------------------- the loop
    def _loop(self) -> None:
        last = 0.0
        while True:
            idle = not self.running and not self._dirty
            try:
                msg = self._inbox.get() if idle else self._inbox.get_nowait()
            except queue.Empty:
                msg = None
            if msg is _CLOSE:
                return
            if msg is not None:
                self._safely(self._handle, msg)
                continue  # NOTE: every waiting message first: a frame shows the result of all of them
            if self.running:
                self._safely(self._play)
            if self._dirty and self.session is not None:
                if self.running:  # at most fps frames a second
                    wait = last + 1.0 / self.fps - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
                self._dirty = False
                self._safely(self._publish)
                last = time.perf_counter()

    def _safely(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except (ConfigError, ProtocolError, CSVError) as e:
            self.outbox.put(error(str(e), getattr(e, "field", None)))
        except Diverged as e:
            self.running = False
            self._dirty = True
            self.outbox.put(error(str(e), "lr"))
        except Exception as e:  # noqa: BLE001 - the worker must survive anything; the page is told
            traceback.print_exc(file=sys.stderr)
            self.running = False
            self.outbox.put(error(f"internal error: {type(e).__name__}: {e}"[:300]))

    def _publish(self) -> None:
        frame = self.session.frame()
        frame["running"] = self.running
        frame["speed"] = self.speed
        self.outbox.put_frame(frame)

    def _play(self) -> None:
        s = self.session
        if self.speed == "max":  # as many steps as fit in ~80% of a frame's time
            deadline = time.perf_counter() + 0.8 / self.fps
            # NOTE: and at most a tenth of the iterations so far (5 at least): the start of a run, where the
            # most happens, gets frames (and points of the loss curves) in proportion
            most = max(5, s.iteration // 10)
            done = 0
            while time.perf_counter() < deadline and self.running and done < most:
                done += s.run(1)
                if s.stopped:
                    self._stop()
        else:
            s.run(int(self.speed))
            if s.stopped:
                self._stop()
        self._dirty = True

    def _stop(self) -> None:
        self.running = False
        self.outbox.put({"type": "notice", "message": f"stopped: {self.session.stopped}"})

    def _reset(self, config: Config) -> None:
        """A new run with ``config`` (the session's data checked first: a bad config leaves the old run)."""
        if self.session is None:
            self.session = Session(config)
        else:
            self.session.reset(config)
        self.outbox.put(self.session.structure())
        self._dirty = True

    # ---------------------------------------------------------------------------------------- messages
    def _handle(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == "hello":
            config, errors = Config.from_query(msg["query"])
            self.outbox.put({"type": "hello", "session": self.id, "speeds": list(SPEEDS),
                             "max_upload": CSV_MAX_BYTES, "default_query": Config().to_query()})
            for e in errors:
                self.outbox.put(error(f"in the link: {e}", e.field))
            if config.dataset == "csv":
                self.outbox.put(error("the link names uploaded data, which a link cannot carry: upload the file "
                                      "again", "dataset"))
                config = config.with_field("dataset", Config().dataset)
            try:
                self._reset(config)
            except ConfigError as e:  # NOTE: a link whose whole does not fit its data: the defaults, and why
                self.outbox.put(error(f"in the link: {e}", e.field))
                self._reset(Config())
            return
        if self.session is None:
            raise ProtocolError(f"{kind}: send hello first")
        s = self.session
        if kind == "set":
            old = s.config
            new = old.with_field(msg["field"], msg["value"])
            if new.dataset == "csv" and s.csv is None:
                raise ConfigError("dataset", "upload a CSV file first")
            self._reset(new)
            if new.loss != old.loss and msg["field"] != "loss":
                self.outbox.put({"type": "notice", "message": f"the loss is now {new.loss} (for this data set)"})
        elif kind == "reset":
            self._reset(s.config)
        elif kind == "play":
            s.stopped = None  # NOTE: the stop condition fires once (Session.stop_fired): play goes on past it
            self.running = True
            self._dirty = True
        elif kind == "pause":
            self.running = False
            self._dirty = True
        elif kind in ("step", "substep"):
            self.running = False
            (s.step if kind == "step" else s.substep)()
            if s.stopped:
                self.outbox.put({"type": "notice", "message": f"stopped: {s.stopped}"})
            self._dirty = True
        elif kind == "speed":
            self.speed = msg["value"]
            self._dirty = True
        elif kind == "sample":
            if s.batch is not None and msg["index"] >= s.batch.n:
                raise ProtocolError(f"sample: index: the batch has {s.batch.n} samples (0 to {s.batch.n - 1})", "index")
            s.set_sample(msg["index"])
            self._dirty = True
        elif kind == "explain":
            self.outbox.put({"type": "explain", **s.explain(msg["layer"], msg["from"], msg["to"])})
        elif kind == "export":
            if msg["what"] == "model":
                data = base64.b64encode(s.export_model()).decode("ascii")
                self.outbox.put({"type": "export", "what": "model", "name": "playground-model.safetensors",
                                 "mime": "application/octet-stream", "base64": data})
            else:
                self.outbox.put({"type": "export", "what": "script", "name": "playground_train.py",
                                 "mime": "text/x-python", "text": s.export_script()})
        elif kind == "upload":
            csv = parse_csv(msg["text"])
            config = s.config.with_field("dataset", "csv").with_field("points", [])
            if csv.task == "regression":
                config = config.with_field("loss", "quadratic")
            elif config.loss == "quadratic" and s.data.task == "regression" or (config.loss == "bce" and csv.classes != 2):
                config = config.with_field("loss", "cross_entropy")
            old_csv, s.csv = s.csv, csv
            try:
                self._reset(config)
            except Exception:
                s.csv = old_csv
                raise
            self.outbox.put({"type": "notice", "message": f"{msg['name'][:80]}: {len(csv.x)} rows, "
                             + (f"{csv.classes} classes" if csv.task == "classification" else "regression")})
        elif kind == "add_point":
            points = [*s.config.points, (msg["x1"], msg["x2"], msg["label"])]
            self._reset(s.config.with_field("points", points))
        elif kind == "clear_points":
            self._reset(s.config.with_field("points", []))

"""The playground's server: a small ASGI app (Starlette) with one WebSocket, run by uvicorn on 127.0.0.1.

``GET /`` is the page, ``GET /static/<name>`` its own files (an allow-list of the files in ``static/``: no
other path can be reached, whatever dots or escapes it holds), ``/ws`` the WebSocket. Each connection (a
reload, a second tab) gets its own :class:`~backprop.playground.protocol.Worker` and session, ended when the
connection closes. A WebSocket opened by a page of another origin is refused (another site in the browser
cannot drive the playground). Starlette and uvicorn are imported when the app is made: this module imports
without the extra (``pip install "backprop[playground]"``).

>>> sorted(static_files())
['app.js', 'index.html', 'style.css']
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import threading
import webbrowser
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from backprop.extras import require
from backprop.playground.protocol import MAX_MESSAGE, Outbox, ProtocolError, Worker, dumps, error, parse

__all__ = ["DEFAULT_PORT", "STATIC", "bind", "create_app", "serve", "static_files"]

STATIC = Path(__file__).with_name("static")
DEFAULT_PORT = 8765
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8"}
_HEADERS = {
    # NOTE: the page loads nothing from elsewhere (it works offline); the policy makes sure of it
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}


def static_files(folder: Path = STATIC) -> dict[str, Path]:
    """The files the server may send: name -> path, for the files of ``folder`` with a known type."""
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix in _TYPES}


def create_app(folder: Path = STATIC) -> Any:
    """The Starlette application (needs the playground extra)."""
    require("playground", needed_by="backprop playground")
    # NOTE: the optional extra, imported on first use
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    files = static_files(folder)
    listing = ", ".join(files)

    def send_file(name: str) -> Response:
        path = files[name]
        return Response(path.read_bytes(), media_type=_TYPES[path.suffix], headers=_HEADERS)

    async def index(request: Any) -> Response:
        return send_file("index.html")

    async def static(request: Any) -> Response:
        name = request.path_params["name"]
        if name not in files:  # NOTE: an allow-list: "..", "%2e%2e", absolute paths all end here
            return await not_found(request)
        return send_file(name)

    async def not_found(request: Any, exc: Any = None) -> Response:
        path = request.url.path[:200]
        return PlainTextResponse(f"not found: {path} (the playground serves only its own files: /, "
                                 f"/static/ {listing})", status_code=404, headers=_HEADERS)

    async def connect(ws: WebSocket) -> None:
        origin, host = ws.headers.get("origin"), ws.headers.get("host")
        if origin is not None and urlsplit(origin).netloc != host:
            await ws.close(code=1008, reason="the playground accepts only its own page")
            return
        await ws.accept()
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        def notify() -> None:
            with contextlib.suppress(RuntimeError):  # NOTE: the loop closed (shutdown): nobody to tell
                loop.call_soon_threadsafe(wake.set)

        outbox = Outbox(notify=notify)
        worker = Worker(outbox)

        async def sender() -> None:
            while True:
                await wake.wait()
                wake.clear()
                for msg in outbox.take():
                    await ws.send_text(dumps(msg))

        task = asyncio.create_task(sender())
        try:
            while True:
                event = await ws.receive()
                if event["type"] == "websocket.disconnect":
                    break
                text = event.get("text")
                if text is None:
                    outbox.put(error("binary messages are not accepted: send JSON text"))
                    continue
                try:
                    worker.submit(parse(text))
                except ProtocolError as e:
                    outbox.put(error(str(e), e.field))
        except WebSocketDisconnect:
            pass
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            await asyncio.to_thread(worker.close)

    routes = [Route("/", index), Route("/index.html", index), Route("/static/{name:path}", static),
              WebSocketRoute("/ws", connect)]
    return Starlette(routes=routes, exception_handlers={404: not_found})


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one); OSError with a clear message when it cannot be."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise OSError(f"cannot listen on {host}: {e.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        hint = " (--port 0 picks a free port)" if e.errno in (98, 48, 10048) else ""
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror or e}{hint}") from None
    sock.set_inheritable(True)
    return sock


def serve(host: str = "127.0.0.1", port: int = DEFAULT_PORT, open_browser: bool = True,
          out: TextIO = sys.stdout) -> int:
    """Run the playground until Ctrl-C; print its address first. Returns 0."""
    uvicorn = require("uvicorn", needed_by="backprop playground")
    app = create_app()
    sock = bind(host, port)
    actual = sock.getsockname()[1]
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{actual}/"
    print(f"backprop playground: {url}  (Ctrl-C stops it)", file=out, flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"backprop playground: listening on {host}: anyone who can reach this machine can use it", file=out,
              flush=True)
    config = uvicorn.Config(app, log_level="warning", ws_max_size=MAX_MESSAGE, timeout_graceful_shutdown=1,
                            lifespan="off")
    server = uvicorn.Server(config)
    if open_browser:
        threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # NOTE: uvicorn shuts down on Ctrl-C, then raises the signal again: a clean stop
        pass
    finally:
        sock.close()
    print("backprop playground: stopped", file=out, flush=True)
    return 0

"""The live dashboard: one local web page over a monitor folder (``OUT/<run-id>.monitor/``).

It only reads the files ``chdl monitor`` writes (layout: ``docs/monitor.md``), so it serves a running
monitor and a finished one alike, in the monitor's process (``chdl monitor --serve``, through
:func:`serve_in_background`) or on its own (``chdl dashboard``). Routes:

- ``GET /`` the page (``chdl/monitor/static/dashboard.html``: HTML, CSS and JS in one file, nothing
  fetched from elsewhere);
- ``GET /api/status`` ``status.json``; ``GET /api/events`` every complete line of ``events.jsonl``;
  ``GET /api/scores?last=N`` the last N complete lines of ``scores.jsonl`` (read from its end);
- ``GET /api/stream`` server-sent events, as they appear in the folder: ``status`` (the status object),
  ``scores`` and ``events`` (lists of new records; a new stream starts with every event and the last
  ``STREAM_SCORES`` scores), ``live`` (``{"version": str}`` when the live images
  were replaced). Each carries an id (``<scores offset>.<events offset>``) so that a reconnecting
  ``EventSource`` resumes where it stopped;
- ``GET /live/{frame,prediction,error}.png`` and ``GET /snapshots/<frame:06d>.png``: only these names,
  so no request reaches another file.

A partially written last line of a ``.jsonl`` file is left until its newline arrives; a complete line
that is not a JSON object is skipped with a warning naming the file and line. With a token, every
request must carry it (``?token=``, ``Authorization: Bearer``, or ``X-Chdl-Token``): missing -> 401,
wrong -> 403.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import re
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import anyio
import uvicorn
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.sse import KEEPALIVE_COMMENT, ServerSentEvent, format_sse_event
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from chdl.monitor import STATUS_FORMAT
from chdl.monitor.jsonl import JsonlTail, read_jsonl, tail_offset

log = logging.getLogger(__name__)

LIVE_NAMES = ("frame.png", "prediction.png", "error.png")
SNAPSHOT_NAME = re.compile(r"\d{6,}\.png")
PAGE = Path(__file__).parent / "static" / "dashboard.html"
POLL_S = 0.2  # how often a stream looks at the folder
STREAM_SCORES = 1000  # scores a new stream starts with: the page's timeline keeps its last 600 (WINDOW)
KEEPALIVE_S = 15.0  # a stream with nothing to send sends a comment this often (proxies, dead-client detection)
LOOPBACK_NAMES = ("localhost",)


class MonitorFolderError(ValueError):
    """A path that is not a readable monitor folder; the message names it and the problem."""


class DashboardConfigError(ValueError):
    """Settings the dashboard refuses (e.g. a non-loopback host without a token); one-line message."""


MIN_TOKEN = 8  # characters; `secrets.token_urlsafe()` gives 43
TOKEN_CHARS = re.compile(r"[!-~]+")  # printable ASCII without spaces: the same bytes in a URL and in a header


def check_token(token: str) -> str:
    """``token`` if it is one the dashboard accepts: at least :data:`MIN_TOKEN` printable ASCII characters, no
    spaces (HTTP headers are read as Latin-1: a non-ASCII token matched in the URL only; "   " and "x" were
    accepted for a non-loopback bind). Raises DashboardConfigError (one line) otherwise."""
    if not token:
        raise DashboardConfigError("the token is empty")
    if not TOKEN_CHARS.fullmatch(token) or len(token) < MIN_TOKEN:
        raise DashboardConfigError(f"the token must be at least {MIN_TOKEN} printable ASCII characters without "
                                   "spaces (make one with: python -c \"import secrets; print(secrets.token_urlsafe())\")")
    return token


# ---------------------------------------------------------------------------------------------------
# Reading the folder
# ---------------------------------------------------------------------------------------------------


def _not_a_folder(path: Path) -> str:
    """The one-line reason ``path`` is not a monitor folder to show."""
    if path.exists():
        return f"{path}: is a file, not a monitor folder (give the folder chdl monitor --out wrote)"
    return f"{path}: no such folder"


def read_status(monitor_dir: Path) -> dict:
    """``monitor_dir/status.json`` as a dict.

    Raises:
        MonitorFolderError: the folder or its status.json is missing, not JSON, or of another format.
    """
    monitor_dir = Path(monitor_dir)
    if not monitor_dir.is_dir():
        raise MonitorFolderError(_not_a_folder(monitor_dir))
    path = monitor_dir / "status.json"
    try:
        status = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise MonitorFolderError(f"{monitor_dir}: not a monitor folder (no status.json)") from None
    except (OSError, ValueError) as e:
        raise MonitorFolderError(f"{path}: not readable as JSON ({e})") from None
    if not isinstance(status, dict) or status.get("format") != STATUS_FORMAT:
        got = status.get("format") if isinstance(status, dict) else type(status).__name__
        raise MonitorFolderError(f"{path}: format: expected {STATUS_FORMAT!r}, got {got!r}")
    return status


def _line_end(path: Path, offset: int) -> bool:
    """Whether ``offset`` is 0 or just after a newline of the file ``path`` (a resume point a stream can have sent)."""
    if offset == 0:
        return True
    try:
        with open(path, "rb") as f:
            f.seek(offset - 1)
            return f.read(1) == b"\n"
    except OSError:
        return False


def _sse_bytes(event: ServerSentEvent) -> bytes:
    """One server-sent event on the wire: its data as JSON, NaN and infinities as null (Python's json writes NaN,
    which a browser's JSON.parse refuses)."""
    return format_sse_event(data_str=json.dumps(_finite(event.data)), event=event.event, id=event.id)


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    """(inode, mtime ns, size) of a file, None if absent: which file a path names, when and how far it was written."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class FolderFollower:
    """What one stream has sent of a monitor folder, and what is new since (:meth:`poll`)."""

    def __init__(self, monitor_dir: Path, resume_id: str | None = None):
        self.dir = monitor_dir
        self._start(resume_id)

    def _start(self, resume_id: str | None = None) -> None:
        """Where the stream begins: from ``resume_id``'s offsets, else at the last STREAM_SCORES scores."""
        # a new stream starts at the last STREAM_SCORES scores (all the page keeps), not an 8-hour run's whole
        # history (21 MB, ~30 s before a new page was current); every event is sent
        self.scores = JsonlTail(self.dir / "scores.jsonl", offset=tail_offset(self.dir / "scores.jsonl", STREAM_SCORES))
        self.events = JsonlTail(self.dir / "events.jsonl")
        self._status_key: tuple | None = None
        self._live_key: tuple | None = None
        if resume_id:  # "<scores offset>.<events offset>" from Last-Event-ID
            m = re.fullmatch(r"(\d+)\.(\d+)", resume_id.strip())
            offsets = (int(m[1]), int(m[2])) if m else None
            # only offsets this folder's files can have sent: at a line's end, within the file (a client's made-up
            # id printed "events.jsonl: shrank" or "not a JSON object" warnings about intact files); else from the start
            if offsets and all(_line_end(tail.path, o) for tail, o in zip((self.scores, self.events), offsets)):
                self.scores.offset, self.events.offset = offsets
        self._files = {tail.path: _stat_key(tail.path) for tail in (self.scores, self.events)}
        self._run_id: str | None = None

    def _replaced(self, status: dict | None, files: dict) -> str | None:
        """Why the folder now holds another run than this stream has sent (None if it does not): its .jsonl files
        (``files``: their :func:`_stat_key` now) are other files (the folder was deleted and written again) or
        shorter than what was sent, or status.json names another run. A page kept the old run's alerts under the
        new run's name, and lost the new ones."""
        if status is not None and self._run_id is not None and status.get("run_id") != self._run_id:
            return f"the folder now holds run {status.get('run_id')!r}"
        for tail in (self.scores, self.events):
            now, seen = files[tail.path], self._files[tail.path]
            if now is not None and ((seen is not None and now[0] != seen[0]) or now[2] < tail.offset):
                return f"{tail.path.name} was replaced"
        return None

    @property
    def more(self) -> bool:
        """A .jsonl file had more than one chunk to send: poll again without waiting."""
        return self.scores.more or self.events.more

    def poll(self) -> list[ServerSentEvent]:
        """The server-sent events for what changed since the last poll (status, events, scores, live)."""
        out = []
        key = _stat_key(self.dir / "status.json") if contained(self.dir, self.dir / "status.json") else None
        status = None
        if key is not None and key != self._status_key:
            try:
                status = json.loads((self.dir / "status.json").read_bytes())
            except (OSError, ValueError):
                status = None  # replaced atomically, so only a foreign writer gets here; try again
            status = status if isinstance(status, dict) else None
        files = {tail.path: _stat_key(tail.path) for tail in (self.scores, self.events)}
        if (why := self._replaced(status, files)) is not None:  # the page starts again (it reloads); so does this
            self._start()                                         # stream
            return [ServerSentEvent(event="reset", data={"reason": why}, id="0.0")]
        if status is not None:
            self._status_key, self._run_id = key, status.get("run_id")
            out.append(("status", status))
        self._files.update({path: key for path, key in files.items() if key is not None})
        for name, tail in (("events", self.events), ("scores", self.scores)):
            records = tail.read() if contained(self.dir, tail.path) else []
            if records:
                out.append((name, records))
        keys = [_stat_key(self.dir / "live" / n) if contained(self.dir, self.dir / "live" / n) else None
                for n in LIVE_NAMES]
        if all(keys) and keys != self._live_key:
            self._live_key = keys
            out.append(("live", {"version": str(max(k[1] for k in keys))}))
        cursor = f"{self.scores.offset}.{self.events.offset}"
        return [ServerSentEvent(event=event, data=data, id=cursor) for event, data in out]


# ---------------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------------


def _host_name(host: str) -> str:
    """The name or address of a ``Host`` header, without its port: ``[::1]:8790`` -> ``::1``, ``localhost:1`` ->
    ``localhost`` (a bare IPv6 address, several colons and no brackets, is taken whole); "" for a header that is
    not ``name[:port]`` with a port of digits (``127.0.0.1:1@evil.example`` was read as 127.0.0.1)."""
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        return name if rest == "" or (rest[:1] == ":" and rest[1:].isdigit()) else ""
    if host.count(":") == 1:
        name, port = host.split(":")
        return name if port.isdigit() and port.isascii() else ""
    return host


class HostGate:
    """ASGI middleware for the tokenless (loopback) dashboard: the request's ``Host`` must name this machine's
    loopback (localhost, 127.0.0.0/8, ::1), else 400. Without it a web page the operator opens could read the
    dashboard through DNS rebinding (its own name resolved to 127.0.0.1): the browser sends that name as Host."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1").strip().lower()
        name = _host_name(host)
        if name and is_loopback(name) and not any(c in host for c in ", \t"):  # ("127.0.0.1:8765, evil.example")
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        await PlainTextResponse(f"Host {host!r} is not this machine's loopback (open http://127.0.0.1:<port>/)",
                                400)(scope, receive, send)


class TokenGate:
    """ASGI middleware: every HTTP and websocket request must carry ``token``."""

    def __init__(self, app: ASGIApp, token: str):
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        request = Request(scope)
        given = request.query_params.get("token") or request.headers.get("x-chdl-token")
        auth = request.headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if given is not None and secrets.compare_digest(given.encode(), self.token):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        if given is None:
            response = PlainTextResponse("token required", 401, headers={"WWW-Authenticate": "Bearer"})
        else:
            response = PlainTextResponse("wrong token", 403)
        await response(scope, receive, send)


def contained(monitor_dir: Path, path: Path) -> bool:
    """Whether ``path`` resolves (symbolic links followed) to a file inside ``monitor_dir``: a link planted in a
    monitor folder (``snapshots/000999.png -> /etc/passwd``, ``live -> /elsewhere``) served the file it points to
    with the dashboard owner's rights."""
    try:
        return path.resolve().is_relative_to(monitor_dir.resolve())
    except (OSError, RuntimeError):  # a link loop
        return False


def _own(monitor_dir: Path, name: str) -> Path:
    """``monitor_dir / name`` where it resolves inside the folder (:func:`contained`); else HTTP 404."""
    path = monitor_dir / name
    if not contained(monitor_dir, path):
        raise HTTPException(404, f"{name}: not a file of this monitor folder")
    return path


def _png(path: Path) -> Response:
    try:
        data = path.read_bytes()  # whole, from one inode: a concurrent os.replace cannot tear it
    except (FileNotFoundError, IsADirectoryError):
        raise HTTPException(404, f"{path.parent.name}/{path.name}: not written yet") from None
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})


def create_app(monitor_dir: Path, token: str | None = None) -> FastAPI:
    """The dashboard's ASGI app over ``monitor_dir`` (a monitor folder; its files may appear later,
    as when the monitor starts the dashboard before its first status).

    ``token``: if set, every request must carry it (see the module docstring); if not, every request's ``Host``
    must name the loopback (:class:`HostGate`: no DNS rebinding).
    ``app.state.closing`` (a threading.Event), once set, ends every open stream.

    Raises:
        MonitorFolderError: ``monitor_dir`` is not a folder.
        DashboardConfigError: ``token`` is not one :func:`check_token` accepts.
    """
    monitor_dir = Path(monitor_dir)
    if not monitor_dir.is_dir():
        raise MonitorFolderError(_not_a_folder(monitor_dir))
    if token is not None:
        check_token(token)
    app = FastAPI(title="chdl dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.monitor_dir = monitor_dir
    app.state.closing = threading.Event()

    @app.api_route("/", response_class=HTMLResponse, methods=["GET", "HEAD"])  # (HEAD: uptime checks; it was 405)
    def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"), headers={"Cache-Control": "no-store"})

    @app.api_route("/api/status", methods=["GET", "HEAD"])
    def status() -> dict:
        _own(monitor_dir, "status.json")
        try:
            return read_status(monitor_dir)
        except MonitorFolderError as e:
            raise HTTPException(503, str(e)) from None

    @app.api_route("/api/events", methods=["GET", "HEAD"])
    def events() -> list[dict]:
        return read_jsonl(_own(monitor_dir, "events.jsonl"))

    @app.api_route("/api/scores", methods=["GET", "HEAD"])
    def scores(last: int = Query(1000, ge=1, le=100_000)) -> list[dict]:  # (1e6 brought back the whole-file cost)
        return read_jsonl(_own(monitor_dir, "scores.jsonl"), last=last)

    @app.get("/api/stream")
    async def stream(request: Request) -> StreamingResponse:
        follower = FolderFollower(monitor_dir, request.headers.get("last-event-id"))

        async def body() -> AsyncIterator[bytes]:
            # the folder is read in a worker thread: a new page's history (a long run's MBs) held up every other
            # request before (/api/status took 3-23 s while one to five streams started). Starlette's own
            # streaming response, not FastAPI's EventSourceResponse: that one's keepalive task raised a 70-line
            # BrokenResourceError traceback for many clients that closed a stream (fastapi discussion 15725).
            quiet = 0.0
            while not app.state.closing.is_set():
                events = await anyio.to_thread.run_sync(follower.poll)
                for event in events:
                    yield _sse_bytes(event)
                quiet = 0.0 if events else quiet
                if not follower.more:
                    await anyio.sleep(POLL_S)
                    quiet += POLL_S
                    if quiet >= KEEPALIVE_S:
                        yield KEEPALIVE_COMMENT
                        quiet = 0.0

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.api_route("/live/{name}", methods=["GET", "HEAD"])
    def live(name: str) -> Response:
        if name not in LIVE_NAMES:
            raise HTTPException(404, f"live/{name}: not a live image (one of {', '.join(LIVE_NAMES)})")
        return _png(_own(monitor_dir, f"live/{name}"))

    @app.api_route("/snapshots/{name}", methods=["GET", "HEAD"])
    def snapshot(name: str) -> Response:
        if not SNAPSHOT_NAME.fullmatch(name):
            raise HTTPException(404, f"snapshots/{name}: not a snapshot name (<frame:06d>.png)")
        return _png(_own(monitor_dir, f"snapshots/{name}"))

    if token is not None:
        app.add_middleware(TokenGate, token=token)
    else:  # loopback only (serve_in_background): only requests that name the loopback
        app.add_middleware(HostGate)
    return app


# ---------------------------------------------------------------------------------------------------
# Serving
# ---------------------------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port); port 0 picks a free one. Raises OSError (in use, bad host)."""
    host = "127.0.0.1" if host.lower() == "localhost" else host.strip("[]")
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                      flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    return sock


@dataclass
class DashboardServer:
    """A dashboard served by uvicorn in a daemon thread (from :func:`serve_in_background`)."""

    url: str  # http://HOST:PORT/ and, with a token, ?token=...
    host: str
    port: int
    app: FastAPI
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def running(self) -> bool:
        return self.thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """End the open streams, stop the server and wait for its thread (at most ``timeout`` s). The streams are
        given three polls first, so that an open page gets the folder's last state (a monitor's final "finished":
        it stayed on "running")."""
        time.sleep(3 * POLL_S)
        self.app.state.closing.set()
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> DashboardServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_in_background(monitor_dir: Path, host: str = "127.0.0.1", port: int = 0,
                        token: str | None = None) -> DashboardServer:
    """Serve the dashboard of ``monitor_dir`` on ``host:port`` from a daemon thread; returns once it
    accepts connections. ``port=0`` picks a free port (read back from the bound socket: ``.port``,
    ``.url``). A host other than localhost/127.0.0.0/8/::1 needs ``token``.

    Raises:
        DashboardConfigError: a non-loopback host without a token, or an empty token.
        MonitorFolderError: ``monitor_dir`` is not a folder.
        OSError: the address cannot be bound (in use, not an address of this machine).
        RuntimeError: the server did not start within 30 s.
    """
    if not is_loopback(host) and not token:
        raise DashboardConfigError(f"serving on {host} (not loopback) needs a token (--token or --token-file)")
    app = create_app(Path(monitor_dir), token)
    sock = _listen(host, port)
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, log_level="warning", access_log=False, ws="none",
                            lifespan="off", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="chdl-dashboard",
                              daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"the dashboard server on {host}:{bound_port} did not start")
        time.sleep(0.01)
    shown = socket.gethostname() if host.strip("[]") in ("0.0.0.0", "::") else host  # (a wildcard is not an address
    url_host = f"[{shown.strip('[]')}]" if ":" in shown else shown                   # to open: the machine's name is)
    url = f"http://{url_host}:{bound_port}/" + (f"?token={quote(token, safe='')}" if token else "")
    return DashboardServer(url=url, host=host, port=bound_port, app=app, server=server, thread=thread)

"""The exporter process: one collection thread, and HTTP endpoints that only read its last result.

A scrape never triggers a collection: `Exporter.run` refreshes the engine
once per interval and publishes an immutable `Published` (families, snapshot,
analysis); `/metrics`, `/healthz` and `/snapshot.json` read whatever was
published last, so concurrent scrapes cost one encoding each and the host's
socket table is read at one steady rate. Nothing here executes a program or
changes the system.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..analyze.config import Thresholds
from ..analyze.findings import Analysis, analyze
from ..collect.netns import Selection
from ..collect.records import BackendUnavailable, CollectError
from ..model.engine import Engine
from ..model.snapshot import Snapshot
from ..report import snapshot_document
from .metrics import DEFAULT_TOP, CloseCounters, build_families

DEFAULT_LISTEN = "127.0.0.1:9877"
DEFAULT_INTERVAL = 15.0
STALE_INTERVALS = 3  # /healthz fails when the last good collection is older than this many intervals

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


@dataclass(frozen=True, slots=True)
class Published:
    """What one collection made; replaced whole, never mutated, so readers need no lock."""

    snapshot: Snapshot
    analysis: Analysis
    families: tuple[Metric, ...]
    json_cache: dict[str, bytes] = field(default_factory=dict)  # "/snapshot.json" body, made on first request


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` as (host, port); ValueError with a one-line reason."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"invalid --listen {text!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN} "
                         "(0.0.0.0:9877 for every interface)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"invalid --listen {text!r}: port must be 0-65535 (0: any free port)")
    return host, int(port)


class Exporter(Collector):
    """Owns the engine; `run` collects once per interval, `collect` serves the last collection."""

    def __init__(self, engine: Engine, interval: float = DEFAULT_INTERVAL, top: int = DEFAULT_TOP,
                 thresholds: Thresholds | None = None) -> None:
        self.engine = engine
        self.interval = interval
        self.top = top
        self.thresholds = thresholds or Thresholds()
        self.closes = CloseCounters(top)  # carries the close counts across collections (this thread only)
        self.published: Published | None = None
        self.collections = 0
        self.errors = 0
        self.last_error = ""
        self.last_success = 0.0  # monotonic
        self.first = threading.Event()  # set after the first collection, good or bad

    def collect_once(self) -> None:
        """One refresh, analysis and family build; a failure is counted and reported (socktop_collection_errors,
        /healthz), never raised: the next interval tries again."""
        try:
            snapshot = self.engine.refresh()
            analysis = analyze(snapshot, self.thresholds)
            self.closes.update(snapshot)
            self.published = Published(snapshot, analysis,
                                       tuple(build_families(snapshot, analysis, self.top, self.closes)))
            self.last_success = time.monotonic()
            self.last_error = ""
        except (CollectError, OSError) as exc:
            self.errors += 1
            self.last_error = str(exc)
        except Exception as exc:  # noqa: BLE001 - a bug must not end the collector thread for good:
            self.errors += 1  # it is counted, /healthz turns 503 with it once the last good one is stale
            self.last_error = f"internal error: {type(exc).__name__}: {exc}"
        self.collections += 1
        self.first.set()

    def run(self, stop: threading.Event) -> None:
        """Collect at once, then every interval (measured start to start) until ``stop``."""
        while not stop.is_set():
            started = time.monotonic()
            self.collect_once()
            stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def collect(self) -> Iterator[Metric]:
        published = self.published
        if published is not None:
            yield from published.families
        yield CounterMetricFamily("socktop_collections", "Collections attempted", value=self.collections)
        yield CounterMetricFamily("socktop_collection_errors", "Collections that failed to read the table",
                                  value=self.errors)
        yield GaugeMetricFamily("socktop_interval", "Seconds between collections", value=self.interval,
                                unit="seconds")

    def health(self) -> tuple[bool, str]:
        """(healthy, one line): a good collection within STALE_INTERVALS intervals."""
        if self.published is None:
            return False, self.last_error or "no collection yet"
        age = time.monotonic() - self.last_success
        if age > STALE_INTERVALS * self.interval:
            return False, f"last good collection {age:.0f} s ago: {self.last_error or 'collector stalled'}"
        return True, f"ok: collection {self.published.snapshot.seq}, {self.published.snapshot.aggregates.total} sockets"

    def snapshot_json(self) -> bytes | None:
        """The `--json` document of the last collection (made once per collection), without command lines."""
        published = self.published
        if published is None:
            return None
        body = published.json_cache.get("body")
        if body is None:
            document = snapshot_document(published.snapshot, {"state": None, "port": None, "pid": None},
                                         published.analysis)
            for process in document["processes"]:
                process["cmdline"] = None  # over HTTP never: command lines can carry passwords and tokens
            body = json.dumps(document, indent=1, ensure_ascii=False).encode("utf-8", "backslashreplace") + b"\n"
            published.json_cache["body"] = body
        return body


def make_app(exporter: Exporter) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    """/metrics (text, or OpenMetrics by Accept), /healthz, /snapshot.json, and a short index."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(exporter)
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics(environ, start_response)
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _reply(start_response, "405 Method Not Allowed", b"GET only\n")
        if path == "/healthz":
            healthy, line = exporter.health()
            return _reply(start_response, "200 OK" if healthy else "503 Service Unavailable", line.encode() + b"\n")
        if path == "/snapshot.json":
            body = exporter.snapshot_json()
            if body is None:
                return _reply(start_response, "503 Service Unavailable", b"no collection yet\n")
            return _reply(start_response, "200 OK", body, "application/json; charset=utf-8")
        if path == "/":
            return _reply(start_response, "200 OK", INDEX)
        return _reply(start_response, "404 Not Found", b"not found: see /\n")

    return app


INDEX = (b"socktop exporter\n  /metrics        Prometheus metrics (OpenMetrics when asked by Accept)\n"
         b"  /healthz        200 when the last collection is recent, else 503\n"
         b"  /snapshot.json  the socktop --json document of the last collection\n")


def _reply(start_response: StartResponse, status: str, body: bytes,
           content_type: str = "text/plain; charset=utf-8") -> list[bytes]:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]


class _Quiet(WSGIRequestHandler):
    """No access log on stderr: a scrape every few seconds would fill the journal."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    """One thread per request, so a slow client never holds up a scrape."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up mid-reply: nothing to report, nothing to stop


@dataclass(frozen=True, slots=True)
class Tls:
    """Serve HTTPS: a certificate and its key; with ``client_ca``, only clients holding a certificate it signed."""

    cert: str
    key: str
    client_ca: str | None = None

    def context(self) -> ssl.SSLContext:
        """Raises OSError or ssl.SSLError when a file cannot be read or does not match."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert, self.key)
        if self.client_ca:
            context.load_verify_locations(self.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


def bind(host: str, port: int, exporter: Exporter, context: ssl.SSLContext | None = None) -> WSGIServer:
    """The HTTP server (HTTPS with ``context``) bound to (host, port), IPv6 when the host is;
    raises OSError when it cannot bind."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    server_class = type("Server", (_ThreadingServer,), {"address_family": family})
    server = make_server(host, port, make_app(exporter), server_class=server_class, handler_class=_Quiet)
    if context is not None:  # the handshake happens in the request's thread: a slow client holds up no one
        server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    return server


def stop_on_signals() -> threading.Event:
    """An event SIGTERM and SIGINT set (installed from the main thread, before the slow start-up).

    The handlers run in the main thread between two steps of whatever it does, maybe inside the event's
    own lock (in wait(), or in a first signal's set(): timeout(1) sends TERM twice), so they only write
    to a pipe; a thread of ours sets the event."""
    stop = threading.Event()
    read, write = os.pipe()
    os.set_blocking(write, False)

    def signalled(*_: object) -> None:
        with contextlib.suppress(OSError):  # a full pipe: a wake-up is pending already
            os.write(write, b"\0")

    def set_when_signalled() -> None:
        os.read(read, 1)
        stop.set()

    threading.Thread(target=set_when_signalled, name="socktop-signals", daemon=True).start()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signalled)
    return stop


def serve(exporter: Exporter, server: WSGIServer, stop: threading.Event) -> None:
    """Run the collector and the server until ``stop`` is set, then stop both cleanly."""
    collector = threading.Thread(target=exporter.run, args=(stop,), name="socktop-collector", daemon=True)
    http = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="socktop-http",
                            daemon=True)
    collector.start()
    http.start()
    while not stop.wait(1.0):
        pass
    server.shutdown()
    server.server_close()
    collector.join(timeout=max(5.0, exporter.interval))


def run_serve(listen: str, interval: float, top: int, backend: str, thresholds: Thresholds,
              warn: Callable[[str], None], tls: Tls | None = None, netns: Selection | None = None) -> int:
    """`socktop serve`: 0 after SIGTERM, 1 when the table cannot be read, 2 for a bad or busy --listen."""
    host, port = parse_listen(listen)
    stop = stop_on_signals()
    try:
        engine = Engine(backend, interval, netns=netns)
    except BackendUnavailable as exc:
        warn(f"error: {exc}")
        return 1
    exporter = Exporter(engine, interval, top, thresholds)
    try:
        context = tls.context() if tls else None
    except (OSError, ssl.SSLError) as exc:  # ssl.SSLError is an OSError: its reason says more
        warn(f"error: cannot use the TLS files {tls.cert if tls else ''}, {tls.key if tls else ''}: "
             f"{getattr(exc, 'reason', None) or exc.strerror or exc}")
        return 2
    try:
        server = bind(host, port, exporter, context)
    except (OSError, UnicodeError) as exc:
        warn(f"error: cannot listen on {listen}: {getattr(exc, 'strerror', None) or exc}")
        return 2
    bound = server.server_address
    scheme = "https" if tls else "http"
    warn(f"serving {scheme}://{listen.rpartition(':')[0]}:{bound[1]}/metrics every {interval:g} s "
         "(Ctrl-C or SIGTERM stops)")
    sys.stderr.flush()
    serve(exporter, server, stop)
    return 0

"""A local HTTP server with canned responses, for download tests and benchmarks.

Routes map a path to a function that answers the request; the server counts requests per path
and can add a fixed latency to each, standing in for a far-away image host.
"""
from __future__ import annotations

import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional

Route = Callable[["CannedHandler"], None]


class CannedHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so a client's connection pool is exercised

    def do_GET(self):  # noqa: N802 (http.server's naming)
        server: LocalServer = self.server
        server.count(self.path)
        if server.stopping.wait(server.latency_s):
            return
        route = server.routes.get(self.path)
        if route is None:
            send_body(self, b"no such route", "text/plain", status=404)
        else:
            route(self)

    def log_message(self, format, *args):  # quiet: tests read counts, not access logs
        pass


class LocalServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, routes: dict, latency_s: float = 0.0):
        super().__init__(("127.0.0.1", 0), CannedHandler)
        self.routes = dict(routes)
        self.latency_s = latency_s
        self.requests = Counter()
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None

    def count(self, path: str) -> None:
        with self._lock:
            self.requests[path] += 1

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def handle_error(self, request, client_address):
        pass  # a client that hung up on a slow route is expected here

    def __enter__(self) -> "LocalServer":
        self._thread = threading.Thread(target=self.serve_forever, name="local-http", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()  # wakes handlers sleeping on latency or a slow route
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)


def send_body(handler: BaseHTTPRequestHandler, body: bytes, content_type: str, status: int = 200,
              declared_length: Optional[int] = None) -> None:
    """Answer with `body`; a declared_length above len(body) sends a truncated transfer."""
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(declared_length if declared_length is not None else len(body)))
    if declared_length is not None:
        handler.send_header("Connection", "close")
        handler.close_connection = True
    handler.end_headers()
    handler.wfile.write(body)


def static(body: bytes, content_type: str = "image/jpeg", status: int = 200) -> Route:
    return lambda handler: send_body(handler, body, content_type, status)

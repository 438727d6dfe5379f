"""Proxies in front of the suite's one S3 server (the `s3_endpoint` fixture): a flaky object store.

FlakyS3Proxy answers 503 for a while. The outage starts at the first request whose method and path
match `trigger` and lasts `seconds` (None: for good); during it every request gets a plain
`503 Service Unavailable`, as S3 and MinIO answer when overloaded. The proxy counts what it
refused, so a test can show the outage was felt by reads and writes alike. StoppingS3Proxy's
endpoint goes away and comes back (its docstring says how).
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from helpers import free_port


def forward(handler: BaseHTTPRequestHandler, upstream: str, body: bytes) -> None:
    """Send `handler`'s request to `upstream` (host:port) and relay the answer to its client."""
    conn = http.client.HTTPConnection(upstream, timeout=30)
    headers = {k: v for k, v in handler.headers.items() if k.lower() != "host"}
    headers["Host"] = upstream
    conn.request(handler.command, handler.path, body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    handler.send_response(resp.status)
    for k, v in resp.getheaders():
        # A HEAD answer's Content-Length is the object's size: pass it on as it is.
        if k.lower() not in ("transfer-encoding", "connection") and (
                k.lower() != "content-length" or handler.command == "HEAD"):
            handler.send_header(k, v)
    if handler.command != "HEAD":
        handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(data)


class FlakyS3Proxy:
    def __init__(self, upstream: str, trigger: tuple[str, str], seconds: float | None):
        self.upstream = upstream.removeprefix("http://")
        self.trigger_method, self.trigger_path = trigger[0], re.compile(trigger[1])
        self.seconds = seconds
        self.outage_started: float | None = None
        self.refused: Counter = Counter()  # method -> 503s answered
        self.passed: Counter = Counter()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if proxy._in_outage(self.command, self.path):
                    payload = b"<Error><Code>ServiceUnavailable</Code><Message>flaky</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                forward(self, proxy.upstream, body)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.endpoint = f"http://127.0.0.1:{port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _in_outage(self, method: str, path: str) -> bool:
        with self._lock:
            now = time.monotonic()
            if self.outage_started is None and method == self.trigger_method and self.trigger_path.search(path):
                self.outage_started = now
            down = self.outage_started is not None and (self.seconds is None or now - self.outage_started < self.seconds)
            (self.refused if down else self.passed)[method] += 1
            return down

    def __enter__(self) -> FlakyS3Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class StoppingS3Proxy:
    """A proxy in front of the moto S3 server whose endpoint goes down for a while and comes back.

    Each outage in `outages` ((method, path regex), seconds) starts at the first request that
    matches it, once the outage before it has ended. During an outage the endpoint is gone, as a
    store restarting or a lost route leaves it: the request that triggered it, and every request
    in flight, has its connection closed unanswered; open keep-alive connections are closed; and
    the port stops listening, so new connections are refused. After `seconds` it listens on the
    same port again. `cut` lists the requests that were cut; `served` counts every request answered
    (method, path), so a test can show a cut request came back (was retried) once the store did.
    """

    def __init__(self, upstream: str, outages: list[tuple[tuple[str, str], float]]):
        self.upstream = upstream.removeprefix("http://")
        self.outages = [(method, re.compile(path), seconds) for (method, path), seconds in outages]
        self.cut: list[tuple[str, str, int]] = []  # method, path, outage number (1, 2, ...)
        self._number = 0
        self.served: Counter = Counter()
        self.down_seconds: list[float] = []
        self._lock = threading.Lock()
        self._down = False
        self._connections: set = set()
        self._threads: list[threading.Thread] = []
        self.port = free_port()  # kept: the endpoint comes back on the same port after an outage
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.server = self._listen()

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def setup(self):
                super().setup()
                with proxy._lock:
                    proxy._connections.add(self.connection)

            def finish(self):
                with proxy._lock:
                    proxy._connections.discard(self.connection)
                try:
                    super().finish()
                except OSError:
                    pass

            def _handle(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.split("?", 1)[0]
                if proxy._cut_here(self.command, path):
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)  # no answer: the client sees the connection die
                    return
                forward(self, proxy.upstream, body)
                with proxy._lock:
                    proxy.served[(self.command, path)] += 1

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        return Handler

    def _listen(self) -> ThreadingHTTPServer:
        server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())  # allow_reuse_address is set
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        self._threads.append(thread)
        return server

    def _cut_here(self, method: str, path: str) -> bool:
        with self._lock:
            if self._down:
                self.cut.append((method, path, self._number))
                return True
            if not self.outages:
                return False
            want_method, want_path, seconds = self.outages[0]
            if method != want_method or not want_path.search(path):
                return False
            self.outages.pop(0)
            self._down, self._number = True, self._number + 1
            self.cut.append((method, path, self._number))
        threading.Thread(target=self._outage, args=(seconds,), daemon=True).start()
        return True

    def _outage(self, seconds: float) -> None:
        start = time.monotonic()
        self.server.shutdown()
        self.server.server_close()  # the port stops listening: connections are refused
        with self._lock:
            open_connections = list(self._connections)
        for conn in open_connections:  # keep-alive connections die with the endpoint
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        time.sleep(max(0.0, seconds - (time.monotonic() - start)))
        self.server = self._listen()
        with self._lock:
            self._down = False
            self.down_seconds.append(round(time.monotonic() - start, 1))

    def __enter__(self) -> StoppingS3Proxy:
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

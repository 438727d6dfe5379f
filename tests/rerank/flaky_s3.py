"""An HTTP proxy in front of the moto S3 server that answers 503 for a while: a flaky object store.

The outage starts at the first request whose method and path match `trigger` and lasts
`seconds` (None: for good); during it every request gets a plain
`503 Service Unavailable`, as S3 and MinIO answer when overloaded. The proxy counts what it
refused, so a test can show the outage was felt by reads and writes alike.
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


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
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                headers["Host"] = proxy.upstream
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    # A HEAD answer's Content-Length is the object's size: pass it on as it is.
                    if k.lower() not in ("transfer-encoding", "connection") and (
                            k.lower() != "content-length" or self.command == "HEAD"):
                        self.send_header(k, v)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
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

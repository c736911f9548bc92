"""HTTP(S) servers on loopback for tests that need a peer the fakes do not play: an
MTA-STS policy host (its certificate from a test CA or the sandbox's), a server with
one fixed answer.

Each is a context manager that serves from a thread and gives its address.
"""

from __future__ import annotations

import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import trustme

from backupmx.dns import mtasts


class LoopbackServer:
    """``handler`` on 127.0.0.1 (a free port), over TLS if ``tls`` is given; ``with`` gives ``host:port``."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], tls: ssl.SSLContext | None = None):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)

    def __enter__(self) -> str:
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return f"127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class QuietHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass


def tls_for(ca: trustme.CA, names: list[str]) -> ssl.SSLContext:
    """A server's TLS with a certificate of ``ca`` for ``names``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return context


def tls_from_files(cert: str, key: str) -> ssl.SSLContext:
    """A server's TLS with the certificate and key in these PEM files (e.g. one the sandbox CA issued)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


class PolicyServer(LoopbackServer):
    """HTTPS (``tls``) serving ``body`` at ``/.well-known/mta-sts.txt``, 404 elsewhere."""

    def __init__(self, tls: ssl.SSLContext, body: str = "", status: int = 200, location: str | None = None):
        self.requests: list[tuple[str, str]] = []
        outer = self

        class Handler(QuietHandler):
            def do_GET(self):
                outer.requests.append((self.path, self.headers.get("Host")))
                payload = body.encode() if self.path == mtasts.POLICY_PATH else b"not found"
                code = status if self.path == mtasts.POLICY_PATH else 404
                self.send_response(code)
                self.send_header("Content-Type", "text/plain")
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        super().__init__(Handler, tls=tls)


class AnswerServer(LoopbackServer):
    """Plain HTTP answering every GET with ``status`` and ``body`` as JSON (None: a non-JSON page)."""

    def __init__(self, status: int, body: dict | None):
        payload = b"<html>not json</html>" if body is None else json.dumps(body).encode()

        class Handler(QuietHandler):
            def do_GET(self):
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        super().__init__(Handler)

"""HTTPS loopback server for a :class:`~faketenant.state.FakeTenant`.

Standard library ``ThreadingHTTPServer`` with HTTP/1.1 keep-alive, TCP_NODELAY, one write per
response (headers + body) and TLS from a per-server ``trustme`` CA.  The TLS handshake runs in
the connection's thread, so a slow or failing client never blocks the accept loop.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

import trustme

from .routes import (
    Request,
    Response,
    dispatch,
    fault_response,
    json_response,
    log_entry,
    route_of,
)
from .routes import control as control_endpoint
from .state import BOTFRAMEWORK_TENANT_ID, FakeTenant

logger = logging.getLogger("faketenant.server")

_MAX_BODY = 16 * 1024 * 1024


class _Handler(BaseHTTPRequestHandler):
    """Parses HTTP and hands requests to :func:`faketenant.routes.dispatch`."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "faketenant/1.0"
    sys_version = ""
    timeout = 120
    server: _Server

    def setup(self) -> None:
        conn = self.request
        conn.settimeout(10)
        if isinstance(conn, ssl.SSLSocket):
            conn.do_handshake()
        super().setup()
        self.server.track(conn, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.request, False)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - %s", self.address_string(), format % args)

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(3)
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            return None
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        body = self._read_body()
        if body is None:
            self._write(json_response(413, {"error": {"code": "MessageSizeTooBig", "message": "Too big."}}))
            self.close_connection = True
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        req = Request.parse(self.command, self.path, headers, body)
        tenant = self.server.tenant
        route = route_of(req)
        if route == "control":
            self._write(control_endpoint(tenant, req))
            return
        fault = tenant.take_fault(route) if route else None
        resp: Response | None = None
        if fault is not None and fault.applied:
            # Carried out, then answered with an error (or too late): see Fault.applied.
            self._dispatch(tenant, req)
            if fault.delay > 0:
                time.sleep(fault.delay)
            resp = fault_response(route or "", fault.status, fault.body, fault.retry_after, fault.malformed)
        elif fault is not None:
            if fault.delay > 0:
                time.sleep(fault.delay)
            if fault.status >= 400 or fault.malformed or fault.body is not None:
                resp = fault_response(route or "", fault.status, fault.body, fault.retry_after, fault.malformed)
        if resp is None:
            resp = self._dispatch(tenant, req)
        tenant.record(log_entry(req, route or "unknown", resp.status, resp.tenant_id or _tenant_hint(tenant, req)))
        self._write(resp)

    @staticmethod
    def _dispatch(tenant: FakeTenant, req: Request) -> Response:
        try:
            return dispatch(tenant, req)
        except Exception:  # a bug in the fake must not kill the connection silently
            logger.exception("faketenant failed on %s %s", req.method, req.path)
            return json_response(500, {"error": {"code": "ServiceError", "message": "fake crashed"}})

    def _write(self, resp: Response) -> None:
        self.send_response(resp.status)
        if resp.content_type:
            self.send_header("Content-Type", resp.content_type)
        for name, value in resp.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(resp.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        # One write for headers and body (instead of end_headers() + write()).
        buffer: list[bytes] = self._headers_buffer  # type: ignore[attr-defined]
        buffer.append(b"\r\n")
        data = b"".join(buffer) + resp.body
        buffer.clear()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle


def _tenant_hint(tenant: FakeTenant, req: Request) -> str | None:
    token = req.bearer()
    if token:
        info = tenant.lookup_token(token)
        if info is not None:
            return info.tenant_id
    if req.segments and (req.segments[0] in tenant.tenant_ids):
        return req.segments[0]
    if req.segments and req.segments[0].lower() == "botframework.com":
        return BOTFRAMEWORK_TENANT_ID
    return None


#: How often the serving loop looks for a stop request: stop() waits up to this long, and the tests start
#: and stop a server per test (0.1 s each added about half a minute to the suite).
POLL_INTERVAL = 0.01


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], tenant: FakeTenant, context: ssl.SSLContext) -> None:
        self.tenant = tenant
        self.context = context
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def track(self, conn: socket.socket, add: bool) -> None:
        with self._conns_lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def close_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("connection from %s ended with an error", client_address)


class FakeTenantServer:
    """Serves a :class:`FakeTenant` over HTTPS on 127.0.0.1.

    ``base_url`` is ``https://127.0.0.1:PORT``; ``ca_pem_path`` is the CA certificate to trust
    (``SSL_CERT_FILE`` / ``REQUESTS_CA_BUNDLE`` / ``verify=``).
    """

    def __init__(
        self,
        tenant: FakeTenant,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        state_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.tenant = tenant
        self.host = host
        self.port = port
        self._state_dir = os.fspath(state_dir) if state_dir is not None else None
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.ca = trustme.CA()
        names = sorted({host, "127.0.0.1", "localhost"})
        self._cert = self.ca.issue_cert(*names)
        self.ca_pem_path: str = ""

    @property
    def base_url(self) -> str:
        """``https://HOST:PORT`` (no trailing slash)."""
        if self._server is None:
            raise RuntimeError("server not started")
        return f"https://{self.host}:{self._server.server_address[1]}"

    @property
    def service_url(self) -> str:
        """The Bot Connector service URL to configure: ``base_url + "/teams/"``."""
        return self.base_url + "/teams/"

    def ssl_context(self) -> ssl.SSLContext:
        """A client SSL context trusting this server's CA."""
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx

    def start(self) -> Self:
        """Bind, write the CA PEM, and serve in a daemon thread."""
        if self._server is not None:
            return self
        if self._state_dir is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="faketenant-")
            directory = self._tmpdir.name
        else:
            directory = self._state_dir
            os.makedirs(directory, exist_ok=True)
        self.ca_pem_path = os.path.join(directory, "ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_pem_path)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._cert.configure_cert(ctx)
        self._server = _Server((self.host, self.port), self.tenant, ctx)
        self.port = self._server.server_address[1]
        self.tenant.base_url = self.base_url
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": POLL_INTERVAL}, name="faketenant", daemon=True
        )
        self._thread.start()
        logger.info("faketenant serving on %s", self.base_url)
        return self

    def stop(self) -> None:
        """Stop serving and drop open keep-alive connections."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

"""Real IANA look-alikes on loopback: an RDAP HTTP server and a WHOIS TCP server.

They answer from fixtures and can be made to fail the ways the real services do (down, 500,
never answering, cut short, far too large), so the client is tested over real sockets. Each
records the queries it saw in ``hits``: that is how a test tells which source was used, or
that none was. ``down()`` closes the listener (connections refused) and ``up()`` listens
again on the same port, so a daemon configured with that port sees the service come back.
"""

from __future__ import annotations

import contextlib
import json
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RDAP_FIXTURES = HERE / "fixtures" / "rdap"
WHOIS_MT = HERE / "fixtures" / "iana-whois" / "mt.txt"

POLL = 0.02
"""How often serve_forever looks for shutdown(): its default (0.5 s) would add a second per test."""

MODES = ("normal", "500", "503", "garbage", "slow", "truncated", "huge")
"""normal: serve the fixtures. 500, 503: that HTTP status (RDAP only). garbage: HTTP 200 with
a body that is no RDAP answer (RDAP only). slow: accept, then never answer. truncated:
announce the whole answer, send half, hang up (RDAP only). huge: an answer without end."""

# Invented, like the RDAP fixture for the same TLD: IANA writes an IDN's domain line in the
# U-label, with the A-label beside it.
WHOIS_XN__90AE = """\
% IANA WHOIS server
% for more information on IANA, visit http://www.iana.org
% This query returned 1 object
% TEST DATA: invented for the tldops-mta tests, not IANA's record for this TLD.

refer:

domain:       БГ
domain-ace:   XN--90AE

organisation: Test Registry (TEST DATA)

contact:      administrative
name:         Test Registry Administrative Contact
organisation: Test Registry (TEST DATA)
e-mail:       admin@bg-registry.example.net

contact:      technical
name:         Test Registry Technical Contact
e-mail:       tech@bg-registry.example.net

status:       ACTIVE
source:       IANA
"""

WHOIS_NO_OBJECT = """\
% IANA WHOIS server
% for more information on IANA, visit http://www.iana.org
%
% This query returned 0 objects.
"""

RDAP_NOT_FOUND = json.dumps({
    "rdapConformance": ["rdap_level_0"], "errorCode": 404, "title": "Not Found",
    "description": ["The requested object was not found."]}).encode()


def rdap_fixture(tld: str) -> bytes:
    return (RDAP_FIXTURES / f"{tld}.json").read_bytes()


def rdap_doc(tld: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(rdap_fixture(tld))
    return doc


def _flood(out: Any, chunk: bytes, release: threading.Event) -> None:
    """Write ``chunk`` until the client hangs up (as it should, at its cap) or the test ends."""
    with contextlib.suppress(OSError):
        while not release.is_set():
            out.write(chunk)


class RdapServer:
    """``GET /domain/<tld>`` from ``answers`` (tld -> (HTTP status, body)); else an RDAP 404."""

    def __init__(self) -> None:
        self.answers: dict[str, tuple[int, bytes]] = {
            "mt": (200, rdap_fixture("mt")),
            "xn--90ae": (200, rdap_fixture("xn--90ae")),
        }
        self.mode = "normal"
        self.hits: list[str] = []
        self.release = threading.Event()
        self.port = 0
        self._closed = True
        self.up()
        self.url = f"http://127.0.0.1:{self.port}/"

    def rdap_hits(self, tld: str) -> int:
        return self.hits.count(f"/domain/{tld}")

    def up(self) -> None:
        """Listen (again, after ``down``) on the same port: the service is back."""
        if self._closed:
            httpd = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
            httpd.daemon_threads = True
            self._httpd = httpd
            self.port = httpd.server_address[1]
            threading.Thread(target=httpd.serve_forever, args=(POLL,), daemon=True).start()
            self._closed = False

    def down(self) -> None:
        """Close the listener: connections are refused from now on."""
        if not self._closed:
            self._closed = True
            self._httpd.shutdown()
            self._httpd.server_close()

    def stop(self) -> None:
        self.release.set()
        self.down()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server.hits.append(self.path)
                mode = server.mode
                if mode == "slow":
                    server.release.wait()
                    return
                if mode in ("500", "503"):
                    self._send(int(mode), b"service unavailable", "text/plain")
                    return
                if mode == "garbage":  # what a captive portal or a broken proxy serves
                    self._send(200, b"<html><body>Maintenance</body></html>", "text/html")
                    return
                tld = self.path.removeprefix("/domain/") if self.path.startswith("/domain/") else None
                status, body = server.answers.get(tld or "", (404, RDAP_NOT_FOUND))
                if mode == "huge":
                    self._endless()
                elif mode == "truncated":
                    self.send_response(status)
                    self.send_header("Content-Type", "application/rdap+json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                else:
                    self._send(status, body, "application/rdap+json")

            def _send(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _endless(self) -> None:
                """No length, no end: only a client that stops reading at its cap gets an answer."""
                self.send_response(200)
                self.send_header("Content-Type", "application/rdap+json")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                _flood(self.wfile, b" " * 65536, server.release)

        return Handler


class WhoisServer:
    """Port-43 look-alike: one query line, the text for that TLD, then close."""

    def __init__(self) -> None:
        self.answers: dict[str, bytes] = {
            "mt": WHOIS_MT.read_bytes(),
            "xn--90ae": WHOIS_XN__90AE.encode(),
        }
        self.mode = "normal"
        self.hits: list[str] = []
        self.release = threading.Event()
        server = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                query = self.rfile.readline(1024).decode("ascii", "replace").strip()
                server.hits.append(query)
                if server.mode == "slow":
                    server.release.wait()
                    return
                if server.mode == "huge":
                    _flood(self.wfile, b"remarks: " + b"x" * 65526 + b"\n", server.release)
                    return
                with contextlib.suppress(OSError):
                    self.wfile.write(server.answers.get(query.lower(), WHOIS_NO_OBJECT.encode()))

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server_class = Server
        self._handler = Handler
        self.host = "127.0.0.1"
        self.port = 0
        self._closed = True
        self.up()

    def up(self) -> None:
        """Listen (again, after ``down``) on the same port: the service is back."""
        if self._closed:
            tcp = self._server_class((self.host, self.port), self._handler)
            self._tcp = tcp
            self.port = tcp.server_address[1]
            threading.Thread(target=tcp.serve_forever, args=(POLL,), daemon=True).start()
            self._closed = False

    def down(self) -> None:
        if not self._closed:
            self._closed = True
            self._tcp.shutdown()
            self._tcp.server_close()

    def stop(self) -> None:
        self.release.set()
        self.down()

"""A real DNS server on loopback, so DKIM key lookups go through dnspython's resolver and sockets.

Only the parts a DKIM verifier meets are served: TXT answers (one or several records, each of one
or several strings), NXDOMAIN, an empty answer, SERVFAIL, silence, and UDP truncation (TC) that
makes the resolver retry over TCP. Every query is recorded, so a test can prove that a lookup
happened, over which transport, without sleeping.

Fixture ``dns_server``: a started server with an empty zone, stopped after the test. Its function
is ``dns_server_fixture``, so importing it into a conftest or a test module does not shadow the
fixture's name (pytest registers it under ``name=``).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.rrset
import pytest

HOST = "127.0.0.1"
UDP_LIMIT = 512
"""Largest UDP answer to a query without EDNS (RFC 1035 4.2.1)."""

TxtRecord = list[bytes]
"""One TXT record: its character-strings, each at most 255 octets."""

Behaviour = Literal["answer", "servfail", "drop"]


def _key(name: str) -> str:
    return name.lower().rstrip(".")


def split_txt(text: str | bytes, size: int = 255) -> TxtRecord:
    """One TXT record holding ``text``, cut into strings of at most 255 octets as DNS requires."""
    data = text.encode("ascii") if isinstance(text, str) else text
    return [data[i:i + size] for i in range(0, len(data), size)] or [b""]


@dataclass(frozen=True)
class Query:
    name: str
    rdtype: str
    transport: Literal["udp", "tcp"]
    edns: bool


class DnsServer:
    """Authoritative answers for a dict of names, on UDP and TCP of one loopback port.

    ``txt[name]`` is a list of TXT records; an empty list makes the name exist without TXT
    (the resolver sees NoAnswer). Unknown names get NXDOMAIN. ``behaviour[name]`` overrides:
    "servfail" answers SERVFAIL, "drop" never answers (the resolver times out).
    """

    def __init__(self, txt: dict[str, list[TxtRecord]] | None = None) -> None:
        self.txt: dict[str, list[TxtRecord]] = {}
        self.behaviour: dict[str, Behaviour] = {}
        for name, records in (txt or {}).items():
            self.set_txt(name, records)
        self.host = HOST
        self.port = 0
        self.queries: list[Query] = []
        self.ttl = 300
        """TTL of the answers, in seconds."""
        self._cond = threading.Condition()
        self._lock = threading.Lock()
        self._gates: dict[str, tuple[int, list[tuple[socket.socket, object, bytes]]]] = {}
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- zone ------------------------------------------------------------------------

    def set_txt(self, name: str, records: Iterable[TxtRecord | str | bytes]) -> None:
        """Serve TXT records at ``name``; a plain string becomes one record split at 255 octets."""
        converted = [split_txt(r) if isinstance(r, str | bytes) else list(r) for r in records]
        with self._lock:
            self.txt[_key(name)] = converted
            self.behaviour.pop(_key(name), None)

    def servfail(self, name: str) -> None:
        with self._lock:
            self.behaviour[_key(name)] = "servfail"

    def never_answer(self, name: str) -> None:
        with self._lock:
            self.behaviour[_key(name)] = "drop"

    def gather(self, name: str, n: int) -> None:
        """Hold the UDP answers for ``name`` until ``n`` queries for it have come, then send
        them all at once: proof that ``n`` lookups were in flight together (n processes at
        work at the same moment), with no sleep. Once; a later query is answered at once."""
        with self._lock:
            self._gates[_key(name)] = (n, [])

    # -- life ------------------------------------------------------------------------

    def start(self) -> DnsServer:
        """Serve on a free port; after ``stop``, on the same port again (the server is back,
        for a resolver configured with that port). The zone and behaviours are kept."""
        self._stopping = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._udp, self._tcp = self._bind_pair(self.port)
        self.port = self._udp.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name="test-dns", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close both sockets: queries are refused (UDP: port unreachable) until ``start``."""
        if self._thread is None:
            return
        self._stopping = True
        assert self._wake_w is not None
        self._wake_w.send(b"x")
        self._thread.join(10)
        self._thread = None
        for s in (self._udp, self._tcp, self._wake_r, self._wake_w):
            if s is not None:
                s.close()

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @staticmethod
    def _bind_pair(port: int = 0) -> tuple[socket.socket, socket.socket]:
        """UDP on ``port`` (0: a free one), then TCP on the same one (retried if TCP's is
        taken and the port was free to choose)."""
        for _ in range(50):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind((HOST, port))
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind((HOST, udp.getsockname()[1]))
            except OSError:
                udp.close()
                tcp.close()
                if port:
                    raise
                continue
            tcp.listen(16)
            return udp, tcp
        raise RuntimeError("no port free for both UDP and TCP")

    # -- observation -----------------------------------------------------------------

    def wait_for_query(self, name: str, *, transport: str | None = None,
                       timeout: float = 10.0) -> Query:
        """The first query for ``name`` (over ``transport``), waiting until it arrives."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for q in self.queries:
                    if q.name == _key(name) and transport in (None, q.transport):
                        return q
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no query for {name!r} over {transport or 'any'}: "
                                         f"{self.queries}")
                self._cond.wait(left)

    def queries_for(self, name: str) -> list[Query]:
        with self._cond:
            return [q for q in self.queries if q.name == _key(name)]

    # -- serving ---------------------------------------------------------------------

    def _serve(self) -> None:
        assert self._udp is not None and self._tcp is not None and self._wake_r is not None
        sel = selectors.DefaultSelector()
        sel.register(self._udp, selectors.EVENT_READ, "udp")
        sel.register(self._tcp, selectors.EVENT_READ, "listen")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        buffers: dict[socket.socket, bytes] = {}
        try:
            while not self._stopping:
                for key, _ in sel.select():
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if key.data == "wake":
                        return
                    if key.data == "udp":
                        self._on_udp(sock)
                    elif key.data == "listen":
                        conn, _ = sock.accept()
                        buffers[conn] = b""
                        sel.register(conn, selectors.EVENT_READ, "tcp")
                    else:
                        self._on_tcp(sock, buffers, sel)
        finally:
            for conn in buffers:
                conn.close()
            sel.close()

    def _on_udp(self, sock: socket.socket) -> None:
        try:
            data, peer = sock.recvfrom(65535)
        except OSError:
            return
        answer = self._answer(data, "udp")
        if answer is None:
            return
        out = [(sock, peer, answer)]
        with contextlib.suppress(dns.exception.DNSException, IndexError):
            name = _key(dns.message.from_wire(data).question[0].name.to_text())
            with self._lock:
                gate = self._gates.get(name)
                if gate is not None:
                    gate[1].append((sock, peer, answer))
                    if len(gate[1]) < gate[0]:
                        return
                    out = gate[1]
                    del self._gates[name]
        for s, to, wire in out:
            with contextlib.suppress(OSError):
                s.sendto(wire, to)

    def _on_tcp(self, conn: socket.socket, buffers: dict[socket.socket, bytes],
                sel: selectors.BaseSelector) -> None:
        try:
            chunk = conn.recv(65535)
        except OSError:
            chunk = b""
        if not chunk:
            sel.unregister(conn)
            buffers.pop(conn, None)
            conn.close()
            return
        buf = buffers[conn] + chunk
        while len(buf) >= 2 and len(buf) >= 2 + int.from_bytes(buf[:2], "big"):
            size = int.from_bytes(buf[:2], "big")
            wire, buf = buf[2:2 + size], buf[2 + size:]
            answer = self._answer(wire, "tcp")
            if answer is not None:
                with contextlib.suppress(OSError):
                    conn.sendall(len(answer).to_bytes(2, "big") + answer)
        buffers[conn] = buf

    def _answer(self, wire: bytes, transport: Literal["udp", "tcp"]) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        if not query.question:
            return None
        question = query.question[0]
        name = _key(question.name.to_text())
        with self._cond:
            self.queries.append(Query(name, dns.rdatatype.to_text(question.rdtype), transport,
                                      query.edns >= 0))
            self._cond.notify_all()
        with self._lock:
            behaviour = self.behaviour.get(name, "answer")
            records = self.txt.get(name)
        if behaviour == "drop":
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if behaviour == "servfail":
            response.set_rcode(dns.rcode.SERVFAIL)
        elif records is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.TXT and records:
            rdatas = [dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, strings)
                      for strings in records]
            response.answer.append(dns.rrset.from_rdata_list(question.name, self.ttl, rdatas))
        if transport == "tcp":
            return response.to_wire(max_size=65535)
        limit = UDP_LIMIT if query.edns < 0 else max(UDP_LIMIT, query.payload)
        return response.to_wire(max_size=limit, prefer_truncation=True)


@pytest.fixture(name="dns_server")
def dns_server_fixture() -> Iterator[DnsServer]:
    """A started loopback DNS server with an empty zone; tests fill ``txt`` and behaviours."""
    server = DnsServer().start()
    try:
        yield server
    finally:
        server.stop()

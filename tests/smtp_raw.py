"""A raw SMTP client over a real socket: sends exact octets, reads whole replies.

smtplib rewrites line endings in DATA, so tests of bare CR/LF, long lines and smuggling
speak through this instead.
"""

from __future__ import annotations

import re
import socket

REPLY_END = re.compile(rb"^(\d{3}) .*\r\n", re.M)


class RawClient:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def reply(self) -> tuple[int, str]:
        """One complete (possibly multi-line) reply."""
        while True:
            lines = self.buf.split(b"\r\n")
            for i, line in enumerate(lines[:-1]):
                if len(line) >= 4 and line[3:4] == b" ":
                    text = b"\r\n".join(lines[: i + 1]).decode("utf-8", "replace")
                    self.buf = b"\r\n".join(lines[i + 1:])
                    return int(line[:3]), text
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed by server; unread: {self.buf!r}")
            self.buf += chunk

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def cmd(self, line: str | bytes) -> tuple[int, str]:
        data = line.encode() if isinstance(line, str) else line
        self.send(data + b"\r\n")
        return self.reply()

    def closed(self) -> bool:
        """True once the server has closed the connection (reads what is left)."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (ConnectionResetError, TimeoutError):
            return False

    def close(self) -> None:
        self.sock.close()


def open_session(sock: socket.socket, helo: str = "client.test") -> RawClient:
    c = RawClient(sock)
    code, _ = c.reply()
    assert code == 220
    code, _ = c.cmd(f"EHLO {helo}")
    assert code == 250
    return c


def message(subject: str = "test", sender: str = "admin@nic.example",
            to: str = "requests@tld-ops.localhost", body: str = "hello\r\n") -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Date: Wed, 25 Nov 2026 12:00:00 +0000\r\nMessage-ID: <{subject}@nic.example>\r\n"
            f"\r\n{body}").encode()


def dot_stuff(data: bytes) -> bytes:
    lines = data.split(b"\r\n")
    return b"\r\n".join(b"." + ln if ln.startswith(b".") else ln for ln in lines)

"""A real SMTP server on loopback that keeps what it receives: the smarthost in tests.

Runs aiosmtpd on its own event loop in a thread, on a port the kernel picks, and can be
told to answer RCPT or DATA with a temporary or permanent failure, or be taken down (the port
closed: connections refused) and brought up again on the same port. Every answer it gives to
a DATA or a refused RCPT is kept in ``attempts``, so a test can count the tries too.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool = False
    login: str | None = None


DATA_OK, RCPT_OK = "250 2.0.0 OK", "250 OK"


class SmtpSink:
    """``tls`` (certificate, key): STARTTLS offered and required. ``login`` (user, password):
    AUTH required, over TLS only, as a smarthost would."""

    def __init__(self, tls: tuple[Path, Path] | None = None,
                 login: tuple[str, str] | None = None, implicit_tls: bool = False) -> None:
        self.tls = tls
        self.login = login
        self.implicit_tls = implicit_tls
        """TLS from the first byte (port 465 style) instead of STARTTLS."""
        self.received: list[Received] = []
        self.reply = DATA_OK
        """The answer to DATA; only a 250 keeps the message in ``received``."""
        self.rcpt_reply = RCPT_OK
        """The answer to every RCPT; anything but 250 refuses the recipient. ``{rcpt}`` in it
        stands for the address (as Postfix names it: ``550 5.1.1 <{rcpt}>: ...``)."""
        self.attempts: list[tuple[str, tuple[str, ...], str]] = []
        """(command, recipients, reply) of every DATA, and of every refused RCPT."""
        self._cond = threading.Condition()
        self._server: asyncio.AbstractServer | None = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.port = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        sink = self

        class Handler:
            async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                                  rcpt_options: list[str]) -> str:
                reply = sink.rcpt_reply.replace("{rcpt}", address)
                if reply.startswith("250"):
                    envelope.rcpt_tos.append(address)
                else:
                    with sink._cond:
                        sink.attempts.append(("RCPT", (address,), reply))
                        sink._cond.notify_all()
                return reply

            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                with sink._cond:
                    sink.attempts.append(("DATA", tuple(envelope.rcpt_tos), sink.reply))
                    sink._cond.notify_all()
                if sink.reply.startswith("250"):
                    with sink._cond:
                        who = getattr(session, "auth_data", None)
                        sink.received.append(Received(
                            envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content,
                            tls=session.ssl is not None or sink.implicit_tls,
                            login=who.decode() if isinstance(who, bytes) else None))
                        sink._cond.notify_all()
                return sink.reply

        def authenticate(server: Any, session: Any, envelope: Any, mechanism: str,
                         auth_data: Any) -> AuthResult:
            assert sink.login is not None
            ok = (auth_data.login.decode(), auth_data.password.decode()) == sink.login
            return AuthResult(success=ok, handled=False, auth_data=auth_data.login if ok else None)

        ctx: ssl.SSLContext | None = None
        if self.tls is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(self.tls[0]), str(self.tls[1]))

        def protocol() -> SMTP:
            if ctx is None:
                return SMTP(Handler(), hostname="sink.localhost")
            auth: dict[str, Any] = {"authenticator": authenticate if self.login else None,
                                    "auth_required": self.login is not None}
            if self.implicit_tls:  # the connection is TLS already: nothing to start
                with warnings.catch_warnings():  # aiosmtpd cannot tell the socket is TLS
                    warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")
                    return SMTP(Handler(), hostname="sink.localhost", auth_require_tls=False, **auth)
            return SMTP(Handler(), hostname="sink.localhost", tls_context=ctx, require_starttls=True,
                        auth_require_tls=True, **auth)

        self._protocol = protocol
        self._ssl = ctx if self.implicit_tls else None
        self._loop.run_until_complete(self._listen())
        self._ready.set()
        self._loop.run_forever()

    async def _listen(self) -> None:
        # reuse_address: after down(), the port may still have connections in TIME_WAIT.
        self._server = await self._loop.create_server(self._protocol, "127.0.0.1", self.port,
                                                      ssl=self._ssl, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def answer(self, command: str, reply: str) -> None:
        """Answer every ``command`` (DATA or RCPT) with ``reply`` from now on."""
        if command == "DATA":
            self.reply = reply
        elif command == "RCPT":
            self.rcpt_reply = reply
        else:
            raise ValueError(f"the sink answers DATA and RCPT, not {command!r}")

    def accept(self) -> None:
        """Accept every RCPT and DATA again."""
        self.reply, self.rcpt_reply = DATA_OK, RCPT_OK

    def down(self) -> None:
        """Close the listening socket: connections are refused until ``up``."""
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)

    def up(self) -> None:
        """Listen again, on the same port."""
        if self._server is None:
            asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)

    def wait(self, n: int, timeout: float = 15.0) -> list[Received]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.received) >= n, timeout):
                raise AssertionError(f"sink received {len(self.received)} of {n} messages")
            return list(self.received)

    def wait_for(self, what: Callable[[Received], bool], timeout: float = 15.0) -> Received:
        """The first message received (so far or later) for which ``what`` holds."""
        with self._cond:
            found: list[Received] = []

            def seen() -> bool:
                found[:] = [r for r in self.received if what(r)]
                return bool(found)

            if not self._cond.wait_for(seen, timeout):
                got = [(r.rcpt_tos, r.data.split(b"Subject: ", 1)[-1].split(b"\r\n", 1)[0])
                       for r in self.received]
                raise AssertionError(f"no such message among {len(self.received)} received: {got}")
            return found[0]

    def to(self, rcpt: str) -> list[Received]:
        """What was received for ``rcpt`` so far."""
        with self._cond:
            return [r for r in self.received if rcpt.lower() in (t.lower() for t in r.rcpt_tos)]

    def stop(self) -> None:
        if self._thread.is_alive():
            self.down()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

"""The SMTP front: aiosmtpd on the daemon's own loop, with our limits and our replies.

``Intake`` is the aiosmtpd handler (policy: who may send what to whom, and the spool
commit before 250). ``Protocol`` is aiosmtpd's SMTP with the connection-level guards that
aiosmtpd lacks: connection limits, a whole-session deadline, a command budget, enhanced
status codes on every reply, and an orderly shutdown that lets DATA finish.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import ipaddress
import itertools
import secrets
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session, TLSSetupException, syntax

from tldops_mta import logs
from tldops_mta.auth.addresses import AddressError
from tldops_mta.intake import content_checks, replies, smtp_paths
from tldops_mta.metrics import SmtpCounts
from tldops_mta.settings.config import Config
from tldops_mta.settings.live import Live
from tldops_mta.settings.recipients import Service, classify
from tldops_mta.store import spool
from tldops_mta.store.storage import StorageFull

_PROCESS_TAG = secrets.token_hex(3)
_SESSIONS = itertools.count(1)
"""Session ids: a random tag per daemon start and a counter, unique in any log, and with no
system call per connection."""


class Limiter:
    """Counts open connections, in total and per client address."""

    def __init__(self) -> None:
        self.total = 0
        self.by_ip: Counter[str] = Counter()

    def admit(self, ip: str, cfg: Config) -> str | None:
        """The refusal for a new connection from ``ip``, or None after counting it in."""
        if self.total >= cfg.server.max_connections:
            return replies.TOO_MANY_CONNECTIONS
        if self.by_ip[ip] >= cfg.server.max_connections_per_ip and not _exempt(ip, cfg):
            return replies.TOO_MANY_FROM_YOU
        self.total += 1
        self.by_ip[ip] += 1
        return None

    def release(self, ip: str) -> None:
        self.total -= 1
        self.by_ip[ip] -= 1
        if self.by_ip[ip] <= 0:
            del self.by_ip[ip]


@functools.lru_cache(maxsize=64)
def _networks(specs: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(s, strict=False) for s in specs)


def _exempt(ip: str, cfg: Config) -> bool:
    return _in(ip, cfg.server.limit_exempt)


def _trusted_relay(ip: str, cfg: Config) -> bool:
    return _in(ip, cfg.server.trusted_relays)


def _in(ip: str, specs: tuple[str, ...]) -> bool:
    nets = _networks(specs)
    if not nets:
        return False
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    return any(addr in n for n in nets)


def tls_context(cfg: Config) -> ssl.SSLContext | None:
    """STARTTLS context (TLS 1.2 or newer) when a certificate is configured."""
    cert, key = cfg.server.tls_cert, cfg.server.tls_key
    if not cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


class Runtime(Live):
    """What every SMTP session shares: the live configuration and the open sessions.

    ``cfg`` is replaced as a whole on SIGHUP; a session reads it at each step, so new limits
    apply at once without tearing a session between two configurations mid-command.
    """

    def __init__(self, cfg: Config, append: Callable[[spool.Arrival], Awaitable[None]],
                 on_spooled: Callable[[], None]) -> None:
        """``append`` returns once the arrival is on disk, or raises StorageError."""
        super().__init__(cfg)
        self.append = append
        self.on_spooled = on_spooled
        self.limiter = Limiter()
        self.sessions: set[Protocol] = set()
        self.counts = SmtpCounts()
        self.closing = False
        self.tls = tls_context(cfg)
        self.log = logs.get("smtp")

    def reconfigure(self, cfg: Config) -> None:
        """Apply a new configuration to new connections and new commands."""
        tls = tls_context(cfg)  # first, so a bad certificate leaves everything as it was
        self.apply(cfg)
        self.tls = tls

    def protocol_factory(self) -> Callable[[], Protocol]:
        handler = Intake(self)

        loop = asyncio.get_running_loop()

        def make() -> Protocol:
            cfg = self.cfg
            return Protocol(
                handler,
                runtime=self,
                loop=loop,  # else aiosmtpd asks asyncio for it, warnings machinery and all
                hostname=cfg.hostname,
                ident="tldops-mta",
                data_size_limit=cfg.server.max_message_size,
                enable_SMTPUTF8=True,
                decode_data=False,
                tls_context=self.tls,
                timeout=cfg.server.idle_timeout,
            )

        return make

    async def shutdown(self, grace: float) -> None:
        """Close idle sessions now; give sessions in DATA ``grace`` seconds to finish."""
        self.closing = True
        for s in list(self.sessions):
            if not s.in_data:
                s.close_with(replies.SHUTTING_DOWN)
        deadline = time.monotonic() + grace
        while any(s.in_data for s in self.sessions) and time.monotonic() < deadline:
            waiters = [s.data_done for s in self.sessions if s.in_data]
            await asyncio.wait(waiters, timeout=max(0.0, deadline - time.monotonic()))
        for s in list(self.sessions):
            s.close_with(replies.SHUTTING_DOWN)


class Protocol(SMTP):
    """One SMTP connection.

    Written against aiosmtpd 1.4.6, some of whose private methods it overrides (``_reset_timeout``,
    ``_timeout_cb``, ``_getaddr``) or relies on; tests/test_patched_libraries.py names each and
    fails when its upstream code differs.
    """

    def __init__(self, handler: Intake, *, runtime: Runtime, **kwargs: Any) -> None:
        self.runtime = runtime
        self._commands = -1  # aiosmtpd resets the idle timer once at connect, then per command
        super().__init__(handler, **kwargs)
        self.session_id = f"{_PROCESS_TAG}{next(_SESSIONS):x}"
        self.log = runtime.log.bind(session=self.session_id)
        self.in_data = False
        self._data_done: asyncio.Future[None] | None = None
        self._refused = False
        self._counted_ip: str | None = None
        self._greeted = False
        self._raw_replies = False
        self._deadline: asyncio.TimerHandle | None = None
        self._guard: content_checks.LongLineGuard | None = None
        self._reverse_path = False

    # -- connection-level guards -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is not None:  # STARTTLS re-entry: the session goes on
            super().connection_made(transport)
            return
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if peer else "?"
        refusal = self.runtime.limiter.admit(ip, self.runtime.cfg)
        if refusal is None and self.runtime.closing:
            refusal = replies.SHUTTING_DOWN
            self.runtime.limiter.release(ip)
        self.runtime.counts.connections["refused" if refusal is not None else "accepted"] += 1
        if refusal is not None:
            self._refused = True
            self.log.info("connection refused", client=ip, reply=refusal[:9])
            self.runtime.counts.replies[refusal[:3]] += 1
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(refusal.encode() + b"\r\n")
            transport.close()
            return
        self._counted_ip = ip
        self.runtime.sessions.add(self)
        super().connection_made(transport)
        # SMTP lines are short: asyncio's 256 KiB read buffer costs an mmap/munmap per read.
        transport.max_size = 64 * 1024  # type: ignore[attr-defined]
        self._deadline = self.loop.call_later(
            self.runtime.cfg.server.session_timeout, self.close_with, replies.SESSION_TIMEOUT)
        self.log.debug("connection opened", client=ip)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        if self._deadline is not None:
            self._deadline.cancel()
        if self._counted_ip is not None:
            self.runtime.limiter.release(self._counted_ip)
            self._counted_ip = None
        self.runtime.sessions.discard(self)
        self._set_data_done()
        self.log.debug("connection closed")
        super().connection_lost(error)

    def data_received(self, data: bytes) -> None:
        if self._guard is not None:  # in DATA: an endless line is not kept (LongLineGuard)
            data = self._guard.feed(data)
            if not data:
                return
        super().data_received(data)

    @property
    def data_done(self) -> asyncio.Future[None]:
        """Resolved when this session's DATA is over (only shutdown waits for it)."""
        if self._data_done is None:
            self._data_done = self.loop.create_future()
            if not self.in_data:
                self._data_done.set_result(None)
        return self._data_done

    def _set_data_done(self) -> None:
        if self._data_done is not None and not self._data_done.done():
            self._data_done.set_result(None)

    def _reset_timeout(self, duration: float | None = None) -> None:
        """aiosmtpd's private ``SMTP._reset_timeout``, which it calls once per valid command
        before running it: the one place to count commands without wrapping every command
        method of every session."""
        self._commands += 1
        if self._commands > self.runtime.cfg.server.max_commands:
            self.close_with(replies.TOO_MANY_COMMANDS)
            return
        super()._reset_timeout(duration)

    def _timeout_cb(self) -> None:
        """aiosmtpd's private ``SMTP._timeout_cb``, which closes without a word: say why."""
        self.close_with(replies.IDLE_TIMEOUT)

    def close_with(self, reply: str) -> None:
        """Say why, then close; used by timeouts, limits and shutdown."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self.log.info("closing session", reply=reply[:9])
        self.runtime.counts.replies[reply[:3]] += 1
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(reply.encode() + b"\r\n")
        transport.close()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """The path of MAIL FROM or RCPT TO, read strictly (smtp_paths) in place of aiosmtpd's
        private ``SMTP._getaddr``, a lenient stdlib reading that rewrites what it cannot read.
        A refusal is raised as _PathRefused, so that it is answered with its own reply (aiosmtpd
        has but one, "553 malformed address") by handle_exception, and the session goes on."""
        if not arg:
            return "", ""
        try:
            path = smtp_paths.parse(arg, reverse=self._reverse_path)
        except AddressError as e:
            self.log.info("address refused", command="MAIL" if self._reverse_path else "RCPT",
                          code=e.code)
            raise _PathRefused(_path_reply(e, self._reverse_path)) from None
        local = path.address.rpartition("@")[0]
        if self.local_part_limit and len(local) > self.local_part_limit:
            return None, None
        return path.address, path.rest

    # -- replies -------------------------------------------------------------------------

    async def push(self, status: str | bytes) -> None:
        if not self._greeted:  # the 220 greeting goes out as it is (RFC 2034)
            self._greeted = True
        elif isinstance(status, str) and not self._raw_replies:
            status = replies.with_enhanced_code(status)
        if self.transport is None or self.transport.is_closing():
            # Closed (QUIT, a limit, shutdown): end the session here. Returning would let
            # aiosmtpd run the commands pipelined behind it (a DATA after QUIT was spooled).
            assert self._handler_coroutine is not None
            self._handler_coroutine.cancel()
            await asyncio.sleep(0)
            return
        self.runtime.counts.replies[status[:3] if isinstance(status, str) else status[:3].decode()] += 1
        await super().push(status)  # type: ignore[type-var]

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, _PathRefused):
            return error.reply
        if isinstance(error, TLSSetupException):
            # A client that cannot agree on TLS (e.g. offers only TLS 1.1) is not our error:
            # no traceback at error level. aiosmtpd closes the connection without a reply.
            cause = error.__cause__
            self.log.info("tls handshake failed",
                          reason=getattr(cause, "reason", None) or type(cause).__name__)
            return replies.TLS_FAILED
        return await super().handle_exception(error)

    # Overrides keep aiosmtpd's @syntax so that HELP lists exactly the commands we take.

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str) -> None:
        if hostname and _unfit(hostname):
            await self.push(replies.BAD_HELO.format(verb="EHLO"))
            return
        # EHLO lines are keywords, not replies to decorate (RFC 2034).
        self._raw_replies = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._raw_replies = False

    @syntax("HELO hostname")
    async def smtp_HELO(self, hostname: str) -> None:
        if hostname and _unfit(hostname):
            await self.push(replies.BAD_HELO.format(verb="HELO"))
            return
        self._raw_replies = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._raw_replies = False

    async def smtp_XFORWARD(self, arg: str) -> None:
        """Postfix's XFORWARD (XFORWARD_README): a trusted relay names the client it got
        this mail from. Kept on the envelope, so it ends with the transaction, as in Postfix.
        Not in HELP (no @syntax): only the relays it is offered to in EHLO need it."""
        session, envelope = self.session, self.envelope
        assert session is not None and envelope is not None  # both exist once connected
        peer = session.peer if isinstance(session.peer, tuple) else (str(session.peer),)
        if not _trusted_relay(str(peer[0]), self.runtime.cfg):
            await self.push(replies.XFORWARD_REFUSED)
            return
        if envelope.mail_from:
            await self.push(replies.XFORWARD_IN_TRANSACTION)
            return
        attrs = xforward_attributes(arg or "")
        if attrs is None:
            await self.push(replies.XFORWARD_SYNTAX)
            return
        forwarded: dict[str, str] = getattr(envelope, "xforward", {})
        forwarded.update(attrs)
        envelope.xforward = forwarded  # type: ignore[attr-defined]
        await self.push("250 2.0.0 Ok")

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        self._reverse_path = True  # what _getaddr reads: a reverse-path ("<>" allowed)
        await super().smtp_MAIL(arg)

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        self._reverse_path = False
        await super().smtp_RCPT(arg)

    @syntax("VRFY <address>")
    async def smtp_VRFY(self, arg: str) -> None:
        await self.push("252 2.5.0 Cannot VRFY; send mail and it will be answered")

    async def smtp_AUTH(self, arg: str) -> None:
        # No SMTP AUTH here: aiosmtpd would offer LOGIN and PLAIN after STARTTLS and then
        # fail every attempt, which makes a client with credentials defer its mail.
        await self.push(replies.NO_AUTH)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        self.in_data = True
        self._guard = content_checks.LongLineGuard(
            self.data_size_limit or self.runtime.cfg.server.max_message_size)
        try:
            await super().smtp_DATA(arg)
        finally:
            self.in_data = False
            self._guard = None
        if self.runtime.closing:
            self.close_with(replies.SHUTTING_DOWN)
            self._set_data_done()


class Intake:
    """aiosmtpd handler hooks: envelope policy and the durable commit before 250."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    async def handle_EHLO(self, server: Protocol, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        responses = [r for r in responses if not r[4:].upper().startswith("AUTH")]
        responses[-1:-1] = ["250-PIPELINING", "250-ENHANCEDSTATUSCODES"]  # before "250 HELP"
        peer = session.peer if isinstance(session.peer, tuple) else (str(session.peer),)
        if _trusted_relay(str(peer[0]), self.rt.cfg):
            responses[-1:-1] = ["250-XFORWARD " + " ".join(XFORWARD_NAMES)]
        return responses

    async def handle_MAIL(self, server: Protocol, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        envelope.mail_from = address  # "<>" for the null sender; aiosmtpd needs it truthy
        envelope.mail_options.extend(mail_options)
        return replies.OK_SENDER

    async def handle_RCPT(self, server: Protocol, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        cfg = self.rt.cfg
        recipient = classify(address, cfg.server.domain, self.rt.parts)
        if recipient is None:
            server.log.info("recipient refused", reason="not a service address",
                            rcpt=logs.redact_address(address))
            return replies.NO_SUCH_USER
        if len(envelope.rcpt_tos) >= cfg.server.max_recipients:
            return replies.TOO_MANY_RECIPIENTS
        envelope.rcpt_tos.append(address)
        # Kept for the log line of the spooled message: each address is classified once.
        services: set[str] = getattr(envelope, "services", set())
        services.add(recipient.service.value)
        envelope.services = services  # type: ignore[attr-defined]
        envelope.rcpt_options.extend(rcpt_options)
        return replies.OK_RECIPIENT

    async def handle_DATA(self, server: Protocol, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        refusal = content_checks.refusal(raw)
        if refusal is not None:
            server.log.info("message refused", reply=refusal[:10], size=len(raw))
            return refusal
        peer = session.peer if isinstance(session.peer, tuple) else (str(session.peer), None)
        client, port, helo = str(peer[0]), int(peer[1]) if peer[1] is not None else None, session.host_name
        relay = None
        forwarded: dict[str, str] = getattr(envelope, "xforward", {})
        if "ADDR" in forwarded:
            relay = f"{client}:{port}" if port is not None else client
            client, port = forwarded["ADDR"], None
            if forwarded.get("PORT", "").isdigit():
                port = int(forwarded["PORT"])
            helo = forwarded.get("HELO", helo)
        now = time.time()
        arrival = spool.Arrival(
            queue_id=spool.new_queue_id(now),
            received_at=now,
            session_id=server.session_id,
            client_addr=client,
            client_port=port,
            helo=helo,
            relay_addr=relay,
            mail_from="" if envelope.mail_from == "<>" else (envelope.mail_from or ""),
            rcpt_to=tuple(envelope.rcpt_tos),
            smtputf8=bool(envelope.smtp_utf8),
            raw=raw,
        )
        server.log.debug("spooling", queue_id=arrival.queue_id, size=len(raw))
        try:
            await self.rt.append(arrival)
        except StorageFull as e:
            server.log.error("spool full", error=str(e))
            return replies.STORAGE_FULL
        except Exception as e:
            server.log.error("spool commit failed", error=str(e))
            return replies.STORAGE_FAILED
        self.rt.on_spooled()
        services = sorted(getattr(envelope, "services", ()))
        server.log.info("message spooled", queue_id=arrival.queue_id, size=len(raw),
                        services=services)
        return replies.queued(arrival.queue_id)

    async def handle_exception(self, error: Exception) -> str:
        logs.get("smtp").exception("error in SMTP session")
        return replies.INTERNAL_ERROR


class _PathRefused(Exception):
    """A MAIL FROM or RCPT TO address refused, with the reply that says why."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


def _path_reply(e: AddressError, reverse: bool) -> str:
    if e.code == smtp_paths.UNPRINTABLE:
        return replies.BAD_SENDER if reverse else replies.BAD_RECIPIENT
    return replies.bad_path(e.reason, syntax=e.code not in smtp_paths.NOT_ALLOWED, sender=reverse)


def _unfit(text: str) -> bool:
    """Octets that are not UTF-8 (aiosmtpd hands them over as surrogate escapes, which
    SQLite cannot store) or control characters."""
    return any("\udc80" <= c <= "\udcff" or c < " " or c == "\x7f" for c in text)


XFORWARD_NAMES = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE")
_UNKNOWN = ("[UNAVAILABLE]", "[TEMPUNAVAIL]")


def xforward_attributes(arg: str) -> dict[str, str] | None:
    """``NAME=v ADDR=v ...`` with xtext values (RFC 3461), as Postfix sends them; None for
    anything else. Unknown values drop the attribute (the relay did not know it); an
    ``IPV6:`` prefix on ADDR is removed; ADDR must be an IP address."""
    out: dict[str, str] = {}
    for item in arg.split():
        name, eq, value = item.partition("=")
        name = name.upper()
        if not eq or name not in XFORWARD_NAMES:
            return None
        try:
            value = _xtext(value)
        except ValueError:
            return None
        if value.upper() in _UNKNOWN:
            continue
        if name == "ADDR":
            value = value[5:] if value.upper().startswith("IPV6:") else value
            try:
                value = str(ipaddress.ip_address(value))
            except ValueError:
                return None
        out[name] = value[:255]
    return out if out or arg.strip() else None


def _xtext(value: str) -> str:
    out, i = [], 0
    while i < len(value):
        c = value[i]
        if c == "+":
            code = value[i + 1:i + 3]
            if len(code) != 2 or any(h not in "0123456789ABCDEFabcdef" for h in code):
                raise ValueError("bad xtext")
            out.append(chr(int(code, 16)))
            i += 3
        elif "!" <= c <= "~" and c != "=":
            out.append(c)
            i += 1
        else:
            raise ValueError("bad xtext")
    return "".join(out)


__all__ = ["Intake", "Limiter", "Protocol", "Runtime", "Service"]


# aiosmtpd builds every session by scanning dir() of the protocol and of the handler (for
# smtp_*, auth_* and handle_* names) and by reading handle_EHLO's signature: some hundred
# microseconds per connection, for answers that never change. Give it the answers (as its
# SMTP.__init__ of 1.4.6 asks them; tests/test_patched_libraries.py).
_SMTP_NAMES = sorted(n for n in dir(Protocol) if n.startswith("smtp_"))
_HOOK_NAMES = sorted(n for n in dir(Intake) if n.startswith("handle_"))
Protocol.__dir__ = lambda self: _SMTP_NAMES  # type: ignore[method-assign]  # no auth_*: no AUTH
Intake.__dir__ = lambda self: _HOOK_NAMES  # type: ignore[method-assign]
Intake.handle_EHLO.__signature__ = inspect.signature(Intake.handle_EHLO)  # type: ignore[attr-defined]

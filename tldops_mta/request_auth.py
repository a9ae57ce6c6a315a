"""Authentication of requests (``requests@``) and of token confirmations (``confirm+TOKEN@``).

The imperative shell around ``auth_decision.decide``: it gathers the facts (strictly parsed
addresses, DKIM results, IANA's answer, replay history), asks the pure decision, and turns
verdicts into effects that commit with the spool outcome: a request row with its evidence,
a token and the mail carrying it, or a refusal reply. Lookups that fail make the message
wait and come back; they never decide anything.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any

from . import addresses, auto_reply, logs, outbox, spool, tokens
from .auth_decision import Decision, IanaView, MessageView, Verdict, decide
from .config import Config
from .dkim_verify import DkimReport, KeyResolver, authentication_results, verify
from .iana import AdminContact, IanaClient, LookupUnavailable, tld_labels
from .live import Live
from .message_facts import REQUIRED_FOR_REQUESTS, MessageFacts
from .request_form import body_text, named_tlds
from .storage import Reader, Writer

PURPOSE_CONFIRM = "confirm-request"


class Authenticator:
    def __init__(self, live: Live, writer: Writer, reader: Reader, resolver: KeyResolver,
                 iana: IanaClient, *, offload: bool = True) -> None:
        self.offload = offload
        self.rt = live
        self.writer = writer
        self.reader = reader
        self.resolver = resolver
        self.iana = iana
        self.log = logs.get("auth")

    def reconfigure(self, cfg: Config) -> None:
        """New DNS servers and IANA settings apply to the next message (SIGHUP)."""
        self.resolver = KeyResolver.from_config(cfg)
        self.iana.reconfigure(cfg)

    # -- requests@ ---------------------------------------------------------------------

    async def handle_request(self, p: spool.Pending, facts: MessageFacts) -> spool.Outcome:
        cfg = self.rt.cfg
        now = time.time()
        log = self.log.bind(queue_id=p.queue_id)
        problem = facts.problem(REQUIRED_FOR_REQUESTS)
        sender: addresses.Mailbox | None = None
        cc: list[addresses.Mailbox] = []
        if problem is None:
            try:
                sender = addresses.parse_single(facts.from_value or "", field="From")
                if facts.sender_value is not None:
                    addresses.parse_single(facts.sender_value, field="Sender")
                if facts.cc_value is not None:
                    cc = addresses.parse_address_list(facts.cc_value, field="Cc")
            except addresses.AddressError as e:
                problem = e.reason
        tlds = named_tlds(body_text(facts.message or p.raw)) if problem is None else []
        if problem is None and not tlds:
            problem = ("the request does not name its ccTLD: add a line such as 'ccTLD: mt' "
                       "(one line per ccTLD)")
        if problem is not None:
            log.info("request refused", reason=problem)
            return self._refusal(p, facts, [problem])

        assert sender is not None
        report = await verify(p.raw, self.resolver, min_rsa_bits=cfg["dkim.min_rsa_bits"], now=now,
                              offload=self.offload)
        alignment = cfg["dkim.alignment"]
        counting = report.counting(sender.domain, alignment)
        replayed, replay_why = await self._replayed(facts, now)
        view = MessageView(
            from_key=sender.key,
            cc_keys=frozenset(m.key for m in cc),
            problem=None,
            dkim_domains=frozenset(s.domain for s in counting),
            dkim_temporary=report.temporary(sender.domain, alignment),
            replayed=replayed,
        )

        decisions: list[tuple[Decision, AdminContact | None]] = []
        contact: AdminContact | None
        for name in tlds:
            try:
                a_label, _ = tld_labels(name)
            except ValueError:
                decisions.append((Decision(name.lower(), Verdict.REFUSED,
                                           f"'{name[:30]}' is not a top-level domain name"), None))
                continue
            try:
                contact = await self.iana.admin_contact(a_label)
            except LookupUnavailable as e:
                log.warning("IANA lookup unavailable", tld=a_label, reason=e.reason)
                decisions.append((decide(view, IanaView(a_label, None, unavailable=True)), None))
                continue
            iv = IanaView(a_label, contact.email if contact.status == "ok" else None)
            decisions.append((decide(view, iv), contact))

        waits = [d for d, _ in decisions if d.verdict is Verdict.WAIT]
        if waits:
            reason = "; ".join(f".{d.tld}: {d.reason}" for d in waits)
            log.info("request waits", reason=reason)
            return spool.Outcome(p.id, spool.Status.RECEIVED, f"waiting: {reason}",
                                 ("requests",), retry_at=now + float(cfg["worker.retry_base"]),
                                 counts_attempt=False)

        ar = authentication_results(cfg.hostname, report)
        effects: list[spool.Effect] = []
        if facts.message_id:
            # Verified requests claim their Message-ID strictly: if a copy of the same message
            # was verified in the same batch, this insert fails at commit, the outcome becomes
            # a retry, and the retry sees a replay.
            strict = any(d.verdict is Verdict.VERIFIED for d, _ in decisions)
            effects.append(_remember_message_id(facts.message_id, p.id, now, strict=strict))
        refusals: list[str] = []
        accepted: list[str] = []
        for d, contact in decisions:
            log.info("request decided", tld=d.tld, verdict=d.verdict.value, reason=d.reason,
                     dkim=[s.domain for s in counting], replayed=replayed)
            evidence = _evidence(d, contact, report, ar, sender, facts, replay_why)
            if d.verdict is Verdict.VERIFIED:
                effects.append(_new_request(p.id, d, sender.key, "dkim", "awaiting-validator", evidence, now))
                accepted.append(f".{d.tld}: verified")
            elif d.verdict is Verdict.NEEDS_CONFIRMATION:
                assert d.admin_key is not None
                effects.append(self._confirmation(p, facts, d, sender.key, evidence, now))
                accepted.append(f".{d.tld}: confirmation asked of the IANA administrative contact")
            else:
                refusals.append(f".{d.tld}: {d.reason}")
        if not accepted:
            return self._refusal(p, facts, refusals, effects)
        if refusals:
            effects.append(self._reply_refusal(p, facts, refusals))
        return spool.Outcome(p.id, spool.Status.DONE, "; ".join(accepted + refusals)[:1000],
                             ("requests",), effects=tuple(effects))

    async def _replayed(self, facts: MessageFacts, now: float) -> tuple[bool, str | None]:
        window = float(self.rt.cfg["auth.replay_window"])
        try:
            sent = parsedate_to_datetime(facts.date_value or "").timestamp()
        except (TypeError, ValueError, IndexError):
            return True, "the Date: line cannot be read"
        if sent < now - window:
            return True, "the Date: line is older than the replay window"
        if sent > now + 86400:
            return True, "the Date: line is in the future"
        seen = bool(facts.message_id) and await self.reader.run(_seen, facts.message_id)
        if seen:
            return True, "this Message-ID was seen before"
        return False, None

    def _confirmation(self, p: spool.Pending, facts: MessageFacts, d: Decision, requester: str,
                      evidence: dict[str, Any], now: float) -> spool.Effect:
        """Request row, token (hash only) and the mail that carries the token, together."""
        cfg = self.rt.cfg
        token = tokens.new_token()
        admin = d.admin_key
        assert admin is not None
        confirm_addr = self.rt.service_address("confirm", token)
        expires = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(now + cfg["auth.token_ttl"]))
        body = (
            f"Someone asked TLD-OPS to act for .{d.tld}, whose administrative contact at IANA is\n"
            f"this address ({admin}).\n\n"
            f"  From:    {requester}\n"
            f"  Subject: {(facts.subject or '')[:200]}\n"
            f"  Date:    {(facts.date_value or '')[:100]}\n"
            f"  Why a confirmation is needed: {d.reason}\n\n"
            "The request as received:\n\n"
            + _quote(body_text(facts.message or p.raw)) +
            "\n\nTo confirm it, reply to this mail (the reply goes to\n"
            f"{confirm_addr}).\n"
            "If you did not ask for this, ignore this mail: nothing happens without your reply.\n"
            f"The confirmation expires on {expires}.\n"
        )
        raw = outbox.compose(
            from_addr=f"TLD-OPS <{confirm_addr}>", to=admin,
            subject=f"[TLD-OPS] Please confirm a request for .{d.tld}", body=body,
            domain=cfg["server.domain"], reply_to=confirm_addr, in_reply_to=facts.message_id)
        ttl = float(cfg["auth.token_ttl"])
        request = _new_request(p.id, d, requester, "token", "awaiting-confirmation", evidence, now)

        def job(conn: sqlite3.Connection) -> None:
            request_id = request(conn)
            tokens.issue(token, PURPOSE_CONFIRM, request_id, admin, now=now, ttl=ttl)(conn)
            outbox.enqueue(raw, self.rt.service_address("bounces", f"r{request_id}"), [admin],
                           "confirmation", ref=p.queue_id)(conn)

        return job

    # -- confirm+TOKEN@ ----------------------------------------------------------------

    async def handle_confirmation(self, p: spool.Pending, facts: MessageFacts, token: str) -> spool.Outcome:
        log = self.log.bind(queue_id=p.queue_id)
        if not p.mail_from or facts.automatic:
            log.info("automatic mail to a confirmation address ignored")
            return spool.Outcome(p.id, spool.Status.REJECTED,
                                 "automatic mail (null sender or Auto-Submitted) does not confirm",
                                 ("confirm",))
        try:
            sender = addresses.parse_single(facts.from_value or "", field="From")
        except addresses.AddressError as e:
            return self._refusal(p, facts, [e.reason], service="confirm")
        now = time.time()
        redemption = await self.writer.run(_redeem(token, sender.key, now, p.id))
        if redemption.request_id is None:
            log.info("confirmation refused", reason=redemption.reason)
            return self._refusal(p, facts, [f"this confirmation does not count: {redemption.reason}"],
                                 service="confirm")
        log.info("request confirmed", request_id=redemption.request_id)
        return spool.Outcome(p.id, spool.Status.DONE, f"confirmed request {redemption.request_id}",
                             ("confirm",))

    # -- refusals ------------------------------------------------------------------------

    def _refusal(self, p: spool.Pending, facts: MessageFacts, reasons: list[str],
                 effects: list[spool.Effect] | None = None, service: str = "requests") -> spool.Outcome:
        all_effects = [*(effects or []), self._reply_refusal(p, facts, reasons)]
        return spool.Outcome(p.id, spool.Status.REJECTED, "; ".join(reasons)[:1000], (service,),
                             effects=tuple(all_effects))

    def _reply_refusal(self, p: spool.Pending, facts: MessageFacts, reasons: list[str]) -> spool.Effect:
        """A short reply saying what was wrong and how to fix it (auto_reply: RFC 3834, one
        per sender per ``auth.refusal_interval``), holding no roster data."""
        body = (
            "Your mail to TLD-OPS was not acted on:\n\n"
            + "".join(f"  - {r}\n" for r in reasons)
            + "\nRequests count only when they come from, or are copied (Cc) to, the address IANA\n"
            "lists as administrative contact of the ccTLD. Name the ccTLD on a line of its own,\n"
            "such as 'ccTLD: mt'. The request template is sent by "
            + self.rt.service_address("help") + ".\n\n"
            "This reply is automatic; further refusals to this address are held back for a day.\n"
        )
        return auto_reply.reply(self.rt, p, facts, kind="refusal", body=body,
                                subject="[TLD-OPS] Your request was not accepted")



def _quote(text: str, limit: int = 4000) -> str:
    lines = text[:limit].splitlines() or [""]
    return "\n".join("> " + line for line in lines)


def _seen(conn: sqlite3.Connection, message_id: str) -> bool:
    row = conn.execute("SELECT 1 FROM seen_messages WHERE message_id = ?", (message_id,)).fetchone()
    return row is not None


def _remember_message_id(message_id: str, spool_id: int, now: float, *, strict: bool) -> spool.Effect:
    verb = "INSERT" if strict else "INSERT OR IGNORE"

    def job(conn: sqlite3.Connection) -> None:
        conn.execute(f"{verb} INTO seen_messages (message_id, spool_id, seen_at) VALUES (?,?,?)",
                     (message_id, spool_id, now))

    return job


def _new_request(spool_id: int, d: Decision, requester: str, auth: str, state: str,
                 evidence: dict[str, Any], now: float) -> Callable[[sqlite3.Connection], int]:
    def job(conn: sqlite3.Connection) -> int:
        cur = conn.execute(
            "INSERT INTO requests (spool_id, tld, requester, admin_email, auth, state, evidence,"
            " created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?)",
            (spool_id, d.tld, requester, d.admin_key, auth, state, json.dumps(evidence), now, now))
        return int(cur.lastrowid or 0)

    return job


def _redeem(token: str, sender_key: str, now: float, spool_id: int,
            ) -> Callable[[sqlite3.Connection], tokens.Redemption]:
    """Use the token and advance its request in one transaction."""
    use = tokens.redeem(token, PURPOSE_CONFIRM, sender_key, now, spool_id)

    def job(conn: sqlite3.Connection) -> tokens.Redemption:
        r = use(conn)
        if r.request_id is not None:
            conn.execute("UPDATE requests SET state = 'awaiting-validator', updated_at = ?"
                         " WHERE id = ? AND state = 'awaiting-confirmation'", (now, r.request_id))
        return r

    return job


def _evidence(d: Decision, contact: AdminContact | None, report: DkimReport, ar: str,
              sender: addresses.Mailbox, facts: MessageFacts, replay_why: str | None) -> dict[str, Any]:
    return {
        "decision": {"verdict": d.verdict.value, "reason": d.reason},
        "from": sender.address,
        "message_id": facts.message_id,
        "date": facts.date_value,
        "replay": replay_why,
        "dkim": [dict(s.__dict__) for s in report.signatures],  # flat: asdict's deep copy is costly
        "authentication_results": ar,
        "iana": None if contact is None else {
            "email": contact.email, "status": contact.status, "source": contact.source,
            "fetched_at": contact.fetched_at, "from_cache": contact.from_cache,
        },
    }

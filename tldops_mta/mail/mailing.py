"""The daemon's own mail from a template, and the one-time confirm+TOKEN@ addresses it
carries: the one way every handler (requests, decisions, who@, update@, bounces, the
redelegation watch) writes mail, inside the transaction that decided to.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from tldops_mta.mail import outbox
from tldops_mta.mail.tlp import Tlp
from tldops_mta.policy import texts
from tldops_mta.settings.live import Live
from tldops_mta.store import tokens


def one_time_address(live: Live, conn: sqlite3.Connection, purpose: str, *, to: str, now: float,
                     ttl: float | None = None, request_id: int | None = None,
                     payload: str | None = None, service: str = "confirm") -> str:
    """A token for ``purpose``, issued to ``to`` (default life ``auth.token_ttl``), and the
    SERVICE+TOKEN@ address that carries it (confirm+, or decide+ for the Validators)."""
    token = tokens.new_token()
    life = live.cfg.auth.token_ttl if ttl is None else ttl
    tokens.issue(token, purpose, request_id, to, now=now, ttl=life, payload=payload)(conn)
    return live.service_address(service, token)


def send(live: Live, conn: sqlite3.Connection, template: str, to: Sequence[str],
         values: dict[str, object], *, tlp: Tlp, bounce_tag: str | None, purpose: str,
         reply_to: str | None = None, auto: str = "auto-generated", in_reply_to: str | None = None,
         ref: str | None = None) -> None:
    """Queue template ``template`` with ``values`` to each of ``to`` (each its own delivery,
    so one bad address delays no other), from ``reply_to`` when answers are expected (a
    one-time address), else from postmaster@; bounces come back to bounces+BOUNCE_TAG@, or
    with ``bounce_tag`` None to one return path per delivery (bounces+b<delivery>@)."""
    subject, body = texts.render(live.rules, template, values)
    sender = reply_to or live.service_address("postmaster")
    bounces = live.service_address("bounces", bounce_tag)
    for rcpt in to:
        raw = outbox.compose(from_addr=f"TLD-OPS <{sender}>", to=rcpt, subject=subject, body=body,
                             domain=live.cfg.server.domain, tlp=tlp, reply_to=reply_to,
                             auto=auto, in_reply_to=in_reply_to)
        outbox.enqueue(raw, bounces, [rcpt], purpose, ref=ref, cfg=live.cfg, verp=bounce_tag is None)(conn)

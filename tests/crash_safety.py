#!/usr/bin/env python3
"""Crash safety: the daemon killed with SIGKILL at random moments, and what it promised kept.

Five proofs, each against the real daemon (its SMTP process, spool appender and worker
killed together, as systemd kills a service's cgroup), with real loopback DNS and IANA
servers and Postfix's smtp-source as the client:

- **under load**: smtp-source keeps sending DKIM-signed requests while the daemon is killed
  ``--kills`` times at random moments and restarted. Every message that got a 250 (its
  queue id, read from smtp-source's own transcript) must be in the spool exactly once,
  processed exactly once (one "done", one request, no outgoing mail twice), and every
  outgoing mail delivered exactly once.
- **during a broadcast**: the roster mail to ``--sscs`` SSCs, killed mid-way again and
  again; afterwards one broadcast, each SSC's delivery exactly once.
- **during an approval**: a Validator's signed "approve" mail, the daemon killed a random
  few milliseconds after its 250, before or while the approval commits; afterwards each
  roster exactly as approved, one approval event, each welcome mail once.
- **on every path**: ``--mix`` each of confirm+ answers (to requests, who@ queries, update@
  corrections and list posts waiting for a token), signed decide+ decisions, who@, update@,
  list@, bounces+ and help@ mail, in a random order, the daemon killed ``--mix-kills`` times
  while the worker has a batch of it in hand, once that batch has written a random few rows
  (or is over). Afterwards each message
  ended once; each confirmation applied once and answered once, never refused; each who@
  answered once; each update@ token issued once; each decision applied once with one set of
  mails; each list post distributed once to each member; each bounce counted once; each
  help@ answered once; integrity_check ok. Every broken promise is listed, not only the first.

- **one of two workers**: worker slot 1 SIGKILLed with a batch in hand while slot 0 holds
  one too; slot 1's restart requeues its own claims only; each message claimed once, the
  killed batch twice, every effect once.

Run (a few minutes with the defaults): ``.venv/bin/python tests/crash_safety.py``
(``--kills 20 --sscs 300 --approvals 6 --mix 200 --mix-kills 10 --processes 2``; ``--seed N`` repeats the
random choices of a run); tests/test_crash_safety.py runs a short version.
Exit status 0 when every check holds; each figure is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email import message_from_bytes
from email.utils import make_msgid
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent / "bench")]

from _common import render_table  # noqa: E402
from auth_env import ADMIN, REQUESTS, SELECTOR, AuthEnv, auth_daemon, form, now_date, request  # noqa: E402
from daemon_proc import DOMAIN, SHIPPED_RULES, DaemonProc  # noqa: E402
from dkim_sign import TestKey, rsa_key  # noqa: E402
from iana_servers import WHOIS_MT, rdap_doc  # noqa: E402

SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
VALIDATOR = "validator@validators.example"
QUEUED = re.compile(r"<<< 250 2\.0\.0 Ok: queued as (\S+)")


class Broken(AssertionError):
    """A promise the daemon did not keep."""


def wait_until(what: str, cond: Callable[[], bool], timeout: float = 60.0, every: float = 0.02) -> None:
    """Wait on a state of the database (not on time): ``cond`` is checked every ``every``."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not cond():
        if time.monotonic() > deadline:
            raise Broken(f"timeout waiting for {what}")
        pause.wait(every)


def one(d: DaemonProc, sql: str, params: tuple[Any, ...] = ()) -> Any:
    return d.query(sql, params)[0][0]


def quiet(d: DaemonProc) -> bool:
    """Nothing left to do: every message processed, every outgoing mail delivered."""
    return one(d, "SELECT (SELECT count(*) FROM spool WHERE status IN ('received', 'processing'))"
                  " + (SELECT count(*) FROM outbox_deliveries WHERE status = 'queued')") == 0


def common_checks(d: DaemonProc) -> dict[str, int]:
    """What must hold after any crash: sound database, one end per message, each outgoing
    mail delivered once (one file per delivery, none left over)."""
    twice = d.query("SELECT spool_id, count(*) FROM spool_events WHERE status = 'done'"
                    " GROUP BY spool_id HAVING count(*) > 1")
    if twice:
        raise Broken(f"messages processed to 'done' more than once: {twice[:5]}")
    return sound(d)


def sound(d: DaemonProc) -> dict[str, int]:
    """A sound database, and each outgoing mail delivered once (one file per delivery)."""
    if d.query("PRAGMA integrity_check") != [("ok",)]:
        raise Broken("integrity_check failed")
    bad = d.query("SELECT status, count(*) FROM outbox_deliveries WHERE status != 'sent' GROUP BY 1")
    if bad:
        raise Broken(f"outgoing deliveries not sent: {bad}")
    deliveries = one(d, "SELECT count(*) FROM outbox_deliveries")
    files = len(list((d.state_dir / "outgoing").glob("*.eml")))
    if files != deliveries:
        raise Broken(f"{deliveries} deliveries but {files} files written")
    return {"deliveries": deliveries}


def one_request_and_one_mail_each(d: DaemonProc) -> None:
    """Each spooled request made exactly one request row, and no cause wrote its mail twice."""
    per_message = d.query("SELECT s.queue_id, count(r.id) FROM spool s LEFT JOIN requests r"
                          " ON r.spool_id = s.id GROUP BY s.id HAVING count(r.id) != 1")
    if per_message:
        raise Broken(f"messages with other than one request: {per_message[:5]}")
    twice = d.query("SELECT purpose, ref, count(*) FROM outbox_messages GROUP BY purpose, ref"
                    " HAVING count(*) > 1")
    if twice:
        raise Broken(f"outgoing mail written twice for one cause: {twice[:5]}")


# -- under load ------------------------------------------------------------------------------


@dataclass
class LoadResult:
    kills: int
    acknowledged: int
    stored: int
    stored_without_250: int
    requests: int
    deliveries: int
    kill_moments: list[str] = field(default_factory=list)


def _source(port: int, message: Path, transcript: Path, count: int) -> subprocess.Popen[bytes]:
    """smtp-source sending ``message`` (LF line ends: it sends CRLF) over 4 sessions."""
    out = open(transcript, "ab")  # noqa: SIM115 -- the child holds it; closed when it exits
    try:
        return subprocess.Popen([SMTP_SOURCE, "-v", "-s", "4", "-m", str(count), "-F", str(message),
                                 "-f", ADMIN, "-t", REQUESTS, f"127.0.0.1:{port}"],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    finally:
        out.close()


def under_load(workdir: Path, kills: int, rng: random.Random, processes: int = 2) -> LoadResult:
    settings = {"validation.validators": [VALIDATOR], "worker.retry_base": 0.2, "log.level": "info",
                "server.limit_exempt": ["127.0.0.0/8"], "worker.processes": processes}
    with auth_daemon(workdir / "load", **settings) as env:
        d = env.d
        # One signed request, sent again and again: the first is verified, the others are
        # replays (same Message-ID) and wait for the admin's confirmation; each is one request
        # and one mail, so a message processed twice would show.
        raw = env.signed(request(ADMIN, body=form()))
        message = workdir / "request.eml"
        message.write_bytes(raw.replace(b"\r\n", b"\n"))
        transcript = workdir / "smtp-source.log"
        moments = []
        done_sql = "SELECT count(*) FROM spool WHERE status = 'done'"
        for _ in range(kills):
            done_before = one(d, done_sql)
            source = _source(d.port, message, transcript, 100_000)
            threading.Event().wait(rng.uniform(0.3, 1.5))  # a random moment, not a synchronisation
            # ... once the worker is at work too (it yields the CPU to intake, so under load
            # it may not have started yet): each kill then cuts processing as well as intake.
            wait_until("the worker processing", lambda b=done_before: one(d, done_sql) > b, timeout=120)
            moments.append(f"{one(d, 'SELECT count(*) FROM spool')} stored, {one(d, done_sql)} done")
            d.kill_all()
            try:
                source.wait(30)  # it stops at the refused or reset connection
            except subprocess.TimeoutExpired:
                source.kill()
                source.wait()
            d.start()
        final = _source(d.port, message, transcript, 50)
        if final.wait(120) != 0:
            raise Broken("the last smtp-source run, with the daemon up, failed: "
                         + transcript.read_text()[-2000:])
        wait_until("every message processed and every mail delivered", lambda: quiet(d), timeout=180)

        acked = QUEUED.findall(transcript.read_text("utf-8", "replace"))
        if len(set(acked)) != len(acked):
            raise Broken("smtp-source saw one queue id acknowledged twice")
        stored = dict(d.query("SELECT queue_id, status FROM spool"))
        lost = [q for q in acked if q not in stored]
        if lost:
            raise Broken(f"{len(lost)} acknowledged messages are not in the spool: {lost[:5]}")
        not_done = {q: s for q, s in stored.items() if s != "done"}
        if not_done:
            raise Broken(f"messages not processed to 'done': {list(not_done.items())[:5]}")
        one_request_and_one_mail_each(d)
        unanswered = d.query("SELECT r.id FROM requests r WHERE NOT EXISTS (SELECT 1 FROM outbox_messages m"
                             " WHERE m.ref = 'request-' || r.id)")
        if unanswered:
            raise Broken(f"requests whose mail was lost: {unanswered[:5]}")
        checked = common_checks(d)
        return LoadResult(kills, len(acked), len(stored), len(stored) - len(acked),
                          one(d, "SELECT count(*) FROM requests"), checked["deliveries"], moments)


# -- during a broadcast ----------------------------------------------------------------------


@dataclass
class BroadcastResult:
    sscs: int
    kills: int
    sent_at_kills: list[int]
    deliveries: int


def _tldops(d: DaemonProc, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tldops_mta", *args, "--config", str(d.config_path)],
                          capture_output=True, text=True, timeout=60, cwd=d.workdir)


def during_broadcast(workdir: Path, sscs: int, kills: int, processes: int = 2) -> BroadcastResult:
    """The roster mail to ``sscs`` SSCs; the daemon killed ``kills`` times while it goes out."""
    (workdir / "broadcast").mkdir()
    d = DaemonProc(workdir / "broadcast", {"log.level": "info", "worker.processes": processes})
    d.start()
    try:
        for i in range(sscs):
            tld, role = f"t{i // 3:03d}", ("primary", "secondary", "third")[i % 3]
            d.execute("INSERT INTO roster (tld, role, first_name, last_name, phone, email, since)"
                      " VALUES (?, ?, 'Ssc', ?, ?, ?, 0)",
                      (tld, role, f"Number{i}", f"+3562133{i:04d}", f"ssc{i}@registry{i // 3}.example"))
        r = _tldops(d, "broadcast", "now")
        if r.returncode != 0:
            raise Broken(f"broadcast now failed: {r.stderr}")
        sql = ("SELECT count(*) FROM outbox_deliveries d JOIN outbox_messages m ON m.id = d.message_id"
               " WHERE m.purpose = 'broadcast' AND d.status = 'sent'")
        sent_at_kills = []
        for k in range(kills):
            # Kill once some of the mail went and some did not: a little further each time.
            target = max(1, (k + 1) * sscs // (kills + 2))
            wait_until(f"{target} broadcast deliveries", lambda t=target: one(d, sql) >= t, timeout=120,
                       every=0.002)
            sent = one(d, sql)
            d.kill_all()
            sent_at_kills.append(sent)
            d.start()
        wait_until("the broadcast delivered", lambda: quiet(d), timeout=180)
        if one(d, "SELECT count(*) FROM broadcasts") != 1:
            raise Broken("the broadcast was queued more than once")
        per_rcpt = d.query("SELECT rcpt, count(*) FROM outbox_deliveries GROUP BY rcpt HAVING count(*) != 1")
        if per_rcpt:
            raise Broken(f"SSCs with other than one delivery: {per_rcpt[:5]}")
        got = one(d, sql)
        if got != sscs:
            raise Broken(f"{got} of {sscs} SSCs got the broadcast")
        checked = common_checks(d)
        return BroadcastResult(sscs, kills, sent_at_kills, checked["deliveries"])
    finally:
        if d.alive:
            d.kill_all()


# -- during an approval ----------------------------------------------------------------------


@dataclass
class ApprovalResult:
    approvals: int
    committed_before_kill: int
    committed_after_restart: int


TLDS = ("mt", "cc", "tv", "nu", "ws", "fm", "gg", "je", "im", "ac")


def _serve_more_tlds(env: AuthEnv, tlds: tuple[str, ...]) -> None:
    """The same admin for more ccTLDs (one admin may manage several), in the RDAP server."""
    for tld in tlds:
        doc = rdap_doc("mt")
        doc["ldhName"] = tld
        env.rdap.answers[tld] = (200, json.dumps(doc).encode())


def _newest_outgoing(d: DaemonProc, rcpt: str, subject_has: str) -> Any:
    for p in sorted((d.state_dir / "outgoing").glob("*.eml"), reverse=True):
        m = message_from_bytes(p.read_bytes())
        if str(m["To"]) == rcpt and subject_has in str(m["Subject"]):
            return m
    return None


def during_approval(workdir: Path, approvals: int, rng: random.Random, processes: int = 2) -> ApprovalResult:
    tlds = TLDS[:approvals]
    with auth_daemon(workdir / "approval", **{"validation.validators": [VALIDATOR], "worker.retry_base": 0.2,
                                              "log.level": "info", "worker.processes": processes}) as env:
        _serve_more_tlds(env, tlds)
        validator_key = rsa_key(2048, 2)
        env.publish("sel", "validators.example", validator_key)
        before = after = 0
        d = env.d
        for n, tld in enumerate(tlds):
            sscs = (("primary", "Jane", "Doe", "+356 2133 4455", f"jane.{tld}@nic.org.mt"),
                    ("secondary", "John", "Roe", "+356 2133 4456", f"john.{tld}@nic.org.mt"))
            qid = env.send(env.signed(request(ADMIN, body=form(tld=tld, sscs=sscs), tld=tld)))
            env.processed(qid)
            rid = one(d, "SELECT r.id FROM requests r JOIN spool s ON s.id = r.spool_id WHERE s.queue_id = ?",
                      (qid,))
            wait_until("the Validator's mail",
                       lambda r=rid: _newest_outgoing(d, VALIDATOR, f"#{r}") is not None)
            decide = str(_newest_outgoing(d, VALIDATOR, f"#{rid}")["Reply-To"])
            decision = (f"From: {VALIDATOR}\r\nTo: {decide}\r\nSubject: Re: request\r\n"
                        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\r\n"
                        f"Message-ID: <approve-{tld}-{time.time_ns()}@validators.example>\r\n\r\n"
                        "approve\r\n").encode()
            raw = env.signed(decision, "validators.example", validator_key)
            env.send(raw, mail_from=VALIDATOR, rcpts=(decide,))
            threading.Event().wait(rng.uniform(0.0, 0.3) if n % 2 else 0.0)  # the random moment
            d.kill_all()
            approved_already = one(d, "SELECT state FROM requests WHERE id = ?", (rid,)) == "approved"
            before += approved_already
            after += not approved_already
            d.start()
            wait_until(f"request {rid} approved",
                       lambda r=rid: one(d, "SELECT state FROM requests WHERE id = ?", (r,)) == "approved")
            wait_until("its mail delivered", lambda: quiet(d))
            roster = d.query("SELECT role, email FROM roster WHERE tld = ? ORDER BY role", (tld,))
            if roster != [(s[0], s[4]) for s in sscs]:
                raise Broken(f".{tld}: roster {roster} after the approval")
            events = one(d, "SELECT count(*) FROM request_events"
                            " WHERE request_id = ? AND to_state = 'approved'", (rid,))
            if events != 1:
                raise Broken(f"request {rid}: {events} approval events")
            changes = one(d, "SELECT count(*) FROM roster_changes WHERE request_id = ?", (rid,))
            if changes != 1:
                raise Broken(f"request {rid}: {changes} roster changes")
            for s in sscs:
                welcomes = one(d, "SELECT count(*) FROM outbox_deliveries dl JOIN outbox_messages m"
                                  " ON m.id = dl.message_id WHERE dl.rcpt = ?", (s[4],))
                if welcomes != 1:
                    raise Broken(f"{s[4]} got {welcomes} mails after the approval")
        common_checks(d)
        return ApprovalResult(len(tlds), before, after)


# -- on every path ---------------------------------------------------------------------------

SSC_DOMAIN = "ssc.example"
"""Where the roster's SSCs have their mail (its DKIM key in the loopback DNS server)."""
HELP = f"help@{DOMAIN}"
WHO = f"who@{DOMAIN}"
UPDATE = f"update@{DOMAIN}"
LIST = f"list@{DOMAIN}"
KINDS = ("confirm", "decide", "who", "update", "list", "bounces", "help")


@dataclass(frozen=True)
class Mail:
    """One message of the mix: what it is (``kind``, and ``about``: whom or what it concerns)."""

    kind: str
    about: str
    raw: bytes
    mail_from: str
    rcpt: str


@dataclass
class PathsResult:
    kills: int
    sent: dict[str, int]
    kill_moments: list[str]
    deliveries: int
    failures: list[str] = field(default_factory=list)


def _cctlds() -> list[str]:
    """The delegated, counted two-letter ccTLDs of the shipped rules/cctlds.csv."""
    rows = (line.split(",") for line in (SHIPPED_RULES / "cctlds.csv").read_text("utf-8").splitlines()
            if line and not line.startswith(("#", "tld,")))
    return [r[0] for r in rows if len(r[0]) == 2 and r[0].isalpha() and not r[5] and r[6] == "yes"]


def _mail(kind: str, about: str, sender: str, to: str, subject: str, body: str, *,
          mid: str | None = None) -> Mail:
    domain = sender.split("@")[1]
    raw = (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {now_date()}\r\n"
           f"Message-ID: {mid or make_msgid(domain=domain)}\r\nMIME-Version: 1.0\r\n"
           f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n").encode()
    return Mail(kind, about, raw, sender, to)


def _dsn(to: str, rcpt: str) -> bytes:
    """A delivery report of a permanent failure, as an MTA sends it (tests/test_bounces.py)."""
    return (f"From: MAILER-DAEMON@mx.{SSC_DOMAIN}\r\nTo: {to}\r\nSubject: Undelivered Mail\r\n"
            f"Date: {now_date()}\r\nMessage-ID: {make_msgid(domain='mx.' + SSC_DOMAIN)}\r\n"
            "Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
            "--B\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n\r\n"
            f"--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.{SSC_DOMAIN}\r\n\r\n"
            f"Final-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
            "Diagnostic-Code: smtp; 550 5.1.1 mailbox unavailable\r\n\r\n--B--\r\n").encode()


def _send_all(d: DaemonProc, mails: list[Mail], sessions: int = 4) -> list[str]:
    """Send each (the daemon is up: every one gets its 250) over ``sessions`` sessions at
    once, faster than the worker takes them; their queue ids, in the order of ``mails``."""

    def send(part: list[Mail]) -> list[str]:
        ids = []
        for start in range(0, len(part), 50):  # a session has a limit of commands
            with smtplib.SMTP(d.host, d.port, timeout=60) as s:
                s.ehlo("mx.sender.example")
                for m in part[start:start + 50]:
                    code, text = s.mail(m.mail_from)
                    if code == 250:
                        code, text = s.rcpt(m.rcpt)
                    if code == 250:
                        code, text = s.data(m.raw)
                    if code != 250:
                        raise Broken(f"{m.kind} mail refused: {code} {text!r}")
                    ids.append(text.decode().rsplit(" ", 1)[1])
        return ids

    parts = [mails[i::sessions] for i in range(sessions)]
    with ThreadPoolExecutor(sessions) as pool:
        sent = list(pool.map(send, parts))
    ids = [""] * len(mails)
    for i, part_ids in enumerate(sent):
        ids[i::sessions] = part_ids
    return ids


def _outbox(d: DaemonProc, purpose: str) -> list[tuple[str, str, Any]]:
    """(recipient, ref, parsed message) of each outgoing mail queued for ``purpose``."""
    return [(r[0], r[1], message_from_bytes(bytes(r[2]))) for r in d.query(
        "SELECT dl.rcpt, m.ref, m.raw FROM outbox_messages m JOIN outbox_deliveries dl"
        " ON dl.message_id = m.id WHERE m.purpose = ? ORDER BY m.id", (purpose,))]


def _ssc_key(env: AuthEnv) -> TestKey:
    key = rsa_key(2048, 3)
    env.publish(SELECTOR, SSC_DOMAIN, key)
    return key


WRITTEN = ("SELECT (SELECT count(*) FROM tokens) + (SELECT count(*) FROM outbox_messages)"
           " + (SELECT count(*) FROM request_events) + (SELECT count(*) FROM roster_changes)"
           " + (SELECT count(*) FROM bounces) + (SELECT count(*) FROM list_posts)"
           " + (SELECT count(*) FROM seen_messages)")
"""Rows the handling of mail writes: one more, and something was done."""


def every_path(workdir: Path, per_kind: int, kills: int, rng: random.Random,
               roster_tlds: int = 4, processes: int = 2) -> PathsResult:
    """A mix of confirm+, decide+, who@, update@, list@, bounces+ and help@ mail (``per_kind``
    of each, in a random order), the whole daemon SIGKILLed ``kills`` times while the worker
    processes it. The tokens the mix answers are issued first, with the daemon left alone:
    requests needing the admin's confirmation, requests waiting for the Validator, unsigned
    who@ queries, update@ corrections and list posts from the SSCs of ``roster_tlds`` ccTLDs.
    Every broken promise is collected, not only the first (``failures``)."""
    tlds = _cctlds()
    # Some requests approved (each a new ccTLD, whose two SSCs then get the list's posts
    # too), the rest denied.
    listed, approvals = tlds[:roster_tlds], tlds[roster_tlds:roster_tlds + min((per_kind + 1) // 2, 10)]
    spare = tlds[roster_tlds + len(approvals):]
    settings = {"validation.validators": [VALIDATOR], "worker.retry_base": 0.2, "log.level": "info",
                "server.limit_exempt": ["127.0.0.0/8"], "iana.timeout": 10.0,
                # Small batches: the worker finishes some, then a kill cuts the next in the middle.
                "worker.batch_size": 16, "worker.processes": processes}
    with auth_daemon(workdir / "paths", **settings) as env:
        d = env.d
        _serve_more_tlds(env, tuple(tlds))
        whois = WHOIS_MT.read_text("utf-8")  # the fallback, when RDAP is slow under this load
        for tld in tlds:
            env.whois.answers[tld] = whois.replace("domain:       MT", f"domain:       {tld.upper()}"
                                                   ).encode()
        validator_key = rsa_key(2048, 2)
        env.publish(SELECTOR, "validators.example", validator_key)
        ssc_key = _ssc_key(env)

        # -- the roster: three SSCs for each listed ccTLD ------------------------------------
        sscs: list[tuple[str, str, str]] = []  # (tld, role, address)
        for t, tld in enumerate(listed):
            for r, role in enumerate(("primary", "secondary", "third")):
                address = f"ssc{t * 3 + r}.person@{SSC_DOMAIN}"
                d.execute("INSERT INTO roster (tld, role, first_name, last_name, phone, email, since)"
                          " VALUES (?, ?, 'Ssc', ?, ?, ?, 0)",
                          (tld, role, f"Number{t * 3 + r}", f"+3562133{t * 3 + r:04d}", address))
                sscs.append((tld, role, address))

        def update_form(tld: str, role: str, address: str, n: int) -> str:
            return form(action="update", tld=tld, sscs=((role, "Ssc", f"Corrected{n}",
                                                         f"+356 2134 {n % 10000:04d}", address, address),))

        # -- the tokens the mix answers -------------------------------------------------------
        setup: list[Mail] = []
        for i in range(per_kind):  # requests the IANA admin confirms, and requests decided
            tld = spare[i % len(spare)]
            setup.append(Mail("request", tld, request(ADMIN, body=form(tld=tld), tld=tld), ADMIN, REQUESTS))
        denied = [spare[i % len(spare)] for i in range(per_kind - len(approvals))]
        for i, tld in enumerate(approvals + denied):
            people = (("primary", "Anna", f"New{i}", "+356 2135 1000", f"anna{i}.new@welcome.example"),
                      ("secondary", "Ben", f"New{i}", "+356 2135 1001", f"ben{i}.new@welcome.example"))
            setup.append(Mail("signed", tld, env.signed(request(ADMIN, body=form(tld=tld, sscs=people),
                                                                tld=tld)), ADMIN, REQUESTS))
        token_askers = sscs[:per_kind]
        posts = [f"<unsigned-{n}@{SSC_DOMAIN}>" for n in range(len(token_askers))]
        for n, (tld, role, address) in enumerate(token_askers):
            setup.append(_mail("who", address, address, WHO, "who", "roster please"))
            setup.append(_mail("update", address, address, UPDATE, "correction",
                               update_form(tld, role, address, n)))
            setup.append(_mail("list", address, address, LIST, f"unsigned post {n}",
                               "The name servers answer SERVFAIL.", mid=posts[n]))
        _send_all(d, setup)
        wait_until("the tokens issued and their mail delivered", lambda: quiet(d), timeout=600)
        refused = d.query("SELECT reason FROM spool WHERE status != 'done'")
        if refused:
            raise Broken(f"setup mail not processed to 'done': {refused[:3]}")

        def confirm_addresses(purpose: str) -> list[tuple[str, str, str]]:
            """(recipient, ref, the confirm+/decide+ address) of each token mail of ``purpose``."""
            return [(rcpt, ref or "", str(m["Reply-To"])) for rcpt, ref, m in _outbox(d, purpose)]

        mix: list[Mail] = []
        for _, ref, address in confirm_addresses("confirmation"):
            mix.append(_mail("confirm", ref, ADMIN, address, "Re: TLD-OPS", "yes"))
        asked = {r[0]: r for r in d.query("SELECT id, state FROM requests")}
        decided: dict[str, str] = {}  # request-N: what the Validator said
        for n, (_, ref, address) in enumerate(confirm_addresses("validator")):
            rid = int(ref.split("-")[1])
            if asked[rid][1] != "awaiting-validator":
                continue
            tld = one(d, "SELECT tld FROM requests WHERE id = ?", (rid,))
            word = "approve" if tld in approvals else f"deny not now ({n})"
            decided[ref] = word.split(maxsplit=1)[0]
            raw = _mail("decide", ref, VALIDATOR, address, "Re: request", word + "\r\n\r\n> A request.").raw
            mix.append(Mail("decide", ref, env.signed(raw, "validators.example", validator_key),
                            VALIDATOR, address))
        for rcpt, _, address in confirm_addresses("who-token"):
            mix.append(_mail("confirm-who", rcpt, rcpt, address, "Re: who", "yes"))
        for rcpt, _, address in confirm_addresses("self-update"):
            mix.append(_mail("confirm-update", rcpt, rcpt, address, "Re: correction", "yes"))
        for rcpt, _, address in confirm_addresses("list-token"):
            mix.append(_mail("confirm-list", rcpt, rcpt, address, "Re: post", "yes"))
        for n in range(per_kind):
            tld, role, address = sscs[(n * 7) % len(sscs)]
            query = _mail("who", address, address, WHO, "who", "roster").raw
            mix.append(Mail("who", address, env.signed(query, SSC_DOMAIN, ssc_key), address, WHO))
            tld, role, address = sscs[(n * 5 + 1) % len(sscs)]
            mix.append(_mail("update", address, address, UPDATE, "correction",
                             update_form(tld, role, address, per_kind + n)))
            tld, role, address = sscs[(n * 3 + 2) % len(sscs)]
            post = _mail("list", f"<signed-{n}@{SSC_DOMAIN}>", address, LIST, f"signed post {n}",
                         "Scanning seen.", mid=f"<signed-{n}@{SSC_DOMAIN}>")
            mix.append(Mail("list", post.about, env.signed(post.raw, SSC_DOMAIN, ssc_key), address, LIST))
            asker = f"asker{n}@help-seekers.example"
            mix.append(_mail("help", asker, asker, HELP, "how do I subscribe?", "help"))
        deliveries = [r[0] for r in d.query("SELECT id FROM outbox_deliveries ORDER BY id")]
        for delivery in rng.sample(deliveries, min(per_kind, len(deliveries))):
            to = f"bounces+b{delivery}@{DOMAIN}"
            rcpt = one(d, "SELECT rcpt FROM outbox_deliveries WHERE id = ?", (delivery,))
            mix.append(Mail("bounces", str(delivery), _dsn(to, rcpt), "", to))
        rng.shuffle(mix)

        # -- the mix, killed while it is processed --------------------------------------------
        # All of it sent first (each gets its 250: intake is the load run's), then killed
        # again and again while the worker works through it.
        sent = dict(zip(_send_all(d, mix), mix, strict=True))
        moments = []
        for k in range(kills):
            spool_now = dict(d.query("SELECT status, count(*) FROM spool GROUP BY 1"))
            done_before = spool_now.get("done", 0) + spool_now.get("rejected", 0)
            left = spool_now.get("received", 0) + spool_now.get("processing", 0)
            # Once the worker finished a random few since the restart (and so went on), at a
            # random moment of the batch it has in hand then.
            target = done_before + rng.randint(1, max(1, left // (kills - k + 1)))

            def mid_way(t: int = target) -> bool:
                row = d.query("SELECT sum(status IN ('done', 'rejected')), sum(status = 'processing'),"
                              " sum(status IN ('received', 'processing')) FROM spool")[0]
                return (row[0] >= t and row[1] > 0) or row[2] == 0

            wait_until("the worker in the middle of the mix", mid_way, timeout=300, every=0.002)
            # The moment: once the batch in hand has written a random few rows of what it does
            # (a row committed before its outcome is what a kill must not make happen twice),
            # or, where nothing commits before the outcome, once that batch is over.
            in_hand = [r[0] for r in d.query("SELECT id FROM spool WHERE status = 'processing'")]
            rows_then = one(d, WRITTEN)

            def cut(n: int = rows_then + rng.randint(1, 3), ids: str = ",".join(map(str, in_hand))) -> bool:
                return one(d, WRITTEN) >= n or not ids or one(
                    d, f"SELECT count(*) FROM spool WHERE status = 'processing' AND id IN ({ids})") == 0

            wait_until("a moment in the batch", cut, timeout=300, every=0.001)
            d.kill_all()
            now = dict(d.query("SELECT status, count(*) FROM spool GROUP BY 1"))
            moments.append(f"{now.get('done', 0) + now.get('rejected', 0) - done_before} processed since the "
                           f"restart, {now.get('processing', 0)} in hand, {now.get('received', 0)} waiting")
            d.start()
        wait_until("every message processed and every mail delivered", lambda: quiet(d), timeout=600)
        failures = _paths_checks(d, sent, decided, posts)
        try:
            deliveries_now = sound(d)["deliveries"]
        except Broken as e:
            failures.append(str(e))
            deliveries_now = 0
        counts: dict[str, int] = {}
        for m in sent.values():
            kind = m.kind.split("-")[0]
            counts[kind] = counts.get(kind, 0) + 1
        return PathsResult(kills, counts, moments, deliveries_now, failures)


def _paths_checks(d: DaemonProc, sent: dict[str, Mail], decided: dict[str, str],
                  unsigned_posts: list[str]) -> list[str]:
    """Every promise of the mix, each checked exactly; what broke, in words."""
    failures: list[str] = []

    def check(what: str, bad: list[Any]) -> None:
        if bad:
            failures.append(f"{what}: {len(bad)}, e.g. {bad[:3]}")

    status = {r[0]: (r[1], r[2] or "") for r in d.query("SELECT queue_id, status, reason FROM spool")}
    by_kind: dict[str, list[tuple[str, Mail]]] = {}
    for qid, m in sent.items():
        by_kind.setdefault(m.kind, []).append((qid, m))
    # Each message processed once: one end (done or rejected), one more for each time a
    # confirmed list post was put back in the spool; and nothing in the mix is refused.
    check("messages ended other than once", d.query(
        "SELECT s.queue_id, sum(e.status IN ('done', 'rejected')), sum(e.reason LIKE 'list: confirmed%')"
        " FROM spool s JOIN spool_events e ON e.spool_id = s.id GROUP BY s.id"
        " HAVING sum(e.status IN ('done', 'rejected')) != 1 + sum(e.reason LIKE 'list: confirmed%')"))
    for kind, items in sorted(by_kind.items()):
        check(f"{kind} mail not done", [(m.about, status[q][0], status[q][1][:120]) for q, m in items
                                        if status[q][0] != "done"])
    # Each confirmation applied once and answered once.
    for _, m in by_kind.get("confirm", []):
        rid = int(m.about.split("-")[1])
        confirms = one(d, "SELECT count(*) FROM request_events WHERE request_id = ? AND event = 'confirm'",
                       (rid,))
        mails = d.query("SELECT purpose, count(*) FROM outbox_messages WHERE ref = ?"
                        " AND purpose IN ('validator', 'received') GROUP BY 1 ORDER BY 1", (m.about,))
        if confirms != 1 or mails != [("received", 1), ("validator", 1)]:
            failures.append(f"{m.about}: {confirms} confirmations, mails {mails}")
    refusals = d.query("SELECT m.purpose, dl.rcpt FROM outbox_messages m JOIN outbox_deliveries dl"
                       " ON dl.message_id = m.id WHERE m.purpose IN ('refusal', 'list-refusal')")
    check("refusals mailed", refusals)
    # Each who@ answered once: one roster mail per signed query and per answered token.
    wanted: dict[str, int] = {}
    for _, m in by_kind.get("who", []) + by_kind.get("confirm-who", []):
        wanted[m.about] = wanted.get(m.about, 0) + 1
    got = dict(d.query("SELECT dl.rcpt, count(*) FROM outbox_messages m JOIN outbox_deliveries dl"
                       " ON dl.message_id = m.id WHERE m.purpose = 'who' GROUP BY 1"))
    check("SSCs with other than one roster mail per who@ answered",
          [(a, n, got.get(a, 0)) for a, n in wanted.items() if got.get(a, 0) != n])
    # Each update@ token issued once (one token and one mail per correction asked, the
    # setup's included), and each answered one applied once.
    asked = dict(d.query("SELECT s.mail_from, count(*) FROM spool s WHERE s.rcpt_to LIKE '%\"update@%'"
                         " GROUP BY 1"))
    issued = dict(d.query("SELECT address, count(*) FROM tokens WHERE purpose = 'self-update' GROUP BY 1"))
    mailed = dict(d.query("SELECT dl.rcpt, count(*) FROM outbox_messages m JOIN outbox_deliveries dl"
                          " ON dl.message_id = m.id WHERE m.purpose = 'self-update' GROUP BY 1"))
    check("SSCs with update@ tokens issued other than once per correction asked",
          [(a, n, issued.get(a, 0), mailed.get(a, 0)) for a, n in asked.items()
           if (issued.get(a, 0), mailed.get(a, 0)) != (n, n)])
    answered = dict(d.query("SELECT substr(by, 5, length(by) - 12), count(*) FROM roster_changes"
                            " WHERE by LIKE 'ssc:% (token)' GROUP BY 1"))
    check("corrections applied other than once",
          [(m.about, answered.get(m.about, 0)) for _, m in by_kind.get("confirm-update", [])
           if answered.get(m.about, 0) != 1])
    # Each decision applied once, with one set of mails.
    for _, m in by_kind.get("decide", []):
        events = d.query("SELECT event FROM request_events WHERE request_id = ? AND actor = 'validator'",
                         (int(m.about.split("-")[1]),))
        mails = d.query("SELECT purpose, count(*) FROM outbox_messages WHERE ref = ?"
                        " AND purpose IN ('decision', 'outcome', 'welcome') GROUP BY 1 ORDER BY 1",
                        (m.about,))
        want = [("decision", 1), ("outcome", 1)] + ([("welcome", 2)] if decided[m.about] == "approve" else [])
        if events != [(decided[m.about],)] or mails != want:
            failures.append(f"{m.about}: Validator events {events}, mails {mails} (wanted {want})")
    # Each list post distributed once, to each member once.
    posts = [m.about for _, m in by_kind.get("list", [])] + unsigned_posts
    rows = {r[0]: r[1:] for r in d.query(
        "SELECT p.original_message_id, p.recipients, count(dl.id), count(DISTINCT dl.rcpt) FROM list_posts p"
        " LEFT JOIN outbox_deliveries dl ON dl.message_id = p.outbox_message_id GROUP BY p.id")}
    check("list posts not distributed once to each member",
          [(p, rows.get(p)) for p in posts if p not in rows or len(set(rows[p])) != 1])
    check("list copies queued more than once", d.query(
        "SELECT ref, count(*) FROM outbox_messages WHERE purpose = 'list' GROUP BY ref HAVING count(*) > 1"))
    # Each bounce counted once; a failing address reported at most once.
    counted = dict(d.query("SELECT s.queue_id, count(b.id) FROM spool s LEFT JOIN bounces b"
                           " ON b.spool_id = s.id GROUP BY s.id"))
    check("bounces counted other than once",
          [(m.about, counted.get(q)) for q, m in by_kind.get("bounces", []) if counted.get(q) != 1])
    reports = (one(d, "SELECT count(*) FROM outbox_messages WHERE purpose = 'bouncing'"),
               one(d, "SELECT count(*) FROM bounce_reports"))
    check("failing addresses reported other than once (mails, addresses)",
          [reports] if reports[0] != reports[1] else [])
    # Each help@ answered once.
    helped = dict(d.query("SELECT ref, count(*) FROM outbox_messages WHERE purpose = 'help' GROUP BY 1"))
    check("help@ mail answered other than once",
          [(m.about, helped.get(q, 0)) for q, m in by_kind.get("help", []) if helped.get(q, 0) != 1])
    return failures


# -- one of two workers killed --------------------------------------------------------------------


@dataclass
class SlotKillResult:
    messages: int
    killed_in_hand: int
    """Messages slot 1 had claimed when it was killed: processed again after its restart."""
    requests: int
    deliveries: int


_CLAIMED_BY = "SELECT id FROM spool WHERE status = 'processing' AND claimed_by LIKE 'w{slot}.%'"


def _paused_with_a_batch(d: DaemonProc, slot: int, pid: int) -> set[int]:
    """Worker ``slot`` (process ``pid``) SIGSTOPped while it holds a claimed batch; its ids."""
    sql = _CLAIMED_BY.format(slot=slot)
    while True:
        wait_until(f"slot {slot} with a batch in hand", lambda: bool(d.query(sql)), timeout=120, every=0.001)
        d.pause_workers([pid])
        in_hand = {r[0] for r in d.query(sql)}
        if in_hand:
            return in_hand
        d.resume_workers([pid])  # it had just committed: its next batch


def one_worker_killed(workdir: Path, messages: int) -> SlotKillResult:
    """Two worker processes at work on ``messages`` signed requests; worker slot 1 SIGKILLed
    with a batch in hand while slot 0 goes on. Slot 1's restart requeues what it held (only
    that), and: every message ends once with one request, each message not in the killed
    batch was claimed once (one 'processing' event), each of the killed batch twice (its
    cut attempt, then one after the restart), each outgoing mail delivered once."""
    settings = {"validation.validators": [VALIDATOR], "log.level": "info", "worker.processes": 2,
                "worker.max_idle": 0, "worker.batch_size": 8, "server.limit_exempt": ["127.0.0.0/8"]}
    with auth_daemon(workdir / "slot", **settings) as env:
        d = env.d
        d.worker_ready(slot=0)
        d.worker_ready(slot=1)
        raws = [env.signed(request(ADMIN, body=form())) for _ in range(messages)]
        paused = d.pause_workers()  # all spooled first, then both go at it together
        try:
            with smtplib.SMTP(d.host, d.port, timeout=30) as s:
                s.ehlo("mail.nic.org.mt")
                for raw in raws:
                    s.sendmail(ADMIN, [REQUESTS], raw)
        finally:
            d.resume_workers(paused)
        slot0, slot1 = d.worker_ready(slot=0)["pid"], d.worker_ready(slot=1)["pid"]
        in_hand_0 = _paused_with_a_batch(d, 0, slot0)  # still at work when slot 1 restarts
        in_hand = _paused_with_a_batch(d, 1, slot1)  # what the kill cuts off
        os.kill(slot1, signal.SIGKILL)
        restarted = d.worker_ready(slot=1, n=2, timeout=60)
        if restarted["requeued"] != len(in_hand):
            raise Broken(f"slot 1 requeued {restarted['requeued']} messages, it held {len(in_hand)}")
        held_0 = {r[0] for r in d.query(_CLAIMED_BY.format(slot=0))}
        if held_0 != in_hand_0:
            raise Broken(f"slot 0's claims {sorted(in_hand_0)} were taken by slot 1's restart: "
                         f"{sorted(held_0)} left")
        d.resume_workers([slot0])
        if any(r.get("slot") == 0 for r in d.events("worker ready")[2:]):
            raise Broken("slot 0 was restarted too")
        wait_until("every message processed and every mail delivered", lambda: quiet(d), timeout=300)
        claims = dict(d.query("SELECT spool_id, count(*) FROM spool_events WHERE status = 'processing'"
                              " GROUP BY spool_id"))
        if len(claims) != messages:
            raise Broken(f"{len(claims)} of {messages} messages were claimed")
        wrong = {i: n for i, n in claims.items() if n != (2 if i in in_hand else 1)}
        if wrong:
            raise Broken(f"messages claimed other than once (twice for the killed batch): {wrong}; "
                         f"killed batch {sorted(in_hand)}, slot 0 then held {sorted(in_hand_0)}")
        not_done = d.query("SELECT queue_id, status FROM spool WHERE status != 'done'")
        if not_done:
            raise Broken(f"messages not processed to 'done': {not_done[:5]}")
        one_request_and_one_mail_each(d)
        checked = common_checks(d)
        return SlotKillResult(messages, len(in_hand), one(d, "SELECT count(*) FROM requests"),
                              checked["deliveries"])


# -- the script --------------------------------------------------------------------------------


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="tldops-crash-") as tmp:
        yield Path(tmp)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20, help="SIGKILLs under load (default 20)")
    ap.add_argument("--sscs", type=int, default=300, help="SSCs the broadcast goes to (default 300)")
    ap.add_argument("--broadcast-kills", type=int, default=3)
    ap.add_argument("--approvals", type=int, default=6, help="approvals each killed (at most 10)")
    ap.add_argument("--mix", type=int, default=200,
                    help="messages of each kind in the mix of every path (default 200)")
    ap.add_argument("--mix-kills", type=int, default=10, help="SIGKILLs while the mix is processed")
    ap.add_argument("--processes", type=int, default=2, help="worker processes (default 2)")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    print(f"crash safety: seed {seed}", flush=True)
    with workspace() as w:
        t = time.monotonic()
        load = under_load(w, args.kills, rng, args.processes)
        print(f"under load: {load.kills} SIGKILLs; {load.acknowledged} messages acknowledged (250), "
              f"{load.stored} stored ({load.stored_without_250} stored whose 250 the kill cut off), "
              f"0 lost, 0 duplicated; each processed once ({load.requests} requests, one each); "
              f"{load.deliveries} outgoing mails, each delivered once; integrity ok "
              f"({time.monotonic() - t:.0f} s)", flush=True)
        print("  at each kill: " + "; ".join(load.kill_moments), flush=True)
        t = time.monotonic()
        b = during_broadcast(w, args.sscs, args.broadcast_kills, args.processes)
        print(f"during a broadcast: {b.kills} SIGKILLs with {', '.join(map(str, b.sent_at_kills))} of "
              f"{b.sscs} deliveries sent; afterwards one broadcast, {b.deliveries} deliveries, each SSC "
              f"exactly once ({time.monotonic() - t:.0f} s)", flush=True)
        t = time.monotonic()
        a = during_approval(w, min(args.approvals, len(TLDS)), rng, args.processes)
        print(f"during an approval: {a.approvals} approvals each SIGKILLed (committed before the kill "
              f"{a.committed_before_kill}, redone after the restart {a.committed_after_restart}); each "
              f"roster as approved, one approval event, each welcome once ({time.monotonic() - t:.0f} s)",
              flush=True)
        t = time.monotonic()
        p = every_path(w, args.mix, args.mix_kills, rng, roster_tlds=10, processes=args.processes)
        print(f"on every path: {p.kills} SIGKILLs while the worker processed "
              + ", ".join(f"{n} {kind}" for kind, n in sorted(p.sent.items()))
              + f" mails; {p.deliveries} outgoing mails ({time.monotonic() - t:.0f} s)", flush=True)
        print("  at each kill: " + "; ".join(p.kill_moments), flush=True)
        if p.failures:
            raise Broken("on every path:\n  " + "\n  ".join(p.failures))
        print("  each message ended once; each confirmation applied and answered once, none refused; "
              "each who@ answered once; each update@ token issued once; each decision applied once "
              "with one set of mails; each list post to each member once; each bounce counted once; "
              "each help@ answered once; integrity ok", flush=True)
        t = time.monotonic()
        s = one_worker_killed(w, 200)
        print(f"one of two workers killed: {s.killed_in_hand} messages in its hand, claimed again after its "
              f"restart; the other's never; {s.requests} requests for {s.messages} messages, "
              f"{s.deliveries} outgoing mails, each once ({time.monotonic() - t:.0f} s)", flush=True)
    print()
    print(render_table(
        ["figure", "baseline", "tldops", "ratio", "target", "result"],
        [[f"acknowledged messages lost or duplicated, {load.kills} SIGKILLs under load",
          f"{load.acknowledged} acked", "0", "-", "0", "PASS"],
         [f"SSC deliveries duplicated or missing, {b.kills} SIGKILLs in a broadcast", f"{b.sscs} SSCs",
          "0", "-", "0", "PASS"],
         [f"approvals applied other than once, {a.approvals} SIGKILLed", f"{a.approvals} approvals", "0",
          "-", "0", "PASS"],
         [f"mails of every path handled other than once, {p.kills} SIGKILLs",
          f"{sum(p.sent.values())} mails", "0", "-", "0", "PASS"],
         ["messages claimed twice outside the killed batch, one of two workers SIGKILLed",
          f"{s.messages} messages", "0", "-", "0", "PASS"]]))
    print("crash safety: PASS")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Broken as e:
        print(f"crash safety: FAIL: {e}")
        sys.exit(1)

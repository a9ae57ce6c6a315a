#!/usr/bin/env python3
"""Crash safety: the daemon killed with SIGKILL at random moments, and what it promised kept.

Three proofs, each against the real daemon (its SMTP process, spool appender and worker
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

Run (about 2 minutes with the defaults): ``.venv/bin/python tests/crash_safety.py``
(``--kills 20 --sscs 300 --approvals 6``); tests/test_crash_safety.py runs a short version.
Exit status 0 when every check holds; each figure is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent / "bench")]

from _common import render_table  # noqa: E402
from auth_env import ADMIN, REQUESTS, AuthEnv, auth_daemon, form, request  # noqa: E402
from daemon_proc import DaemonProc  # noqa: E402
from dkim_sign import rsa_key  # noqa: E402
from iana_servers import rdap_doc  # noqa: E402

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
    if d.query("PRAGMA integrity_check") != [("ok",)]:
        raise Broken("integrity_check failed")
    twice = d.query("SELECT spool_id, count(*) FROM spool_events WHERE status = 'done'"
                    " GROUP BY spool_id HAVING count(*) > 1")
    if twice:
        raise Broken(f"messages processed to 'done' more than once: {twice[:5]}")
    bad = d.query("SELECT status, count(*) FROM outbox_deliveries WHERE status != 'sent' GROUP BY 1")
    if bad:
        raise Broken(f"outgoing deliveries not sent: {bad}")
    deliveries = one(d, "SELECT count(*) FROM outbox_deliveries")
    files = len(list((d.state_dir / "outgoing").glob("*.eml")))
    if files != deliveries:
        raise Broken(f"{deliveries} deliveries but {files} files written")
    return {"deliveries": deliveries}


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


def under_load(workdir: Path, kills: int, rng: random.Random) -> LoadResult:
    settings = {"validation.validators": [VALIDATOR], "worker.retry_base": 0.2, "log.level": "info",
                "server.limit_exempt": ["127.0.0.0/8"]}
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
        per_message = d.query("SELECT s.queue_id, count(r.id) FROM spool s LEFT JOIN requests r"
                              " ON r.spool_id = s.id GROUP BY s.id HAVING count(r.id) != 1")
        if per_message:
            raise Broken(f"messages with other than one request: {per_message[:5]}")
        twice = d.query("SELECT purpose, ref, count(*) FROM outbox_messages GROUP BY purpose, ref"
                        " HAVING count(*) > 1")
        if twice:
            raise Broken(f"outgoing mail written twice for one cause: {twice[:5]}")
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


def during_broadcast(workdir: Path, sscs: int, kills: int) -> BroadcastResult:
    """The roster mail to ``sscs`` SSCs; the daemon killed ``kills`` times while it goes out."""
    (workdir / "broadcast").mkdir()
    d = DaemonProc(workdir / "broadcast", {"log.level": "info"})
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


def during_approval(workdir: Path, approvals: int, rng: random.Random) -> ApprovalResult:
    tlds = TLDS[:approvals]
    with auth_daemon(workdir / "approval", **{"validation.validators": [VALIDATOR], "worker.retry_base": 0.2,
                                              "log.level": "info"}) as env:
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
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    print(f"crash safety: seed {seed}", flush=True)
    with workspace() as w:
        t = time.monotonic()
        load = under_load(w, args.kills, rng)
        print(f"under load: {load.kills} SIGKILLs; {load.acknowledged} messages acknowledged (250), "
              f"{load.stored} stored ({load.stored_without_250} stored whose 250 the kill cut off), "
              f"0 lost, 0 duplicated; each processed once ({load.requests} requests, one each); "
              f"{load.deliveries} outgoing mails, each delivered once; integrity ok "
              f"({time.monotonic() - t:.0f} s)", flush=True)
        print("  at each kill: " + "; ".join(load.kill_moments), flush=True)
        t = time.monotonic()
        b = during_broadcast(w, args.sscs, args.broadcast_kills)
        print(f"during a broadcast: {b.kills} SIGKILLs with {', '.join(map(str, b.sent_at_kills))} of "
              f"{b.sscs} deliveries sent; afterwards one broadcast, {b.deliveries} deliveries, each SSC "
              f"exactly once ({time.monotonic() - t:.0f} s)", flush=True)
        t = time.monotonic()
        a = during_approval(w, min(args.approvals, len(TLDS)), rng)
        print(f"during an approval: {a.approvals} approvals each SIGKILLed (committed before the kill "
              f"{a.committed_before_kill}, redone after the restart {a.committed_after_restart}); each "
              f"roster as approved, one approval event, each welcome once ({time.monotonic() - t:.0f} s)",
              flush=True)
    print()
    print(render_table(
        ["figure", "baseline", "tldops", "ratio", "target", "result"],
        [[f"acknowledged messages lost or duplicated, {load.kills} SIGKILLs under load",
          f"{load.acknowledged} acked", "0", "-", "0", "PASS"],
         [f"SSC deliveries duplicated or missing, {b.kills} SIGKILLs in a broadcast", f"{b.sscs} SSCs",
          "0", "-", "0", "PASS"],
         [f"approvals applied other than once, {a.approvals} SIGKILLed", f"{a.approvals} approvals", "0",
          "-", "0", "PASS"]]))
    print("crash safety: PASS")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Broken as e:
        print(f"crash safety: FAIL: {e}")
        sys.exit(1)

"""The roster broadcast (issue 6): content, DKIM, VERP, exactly once per period.

The daemon's DKIM key is made with `tldops dkim keygen` and published in the loopback DNS
server; the signature is checked by dkimpy resolving it there. Mail goes to a real SMTP sink.
"""

from __future__ import annotations

import contextlib
import email
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from typing import Any

import own_dkim
import pytest
from auth_env import ATTACKER, now_date
from test_workflow import JANE, JOHN, MARY, Flow, flow, subscribed

from tldops_mta.policy.roster_policy import RosterEntry
from tldops_mta.roster import formats
from tldops_mta.roster.broadcast_schedule import Schedule, latest_monthly, latest_weekly


def keygen(workdir: Path, kind: str = "rsa") -> tuple[Path, str, str]:
    """(key file, TXT owner name, TXT value), as `tldops dkim keygen` makes and prints them."""
    workdir.mkdir(parents=True, exist_ok=True)
    key = workdir / f"broadcast-{kind}.key"
    out = subprocess.run([sys.executable, "-m", "tldops_mta", "dkim", "keygen", "--type", kind,
                          "--out", str(key)], capture_output=True, text=True, timeout=60, check=True)
    m = re.search(r"^(\S+)\. IN TXT \( (.*) \)$", out.stdout, re.MULTILINE)
    assert m, out.stdout
    return key, m.group(1), "".join(re.findall(r'"([^"]*)"', m.group(2)))


@contextlib.contextmanager
def broadcasting(tmp_path: Path, kind: str = "rsa", **settings: Any) -> Iterator[Flow]:
    key, name, value = keygen(tmp_path / "keys", kind)
    with flow(tmp_path / "daemon", **{"broadcast.dkim_key": str(key), **settings}) as f:
        f.env.dns.set_txt(name, [value])
        yield f


def verifies(f: Flow, raw: bytes) -> bool:
    """dkimpy's verdict, with the key resolved from the test DNS server over real DNS."""
    return own_dkim.verifies(raw, f.env.dns)


def attachment(m: Message, filename: str) -> str:
    for part in m.walk():
        if part.get_filename() == filename:
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            return payload.decode("utf-8")
    raise AssertionError(f"no attachment {filename}")


def broadcast_to(f: Flow, rcpt: str) -> list[Any]:
    return [r for r in f.sink.to(rcpt) if b"TLD-OPS roster" in r.data.split(b"\r\n\r\n", 1)[0]]


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_broadcast_content_is_signed_once_and_sent_to_each_ssc_with_its_own_return_path(
        tmp_path: Path, kind: str) -> None:
    with broadcasting(tmp_path, kind) as f:
        subscribed(f, JANE, JOHN, MARY)
        now = f.tldops("broadcast", "now", "--json")
        assert now.returncode == 0 and '"recipients": 3' in now.stdout
        got = [f.sink.wait_for(lambda r, a=s[4]: a in r.rcpt_tos and b"TLD-OPS roster" in r.data)
               for s in (JANE, JOHN, MARY)]
        assert len({r.mail_from for r in got}) == 3  # VERP: one return path per SSC
        assert all(re.fullmatch(r"bounces\+b\d+@tld-ops\.localhost", r.mail_from) for r in got)
        signatures = set()
        for r in got:
            assert verifies(f, r.data)
            m = email.message_from_bytes(r.data)
            signatures.add(m["DKIM-Signature"])
            assert m["Subject"].startswith("[TLP:AMBER] TLD-OPS roster ")
            assert "1 ccTLD, 3 contacts" in m["Subject"]
            text = r.data.decode()
            assert "Mary Poe (third)" in text and "+35621334457  mary.poe@nic.org.mt" in text
            want = {"mt": [RosterEntry(*x) for x in f.roster()]}
            assert formats.from_csv(attachment(m, "tld-ops-roster.csv")) == want
            assert formats.from_vcard(attachment(m, "tld-ops-roster.vcf")) == want
        assert len(signatures) == 1  # built and signed once
        status = f.tldops("broadcast", "status").stdout
        header, *rows = status.splitlines()
        assert header.split() == [
            "PERIOD", "QUEUED", "AT", "(UTC)", "SSCS", "SENT", "QUEUED", "FAILED", "TLP"]
        manual = next(r.split() for r in rows if r.startswith("manual-"))
        assert manual[3] == "3" and manual[-1] == "TLP:AMBER"


def test_a_change_waits_for_the_period_and_a_missed_one_is_caught_up_once(tmp_path: Path) -> None:
    # A week of catch-up: whatever the weekday today, this week's period has begun within it.
    week = 7 * 86400.0
    with broadcasting(tmp_path, **{"broadcast.enabled": True, "broadcast.catch_up": week}) as f:
        subscribed(f, JANE, JOHN)
        f.restart()
        wake_the_worker(f)
        f.d.wait_for("no roster broadcast due")  # the clock looked after the change: nothing now
        assert f.d.query("SELECT count(*) FROM broadcasts") == [(0,)]

        # As if the roster had been made before this week's period and the daemon been down
        # when it began: back up, it sends that period once (the monthly, if it began too).
        f.d.stop()
        f.d.execute("UPDATE roster SET since = since - ?", (week + 3600,))
        f.d.execute("UPDATE roster_changes SET at = at - ?", (week + 3600,))
        f.d.start()
        queued = f.d.wait_for("roster broadcast queued")
        cal = Schedule(catch_up=week)  # the defaults: Mondays at 09:00 UTC
        now = time.time()
        monthly = latest_monthly(now, cal)
        missed = monthly if now - monthly.starts_at <= week else latest_weekly(now, cal)
        assert (queued["period"], queued["recipients"]) == (missed.key, 2)
        for ssc in (JANE, JOHN):
            f.sink.wait_for(lambda r, a=ssc[4]: a in r.rcpt_tos and b"TLD-OPS roster" in r.data)
        for _ in range(2):
            f.restart()
            wake_the_worker(f)
            f.d.wait_for("no roster broadcast due")  # the clock looked, after the restart
        assert f.d.query("SELECT count(*) FROM broadcasts") == [(1,)]
        assert [len(broadcast_to(f, s[4])) for s in (JANE, JOHN)] == [1, 1]


def wake_the_worker(f: Flow) -> None:
    f.env.processed(f.env.send(b"From: x@y.example\r\nSubject: hi\r\n\r\nhi\r\n",
                               mail_from="x@y.example", rcpts=("postmaster@tld-ops.localhost",)))


def test_a_restart_in_the_middle_of_sending_resumes_without_duplicates(tmp_path: Path) -> None:
    with broadcasting(tmp_path) as f:
        subscribed(f, JANE, JOHN, MARY)
        f.sink.reply = "451 4.3.0 try later"  # nothing gets through: the broadcast is mid-way
        assert f.tldops("broadcast", "now").returncode == 0
        f.d.wait_count("delivery deferred", 3)
        f.d.kill()  # kill -9 in the middle
        f.sink.reply = "250 2.0.0 OK"
        f.d.start()
        for s in (JANE, JOHN, MARY):
            f.sink.wait_for(lambda r, a=s[4]: a in r.rcpt_tos and b"TLD-OPS roster" in r.data)
        sql = ("SELECT status, count(*) FROM outbox_deliveries d JOIN outbox_messages m"
               " ON m.id = d.message_id WHERE m.purpose = 'broadcast' GROUP BY status")
        while f.d.query(sql) != [("sent", 3)]:  # the sink has them; the daemon records each after
            f.d.wait_count("mail delivered", len(f.d.events("mail delivered")) + 1)
        assert [len(broadcast_to(f, s[4])) for s in (JANE, JOHN, MARY)] == [1, 1, 1]


# -- who@ -------------------------------------------------------------------------------------

def who_query(f: Flow, sender: str, *, sign: bool) -> tuple[str, str]:
    raw = (f"From: {sender}\r\nTo: who@tld-ops.localhost\r\nSubject: who\r\nDate: {now_date()}\r\n"
           f"Message-ID: <who-{sender}-{time.time_ns()}@nic.org.mt>\r\n\r\nroster please\r\n").encode()
    if sign:
        raw = f.env.signed(raw)  # nic.org.mt's key: the SSCs' domain here
    return f.env.processed(f.env.send(raw, mail_from=sender, rcpts=("who@tld-ops.localhost",)))


def test_who_from_a_member_with_dkim_gets_the_roster_as_broadcast(tmp_path: Path) -> None:
    with broadcasting(tmp_path) as f:
        subscribed(f, JANE, JOHN)
        assert who_query(f, JANE[4], sign=True) == ("done", "who: roster sent (DKIM)")
        got = f.sink.wait_for(lambda r: JANE[4] in r.rcpt_tos and b"TLD-OPS roster" in r.data)
        assert verifies(f, got.data) and b"+35621334456  john.roe@nic.org.mt" in got.data


def test_who_without_dkim_goes_through_a_token_to_the_roster_address(tmp_path: Path) -> None:
    with broadcasting(tmp_path) as f:
        subscribed(f, JANE, JOHN)
        assert who_query(f, JANE[4], sign=False) == ("done", "who: token sent to the roster address")
        ask = f.mail_to(JANE[4], "Please confirm your roster query")
        assert b"+356" not in ask.as_bytes()  # the token mail holds no roster data
        confirm = str(ask["Reply-To"])
        assert f.answer(confirm, ATTACKER)[0] == "rejected"
        assert f.answer(confirm, JANE[4]) == ("done", "who: roster sent (token)")
        f.sink.wait_for(lambda r: JANE[4] in r.rcpt_tos and b"TLD-OPS roster" in r.data)
        # A flood of forged queries makes one token mail, not one each.
        assert who_query(f, JOHN[4], sign=False)[1] == "who: token sent to the roster address"
        assert who_query(f, JOHN[4], sign=False)[1] == "who: a token was sent lately; not again"


def test_who_from_anyone_else_is_refused_with_no_roster_data(tmp_path: Path) -> None:
    with broadcasting(tmp_path) as f:
        subscribed(f, JANE, JOHN)
        status, reason = who_query(f, "someone@nic.org.mt", sign=True)
        assert status == "rejected" and "only to its Security and Stability Contacts" in reason
        refusal = f.mail_to("someone@nic.org.mt", "No roster")
        assert b"+356" not in refusal.as_bytes() and b"jane" not in refusal.as_bytes().lower()
        assert broadcast_to(f, "someone@nic.org.mt") == []

"""Freshness: each SSC re-confirms their entry once a year, against the running daemon.

Time moves by the database: ``travel`` moves every freshness time (and the tokens' lives)
back by the time that is to pass, then wakes the worker (SIGUSR1), as its clock would find
the rows that many days later. Mail goes to a real SMTP sink; IANA and DNS are loopback
servers.
"""

from __future__ import annotations

import email
import json
import signal
import time
from email.message import Message
from pathlib import Path
from typing import Any

from auth_env import ADMIN, ATTACKER, form, request
from daemon_proc import write_config
from outcome_faults import fail_outcome_once, failed_once
from test_bounces import bounce
from test_observability import scrape
from test_workflow import JANE, JOHN, MARY, OTHER_VALIDATOR, VALIDATOR, Flow, flow, subscribed

DAY = 86400.0
YEAR = 365 * DAY
ASK = "Is your entry for .mt still right?"
REMINDER = "Reminder: is your entry"
NOTICE = "Unconfirmed Security and Stability Contacts of .mt"
UPDATE = "update@tld-ops.localhost"
ON = {"freshness.enabled": True}
"""Off by default in the tests' daemons (daemon_proc), as the broadcast is."""


def travel(f: Flow, seconds: float) -> int:
    """``seconds`` pass for freshness: its times, and the tokens' lives, move back. Returns
    where the daemon's log stood before (for wait_for's ``after``)."""
    mark = f.d.mark()
    travel_down(f, seconds)
    f.d.signal(signal.SIGUSR1)
    return mark


def travel_down(f: Flow, seconds: float) -> None:
    """``travel`` while the daemon is stopped."""
    for sql in ("UPDATE freshness SET due_at = due_at - ?, confirmed_at = confirmed_at - ?,"
                " asked_at = asked_at - ?, unconfirmed_since = unconfirmed_since - ?,"
                " notified_at = notified_at - ?", "UPDATE freshness_mails SET at = at - ?",
                "UPDATE tokens SET created_at = created_at - ?, expires_at = expires_at - ?"):
        f.d.execute(sql, (seconds,) * sql.count("?"))


def row(f: Flow, email: str) -> dict[str, Any]:
    names = ("due_at", "confirmed_at", "asked_at", "reminders", "unconfirmed_since", "notified_at")
    got = f.d.query(f"SELECT {', '.join(names)} FROM freshness WHERE email = ?", (email,))
    assert len(got) == 1, got
    return dict(zip(names, got[0], strict=True))


def asked(f: Flow, ssc: tuple[str, ...], n: int = 1) -> str:
    """The one-time address of the n-th ask to ``ssc``, once it came."""
    return str(f.mail_to(ssc[4], ASK, n)["Reply-To"])


def ask_now(f: Flow, *sscs: tuple[str, ...]) -> int:
    """Make the next ask of ``sscs`` due now; where the log stood before."""
    mark = f.d.mark()
    for s in sscs:
        f.d.execute("UPDATE freshness SET due_at = ? WHERE email = ?", (time.time() - 1, s[4]))
    f.d.signal(signal.SIGUSR1)
    return mark


def subscribed_fresh(f: Flow, *sscs: tuple[str, ...]) -> None:
    subscribed(f, *sscs)
    f.d.wait_for("freshness", lambda r: r.get("added", 0) >= 1)


def test_first_asks_are_a_year_after_joining_and_an_old_roster_is_spread_and_capped(tmp_path: Path) -> None:
    with flow(tmp_path, **{"freshness.enabled": False, "freshness.max_per_hour": 2}) as f:
        subscribed(f, JANE, JOHN, MARY)
        assert f.d.query("SELECT count(*) FROM freshness") == [(0,)]  # turned off: nothing kept
        # The roster is two years old (joined in this order) when freshness is turned on.
        now = time.time()
        for i, s in enumerate((JANE, JOHN, MARY)):
            f.d.execute("UPDATE roster SET since = ? WHERE email = ?", (now - 2 * YEAR + i * DAY, s[4]))
        f.d.settings["freshness.enabled"] = True
        write_config(f.d.config_path, f.d.settings)
        f.d.signal(signal.SIGHUP)
        f.d.wait_for("freshness", lambda r: r.get("added") == 3)
        asked(f, JANE)
        # Spread evenly over one interval in the order they joined, never one burst.
        due = [row(f, s[4])["due_at"] - now for s in (JANE, JOHN, MARY)]
        assert 0 <= due[0] < 60 and abs(due[1] - YEAR / 3) < 60 and abs(due[2] - 2 * YEAR / 3) < 60
        assert [len(f.mails_to(s[4], ASK)) for s in (JOHN, MARY)] == [0, 0]
        # All due now: the hourly cap (2) lets one more go; the other waits for the hour.
        mark = ask_now(f, JOHN, MARY)
        f.d.wait_for("freshness", lambda r: r.get("held") == 1, after=mark)
        assert f.d.query("SELECT count(*) FROM freshness_mails WHERE kind = 'ask'") == [(2,)]
        assert f.d.query("SELECT count(*) FROM freshness WHERE asked_at IS NULL") == [(1,)]
        mark = travel(f, 3601)
        f.d.wait_for("freshness", lambda r: r.get("asks") == 1, after=mark)
        for s in (JANE, JOHN, MARY):
            f.mail_to(s[4], ASK)
        assert all(len(f.mails_to(s[4], ASK)) == 1 for s in (JANE, JOHN, MARY))


def test_a_new_ssc_is_first_asked_one_interval_after_joining(tmp_path: Path) -> None:
    with flow(tmp_path, **ON) as f:
        subscribed_fresh(f, JANE, JOHN)
        since = f.d.query("SELECT since FROM roster WHERE email = ?", (JANE[4],))[0][0]
        assert row(f, JANE[4])["due_at"] == since + YEAR
        assert f.mails_to(JANE[4], ASK) == []


def test_the_ask_shows_the_entry_as_the_broadcast_and_a_yes_confirms_token_only(tmp_path: Path) -> None:
    with flow(tmp_path, **ON) as f:
        subscribed_fresh(f, JANE, JOHN)
        ask_now(f, JANE)
        mail = f.mail_to(JANE[4], ASK)
        text = mail.get_payload()
        shown = ".mt\n  Jane Doe (primary)\n    +35621334455  jane.doe@nic.org.mt"
        assert shown in text.replace("\r\n", "\n")
        assert str(mail["Subject"]).startswith("[TLP:AMBER]")
        reply_to = str(mail["Reply-To"])
        # Anyone else answering changes nothing.
        assert f.answer(reply_to, ATTACKER)[0] == "rejected"
        assert f.answer(reply_to, JOHN[4])[0] == "rejected"
        assert row(f, JANE[4])["confirmed_at"] is None
        assert f.answer(reply_to, JANE[4]) == ("done", "freshness: the entry for .mt is confirmed")
        r = row(f, JANE[4])
        assert r["asked_at"] is None and abs(r["due_at"] - (r["confirmed_at"] + YEAR)) < 1
        assert f.answer(reply_to, JANE[4])[0] == "rejected"  # replayed: once


def test_a_dkim_signed_yes_confirms(tmp_path: Path) -> None:
    with flow(tmp_path, **ON) as f:
        subscribed_fresh(f, JANE, JOHN)
        ask_now(f, JOHN)
        reply_to = asked(f, JOHN)
        raw = f.env.signed(request(JOHN[4], body="yes\r\n", subject="Re: TLD-OPS"))
        assert f.env.processed(f.env.send(raw, mail_from=JOHN[4], rcpts=(reply_to,))) == (
            "done", "freshness: the entry for .mt is confirmed")
        assert row(f, JOHN[4])["confirmed_at"] is not None


def test_a_correction_through_update_counts_as_confirmed(tmp_path: Path) -> None:
    with flow(tmp_path, **ON) as f:
        subscribed_fresh(f, JANE, JOHN)
        ask_now(f, JOHN)
        asked(f, JOHN)
        new = ("secondary", "Johnny", "Roe", "2133 9999", JOHN[4], JOHN[4])
        raw = request(JOHN[4], body=form("update", sscs=(new,)), subject="my details")
        assert f.env.processed(f.env.send(raw, mail_from=JOHN[4], rcpts=(UPDATE,)))[0] == "done"
        confirm = str(f.mail_to(JOHN[4], "Please confirm the correction")["Reply-To"])
        assert f.answer(confirm, JOHN[4]) == ("done", "update: your details for .mt are corrected")
        r = row(f, JOHN[4])
        assert r["confirmed_at"] is not None and r["asked_at"] is None


def test_reminders_at_14_and_28_days_then_one_notice_per_cctld_to_iana_and_validators(
        tmp_path: Path) -> None:
    with flow(tmp_path, **ON) as f:
        subscribed_fresh(f, JANE, JOHN)
        ask_now(f, JANE, JOHN)
        asked(f, JANE)
        asked(f, JOHN)
        f.d.wait_for("freshness: nothing due", after=travel(f, 14 * DAY - 60))
        assert f.mails_to(JANE[4], REMINDER) == []  # not yet
        travel(f, 61)
        first = f.mail_to(JANE[4], REMINDER)
        assert "Jane Doe (primary)" in first.get_payload()
        f.mail_to(JOHN[4], REMINDER)
        assert row(f, JANE[4])["reminders"] == 1
        travel(f, 14 * DAY)
        f.mail_to(JANE[4], REMINDER, 2)
        assert str(f.mail_to(JANE[4], REMINDER, 2)["Reply-To"]) != str(first["Reply-To"])  # a new token
        travel(f, 14 * DAY)
        notice = f.mail_to(VALIDATOR, NOTICE)
        text = notice.get_payload()
        assert "Jane Doe (primary)" in text and "John Roe (secondary)" in text and "unconfirmed since" in text
        assert "Nothing was removed" in text
        f.mail_to(ADMIN, NOTICE)
        f.mail_to(OTHER_VALIDATOR, NOTICE)
        assert [len(f.mails_to(a, NOTICE)) for a in (VALIDATOR, ADMIN)] == [1, 1]  # one per ccTLD
        r = row(f, JANE[4])
        assert r["unconfirmed_since"] is not None and r["notified_at"] is not None
        assert len(f.mails_to(JANE[4], REMINDER)) == 2  # no third reminder
        assert [x[4] for x in f.roster()] == [JANE[4], JOHN[4]]  # nobody removed
        # A late answer (the last reminder's token) clears the mark.
        late = str(f.mail_to(JANE[4], REMINDER, 2)["Reply-To"])
        assert f.answer(late, JANE[4]) == ("done", "freshness: the entry for .mt is confirmed")
        assert row(f, JANE[4])["unconfirmed_since"] is None


def test_a_permanent_bounce_of_the_ask_makes_the_ssc_unconfirmed_at_once(tmp_path: Path) -> None:
    with flow(tmp_path, **ON) as f:
        subscribed_fresh(f, JANE, JOHN)
        ask_now(f, JANE)
        asked(f, JANE)
        return_path = next(r.mail_from for r in f.sink.to(JANE[4]) if ASK.encode() in r.data)
        assert return_path.startswith("bounces+b")
        assert bounce(f, return_path, JANE[4])[0] == "done"
        f.d.wait_for("freshness", lambda r: r.get("bounced") == 1)  # the only bounce
        assert row(f, JANE[4])["unconfirmed_since"] is not None
        notice = f.mail_to(VALIDATOR, NOTICE)
        assert "Jane Doe" in notice.get_payload() and "John Roe" not in notice.get_payload()
        assert row(f, JOHN[4])["unconfirmed_since"] is None



def test_a_smarthost_refusal_of_the_ask_makes_the_ssc_unconfirmed_once(tmp_path: Path) -> None:
    with flow(tmp_path, **ON) as f:
        subscribed_fresh(f, JANE, JOHN)
        f.sink.answer("RCPT", "550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown")
        mark = ask_now(f, JANE)
        f.d.wait_for("freshness", lambda r: r.get("bounced") == 1, after=mark)
        f.sink.accept()
        since = row(f, JANE[4])["unconfirmed_since"]
        assert since is not None
        f.mail_to(VALIDATOR, NOTICE)
        # Read once: her mailbox works again, she confirms by a correction, and the old
        # refusal does not unconfirm her again.
        new = ("primary", "Jane", "Doe", "2133 4455", JANE[4], JANE[4])
        raw = request(JANE[4], body=form("update", sscs=(new,)), subject="my details")
        assert f.env.processed(f.env.send(raw, mail_from=JANE[4], rcpts=(UPDATE,)))[0] == "done"
        confirm = str(f.mail_to(JANE[4], "Please confirm the correction")["Reply-To"])
        assert f.answer(confirm, JANE[4]) == ("done", "update: your details for .mt are corrected")
        f.d.wait_for("freshness: nothing due", after=travel(f, 0))
        assert row(f, JANE[4])["unconfirmed_since"] is None and row(f, JANE[4])["confirmed_at"] is not None
        assert f.d.query("SELECT count(*) FROM freshness_refusals") == [(1,)]

# -- exactly once: commit faults, kills, a daemon that was down ---------------------------------

def test_a_yes_whose_first_commit_fails_confirms_once(tmp_path: Path) -> None:
    with flow(tmp_path, **ON) as f:
        subscribed_fresh(f, JANE, JOHN)
        ask_now(f, JANE)
        reply_to = asked(f, JANE)
        fault = fail_outcome_once(f.d.db_path, "confirm+%")
        qid = f.env.send(request(JANE[4], body="yes\r\n", subject="Re: TLD-OPS"), mail_from=JANE[4],
                         rcpts=(reply_to,))
        assert f.env.processed(qid) == ("done", "freshness: the entry for .mt is confirmed")
        failed_once(f.d, qid, fault)
        assert f.d.query("SELECT count(*) FROM tokens WHERE purpose = 'freshness' AND used_at IS NOT NULL"
                         ) == [(1,)]
        assert row(f, JANE[4])["confirmed_at"] is not None


def test_kills_around_an_ask_and_an_answer_double_nothing(tmp_path: Path) -> None:
    with flow(tmp_path, **ON) as f:
        subscribed_fresh(f, JANE, JOHN)
        # Killed at once: the ask committed with its mail, or neither did.
        ask_now(f, JANE)
        f.d.kill_all()
        f.d.start()
        reply_to = asked(f, JANE)
        # Killed once the ask is committed (its mail may or may not have left).
        mark = ask_now(f, JOHN)
        f.d.wait_for("freshness", lambda r: r.get("asks") == 1, after=mark)
        f.d.kill_all()
        f.d.start()
        asked(f, JOHN)
        # Killed right after an answer is spooled: it counts once, after the restart.
        qid = f.env.send(request(JANE[4], body="yes\r\n", subject="Re: TLD-OPS"), mail_from=JANE[4],
                         rcpts=(reply_to,))
        f.d.kill_all()
        f.d.start()
        assert f.env.processed(qid) == ("done", "freshness: the entry for .mt is confirmed")
        f.d.wait_for("freshness: nothing due", after=travel(f, 0))
        # Queued once each (delivery to the smarthost is at-least-once: a kill between its 250
        # and the outbox's "sent" sends that mail again, as any MTA would).
        assert f.d.query("SELECT d.rcpt, count(*) FROM outbox_deliveries d JOIN outbox_messages m"
                         " ON m.id = d.message_id WHERE m.purpose = 'freshness' GROUP BY d.rcpt"
                         " ORDER BY d.rcpt") == [(JANE[4], 1), (JOHN[4], 1)]
        assert f.d.query("SELECT email, count(*) FROM freshness_mails GROUP BY email ORDER BY email") == [
            (JANE[4], 1), (JOHN[4], 1)]
        assert row(f, JANE[4])["confirmed_at"] is not None and row(f, JOHN[4])["confirmed_at"] is None


def test_a_daemon_that_was_down_catches_up_with_one_reminder_then_the_notice(tmp_path: Path) -> None:
    with flow(tmp_path, **ON) as f:
        subscribed_fresh(f, JANE, JOHN)
        ask_now(f, JANE)
        asked(f, JANE)
        f.d.stop()
        travel_down(f, 29 * DAY)  # both reminders fell due while it was down: one is sent
        f.d.start()
        f.mail_to(JANE[4], REMINDER)
        f.d.wait_for("freshness: nothing due", after=travel(f, 0))
        assert len(f.mails_to(JANE[4], REMINDER)) == 1 and row(f, JANE[4])["reminders"] == 2
        f.restart()
        f.d.wait_for("freshness: nothing due", after=travel(f, 0))
        assert len(f.mails_to(JANE[4], REMINDER)) == 1
        f.d.stop()
        travel_down(f, 14 * DAY)
        f.d.start()
        f.mail_to(VALIDATOR, NOTICE)
        f.restart()
        f.d.wait_for("freshness: nothing due", after=travel(f, 0))
        assert len(f.mails_to(VALIDATOR, NOTICE)) == 1 and len(f.mails_to(JANE[4], REMINDER)) == 1
        assert f.d.query("SELECT kind, count(*) FROM freshness_mails GROUP BY kind ORDER BY kind") == [
            ("ask", 1), ("notice", 1), ("reminder", 1)]


# -- what the roster, the commands and the statistics show -------------------------------------

def preview(f: Flow) -> Message:
    out = f.tldops("broadcast", "preview")
    assert out.returncode == 0, out.stderr
    return email.message_from_string(out.stdout)


def parts(m: Message) -> dict[str, str]:
    """The broadcast's text, CSV and vCard, decoded."""
    out = {}
    for part in m.walk():
        if part.get_content_maintype() == "text":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            out[part.get_filename() or "text"] = payload.decode("utf-8")
    return out


def stale(f: Flow, ssc: tuple[str, ...]) -> None:
    """``ssc`` asked, and silent past freshness.stale_after: unconfirmed, the notice sent."""
    ask_now(f, ssc)
    asked(f, ssc)
    travel(f, 42 * DAY + 1)
    f.d.wait_for("freshness notice")


def test_the_broadcast_marks_an_unconfirmed_ssc_until_they_confirm(tmp_path: Path) -> None:
    with flow(tmp_path, **ON) as f:
        subscribed_fresh(f, JANE, JOHN)
        assert "unconfirmed since" not in str(parts(preview(f)))
        stale(f, JANE)
        month = time.strftime("%Y-%m", time.gmtime(row(f, JANE[4])["unconfirmed_since"]))
        shown = parts(preview(f))
        jane = f"  Jane Doe (primary)\n    +35621334455  jane.doe@nic.org.mt\n    unconfirmed since {month}\n"
        assert jane in shown["text"]
        assert "John Roe (secondary)\n    +35621334456  john.roe@nic.org.mt\n\n" in shown["text"] + "\n"
        assert f"{JANE[4]},{month}\r\n" in shown["tld-ops-roster.csv"]
        assert f"{JOHN[4]},\r\n" in shown["tld-ops-roster.csv"]
        assert f"NOTE:unconfirmed since {month}" in shown["tld-ops-roster.vcf"]
        assert shown["tld-ops-roster.vcf"].count("NOTE:") == 1
        exported = json.loads(f.tldops("roster", "export", "--format", "json").stdout)["roster"]
        assert [r["unconfirmed_since"] for r in exported] == [month, None]
        # A later confirmation (the last mail's token) clears the mark.
        assert f.answer(asked(f, JANE), JANE[4])[0] == "done"
        assert "unconfirmed since" not in str(parts(preview(f)))


def test_roster_show_the_freshness_command_status_and_stats(tmp_path: Path) -> None:
    with flow(tmp_path, **ON) as f:
        subscribed_fresh(f, JANE, JOHN, MARY)
        shown = f.tldops("roster", "show")
        assert shown.returncode == 0 and shown.stdout.count("last confirmed: never") == 3
        stale(f, JANE)
        ask_now(f, JOHN)
        assert f.answer(asked(f, JOHN), JOHN[4])[0] == "done"
        ask_now(f, MARY)
        asked(f, MARY)
        today = time.strftime("%Y-%m-%d", time.gmtime())
        shown = f.tldops("roster", "show")
        assert f"last confirmed: {today}" in shown.stdout and shown.stdout.count("last confirmed: never") == 2
        # tldops freshness: who is unconfirmed, who was asked, who is next.
        out = f.tldops("freshness")
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0] == "Unconfirmed (the roster marks them; nobody is removed): 1"
        assert JANE[4] in lines[1] and "the IANA contact and the Validators were told" in lines[1]
        assert lines[2] == "Asked, no answer yet: 1" and MARY[4] in lines[3]
        assert lines[4] == "Next asks: 2"
        listed = json.loads(f.tldops("freshness", "--json").stdout)
        assert listed["enabled"] is True
        assert [r["email"] for r in listed["unconfirmed"]] == [JANE[4]]
        assert [r["email"] for r in listed["awaiting_answer"]] == [MARY[4]]
        # Next: Jane's next round (a year after her ask), John's (a year after his answer), and
        # Mary's round stays open: she is not among the next asks.
        assert [r["email"] for r in listed["next_asks"]] == [JANE[4], JOHN[4]]
        # Health (tldops status, the metrics): the counts.
        status = json.loads(f.tldops("status", "--json").stdout)
        assert (status["sscs_unconfirmed"], status["sscs_awaiting_answer"]) == (1, 1)
        metrics = scrape(f.d)
        assert metrics['tldops_freshness_sscs{state="unconfirmed"}'] == 1
        assert metrics['tldops_freshness_sscs{state="awaiting_answer"}'] == 1
        # Stats: the share of SSCs confirmed (or added) within the interval, per region.
        f.d.execute("UPDATE roster SET since = ? WHERE email != ?", (time.time() - 2 * YEAR, JOHN[4]))
        counted = json.loads(f.tldops("stats", "--json").stdout)
        assert counted["confirmed_within_days"] == 365
        assert counted["sscs_confirmed"]["total"] == {"sscs": 3, "confirmed": 1, "confirmed_pct": 33}
        assert counted["sscs_confirmed"]["EUR"] == {"sscs": 3, "confirmed": 1, "confirmed_pct": 33}
        text = f.tldops("stats").stdout
        assert "Security and Stability Contacts confirmed (or added) in the last 365 days" in text


def test_the_monthly_statistics_mail_has_the_share_of_confirmed_sscs(tmp_path: Path) -> None:
    with flow(tmp_path, **ON, **{"housekeeping.hour": 0}) as f:
        subscribed_fresh(f, JANE, JOHN)
        mark = f.d.mark()
        f.d.execute("DELETE FROM housekeeping_runs")
        f.d.execute("DELETE FROM stats_reports")
        assert f.d.wait_for("housekeeping done", after=mark, timeout=30)["monthly_stats_mailed"] is True
        body = f.mail_to(VALIDATOR, "Subscription statistics").get_payload(decode=True).decode()
        assert "Security and Stability Contacts confirmed (or added) in the last 365 days" in body


def test_a_persons_export_shows_their_freshness_and_erasure_removes_it(tmp_path: Path) -> None:
    with flow(tmp_path, **ON) as f:
        subscribed_fresh(f, JANE, JOHN)
        ask_now(f, JANE)
        asked(f, JANE)
        found = json.loads(f.tldops("person", "export", JANE[4], "--json").stdout)
        [mine] = found["freshness"]
        assert mine["tld"] == "mt" and mine["asked_at"].endswith("Z") and mine["confirmed_at"] is None
        assert [m["kind"] for m in found["freshness_mails"]] == ["ask"]
        erased = f.tldops("person", "erase", JANE[4], "--reason", "asked to be forgotten", "--json")
        assert erased.returncode == 0, erased.stderr
        assert json.loads(erased.stdout)["counts"]["freshness"] == 1
        assert f.d.query("SELECT email FROM freshness") == [(JOHN[4],)]
        assert f.d.query("SELECT email FROM freshness_mails") == [("[erased]",)]

"""Only real ccTLDs: what a request, `iana show`, `roster show --tld`, `stats --subscribed`
and `invite --region` name is checked against rules/cctlds.csv (A-label or U-label).

A gTLD, an unassigned code or a retired ccTLD is refused at once, before IANA is asked,
and nothing changes: a request gets a reply naming the line, the CLI one line and exit 1.
Here IANA's look-alike lists the requester as administrative contact of .com and .an too,
so that only the ccTLD check stands between those requests and the Validator.
"""

from __future__ import annotations

import email
import json
from collections.abc import Iterator
from email.message import Message
from email.utils import make_msgid
from pathlib import Path

import pytest
from auth_env import ADMIN, form, request
from iana_servers import rdap_fixture
from test_workflow import Flow, flow

NOT_A_CCTLD = "tldops: {} is not a ccTLD (not in rules/cctlds.csv)"
AN_RETIRED = "tldops: an is a retired ccTLD (retired 2015-07-31)"
BG = "\u0431\u0433"


def rdap_answer(tld: str) -> tuple[int, bytes]:
    """IANA's answer for ``tld`` made from the .mt fixture: its admin is the requester."""
    text = rdap_fixture("mt").decode().replace('"ldhName": "mt"', f'"ldhName": "{tld}"')
    return 200, text.encode()


@pytest.fixture(scope="module")
def f(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    with flow(tmp_path_factory.mktemp("cctlds"), **{"auth.refusal_interval": 0.0}) as fl:
        for tld in ("com", "an", "xn--90ae"):
            fl.env.rdap.answers[tld] = rdap_answer(tld)
        yield fl


def asked_iana(f: Flow, tld: str) -> bool:
    return f.env.rdap.rdap_hits(tld) > 0 or tld in (h.lower() for h in f.env.whois.hits)


def answer_to(f: Flow, message_id: str) -> str:
    """The text of the daemon's reply to the request with ``message_id``."""
    got = f.sink.wait_for(lambda r: email.message_from_bytes(r.data)["In-Reply-To"] == message_id)
    m: Message = email.message_from_bytes(got.data)
    payload = m.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode("utf-8")


def requests_named(f: Flow, tld: str) -> int:
    return int(f.d.query("SELECT count(*) FROM requests WHERE tld = ?", (tld,))[0][0])


# -- requests -----------------------------------------------------------------------------------

def test_a_request_for_a_gtld_is_refused_at_its_line_before_iana_is_asked(f: Flow) -> None:
    mid = make_msgid(domain="nic.org.mt")
    status, reason = f.submit(form(tld="com"), message_id=mid)
    assert status == "rejected" and "line 2: 'com' is not a ccTLD" in reason
    assert requests_named(f, "com") == 0 and not asked_iana(f, "com")
    reply = answer_to(f, mid)
    assert "line 2: 'com' is not a ccTLD. TLD-OPS is for country-code top-level domains" in reply
    assert "nothing was changed" in reply


def test_a_request_for_a_retired_cctld_is_refused_with_its_date(f: Flow) -> None:
    mid = make_msgid(domain="nic.org.mt")
    status, reason = f.submit(form(tld=".AN"), message_id=mid)
    assert status == "rejected" and "line 2: 'an' is a retired ccTLD (retired 2015-07-31)" in reason
    assert requests_named(f, "an") == 0 and not asked_iana(f, "an")
    assert "line 2: 'an' is a retired ccTLD (retired 2015-07-31). Name a ccTLD" in answer_to(f, mid)


def test_a_bad_cctld_is_listed_with_the_forms_other_problems(f: Flow) -> None:
    body = form(tld="zz").replace("Phone: +356 2133 4455", "Phone: call me")
    status, reason = f.submit(body)
    assert status == "rejected"
    assert "line 2: 'zz' is not a ccTLD" in reason and "line 7: 'call me' is not a phone number" in reason
    assert not asked_iana(f, "zz")


@pytest.mark.parametrize("name", [BG, "XN--90AE"])
def test_an_idn_cctld_is_accepted_as_u_label_or_a_label(f: Flow, name: str) -> None:
    before = requests_named(f, "xn--90ae")
    assert f.submit(form(tld=name)) == ("done", ".xn--90ae: verified")
    assert requests_named(f, "xn--90ae") == before + 1


def test_without_a_readable_cctlds_csv_a_request_waits_then_goes_on(tmp_path: Path) -> None:
    with flow(tmp_path) as fl:
        # A worker that started with the table readable (it checks every policy file at start,
        # and refuses to start without them) and has not read its rows yet: a help question.
        help_qid = fl.env.send(b"From: " + ADMIN.encode() + b"\r\nSubject: help\r\n\r\nhelp\r\n",
                               rcpts=("help@tld-ops.localhost",))
        fl.d.wait_for("message processed", lambda r: r.get("queue_id") == help_qid)
        # Then something in the table's place that cannot be read as a file (the tests run as
        # root, whom no mode stops); the shipped table must not stand in for the operator's.
        table = fl.workdir / "rules" / "cctlds.csv"
        aside = table.rename(table.with_suffix(".aside"))
        table.mkdir()
        qid = fl.env.send(fl.env.signed(request(ADMIN)))
        first = fl.d.wait_for("requests wait: rules/cctlds.csv cannot be read",
                              lambda r: r.get("queue_id") == qid)
        # tried again on its own: the first wait was committed, with its reason
        fl.d.wait_for("requests wait: rules/cctlds.csv cannot be read",
                      lambda r: r.get("queue_id") == qid and r is not first)
        waits = [r for (r,) in fl.d.query("SELECT e.reason FROM spool_events e JOIN spool s ON s.id ="
                                          " e.spool_id WHERE s.queue_id = ? AND e.status = 'received'"
                                          " AND e.reason IS NOT NULL", (qid,))]
        assert waits and all(r.startswith("waiting: rules/cctlds.csv cannot be read") for r in waits), waits
        assert fl.env.requests_for(qid) == [] and not asked_iana(fl, "mt")
        mark = fl.d.mark()
        table.rmdir()
        aside.rename(table)  # read again at the next try: no SIGHUP needed
        fl.d.wait_for("message processed", lambda r: r.get("queue_id") == qid and r.get("status") == "done",
                      after=mark, timeout=20)
        assert fl.env.requests_for(qid) == [("mt", "dkim", "awaiting-validator", ADMIN)]


# -- the command line: one line, exit 1, nothing looked up ---------------------------------------

def one_line_error(f: Flow, *args: str) -> str:
    r = f.tldops(*args)
    assert r.returncode == 1 and r.stdout == "", (args, r.stdout, r.stderr)
    assert len(r.stderr.splitlines()) == 1, r.stderr
    return r.stderr.strip()


@pytest.mark.parametrize("json_flag", [[], ["--json"]], ids=["text", "json"])
def test_iana_show_refuses_what_is_no_cctld(f: Flow, json_flag: list[str]) -> None:
    for name in ("com", "zz"):
        assert one_line_error(f, "iana", "show", name, *json_flag) == NOT_A_CCTLD.format(name)
        assert not asked_iana(f, name)
    assert one_line_error(f, "iana", "show", "an", *json_flag) == AN_RETIRED
    r = f.tldops("iana", "show", BG, *json_flag)
    assert r.returncode == 0 and "xn--90ae" in r.stdout, r.stderr


def test_roster_show_refuses_what_is_no_cctld(f: Flow) -> None:
    assert one_line_error(f, "roster", "show", "--tld", "xx") == NOT_A_CCTLD.format("xx")
    assert one_line_error(f, "roster", "export", "--tld", "an") == AN_RETIRED
    for name in (BG, "xn--90ae", ".MT"):
        assert f.tldops("roster", "show", "--tld", name).returncode == 0, name


def test_stats_refuses_a_subscribed_file_naming_what_was_no_cctld_that_day(f: Flow, tmp_path: Path) -> None:
    listed = tmp_path / "subscribed.txt"
    listed.write_text("mt\ncom  # a gTLD\n", encoding="utf-8")
    for json_flag in ([], ["--json"]):
        error = one_line_error(f, "stats", "--subscribed", str(listed), *json_flag)
        assert error == f"tldops: {listed}: line 2: com is not a ccTLD (not in rules/cctlds.csv)"
    listed.write_text("mt\n\u0440\u0444\nan\n", encoding="utf-8")
    then = f.tldops("stats", "--json", "--subscribed", str(listed), "--at", "2015-06-17")
    assert then.returncode == 0, then.stderr  # .an was in the root that day; .xn--p1ai too
    assert json.loads(then.stdout)["counts"]["idn"]["EUR"]["subscribed"] == 1
    error = one_line_error(f, "stats", "--subscribed", str(listed))
    assert error == f"tldops: {listed}: line 3: an is a retired ccTLD (retired 2015-07-31)"
    listed.write_text(f"{BG}\n", encoding="utf-8")
    error = one_line_error(f, "stats", "--subscribed", str(listed), "--at", "2015-06-17")
    assert error == f"tldops: {listed}: line 1: {BG} (xn--90ae) is not yet a ccTLD (delegated 2016-03-05)"


def test_invite_takes_a_region_in_any_case_and_refuses_another(f: Flow) -> None:
    assert one_line_error(f, "invite", "--region", "XX", "--dry-run") == (
        "tldops: XX is not a region: one of AF, AP, EUR, NA, LAC")
    r = f.tldops("invite", "--region", "na", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    assert {i["region"] for i in json.loads(r.stdout)["invitations"]} == {"NA"}

"""IANA administrative contacts over real sockets: RDAP, WHOIS fallback, the cache, the CLI.

The rule under test throughout: "could not look up" never becomes "no match". Every failure
of a source must end in the other source, a cached answer, or LookupUnavailable.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_proc import write_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from iana_servers import RDAP_NOT_FOUND, WHOIS_MT, RdapServer, WhoisServer, rdap_doc, rdap_fixture
from structlog.testing import capture_logs

from tldops_mta.auth import iana
from tldops_mta.auth.iana import CacheUse, IanaClient, LookupUnavailable, cache_use
from tldops_mta.auth.iana_answers import (
    MAX_ANSWER,
    AnswerError,
    admin_from_rdap,
    admin_from_whois,
    plain_address,
)
from tldops_mta.settings import config
from tldops_mta.settings.cctlds import tld_labels
from tldops_mta.store import storage

T0 = 1_700_000_000.0
DAY = 86400.0
FRESH_FOR = DAY  # the defaults, spelled out so the times below read plainly
USABLE_FOR = 7 * DAY
MT_ADMIN = "admin@nic.org.mt"
BG_ADMIN = "admin@bg-registry.example.net"
BG = "\u0431\u0433"  # the U-label of xn--90ae, written out so no linter mistakes it for "6r"


# -- servers, database, client ---------------------------------------------------------------


@pytest.fixture
def rdap() -> Iterator[RdapServer]:
    s = RdapServer()
    yield s
    s.stop()


@pytest.fixture
def whois() -> Iterator[WhoisServer]:
    s = WhoisServer()
    yield s
    s.stop()


def settings_for(rdap: RdapServer, whois: WhoisServer, state_dir: Path, **extra: Any) -> dict[str, Any]:
    return {"iana.rdap_url": rdap.url, "iana.whois_host": whois.host, "iana.whois_port": whois.port,
            "iana.timeout": 5.0, "storage.state_dir": str(state_dir), **extra}


class Db:
    def __init__(self, path: Path) -> None:
        self.path = path
        conn = storage.connect(path)
        storage.migrate(conn)
        self.writer = storage.Writer(conn)
        self.reader = storage.Reader(storage.connect(path))

    def rows(self, tld: str) -> list[dict[str, Any]]:
        conn = storage.connect(self.path)
        try:
            cur = conn.execute("SELECT source, fetched_at, admin_email, status, reason, raw"
                               " FROM iana_contacts WHERE tld = ? ORDER BY id", (tld,))
            return [dict(zip([d[0] for d in cur.description], r, strict=True)) for r in cur.fetchall()]
        finally:
            conn.close()


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Db]:
    d = Db(tmp_path / "state" / "tldops.sqlite3")
    d.writer.start()
    yield d
    await d.writer.close()
    d.reader.close()


@pytest.fixture
def client(rdap: RdapServer, whois: WhoisServer, db: Db, tmp_path: Path) -> Callable[..., IanaClient]:
    def make(**extra: Any) -> IanaClient:
        cfg = config.load(None, settings_for(rdap, whois, tmp_path / "state", **extra))
        return IanaClient(cfg.iana, db.writer, db.reader)

    return make


def events(logs: list[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    return [e for e in logs if e.get("event") == "iana_lookup"
            and all(e.get(k) == v for k, v in match.items())]


# -- RDAP, and WHOIS when RDAP fails ---------------------------------------------------------


async def test_rdap_answer_gives_the_admin_address_and_is_kept_raw(
        client: Callable[..., IanaClient], rdap: RdapServer, whois: WhoisServer, db: Db) -> None:
    with capture_logs() as logs:
        c = await client().admin_contact("mt", now=T0)
    assert (c.tld, c.u_label, c.email, c.status, c.source) == ("mt", "mt", MT_ADMIN, "ok", "rdap")
    assert c.from_cache is False and c.fetched_at == T0
    assert c.raw == rdap_fixture("mt")
    assert rdap.hits == ["/domain/mt"] and whois.hits == []
    [row] = db.rows("mt")
    assert row["raw"] == rdap_fixture("mt") and row["admin_email"] == MT_ADMIN
    assert (row["source"], row["status"], row["fetched_at"]) == ("rdap", "ok", T0)
    [ev] = events(logs, source="rdap", outcome="ok")
    assert ev["admin"] == "a***@nic.org.mt" and "duration" in ev and ev["reason"]
    assert MT_ADMIN not in json.dumps(logs), "admin address logged unredacted"


async def test_rdap_down_means_whois_is_asked(
        client: Callable[..., IanaClient], rdap: RdapServer, whois: WhoisServer, db: Db) -> None:
    rdap.down()
    with capture_logs() as logs:
        c = await client().admin_contact("mt", now=T0)
    assert (c.email, c.source, c.status, c.from_cache) == (MT_ADMIN, "whois", "ok", False)
    assert whois.hits == ["mt"]
    assert c.raw == WHOIS_MT.read_bytes()
    assert [r["source"] for r in db.rows("mt")] == ["whois"], "a refused connection leaves no row"
    [failed] = events(logs, source="rdap", outcome="failed")
    assert "Connect" in failed["reason"]


@pytest.mark.parametrize(("mode", "kept"), [
    ("500", None),
    ("truncated", None),       # cut mid-body: httpx sees the short read, nothing to keep
    ("slow", None),            # never answers: the timeout ends it
    ("huge", "too large"),     # read up to the cap only, kept (capped) as an unreadable answer
])
async def test_rdap_failing_in_transport_falls_back_to_whois(
        client: Callable[..., IanaClient], rdap: RdapServer, whois: WhoisServer, db: Db,
        mode: str, kept: str | None) -> None:
    rdap.mode = mode
    with capture_logs() as logs:
        c = await client(**{"iana.timeout": 0.5}).admin_contact("mt", now=T0)
    assert (c.email, c.source, c.from_cache) == (MT_ADMIN, "whois", False)
    assert rdap.hits == ["/domain/mt"] and whois.hits == ["mt"]
    rows = db.rows("mt")
    assert [r["source"] for r in rows] == (["rdap", "whois"] if kept else ["whois"])
    if kept:
        assert rows[0]["status"] == "unreadable" and kept in rows[0]["reason"]
        assert len(rows[0]["raw"]) == MAX_ANSWER + 1
    [bad] = [e for e in events(logs, source="rdap") if e["outcome"] in ("failed", "unreadable")]
    assert bad["reason"]
    if mode == "slow":
        assert "within 0.5 s" in bad["reason"] and bad["duration"] < 4


def _several_admins() -> bytes:
    doc = rdap_doc("mt")
    second = json.loads(json.dumps(doc["entities"][1]))
    second["vcardArray"][1][-1][3] = "someone-else@nic.org.mt"
    doc["entities"].append(second)
    return json.dumps(doc).encode()


def _nested_second_admin() -> bytes:
    doc = rdap_doc("mt")
    doc["entities"][0]["entities"] = [json.loads(json.dumps(doc["entities"][1]))]
    return json.dumps(doc).encode()


def _no_email() -> bytes:
    doc = rdap_doc("mt")
    doc["entities"][1]["vcardArray"][1] = doc["entities"][1]["vcardArray"][1][:-1]
    return json.dumps(doc).encode()


@pytest.mark.parametrize(("status", "body", "reason"), [
    (200, _several_admins(), "2 administrative entities: refusing to choose"),
    (200, _nested_second_admin(), "2 administrative entities: refusing to choose"),
    (200, _no_email(), "no e-mail address for the administrative contact"),
    (200, rdap_fixture("mt")[:700], "not JSON (truncated?)"),
    (200, b"[1, 2, 3]", "not a JSON object"),
    (200, json.dumps({"objectClassName": "entity"}).encode(), "not a domain object"),
    (200, rdap_fixture("xn--90ae"), "is for 'xn--90ae', not 'mt'"),
    (200, b"<html>maintenance</html>", "not JSON"),
    (200, b"[" * 50_000, "nested too deeply"),
    (404, b"<html><body>Not Found</body></html>", "RDAP 404 answer is not JSON"),
    (404, b"", "RDAP 404 answer is not JSON"),
], ids=["several-admins", "nested-admin", "no-email", "truncated-json", "array", "wrong-class",
        "other-tld", "html", "deep", "html-404", "empty-404"])
async def test_unreadable_rdap_answer_is_a_failed_source_never_no_admin(
        client: Callable[..., IanaClient], rdap: RdapServer, whois: WhoisServer, db: Db,
        status: int, body: bytes, reason: str) -> None:
    rdap.answers["mt"] = (status, body)
    with capture_logs() as logs:
        c = await client().admin_contact("mt", now=T0)
    assert (c.email, c.source, c.status) == (MT_ADMIN, "whois", "ok")
    assert whois.hits == ["mt"]
    first, second = db.rows("mt")
    assert (first["source"], first["status"], first["admin_email"]) == ("rdap", "unreadable", None)
    assert first["raw"] == body and reason in first["reason"]
    assert second["source"] == "whois"
    [ev] = events(logs, source="rdap", outcome="unreadable")
    assert reason in ev["reason"]


async def test_idn_cctld_via_rdap_and_via_whois(
        client: Callable[..., IanaClient], rdap: RdapServer, whois: WhoisServer) -> None:
    c = await client().admin_contact(BG, now=T0)
    assert (c.tld, c.u_label, c.email, c.source) == ("xn--90ae", BG, BG_ADMIN, "rdap")
    rdap.down()
    c = await client().admin_contact("xn--90ae", refresh=True, now=T0 + 1)
    assert (c.tld, c.email, c.source, c.from_cache) == ("xn--90ae", BG_ADMIN, "whois", False)
    assert whois.hits == ["xn--90ae"], "IANA is asked with the A-label"


# -- not delegated: an answer, unlike a failure ------------------------------------------------


async def test_rdap_404_is_not_delegated_and_is_cached(
        client: Callable[..., IanaClient], rdap: RdapServer, whois: WhoisServer, db: Db) -> None:
    c = await client().admin_contact("zz", now=T0)
    assert (c.status, c.email, c.source, c.from_cache) == ("not-delegated", None, "rdap", False)
    assert c.raw == RDAP_NOT_FOUND and whois.hits == []
    again = await client().admin_contact("zz", now=T0 + 60)
    assert (again.status, again.from_cache) == ("not-delegated", True)
    assert rdap.hits == ["/domain/zz"]
    assert [r["status"] for r in db.rows("zz")] == ["not-delegated"]


async def test_whois_zero_objects_is_not_delegated(
        client: Callable[..., IanaClient], rdap: RdapServer, whois: WhoisServer) -> None:
    rdap.down()
    c = await client().admin_contact("zz", now=T0)
    assert (c.status, c.email, c.source) == ("not-delegated", None, "whois")


# -- when neither source answers ---------------------------------------------------------------


async def test_both_down_uses_a_cached_answer_young_enough(
        client: Callable[..., IanaClient], rdap: RdapServer, whois: WhoisServer) -> None:
    await client().admin_contact("mt", now=T0)
    rdap.down()
    whois.down()
    with capture_logs() as logs:
        c = await client().admin_contact("mt", now=T0 + FRESH_FOR + 60)
    assert (c.email, c.status, c.source, c.from_cache, c.fetched_at) == (MT_ADMIN, "ok", "rdap", True, T0)
    assert c.raw == rdap_fixture("mt")
    assert "IANA gave no answer" in c.reason and "rdap:" in c.reason and "whois:" in c.reason
    [ev] = events(logs, source="cache")
    assert ev["admin"] == "a***@nic.org.mt"


@pytest.mark.parametrize("age", [USABLE_FOR, USABLE_FOR + DAY])
async def test_both_down_with_a_too_old_cache_is_unavailable_never_no_match(
        client: Callable[..., IanaClient], rdap: RdapServer, whois: WhoisServer, age: float) -> None:
    await client().admin_contact("mt", now=T0)
    rdap.down()
    whois.down()
    with pytest.raises(LookupUnavailable) as err, capture_logs() as logs:
        await client().admin_contact("mt", now=T0 + age)
    assert "rdap:" in err.value.reason and "whois:" in err.value.reason
    assert "no cached answer younger than" in err.value.reason
    assert events(logs, outcome="unavailable")


async def test_neither_server_answering_is_unavailable_within_the_timeouts(
        client: Callable[..., IanaClient], rdap: RdapServer, whois: WhoisServer, db: Db) -> None:
    rdap.mode = whois.mode = "slow"
    with pytest.raises(LookupUnavailable) as err:
        await client(**{"iana.timeout": 0.3}).admin_contact("mt", now=T0)
    assert err.value.reason.count("no complete answer within 0.3 s") == 2
    assert rdap.hits == ["/domain/mt"] and whois.hits == ["mt"]
    assert db.rows("mt") == [], "no answer, nothing kept"


async def test_nothing_cached_and_every_answer_unreadable_is_unavailable(
        client: Callable[..., IanaClient], rdap: RdapServer, whois: WhoisServer, db: Db) -> None:
    rdap.answers["mt"] = (200, _several_admins())
    whois.answers["mt"] = WHOIS_MT.read_bytes().replace(b"contact:      technical",
                                                        b"contact:      administrative")
    with pytest.raises(LookupUnavailable) as err:
        await client().admin_contact("mt", now=T0)
    assert "refusing to choose" in err.value.reason
    assert [(r["source"], r["status"]) for r in db.rows("mt")] == [("rdap", "unreadable"),
                                                                   ("whois", "unreadable")]


async def test_unreadable_answers_do_not_shadow_the_last_good_one(
        client: Callable[..., IanaClient], rdap: RdapServer, whois: WhoisServer) -> None:
    await client().admin_contact("mt", now=T0)
    rdap.answers["mt"] = (200, b"{")
    whois.mode = "huge"
    c = await client().admin_contact("mt", now=T0 + 2 * DAY)
    assert (c.email, c.from_cache, c.fetched_at) == (MT_ADMIN, True, T0)


# -- the cache ---------------------------------------------------------------------------------


async def test_fresh_cache_is_used_without_asking(
        client: Callable[..., IanaClient], rdap: RdapServer, whois: WhoisServer) -> None:
    await client().admin_contact("mt", now=T0)
    c = await client().admin_contact("mt", now=T0 + FRESH_FOR - 1)
    assert (c.email, c.from_cache, c.source, c.fetched_at) == (MT_ADMIN, True, "rdap", T0)
    assert c.raw == rdap_fixture("mt")
    assert rdap.hits == ["/domain/mt"] and whois.hits == []


async def test_stale_cache_is_refreshed_and_the_newest_answer_wins(
        client: Callable[..., IanaClient], rdap: RdapServer, db: Db) -> None:
    await client().admin_contact("mt", now=T0)
    doc = rdap_doc("mt")
    doc["entities"][1]["vcardArray"][1][-1][3] = "New-Admin@nic.org.mt"
    rdap.answers["mt"] = (200, json.dumps(doc).encode())
    c = await client().admin_contact("mt", now=T0 + FRESH_FOR)
    assert (c.email, c.from_cache, c.fetched_at) == ("new-admin@nic.org.mt", False, T0 + FRESH_FOR)
    assert rdap.rdap_hits("mt") == 2
    again = await client().admin_contact("mt", now=T0 + FRESH_FOR + 1)
    assert (again.email, again.from_cache) == ("new-admin@nic.org.mt", True)
    assert [r["admin_email"] for r in db.rows("mt")] == [MT_ADMIN, "new-admin@nic.org.mt"]


async def test_after_the_clock_steps_back_the_latest_answer_is_the_cache(
        client: Callable[..., IanaClient], rdap: RdapServer) -> None:
    await client().admin_contact("mt", now=T0 + DAY)
    c = await client().admin_contact("mt", now=T0)  # from the future: age unknown, so asked
    assert (c.from_cache, c.fetched_at) == (False, T0)
    c = await client().admin_contact("mt", now=T0 + 1)
    assert (c.from_cache, c.fetched_at) == (True, T0)
    assert rdap.rdap_hits("mt") == 2


async def test_refresh_forces_a_fetch(client: Callable[..., IanaClient], rdap: RdapServer) -> None:
    await client().admin_contact("mt", now=T0)
    c = await client().admin_contact("mt", refresh=True, now=T0 + 1)
    assert (c.from_cache, c.fetched_at) == (False, T0 + 1)
    assert rdap.rdap_hits("mt") == 2


async def test_failed_refresh_falls_back_to_the_fresh_entry(
        client: Callable[..., IanaClient], rdap: RdapServer, whois: WhoisServer) -> None:
    await client().admin_contact("mt", now=T0)
    rdap.down()
    whois.down()
    c = await client(**{"iana.usable_for": 0.0}).admin_contact("mt", refresh=True, now=T0 + 1)
    assert (c.email, c.from_cache) == (MT_ADMIN, True)


@pytest.mark.parametrize(("first", "then"), [
    ("mt", ["MT", ".mt", ".MT", "mt", " mt "]),
    ("xn--90ae", [BG, ".БГ", "XN--90AE", "Б" + BG[1]]),
    (BG, ["xn--90ae", ".xn--90ae"]),
])
async def test_every_spelling_finds_the_same_entry(
        client: Callable[..., IanaClient], rdap: RdapServer, first: str, then: list[str]) -> None:
    c0 = await client().admin_contact(first, now=T0)
    for name in then:
        c = await client().admin_contact(name, now=T0 + 1)
        assert (c.tld, c.u_label, c.email, c.from_cache) == (c0.tld, c0.u_label, c0.email, True), name
    assert len(rdap.hits) == 1


async def test_concurrent_lookups_of_one_tld_ask_iana_once(
        client: Callable[..., IanaClient], rdap: RdapServer) -> None:
    ic = client()
    results = await asyncio.gather(*(ic.admin_contact(n, now=T0) for n in ["mt", "MT", ".mt"] * 4))
    assert {r.email for r in results} == {MT_ADMIN}
    assert rdap.hits == ["/domain/mt"]
    assert sum(not r.from_cache for r in results) == 1


async def test_a_bad_tld_is_refused_before_any_query(
        client: Callable[..., IanaClient], rdap: RdapServer, whois: WhoisServer) -> None:
    for bad in ["", ".", "a.b", "mt.", "-mt", "a_b", "xn--zz", "123", "x" * 64]:
        with pytest.raises(ValueError, match="is not a top-level domain"):
            await client().admin_contact(bad, now=T0)
    assert rdap.hits == [] and whois.hits == []


# -- pure helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "a", "u"), [
    ("mt", "mt", "mt"), ("MT", "mt", "mt"), (".mt", "mt", "mt"), (".Mt", "mt", "mt"),
    ("мкд", "xn--d1alf", "мкд"), ("МКД", "xn--d1alf", "мкд"), ("xn--d1alf", "xn--d1alf", "мкд"),
    ("XN--D1ALF", "xn--d1alf", "мкд"), ("." + BG, "xn--90ae", BG), ("ｍｔ", "mt", "mt"),  # noqa: RUF001
])
def test_tld_labels(name: str, a: str, u: str) -> None:
    assert tld_labels(name) == (a, u)


@pytest.mark.parametrize(("name", "why"), [
    ("", "empty"), (".", "empty"), ("a.b", "single label"), ("mt.", "single label"),
    ("-mt", "hyphen"), ("a_b", "not allowed"), ("xn--zz", "A-label"), ("123", "all digits"),
    ("x" * 64, "too long"), ("a b", "not allowed"),
])
def test_tld_labels_refuses_what_is_not_one_label(name: str, why: str) -> None:
    with pytest.raises(ValueError, match="is not a top-level domain") as err:
        tld_labels(name)
    assert why.lower() in str(err.value).lower()


F, U = FRESH_FOR, USABLE_FOR


@pytest.mark.parametrize(("fetched_at", "now", "fresh_for", "usable_for", "refresh", "expected"), [
    (None, T0, F, U, False, CacheUse.NONE),
    (None, T0, F, U, True, CacheUse.NONE),
    (T0, T0, F, U, False, CacheUse.FRESH),
    (T0, T0 + F - 1, F, U, False, CacheUse.FRESH),
    (T0, T0 + F, F, U, False, CacheUse.FALLBACK),          # "younger than": the bound is out
    (T0, T0 + F - 1, F, U, True, CacheUse.FALLBACK),       # refresh asks, but may fall back
    (T0, T0 + U - 1, F, U, False, CacheUse.FALLBACK),
    (T0, T0 + U, F, U, False, CacheUse.NONE),
    (T0, T0 + 10 * U, F, U, True, CacheUse.NONE),
    (T0, T0 - 1, F, U, False, CacheUse.NONE),              # from the future: age unknown
    (T0, T0 + 10, 0.0, U, False, CacheUse.FALLBACK),       # fresh_for 0: always ask
    (T0, T0, 0.0, 0.0, False, CacheUse.NONE),              # nothing cached counts
    (T0, T0 + 5, 10.0, 1.0, True, CacheUse.FALLBACK),      # fresh is usable even past usable_for
    (T0, T0 + 5, 10.0, 1.0, False, CacheUse.FRESH),
])
def test_cache_use(fetched_at: float | None, now: float, fresh_for: float, usable_for: float,
                   refresh: bool, expected: CacheUse) -> None:
    assert cache_use(fetched_at, now, fresh_for=fresh_for, usable_for=usable_for,
                     refresh=refresh) is expected


@pytest.mark.parametrize(("status", "body", "expected"), [
    (200, rdap_fixture("mt"), ("ok", MT_ADMIN)),
    (404, RDAP_NOT_FOUND, ("not-delegated", None)),
    (404, b"{}", ("not-delegated", None)),
    (404, b'{"errorCode": 500}', ("unreadable", None)),
    (404, b"Not Found", ("unreadable", None)),
    (200, b'{"errorCode": 404}', ("not-delegated", None)),
])
def test_read_rdap(status: int, body: bytes, expected: tuple[str, str | None]) -> None:
    a = iana.read_rdap(status, body, "mt")
    assert (a.status, a.email) == expected and a.raw == body and a.reason


@pytest.mark.parametrize("status", [301, 400, 403, 429, 500, 503])
def test_read_rdap_other_statuses_are_no_answer(status: int) -> None:
    with pytest.raises(iana.SourceFailed, match=f"HTTP {status}"):
        iana.read_rdap(status, rdap_fixture("mt"), "mt")


def test_whois_idn_domain_line_in_either_form() -> None:
    text = WHOIS_MT.read_text().replace("domain:       MT", "domain:       {}")
    for line in ["БГ", BG, "XN--90AE", "БГ\ndomain-ace:   XN--90AE"]:
        assert admin_from_whois(text.format(line).encode(), "xn--90ae") == MT_ADMIN
    for line in ["MT", "БГ\ndomain-ace:   XN--P1AI", "БГ\ndomain:       MT"]:
        with pytest.raises(AnswerError):
            admin_from_whois(text.format(line).encode(), "xn--90ae")


# -- the CLI -----------------------------------------------------------------------------------


def tldops(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tldops_mta", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=60)


def test_cli_iana_show_help(tmp_path: Path) -> None:
    r = tldops("iana", "show", "--help", cwd=tmp_path)
    assert r.returncode == 0 and "usage: tldops iana show" in r.stdout
    for flag in ("--config", "--state-dir", "--json", "--refresh", "TLD"):
        assert flag in r.stdout, flag


def test_cli_iana_show_json_and_plain(tmp_path: Path, rdap: RdapServer, whois: WhoisServer) -> None:
    # From an empty directory with no rules.dir: the shipped cctlds.csv says what a ccTLD is.
    cfg = write_config(tmp_path / "tldops.toml", settings_for(rdap, whois, tmp_path / "state"))
    r = tldops("iana", "show", "mt", "--json", "--config", str(cfg), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["tld"] == "mt" and doc["u_label"] == "mt" and doc["admin_email"] == MT_ADMIN
    assert (doc["status"], doc["source"], doc["from_cache"]) == ("ok", "rdap", False)
    assert doc["raw"] == rdap_fixture("mt").decode()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ", doc["fetched_at_utc"])
    assert 0 <= doc["age_seconds"] < 60 and doc["reason"]
    assert r.stderr == "", "a command logs only warnings and errors (on stderr): none here"

    r = tldops("iana", "show", ".MT", "--config", str(cfg), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert re.search(r"^tld:\s+mt$", out, re.M)
    assert re.search(rf"^admin:\s+{re.escape(MT_ADMIN)}$", out, re.M)
    assert re.search(r"^status:\s+ok$", out, re.M)
    assert re.search(r"^source:\s+rdap, from the cache$", out, re.M)
    assert re.search(r"^fetched at:\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(\d+ s ago\)$", out, re.M)
    assert rdap.hits == ["/domain/mt"]

    r = tldops("iana", "show", BG, "--refresh", "--config", str(cfg), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert re.search(rf"^tld:\s+xn--90ae \({BG}\)$", r.stdout, re.M)
    assert re.search(r"^source:\s+rdap, fresh from IANA$", r.stdout, re.M)


def test_cli_iana_show_fails_clearly(tmp_path: Path, rdap: RdapServer, whois: WhoisServer) -> None:
    cfg = write_config(tmp_path / "tldops.toml",
                       settings_for(rdap, whois, tmp_path / "state", **{"iana.timeout": 1.0}))
    r = tldops("iana", "show", "not a tld", "--config", str(cfg), cwd=tmp_path)
    assert r.returncode == 1 and "is not a top-level domain" in r.stderr and r.stdout == ""
    assert not (tmp_path / "state").exists(), "a bad TLD opens no database"
    rdap.down()
    whois.down()
    r = tldops("iana", "show", "mt", "--json", "--config", str(cfg), cwd=tmp_path)
    assert r.returncode == 1 and r.stdout == ""
    assert "cannot look up mt now, try again later" in r.stderr


# -- fuzzing the parsers: a plain address, or AnswerError; nothing else ------------------------


def _assert_plain(addr: str) -> None:
    assert addr.isascii() and addr == addr.lower() and addr == addr.strip()
    assert plain_address(addr) == addr
    assert re.fullmatch(r"[^@\s]+@[a-z0-9.-]+", addr)


def _parse_both(body: bytes, tld: str) -> None:
    for parse in (admin_from_rdap, admin_from_whois):
        try:
            addr = parse(body, tld)
        except AnswerError:
            continue
        _assert_plain(addr)


json_trees = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.sampled_from(["domain", "mt", "administrative", "email", "vcard", "text", MT_ADMIN,
                       "mailto:A@B.CD", "a@b", " x@y.z "]) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.sampled_from(["objectClassName", "ldhName", "entities", "roles",
                                       "vcardArray", "errorCode"]) | st.text(max_size=8),
                      children, max_size=5),
    max_leaves=40)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=4096))
def test_fuzz_random_bytes(body: bytes) -> None:
    _parse_both(body, "mt")


@FUZZ
@given(json_trees)
def test_fuzz_random_json_trees(tree: Any) -> None:
    _parse_both(json.dumps(tree).encode(), "mt")


def _paths(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*path, i))


MT_PATHS = list(_paths(rdap_doc("mt")))[1:]


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(MT_PATHS), json_trees), min_size=1, max_size=4))
def test_fuzz_mutated_rdap_fixture(mutations: list[tuple[tuple[Any, ...], Any]]) -> None:
    doc = rdap_doc("mt")
    for path, value in mutations:
        node = doc
        try:
            for step in path[:-1]:
                node = node[step]
            node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed this path
    body = json.dumps(doc).encode()
    try:
        addr = admin_from_rdap(body, "mt")
    except AnswerError:
        return
    _assert_plain(addr)


@FUZZ
@given(st.data())
def test_fuzz_mutated_fixture_bytes(data: st.DataObject) -> None:
    for original in (rdap_fixture("mt"), WHOIS_MT.read_bytes()):
        body = bytearray(original)
        for _ in range(data.draw(st.integers(1, 8))):
            pos = data.draw(st.integers(0, len(body)))
            action = data.draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
            if action == "flip" and pos < len(body):
                body[pos] = data.draw(st.integers(0, 255))
            elif action == "insert":
                body[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
            elif action == "delete":
                del body[pos:pos + data.draw(st.integers(1, 16))]
            elif action == "cut":
                del body[pos:]
        _parse_both(bytes(body), "mt")


whois_lines = st.lists(
    st.one_of(
        st.just(""), st.just("% This query returned 0 objects"),
        st.sampled_from(["domain:       MT", "domain: mt", "domain: XN--90AE", "domain-ace: MT",
                         "contact:      administrative", "contact: technical",
                         f"e-mail:       {MT_ADMIN}", "e-mail: x@y", "e-mail: ADMIN@NIC.ORG.MT",
                         "e-mail: a@b.c d", "name: x"]),
        st.builds("{}: {}".format, st.text(max_size=10), st.text(max_size=30)),
    ),
    max_size=30)


@FUZZ
@given(whois_lines)
def test_fuzz_whois_structures(lines: list[str]) -> None:
    try:
        addr = admin_from_whois("\n".join(lines).encode("utf-8", "surrogatepass"), "mt")
    except AnswerError:
        return
    _assert_plain(addr)


def test_parsers_survive_depth_and_size() -> None:
    deep_entities = ('{"objectClassName":"domain","ldhName":"mt",' + '"entities":[{' * 5000
                     + '"roles":["administrative"]' + "}]" * 5000 + "}").encode()
    with pytest.raises(AnswerError):  # 5000 levels: json may refuse; if not, the walk copes
        admin_from_rdap(deep_entities, "mt")
    for body in (b"[" * 200_000, b"{" * 200_000, b" " * (MAX_ANSWER + 1)):
        with pytest.raises(AnswerError):
            admin_from_rdap(body, "mt")
        with pytest.raises(AnswerError):
            admin_from_whois(body, "mt")

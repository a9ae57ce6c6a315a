"""DKIM verification against a real DNS server on loopback, with keys made at test time.

Each attack of docs/security.md that DKIM can answer has a test here that fails if the defence goes:
a signature that verifies but must not count, a DNS failure that must stay temporary, a header
that must not crash the verifier.
"""

from __future__ import annotations

import asyncio
import time

import authres
import pytest
from dkim_sign import TestKey, dns_name, ed25519_key, message, rsa_key, sign, weak_rsa_key
from dns_server import DnsServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tldops_mta.auth.dkim_verify import (
    DkimReport,
    KeyResolver,
    SignatureResult,
    aligned,
    authentication_results,
    verify,
)
from tldops_mta.settings import config

ORG = "nic.example"
FROM = f"admin@{ORG}"
SEL = "s2048"


def publish(server: DnsServer, selector: str, domain: str, key: TestKey) -> None:
    server.set_txt(dns_name(selector, domain), [key.txt_record()])


@pytest.fixture
def resolver(dns_server: DnsServer) -> KeyResolver:
    return KeyResolver([dns_server.host], port=dns_server.port, timeout=2.0)


@pytest.fixture
def zone(dns_server: DnsServer) -> DnsServer:
    """The loopback server with the usual keys of nic.example published."""
    publish(dns_server, SEL, ORG, rsa_key(2048))
    publish(dns_server, "ed", ORG, ed25519_key())
    publish(dns_server, "s1024", ORG, rsa_key(1024))
    publish(dns_server, "s4096", ORG, rsa_key(4096))
    return dns_server


async def check(raw: bytes, resolver: KeyResolver, *, min_rsa_bits: int = 2048,
                now: float | None = None) -> DkimReport:
    return await verify(raw, resolver, min_rsa_bits=min_rsa_bits,
                        now=time.time() if now is None else now)


def only(report: DkimReport) -> SignatureResult:
    assert len(report.signatures) == 1, report
    return report.signatures[0]


# -- signatures that count ---------------------------------------------------------------


async def test_rsa_sha256_2048_counts(zone: DnsServer, resolver: KeyResolver) -> None:
    report = await check(sign(message(FROM), ORG, SEL, rsa_key(2048)), resolver)
    s = only(report)
    assert (s.result, s.counts, s.reason) == ("pass", True, "")
    assert (s.index, s.domain, s.selector, s.algorithm, s.key_bits) == \
        (0, ORG, SEL, "rsa-sha256", 2048)
    assert report.counting(ORG, "strict") == [s]
    assert not report.temporary(ORG, "strict")


async def test_ed25519_sha256_counts(zone: DnsServer, resolver: KeyResolver) -> None:
    s = only(await check(sign(message(FROM), ORG, "ed", ed25519_key()), resolver))
    assert (s.result, s.counts, s.algorithm, s.key_bits) == ("pass", True, "ed25519-sha256", 256)


async def test_key_split_into_several_strings_of_one_record(
        zone: DnsServer, resolver: KeyResolver) -> None:
    record = rsa_key(2048).txt_record()
    assert len(record) >= 2 and all(len(part) <= 255 for part in record)
    assert only(await check(sign(message(FROM), ORG, SEL, rsa_key(2048)), resolver)).counts


async def test_4096_bit_key_too_big_for_udp_is_fetched_over_tcp(
        zone: DnsServer, resolver: KeyResolver) -> None:
    s = only(await check(sign(message(FROM), ORG, "s4096", rsa_key(4096)), resolver))
    assert (s.counts, s.key_bits) == (True, 4096)
    name = dns_name("s4096", ORG)
    assert [q.transport for q in zone.queries_for(name)] == ["udp", "tcp"]


async def test_line_ends_lf_only_still_verify(zone: DnsServer, resolver: KeyResolver) -> None:
    raw = sign(message(FROM), ORG, SEL, rsa_key(2048)).replace(b"\r\n", b"\n")
    assert only(await check(raw, resolver)).counts


# -- every signature is checked ----------------------------------------------------------


async def test_bad_signature_on_top_does_not_hide_the_good_one(
        zone: DnsServer, resolver: KeyResolver) -> None:
    publish(zone, "wrong", ORG, rsa_key(2048, 1))  # DNS says key 1, the signer used key 0
    raw = sign(sign(message(FROM), ORG, SEL, rsa_key(2048)), ORG, "wrong", rsa_key(2048))
    report = await check(raw, resolver)
    bad, good = report.signatures
    assert (bad.index, bad.selector, bad.result, bad.counts) == (0, "wrong", "fail", False)
    assert (good.index, good.selector, good.result, good.counts) == (1, SEL, "pass", True)
    assert report.counting(ORG, "strict") == [good]


async def test_signatures_sharing_a_key_cost_one_lookup(
        zone: DnsServer, resolver: KeyResolver) -> None:
    raw = sign(sign(message(FROM), ORG, SEL, rsa_key(2048)), ORG, SEL, rsa_key(2048))
    report = await check(raw, resolver)
    assert [s.counts for s in report.signatures] == [True, True]
    assert len(zone.queries_for(dns_name(SEL, ORG))) == 1


async def test_only_the_first_signatures_are_checked(
        zone: DnsServer, resolver: KeyResolver) -> None:
    raw = message(FROM)
    for _ in range(3):
        raw = sign(raw, ORG, SEL, rsa_key(2048))
    report = await verify(raw, resolver, min_rsa_bits=2048, now=time.time(), max_signatures=2)
    assert [s.result for s in report.signatures] == ["pass", "pass", "permerror"]
    assert "only the first 2" in report.signatures[2].reason


# -- verified but refused by policy -------------------------------------------------------


async def test_rsa_sha1_is_refused(zone: DnsServer, resolver: KeyResolver) -> None:
    s = only(await check(sign(message(FROM), ORG, SEL, rsa_key(2048), algorithm="rsa-sha1"),
                         resolver))
    assert (s.result, s.counts, s.algorithm) == ("pass", False, "rsa-sha1")
    assert s.reason == "rsa-sha1 is not accepted (RFC 8301)"


async def test_1024_bit_key_refused_by_default_accepted_when_configured(
        zone: DnsServer, resolver: KeyResolver) -> None:
    raw = sign(message(FROM), ORG, "s1024", rsa_key(1024))
    refused = only(await check(raw, resolver))
    assert (refused.result, refused.counts, refused.key_bits) == ("pass", False, 1024)
    assert refused.reason == "RSA key of 1024 bits is shorter than 2048"
    assert only(await check(raw, resolver, min_rsa_bits=1024)).counts


async def test_no_setting_lets_a_key_below_1024_bits_count(
        zone: DnsServer, resolver: KeyResolver) -> None:
    publish(zone, "weak", ORG, weak_rsa_key(768))
    s = only(await check(sign(message(FROM), ORG, "weak", weak_rsa_key(768)), resolver,
                         min_rsa_bits=512))
    assert (s.result, s.counts, s.key_bits) == ("pass", False, 768)
    assert s.reason == "RSA key of 768 bits is shorter than 1024"


async def test_signature_not_covering_from_is_refused(
        zone: DnsServer, resolver: KeyResolver) -> None:
    raw = sign(message(FROM), ORG, SEL, rsa_key(2048), include_headers=["to", "subject", "date"])
    s = only(await check(raw, resolver))
    assert (s.result, s.counts, s.reason) == ("pass", False, "signature does not cover From")


async def test_body_length_limit_with_appended_content_is_refused(
        zone: DnsServer, resolver: KeyResolver) -> None:
    raw = sign(message(FROM), ORG, SEL, rsa_key(2048), length=True)
    raw += b"\r\nAlso make attacker@evil.example an SSC of .example.\r\n"
    s = only(await check(raw, resolver))
    assert (s.result, s.counts) == ("pass", False)  # dkimpy alone would call this a pass
    assert s.reason == "l= body length limit is not accepted"


async def test_body_length_limit_is_refused_even_without_appended_content(
        zone: DnsServer, resolver: KeyResolver) -> None:
    s = only(await check(sign(message(FROM), ORG, SEL, rsa_key(2048), length=True), resolver))
    assert (s.result, s.counts, s.reason) == ("pass", False, "l= body length limit is not accepted")


async def test_several_refusals_are_all_named(zone: DnsServer, resolver: KeyResolver) -> None:
    raw = sign(message(FROM), ORG, "s1024", rsa_key(1024), algorithm="rsa-sha1", length=True)
    reason = only(await check(raw, resolver)).reason
    for part in ("rsa-sha1", "l=", "1024 bits"):
        assert part in reason


async def test_expired_signature_is_refused(zone: DnsServer, resolver: KeyResolver) -> None:
    s = only(await check(sign(message(FROM), ORG, SEL, rsa_key(2048), expire=-60), resolver))
    assert (s.result, s.counts) == ("permerror", False)
    assert s.reason.startswith("signature expired at ")


async def test_expiry_is_judged_at_the_time_given(zone: DnsServer, resolver: KeyResolver) -> None:
    t0 = time.time()
    raw = sign(message(FROM), ORG, SEL, rsa_key(2048), timestamp=t0, expire=3600)
    assert only(await check(raw, resolver, now=t0 + 60)).counts
    later = only(await check(raw, resolver, now=t0 + 7200))
    assert (later.counts, later.result) == (False, "permerror")
    assert "expired" in later.reason


# -- alignment -----------------------------------------------------------------------------


async def test_organisational_domain_counts_only_under_relaxed_alignment(
        zone: DnsServer, resolver: KeyResolver) -> None:
    raw = sign(message(f"admin@mail.{ORG}"), ORG, SEL, rsa_key(2048))
    report = await check(raw, resolver)
    assert only(report).counts
    assert report.counting(f"mail.{ORG}", "strict") == []
    assert report.counting(f"mail.{ORG}", "relaxed") == list(report.signatures)


async def test_signature_of_another_organisation_never_counts(
        dns_server: DnsServer, resolver: KeyResolver) -> None:
    publish(dns_server, SEL, "attacker.example", rsa_key(2048))
    report = await check(sign(message(FROM), "attacker.example", SEL, rsa_key(2048)), resolver)
    assert only(report).counts  # a good signature, but not by the From domain
    assert report.counting(ORG, "strict") == []
    assert report.counting(ORG, "relaxed") == []


@pytest.mark.parametrize(("d", "from_domain", "strict", "relaxed"), [
    ("nic.example", "nic.example", True, True),
    ("NIC.Example.", "nic.example", True, True),
    ("nic.example", "mail.nic.example", False, True),
    ("mail.nic.example", "nic.example", False, True),
    ("a.nic.example", "b.nic.example", False, True),
    ("other.example", "nic.example", False, False),
    ("example", "nic.example", False, False),  # a bare TLD is a public suffix
    ("co.uk", "nic.co.uk", False, False),
    ("evil.co.uk", "nic.co.uk", False, False),
    ("nic.co.uk", "mail.nic.co.uk", False, True),
    ("", "nic.example", False, False),
])
def test_aligned(d: str, from_domain: str, strict: bool, relaxed: bool) -> None:
    assert aligned(d, from_domain, "strict") is strict
    assert aligned(d, from_domain, "relaxed") is relaxed


def test_aligned_refuses_unknown_mode() -> None:
    with pytest.raises(ValueError, match="strict"):
        aligned("a.example", "a.example", "loose")


# -- tampering -----------------------------------------------------------------------------


async def test_body_changed_after_signing_fails(zone: DnsServer, resolver: KeyResolver) -> None:
    raw = sign(message(FROM, body="Please add Jane Doe.\r\n"), ORG, SEL, rsa_key(2048))
    raw = raw.replace(b"Jane Doe", b"Evil Eve")
    s = only(await check(raw, resolver))
    assert (s.result, s.counts, s.reason) == ("fail", False, "body hash mismatch")


async def test_from_changed_after_signing_fails(zone: DnsServer, resolver: KeyResolver) -> None:
    raw = sign(message(FROM), ORG, SEL, rsa_key(2048))
    raw = raw.replace(f"From: {FROM}".encode(), b"From: admin@other.example")
    s = only(await check(raw, resolver))
    assert (s.result, s.counts) == ("fail", False)
    assert "does not verify" in s.reason


async def test_second_from_added_after_signing_fails(
        zone: DnsServer, resolver: KeyResolver) -> None:
    raw = sign(message(FROM), ORG, SEL, rsa_key(2048))
    head, _, body = raw.partition(b"\r\n\r\n")
    raw = head + b"\r\nFrom: attacker@evil.example\r\n\r\n" + body
    assert only(await check(raw, resolver)).result == "fail"


# -- keys and DNS --------------------------------------------------------------------------


async def test_missing_key_is_permanent(dns_server: DnsServer, resolver: KeyResolver) -> None:
    report = await check(sign(message(FROM), ORG, SEL, rsa_key(2048)), resolver)
    s = only(report)
    assert (s.result, s.counts, s.reason) == ("permerror", False, "key not found in DNS")
    assert not report.temporary(ORG, "strict")
    dns_server.wait_for_query(dns_name(SEL, ORG))


async def test_name_without_txt_is_no_key(dns_server: DnsServer, resolver: KeyResolver) -> None:
    dns_server.set_txt(dns_name(SEL, ORG), [])
    s = only(await check(sign(message(FROM), ORG, SEL, rsa_key(2048)), resolver))
    assert (s.result, s.reason) == ("permerror", "key not found in DNS")


async def test_servfail_is_temporary(dns_server: DnsServer, resolver: KeyResolver) -> None:
    dns_server.servfail(dns_name(SEL, ORG))
    report = await check(sign(message(FROM), ORG, SEL, rsa_key(2048)), resolver)
    s = only(report)
    assert (s.result, s.counts) == ("temperror", False)
    assert s.reason.startswith("DNS lookup failed: ")
    assert "SERVFAIL" in s.reason
    assert report.temporary(ORG, "strict")
    assert not report.temporary("other.example", "relaxed")  # that answer cannot change


async def test_temporary_is_false_once_an_aligned_signature_counts(
        zone: DnsServer, resolver: KeyResolver) -> None:
    zone.servfail(dns_name("down", ORG))
    raw = sign(sign(message(FROM), ORG, SEL, rsa_key(2048)), ORG, "down", rsa_key(2048))
    report = await check(raw, resolver)
    assert [s.result for s in report.signatures] == ["temperror", "pass"]
    assert not report.temporary(ORG, "strict")


async def test_silent_server_is_temporary_within_the_timeout(dns_server: DnsServer) -> None:
    dns_server.never_answer(dns_name(SEL, ORG))
    resolver = KeyResolver([dns_server.host], port=dns_server.port, timeout=0.5)
    raw = sign(message(FROM), ORG, SEL, rsa_key(2048))
    t0 = time.monotonic()
    report = await check(raw, resolver)
    elapsed = time.monotonic() - t0
    s = only(report)
    assert (s.result, s.counts) == ("temperror", False)
    assert report.temporary(ORG, "strict")
    dns_server.wait_for_query(dns_name(SEL, ORG), timeout=0)
    assert 0.4 < elapsed < 1.5, elapsed


async def test_keys_are_fetched_concurrently(dns_server: DnsServer) -> None:
    for sel in ("a", "b", "c"):
        dns_server.never_answer(dns_name(sel, ORG))
    resolver = KeyResolver([dns_server.host], port=dns_server.port, timeout=1.0)
    raw = message(FROM)
    for sel in ("a", "b", "c"):
        raw = sign(raw, ORG, sel, rsa_key(2048))
    t0 = time.monotonic()
    report = await check(raw, resolver)
    elapsed = time.monotonic() - t0
    assert [s.result for s in report.signatures] == ["temperror"] * 3
    assert elapsed < 2.5, f"one after the other would take 3 s, took {elapsed:.2f}"


async def test_several_txt_records_one_of_them_dkim(
        dns_server: DnsServer, resolver: KeyResolver) -> None:
    dns_server.set_txt(dns_name(SEL, ORG), ["google-site-verification=abc",
                                            rsa_key(2048).record_text()])
    assert only(await check(sign(message(FROM), ORG, SEL, rsa_key(2048)), resolver)).counts


async def test_two_dkim_records_are_ambiguous(dns_server: DnsServer,
                                              resolver: KeyResolver) -> None:
    dns_server.set_txt(dns_name(SEL, ORG), [rsa_key(2048).record_text(),
                                            rsa_key(2048, 1).record_text()])
    s = only(await check(sign(message(FROM), ORG, SEL, rsa_key(2048)), resolver))
    assert (s.result, s.counts) == ("permerror", False)
    assert "ambiguous" in s.reason


async def test_revoked_key(dns_server: DnsServer, resolver: KeyResolver) -> None:
    dns_server.set_txt(dns_name(SEL, ORG), ["v=DKIM1; k=rsa; p="])
    s = only(await check(sign(message(FROM), ORG, SEL, rsa_key(2048)), resolver))
    assert (s.result, s.reason) == ("permerror", "key has been revoked (empty p=)")


async def test_key_of_the_wrong_type(dns_server: DnsServer, resolver: KeyResolver) -> None:
    publish(dns_server, SEL, ORG, ed25519_key())
    s = only(await check(sign(message(FROM), ORG, SEL, rsa_key(2048)), resolver))
    assert (s.result, s.counts) == ("permerror", False)
    assert "ed25519" in s.reason


async def test_key_restricted_to_another_hash(dns_server: DnsServer,
                                              resolver: KeyResolver) -> None:
    dns_server.set_txt(dns_name(SEL, ORG), [rsa_key(2048).record_text() + "; h=sha1"])
    s = only(await check(sign(message(FROM), ORG, SEL, rsa_key(2048)), resolver))
    assert (s.result, s.counts) == ("permerror", False)


async def test_key_for_the_domain_only_refuses_a_subdomain_identity(
        dns_server: DnsServer, resolver: KeyResolver) -> None:
    dns_server.set_txt(dns_name(SEL, ORG), [rsa_key(2048).record_text() + "; t=s"])
    same = only(await check(sign(message(FROM), ORG, SEL, rsa_key(2048)), resolver))
    assert same.counts
    sub = only(await check(sign(message(FROM), ORG, SEL, rsa_key(2048),
                                identity=f"@mail.{ORG}"), resolver))
    assert (sub.result, sub.counts) == ("permerror", False)
    assert "t=s" in sub.reason


async def test_garbage_key_record(dns_server: DnsServer, resolver: KeyResolver) -> None:
    dns_server.set_txt(dns_name(SEL, ORG), ["v=DKIM1; k=rsa; p=bm90IGEga2V5"])
    s = only(await check(sign(message(FROM), ORG, SEL, rsa_key(2048)), resolver))
    assert (s.result, s.counts) == ("permerror", False)
    assert "malformed" in s.reason


async def test_resolver_from_config(zone: DnsServer) -> None:
    cfg = config.load(None, {"dns.nameservers": [zone.host], "dns.port": zone.port,
                             "dns.timeout": 2.0})
    resolver = KeyResolver.from_config(cfg.dns)
    assert await resolver.fetch(dns_name(SEL, ORG)) == rsa_key(2048).record_text().encode()
    assert await resolver.fetch(dns_name("nothing", ORG)) is None


# -- hostile headers -----------------------------------------------------------------------


@pytest.mark.parametrize("value", [
    b"garbage",
    b"",
    b"v=1; a=rsa-sha256",
    b"v=1; v=1; a=rsa-sha256; d=nic.example; s=s; h=from; bh=AAAA; b=AAAA",
    b"v=2; a=rsa-sha256; d=nic.example; s=s; h=from; bh=AAAA; b=AAAA",
    b"v=1; a=rsa-md5; d=nic.example; s=s; h=from; bh=AAAA; b=AAAA",
    b"v=1; a=rsa-sha256; d=nic.example@evil; s=s; h=from; bh=AAAA; b=AAAA",
    b"v=1; a=rsa-sha256; d=n\xc3\xafc.example; s=s; h=from; bh=AAAA; b=AAAA",
    b"v=1; a=rsa-sha256; d=nic.example; s=" + b"x" * 300 + b"; h=from; bh=AAAA; b=AAAA",
    b"v=1; a=rsa-sha256; d=nic.example; s=s2048; h=from; bh=AAAA; b=!!!!",
    b"v=1; a=rsa-sha256; d=nic.example; s=s2048; h=from; bh=AAAA; b=AAAA; x=soon",
    b"v=1; a=rsa-sha256; d=nic.example; s=s2048; h=from; bh=AAAA; b=AAAA; c=odd/odd",
    b"v=1; a=rsa-sha256; d=nic.example; s=s2048; h=from; bh=AAAA; b=AAAA; l=-5",
    b"v=1; a=rsa-sha256; d=nic.example; s=s2048; h=from; bh=AAAA; b=AAAA; t=99999999999",
    b"v=1; a=rsa-sha256; d=nic.example; s=s2048; h=from; bh=AAAA; b=AAAA",
    b"v=1; a=ed25519-sha256; d=nic.example; s=ed; h=from; bh=AAAA; b=AAAA",
])
async def test_garbage_signature_is_a_permanent_error(
        zone: DnsServer, resolver: KeyResolver, value: bytes) -> None:
    raw = b"DKIM-Signature: " + value + b"\r\n" + message(FROM)
    s = only(await check(raw, resolver))
    assert s.result in ("permerror", "fail"), s
    assert not s.counts
    assert s.reason


async def test_unparsable_header_with_a_signature(zone: DnsServer, resolver: KeyResolver) -> None:
    raw = b" leading fold\r\n" + sign(message(FROM), ORG, SEL, rsa_key(2048))
    s = only(await check(raw, resolver))
    assert (s.result, s.counts, s.domain) == ("permerror", False, ORG)
    assert "cannot be parsed" in s.reason


async def test_unparsable_header_keeps_the_whole_folded_signature_as_evidence(
        zone: DnsServer, resolver: KeyResolver) -> None:
    """The evidence names d=, s= and a= even where they stand on continuation lines."""
    folded = (b"DKIM-Signature: v=1; a=rsa-sha256;\r\n\tc=relaxed/relaxed;\r\n"
              b" d=nic.example; s=s2048;\r\n\th=from:date:message-id; bh=AAAA;\r\n b=AAAA\r\n")
    raw = b" leading fold\r\n" + folded + b"X-After: 1\r\n" + folded + message(FROM)
    report = await check(raw, resolver)
    assert [(s.domain, s.selector, s.algorithm, s.result) for s in report.signatures] == [
        (ORG, SEL, "rsa-sha256", "permerror")] * 2
    assert all("cannot be parsed" in s.reason for s in report.signatures)


async def test_message_without_signature(resolver: KeyResolver) -> None:
    report = await check(message(FROM), resolver)
    assert report == DkimReport(())
    assert report.counting(ORG, "relaxed") == []
    assert not report.temporary(ORG, "relaxed")
    assert authentication_results("mx.tld-ops.localhost", report) == \
        "mx.tld-ops.localhost; dkim=none"


# -- Authentication-Results ----------------------------------------------------------------


async def test_authentication_results_name_every_signature(
        zone: DnsServer, resolver: KeyResolver) -> None:
    zone.servfail(dns_name("down", ORG))
    raw = message(FROM)
    raw = sign(raw, ORG, SEL, rsa_key(2048))
    raw = sign(raw, ORG, "s1024", rsa_key(1024), algorithm="rsa-sha1")
    raw = sign(raw, ORG, "down", rsa_key(2048))
    raw = b'DKIM-Signature: v=1; a=rsa-sha256; d="x@y"; s=(a); b=\r\n' + raw
    report = await check(raw, resolver)
    value = authentication_results("MX.tld-ops.localhost", report)
    parsed = authres.AuthenticationResultsHeader.parse_value(value)
    assert parsed.authserv_id == "mx.tld-ops.localhost"
    assert [r.method for r in parsed.results] == ["dkim"] * 4
    assert [r.result for r in parsed.results] == ["permerror", "temperror", "policy", "pass"]
    assert [r.header_s for r in parsed.results] == [None, "down", "s1024", SEL]
    assert [r.header_d for r in parsed.results[1:]] == [ORG] * 3
    assert [r.header_a for r in parsed.results[1:]] == ["rsa-sha256", "rsa-sha1", "rsa-sha256"]
    assert "rsa-sha1 is not accepted" in parsed.results[2].reason
    assert "1024 bits" in parsed.results[2].reason
    assert parsed.results[1].reason.startswith("DNS lookup failed")
    assert parsed.results[3].reason is None


async def test_authentication_results_quote_hostile_reasons(
        zone: DnsServer, resolver: KeyResolver) -> None:
    raw = b"evil@example.com; dkim=pass header.d=nic.example\r\n" + sign(message(FROM), ORG, SEL,
                                                                          rsa_key(2048))
    report = await check(raw, resolver)
    assert "@" in only(report).reason  # dkimpy echoes the line; authres would not quote it
    parsed = authres.AuthenticationResultsHeader.parse_value(
        authentication_results("mx.example", report))
    assert [r.result for r in parsed.results] == ["permerror"]


# -- fuzzing -------------------------------------------------------------------------------

_TAGS = st.sampled_from([b"v", b"a", b"b", b"bh", b"c", b"d", b"h", b"i", b"l", b"q", b"s",
                         b"t", b"x", b"z", b"V", b"\xff", b""])
_VALUES = st.one_of(
    st.sampled_from([b"1", b"rsa-sha256", b"ed25519-sha256", b"rsa-sha1", ORG.encode(), b"s2048",
                     b"ed", b"from", b"from:to", b"relaxed/relaxed", b"AAAA", b"0", b"-1",
                     b"99999999999999999999", b"\r\n\t", b"=", b";", b":"]),
    st.binary(max_size=40),
)
_TAG_LIST = st.lists(st.tuples(_TAGS, _VALUES), max_size=14).map(
    lambda tags: b"; ".join(k + b"=" + v for k, v in tags))
_HEADER_NAMES = st.sampled_from([b"DKIM-Signature", b"dkim-signature", b"From", b"To",
                                 b"Subject", b"X", b"", b" ", b"From "])
_HEADER_LINE = st.one_of(
    st.tuples(_HEADER_NAMES, _TAG_LIST).map(lambda h: h[0] + b":" + h[1]),
    st.binary(max_size=60),
)
_SEPARATORS = st.sampled_from([b"\r\n", b"\n", b"\r", b"\r\n ", b"\r\n\t", b""])
_SOUP = st.lists(st.tuples(_HEADER_LINE, _SEPARATORS), max_size=12).map(
    lambda lines: b"".join(a + b for a, b in lines))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=400), _SOUP,
                      st.tuples(_SOUP, st.binary(max_size=80)).map(lambda t: t[0] + b"\r\n\r\n" + t[1])))
def test_verify_never_raises(zone: DnsServer, data: bytes) -> None:
    resolver = KeyResolver([zone.host], port=zone.port, timeout=1.0)
    report = asyncio.run(check(data, resolver))
    for s in report.signatures:
        assert s.result in ("pass", "fail", "neutral", "temperror", "permerror")
        assert s.result == "pass" or not s.counts
    authres.AuthenticationResultsHeader.parse_value(authentication_results("mx.example", report))


_SIGNED = sign(message(FROM), ORG, SEL, rsa_key(2048))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, len(_SIGNED) - 1), st.binary(max_size=3)),
                      min_size=1, max_size=4))
def test_mangled_signed_message_never_raises(
        zone: DnsServer, edits: list[tuple[int, bytes]]) -> None:
    raw = _SIGNED
    for at, new in edits:
        raw = raw[:at] + new + raw[at + 1:]
    resolver = KeyResolver([zone.host], port=zone.port, timeout=1.0)
    report = asyncio.run(check(raw, resolver))
    authres.AuthenticationResultsHeader.parse_value(authentication_results("mx.example", report))
    if raw == _SIGNED:
        assert only(report).counts


async def test_a_key_is_asked_of_dns_once_per_ttl(zone: DnsServer, resolver: KeyResolver) -> None:
    for i in range(3):
        raw = sign(message(FROM, subject=f"n{i}"), ORG, SEL, rsa_key(2048))
        assert only(await check(raw, resolver)).counts
    assert len(zone.queries_for(dns_name(SEL, ORG))) == 1


async def test_a_key_is_not_kept_past_its_ttl(zone: DnsServer, resolver: KeyResolver) -> None:
    # TTL 0: every request asks again, so a rotated key is seen as soon as DNS serves it.
    zone.ttl = 0
    for i in range(3):
        raw = sign(message(FROM, subject=f"t{i}"), ORG, SEL, rsa_key(2048))
        assert only(await check(raw, resolver)).counts
    assert len(zone.queries_for(dns_name(SEL, ORG))) == 3


# -- the faster RSA verification gives dkimpy's answers ---------------------------------------


def _public(key: TestKey) -> dict[str, int]:
    import base64

    import dkim.crypto

    return dkim.crypto.parse_public_key(base64.b64decode(key.public_b64))


def _private(key: TestKey) -> dict[str, int]:
    import dkim.crypto

    return dkim.crypto.parse_pem_private_key(key.private)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=64), bits=st.sampled_from([1024, 2048]),
       tamper=st.sampled_from(["none", "flip", "random", "long", "short", "zero", "other key"]),
       junk=st.binary(min_size=1, max_size=600))
def test_fast_rsa_verification_answers_as_dkimpy_does(data: bytes, bits: int, tamper: str,
                                                      junk: bytes) -> None:
    import hashlib

    import dkim.crypto

    from tldops_mta.auth.dkim_verify import fast_rsassa_pkcs1_v1_5_verify

    key = rsa_key(bits)
    public = _public(rsa_key(bits, 1) if tamper == "other key" else key)
    signature = bytes(dkim.crypto.RSASSA_PKCS1_v1_5_sign(hashlib.sha256(data), _private(key)))
    if tamper == "flip":
        signature = bytes([signature[0] ^ 1]) + signature[1:]
    elif tamper == "random":
        signature = junk
    elif tamper == "long":  # leading zero octets would not change the number: start with 1
        signature = b"\x01" + junk + signature
    elif tamper == "short":
        signature = signature[:-1]
    elif tamper == "zero":
        signature = b"\0" * len(signature)
    theirs = dkim.crypto.RSASSA_PKCS1_v1_5_verify(hashlib.sha256(data), signature, public)
    ours = fast_rsassa_pkcs1_v1_5_verify(hashlib.sha256(data), signature, public)
    assert ours == theirs
    assert ours == (tamper == "none")


def test_the_verifier_uses_the_fast_rsa_and_keeps_parsed_keys() -> None:
    import dkim

    from tldops_mta.auth import dkim_verify

    assert dkim.RSASSA_PKCS1_v1_5_verify is dkim_verify.fast_rsassa_pkcs1_v1_5_verify
    key = rsa_key(2048)
    record = key.record_text().encode()
    dkim_verify.evaluated_key.cache_clear()
    for i in range(3):
        raw = sign(message(subject=f"cached {i}"), "nic.example", "sel", key)
        assert dkim_verify._Verifier(raw).verify(dnsfunc=lambda name, timeout=5: record)
    info = dkim_verify.evaluated_key.cache_info()
    assert (info.misses, info.hits) == (1, 2)


_BTAG_ALPHABET = [b"b", b"=", b";", b" ", b"\t", b"\r", b"\n", b"\r\n", b"\x0b", b"\x0c", b"A", b"z", b"0",
                  b"+", b"/", b"h", b":", b"-", b".", b"\xff", b"bh=", b" b=", b";b="]


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from(_BTAG_ALPHABET), max_size=60).map(b"".join))
def test_the_b_tag_pattern_matches_as_dkimpys(value: bytes) -> None:
    """hash_headers blanks b= with our pattern (dkim_verify.RE_BTAG): the same octets as
    with dkimpy's own, whatever the header holds (its whitespace, folding, other tags)."""
    from tldops_mta.auth import dkim_verify

    assert (dkim_verify.RE_BTAG.sub(b"\\1", value)
            == dkim_verify.UPSTREAM_RE_BTAG.sub(b"\\1", value))


def test_the_b_tag_pattern_is_in_place_and_upstreams_is_as_read() -> None:
    import dkim

    from tldops_mta.auth import dkim_verify

    assert dkim.RE_BTAG is dkim_verify.RE_BTAG
    fws = dkim.FWS
    assert fws == rb"(?:(?:\s*\r?\n)?\s+)?"
    assert dkim_verify.UPSTREAM_RE_BTAG.pattern == (
        rb"([;\s]b" + fws + rb"=)(?:" + fws + rb"[a-zA-Z0-9+/=])*(?:\r?\n\Z)?")
    key = rsa_key(2048)
    record = key.record_text().encode()
    raw = sign(message(subject="b= blanked our way"), "nic.example", "sel", key)
    assert dkim.DKIM(raw).verify(dnsfunc=lambda name, timeout=5: record)
    assert dkim.DKIM(raw.replace(b"b= blanked", b"b= changed")).verify(
        dnsfunc=lambda name, timeout=5: record) is False

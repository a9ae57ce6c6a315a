"""authentication_results writes the Authentication-Results value itself: held to the text
authres 1.2.0 writes from the same report (as the daemon built it with authres's objects,
kept here as the reference), hostile reasons and names included."""

from __future__ import annotations

import re

import authres  # type: ignore[import-untyped]
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tldops_mta.auth import dkim_verify
from tldops_mta.auth.dkim_verify import DkimReport, SignatureResult, authentication_results


def reference(authserv_id: str, report: DkimReport) -> str:
    """The value as authres builds it: one DKIMAuthenticationResult per signature, the reason
    quoted by _Quoted, the d=, s= and a= that are plain tokens as header properties."""
    results = []
    for s in report.signatures:
        clause = authres.DKIMAuthenticationResult(
            result="policy" if s.result == "pass" and not s.counts else s.result)
        if s.reason:
            clause.reason = dkim_verify._Quoted(re.sub(r"[^\x20-\x7e]", "?", s.reason))
        for prop, value in (("d", s.domain), ("s", s.selector), ("a", s.algorithm)):
            if value and dkim_verify._TOKEN_RE.fullmatch(value):
                clause.properties.append(authres.AuthenticationResultProperty("header", prop, value))
        results.append(clause)
    header = authres.AuthenticationResultsHeader(
        authserv_id=authserv_id, results=results or [authres.DKIMAuthenticationResult(result="none")])
    return str(header.header_value())


NAMES = st.one_of(st.sampled_from(["nic.org.mt", "sel", "rsa-sha256", "ed25519-sha256", "", "x@y", "(a)",
                                   'a"b', "a b", "A.B_c-9", "a" * 254, "ü.example", "a;b"]),
                  st.text(max_size=12))
REASONS = st.one_of(st.sampled_from(["", "token", "signature did not verify", "evil@example.com; dkim=pass",
                                     'say "no"', "back\\slash", "tab\there", "\u00e9t\u00e9", "\x00\x7f",
                                     "RSA key of 1024 bits is shorter than 2048"]),
                    st.text(max_size=40))
SIGNATURES = st.builds(
    SignatureResult, index=st.integers(0, 9), domain=NAMES, selector=NAMES, algorithm=NAMES,
    key_bits=st.none() | st.integers(0, 4096),
    result=st.sampled_from(["pass", "fail", "neutral", "temperror", "permerror"]),
    reason=REASONS, counts=st.booleans())


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(["mx.tld-ops.localhost", "MX.Example", "tld-ops.localhost", ""]),
       st.lists(SIGNATURES, max_size=4))
@example("mx.example", [])
def test_the_value_is_the_one_authres_writes(authserv_id: str, signatures: list[SignatureResult]) -> None:
    report = DkimReport(tuple(signatures))
    value = authentication_results(authserv_id, report)
    assert value == reference(authserv_id, report)
    if authserv_id:
        authres.AuthenticationResultsHeader.parse_value(value)

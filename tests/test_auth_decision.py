"""The authentication decision as a table: message facts x IANA facts -> verdict."""

from __future__ import annotations

import pytest

from tldops_mta.auth.trust import Decision, IanaView, MessageView, Verdict, decide

ADMIN = "admin@nic.org.mt"


def msg(from_key: str | None = ADMIN, cc: tuple[str, ...] = (), problem: str | None = None,
        dkim: tuple[str, ...] = ("nic.org.mt",), temporary: bool = False,
        replayed: bool = False) -> MessageView:
    return MessageView(from_key, frozenset(cc), problem, frozenset(dkim), temporary, replayed)


IANA = IanaView("mt", ADMIN)

CASES = [
    # (name, message, iana, verdict, reason fragment)
    ("from admin, aligned DKIM", msg(), IANA, Verdict.VERIFIED, "DKIM signature of nic.org.mt"),
    ("from admin, no DKIM", msg(dkim=()), IANA, Verdict.NEEDS_CONFIRMATION, "no DKIM signature"),
    ("from admin, DKIM key lookup failed", msg(dkim=(), temporary=True), IANA, Verdict.WAIT, "DKIM key"),
    ("from admin, replayed", msg(replayed=True), IANA, Verdict.NEEDS_CONFIRMATION, "seen before"),
    ("from admin, replayed, DNS down", msg(dkim=(), temporary=True, replayed=True), IANA,
     Verdict.NEEDS_CONFIRMATION, "no DKIM"),
    ("admin only in Cc", msg(from_key="someone@nic.org.mt", cc=(ADMIN,)), IANA,
     Verdict.NEEDS_CONFIRMATION, "in Cc"),
    ("admin in Cc, signed by sender", msg(from_key="ops@other.example", cc=(ADMIN, "x@y.z"),
                                          dkim=("other.example",)), IANA,
     Verdict.NEEDS_CONFIRMATION, "in Cc"),
    ("stranger", msg(from_key="evil@attacker.example", dkim=("attacker.example",)), IANA,
     Verdict.REFUSED, "must come from, or be copied"),
    ("unreadable From", msg(from_key=None, problem="the From: line holds two addresses"), IANA,
     Verdict.REFUSED, "two addresses"),
    ("header problem beats everything", msg(problem="message has 2 From: headers"), IANA,
     Verdict.REFUSED, "2 From:"),
    ("IANA unavailable", msg(), IanaView("mt", None, unavailable=True), Verdict.WAIT, "IANA could not"),
    ("IANA unavailable, stranger: still waits", msg(from_key="evil@x.example"),
     IanaView("mt", None, unavailable=True), Verdict.WAIT, "IANA could not"),
    ("not delegated", msg(), IanaView("zz", None), Verdict.REFUSED, "not a delegated"),
    ("admin address differs in case only", msg(from_key=ADMIN), IanaView("mt", ADMIN), Verdict.VERIFIED,
     "DKIM"),
    ("look-alike From", msg(from_key="admin@nic.org.mt.evil.example"), IANA, Verdict.REFUSED, "must come"),
]


@pytest.mark.parametrize(("name", "message", "iana", "verdict", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_decision_table(name: str, message: MessageView, iana: IanaView, verdict: Verdict,
                        fragment: str) -> None:
    d = decide(message, iana)
    assert isinstance(d, Decision)
    assert d.verdict is verdict, d.reason
    assert fragment in d.reason
    assert d.tld == iana.tld


def test_never_verified_without_an_aligned_signature() -> None:
    for cc in ((), (ADMIN,)):
        for replayed in (False, True):
            for temporary in (False, True):
                d = decide(msg(dkim=(), cc=cc, replayed=replayed, temporary=temporary), IANA)
                assert d.verdict is not Verdict.VERIFIED

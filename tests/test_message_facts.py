"""message_facts parses a plain single-part message without the stdlib's feedparser: held to
the very answers of ``BytesParser(policy=compat32)`` (the header fields in order, duplicates
and defects included, which the refusal of two From: lines and the like rest on), and to the
stdlib code those answers were read from."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import sys
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tldops_mta.auth import message_facts

STDLIB = BytesParser(policy=compat32)

WRITTEN_AGAINST = (3, 11)
UPSTREAM = {
    "email.feedparser:FeedParser._parsegen":
        "935a38b99cd504ee09e7506684c157d98b355bc115dae444a891575751c3b2aa",
    "email.feedparser:FeedParser._parse_headers":
        "68a180f6d4f3ede00a9d1fa363128809a36a89bcd4bba347ed2ed358408fa454",
    "email.feedparser:FeedParser.close":
        "e5bfff2c8386edc1fa13ecc07ad8108a9b48d400502ff3997426d91aa7722d4f",
    "email.feedparser:BufferedSubFile.push":
        "f0ae2a213920fddb6611994650a97c8af9d1afa66472949ba816e2fcd202041b",
    "email._policybase:Compat32.header_source_parse":
        "40e079281d97ab573aa49a93903c2d47e22e579061e41ddefff1d6dfc0147c41",
    "email.message:Message.set_payload":
        "c5a35b49fc4625f1fc76ad69a00d0a5439b015024dfa6a26c99ff2e9790246f3",
}
"""What ``message_facts._single_part`` does again, as the Python it was written against has it."""


def shape(msg: Message) -> Any:
    """Everything a parse leaves in a message: its attributes, defects by kind and text,
    parts in turn."""
    attrs = {k: v for k, v in vars(msg).items() if k not in ("defects", "_payload", "policy")}
    payload = vars(msg)["_payload"]
    return (type(msg), attrs, msg.policy is compat32,
            [(type(d), d.args) for d in msg.defects],
            [shape(p) for p in payload] if isinstance(payload, list) else payload)


def assert_same(raw: bytes) -> None:
    assert shape(message_facts.parse(raw)) == shape(STDLIB.parsebytes(raw))
    mine = message_facts.read(raw)
    assert mine.message is not None
    theirs = STDLIB.parsebytes(raw)
    old = message_facts.MessageFacts(**{**vars(mine), "message": theirs})
    assert mine == old and mine.text == old.text


NAMES = st.sampled_from(["From", "from", "FROM", "Sender", "To", "Cc", "Date", "Subject", "Message-ID",
                         "Content-Type", "content-type", "Content-Transfer-Encoding", "X-A", "From ",
                         "", " ", "\t", "Bad Name", "X\x7f", "Reply-To", "Auto-Submitted", "Precedence"])
VALUES = st.one_of(
    st.sampled_from(["text/plain", "text/plain; charset=utf-8", "multipart/mixed; boundary=b",
                     "message/rfc822", "message/delivery-status", "text/html", "TEXT/PLAIN", "a <b@c>",
                     "", " ", "\t x", "quoted-printable", "base64", "multipart", "auto-replied", "bulk"]),
    st.text(alphabet=st.characters(max_codepoint=0x10ff), max_size=20))
ENDS = st.sampled_from(["\r\n", "\n", "\r", "\r\r\n", ""])


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    lines = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.integers(0, 9))
        if kind == 0:
            lines.append(draw(st.sampled_from([" ", "\t", "  "])) + draw(VALUES))
        elif kind == 1:
            lines.append(draw(st.text(max_size=12)))
        else:
            lines.append(draw(NAMES) + draw(st.sampled_from([":", ": ", ":\t", " :", "::"])) + draw(VALUES))
    text = "".join(line + draw(ENDS) for line in lines)
    if draw(st.booleans()):
        text += draw(st.sampled_from(["\r\n", "\n", "\r"]))
        text += draw(st.text(max_size=40)) + draw(st.sampled_from(["--b\r\nx\r\n--b--\r\n", "", "\r\n"]))
    data = text.encode("utf-8", "surrogatepass")
    if draw(st.booleans()):  # octets that are not UTF-8
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(max_size=4)) + data[at:]
    return data


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
@example(b"From: a@b\r\nFrom: c@d\r\nDate: x\r\n\r\nbody")
@example(b"From a@b Mon Jan  1 00:00:00 2024\r\nFrom: a@b\r\n\r\nbody")
@example(b" first\r\nFrom: a@b\r\n\r\n")
@example(b"From: a@b\r\nnot a field\r\n\r\nbody")
@example(b"From: a@b\r\n:no name\r\n\r\n")
@example(b"From: a@b\r\nSubject: x\r\n")
@example(b"From: a@b\r\nSubject: x")
@example(b"From: a@b\r\nX")
@example(b"From: a@b\r\n\tX\r\n\n")
@example(b"")
@example(b"\r\nbody only")
@example(b"From: a@b\rTo: c@d\r\r\nbody\r")
@example(b"From: \xc3\xa9 <a@b>\r\n \r\n\tfolded\r\n\r\n\xff\xfe")
@example(b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n")
@example(b"Content-Type: message/rfc822\r\n\r\nFrom: a@b\r\n\r\nx")
@example(b"From: a@b\x0b\r\nTo: c\x85d\r\n\r\n")
def test_the_parse_is_the_stdlibs(raw: bytes) -> None:
    assert_same(raw)


def test_long_messages_and_the_bench_kind() -> None:
    """Beyond the feedparser's 8192-character reads: a line end split between two of them."""
    head = "From: a@b\r\nSubject: " + "x" * 8180 + "\r\nDate: d\r\n"
    for raw in (head + "\r\n" + "line\r\n" * 5000, "X: " + "y" * 8186 + "\r\nA: b\r\n\r\nz"):
        assert_same(raw.encode())
    for pad in range(8185, 8195):
        assert_same(("X: " + "y" * pad + "\r\n\r\nbody\r\n").encode())
        assert_same(("X: " + "y" * pad + "\r\n" + "\r\nbody").encode())


def test_the_single_part_parse_is_taken_for_an_ordinary_request() -> None:
    raw = (b"From: NIC Admin <admin@nic.org.mt>\r\nTo: requests@tld-ops.localhost\r\nSubject: S\r\n"
           b"Date: Thu, 03 Dec 2026 07:51:05 +0000\r\nMessage-ID: <x@nic.org.mt>\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nAction: subscribe\r\n")
    assert message_facts._single_part(raw.decode("ascii", "surrogateescape")) is not None
    assert_same(raw)


def upstream_digest(path: str) -> str:
    module, _, qualname = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()


def test_the_stdlib_code_is_what_the_single_part_parse_was_written_against() -> None:
    """A Python whose parser changed may answer otherwise: read the change, bring
    message_facts._single_part in line, then record the digests
    (``.venv/bin/python tests/test_message_facts.py`` prints them)."""
    changed = {p: upstream_digest(p) for p, d in UPSTREAM.items() if upstream_digest(p) != d}
    assert not changed, (f"Python {sys.version.split()[0]}'s email package differs from the "
                         f"{WRITTEN_AGAINST} code message_facts._single_part follows: {changed}")


if __name__ == "__main__":
    for p in UPSTREAM:
        print(f'    "{p}":\n        "{upstream_digest(p)}",')

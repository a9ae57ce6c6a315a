"""outbox.compose writes mail by hand (for speed): what any parser reads back is what was given."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import email.utils
import random
import time

import dkim
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from own_dkim import KEY

from tldops_mta.mail import dkim_keys, outbox
from tldops_mta.mail.tlp import Tlp, labelled

OWN_KEY = dkim_keys.read_key(KEY.private)
texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=400)


def parsed(raw: bytes) -> email.message.EmailMessage:
    m = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(m, email.message.EmailMessage)
    return m


@settings(max_examples=300, deadline=None)
@given(subject=texts, body=texts)
def test_subject_and_body_read_back_as_written(subject: str, body: str) -> None:
    raw = outbox.compose(from_addr="TLD-OPS <postmaster@tld-ops.localhost>", to="a@b.example",
                         subject=subject, body=body, domain="tld-ops.localhost", tlp=Tlp.AMBER)
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    assert b"\n" not in raw.replace(b"\r\n", b"")
    m = parsed(raw)
    # (labelled() is tested on its own: here, that any subject survives the encoding)
    assert str(m["Subject"]) == " ".join(labelled(subject, Tlp.AMBER).split())[:300]
    want = body.replace("\r\n", "\n").replace("\r", "\n")
    got = m.get_content().replace("\r\n", "\n")
    assert got.rstrip("\n") == want.rstrip("\n")


def test_headers_of_a_reply() -> None:
    raw = outbox.compose(from_addr="TLD-OPS <decide+tok@tld-ops.localhost>", to="v@x.example",
                         subject="[TLD-OPS] Request #1", body="approve?\n", domain="tld-ops.localhost",
                         tlp=Tlp.AMBER,
                         reply_to="decide+tok@tld-ops.localhost", in_reply_to="<m@x.example>",
                         auto="auto-replied")
    m = parsed(raw)
    assert (m["Auto-Submitted"], m["Reply-To"], m["In-Reply-To"], m["References"]) == (
        "auto-replied", "decide+tok@tld-ops.localhost", "<m@x.example>", "<m@x.example>")
    assert m["Message-ID"].endswith("@tld-ops.localhost>") and m["Date"]
    assert m["Subject"] == "[TLP:AMBER] [TLD-OPS] Request #1"
    assert m["Content-Transfer-Encoding"] == "7bit" and raw.endswith(b"approve?\r\n")


@pytest.mark.parametrize("field", ["to", "reply_to", "in_reply_to", "from_addr"])
def test_a_line_break_in_a_header_value_is_refused(field: str) -> None:
    kw = {"from_addr": "a@b.example", "to": "c@d.example", "reply_to": None, "in_reply_to": None,
          field: "x@y.example\r\nBcc: victim@example.org"}
    with pytest.raises(ValueError, match="would break the header"):
        outbox.compose(subject="s", body="b", domain="tld-ops.localhost", tlp=Tlp.RED,
                       **kw)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.text(".\r\n abc", max_size=60).map(str.encode))
def test_the_wire_form_is_what_aiosmtplib_would_send(raw: bytes) -> None:
    # outbox prepares DATA once per message instead of letting aiosmtplib redo it for each
    # delivery; the bytes on the wire must be the same as aiosmtplib's own.
    from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

    assert outbox.wire_form(raw) == PERIOD_REGEX.sub(b"..", normalize_message_line_endings(raw)) + b".\r\n"


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=253402300799), st.sampled_from([0.0, 0.25, 0.999]))
def test_the_date_field_is_what_email_utils_writes(seconds: int, fraction: float) -> None:
    # compose writes Date without a datetime; the text is format_datetime's of the same instant.
    when = dt.datetime.fromtimestamp(seconds, dt.UTC)
    assert outbox.date_field(seconds + fraction) == email.utils.format_datetime(when)


def test_the_message_id_is_what_email_utils_makes() -> None:
    for domain in ("tld-ops.localhost", "xn--90ae.example"):
        state = random.getstate()
        before = time.time()
        upstream = email.utils.make_msgid(domain=domain)
        after = time.time()
        ours = set()
        for t in (before, after):
            random.setstate(state)
            ours.add(outbox.message_id(t, domain))
        assert upstream in ours, (upstream, ours)


names = st.sampled_from(["Jane Doe", "Zoë Ålander", "Ελένη", "李雷", "O'Brien"])


@settings(max_examples=60, deadline=None)
@given(name=names, subject=texts, body=texts, line=st.integers(min_value=70, max_value=1200),
       label=st.sampled_from(list(Tlp)))
def test_signed_mail_parses_and_its_signature_verifies(name: str, subject: str, body: str, line: int,
                                                       label: Tlp) -> None:
    # What the outbox stores for an acknowledgement (and any mail): compose's octets, signed;
    # the email package reads back what was written, and dkimpy verifies the signature.
    body = f"{name}\n{'x' * line}\n{body}"
    raw = outbox.compose(from_addr="TLD-OPS <confirm+tok@tld-ops.localhost>", to="admin@nic.example",
                         subject=f"Request #7 for .mt from {name}: {subject}", body=body,
                         domain="tld-ops.localhost", tlp=label, reply_to="confirm+tok@tld-ops.localhost",
                         in_reply_to="<m@nic.example>", auto="auto-replied")
    signed = dkim_keys.sign(raw, domain="tld-ops.localhost", selector="daemon", key=OWN_KEY)
    m = parsed(signed)
    assert str(m["Subject"]).startswith(f"[{label.label}] Request #7 for .mt from {name}")
    assert m.get_content().replace("\r\n", "\n").rstrip("\n") == body.replace("\r\n", "\n").replace(
        "\r", "\n").rstrip("\n")
    record = OWN_KEY.record.encode()
    assert dkim.verify(signed, dnsfunc=lambda name, timeout=5: record)

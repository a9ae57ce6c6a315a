"""The roster policy's shortcuts answer exactly as the library code they stand in for.

roster_policy.plain_email answers for email_validator on plain ASCII addresses, and
roster_policy.normalize_digits_only and _maybe_strip_extension replace phonenumbers' own
process-wide. Each is proved equal to the original on generated input here; the upstream
code each relies on is held to the code that was read when it was written in
tests/test_patched_libraries.py, with every other library the daemon patches.
"""

from __future__ import annotations

import hashlib
import string
import sys

import email_validator
import phonenumbers
import pytest
from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from phonenumbers import phonenumberutil

from tldops_mta.policy import roster_policy
from tldops_mta.policy.roster_policy import plain_email

EXTN_PATTERN_SHA256 = "f60f9646f08a677a2c87cc41fe53846b897d517237945c5cafe4c1b3fd184f89"
"""phonenumbers' extension pattern, every alternative of which needs a character that
roster_policy._NO_EXTENSION does not delete."""

REPLACED = {"normalize_digits_only": roster_policy.normalize_digits_only,
            "_maybe_strip_extension": roster_policy._maybe_strip_extension}
ORIGINAL = {"normalize_digits_only": roster_policy._upstream_normalize_digits_only,
            "_maybe_strip_extension": roster_policy._upstream_maybe_strip_extension}


def extn_pattern_digest() -> str:
    pattern = phonenumberutil._EXTN_PATTERN
    return hashlib.sha256(f"{pattern.flags} {pattern.pattern}".encode()).hexdigest()


def test_the_replacements_are_in_place_and_what_they_rely_on_holds() -> None:
    for name, ours in REPLACED.items():
        assert getattr(phonenumberutil, name) is ours
    assert extn_pattern_digest() == EXTN_PATTERN_SHA256, (
        "phonenumbers' _EXTN_PATTERN changed: check that roster_policy._NO_EXTENSION still holds "
        f"no character an extension can be written with, then record {extn_pattern_digest()}")
    # plain_email answers for the defaults: STRICT would refuse local parts over 64 characters.
    assert email_validator.STRICT is False


# --- plain_email: where it answers, email_validator answers the same -----------------------------

_ATEXT = string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~"
atoms = st.text(alphabet=_ATEXT, min_size=1, max_size=12)
locals_ = st.one_of(
    st.lists(atoms, min_size=1, max_size=4).map(".".join),
    st.text(alphabet=_ATEXT + "..", min_size=1, max_size=20),
    st.sampled_from([*CASE_INSENSITIVE_MAILBOX_NAMES, "Info", "NOC", "PostMaster", "jane.doe.12345"]),
    st.text(alphabet="a.", min_size=60, max_size=250),
)
labels = st.one_of(
    st.text(alphabet=string.ascii_letters + string.digits, min_size=1, max_size=10),
    st.text(alphabet=string.ascii_letters + string.digits + "--", min_size=0, max_size=8),
    st.sampled_from(["xn--bcher-kva", "xn--p1ai", "ab--cd", "xn--", "a" * 63, "a" * 64, "1", "a-", "-a",
                     "a-b", "test", "local", "arpa"]),
)
suffixes = st.sampled_from(["", ".mt", ".mt", ".mt", ".org.mt", ".org.mt", ".Org.MT", ".com", ".xn--p1ai",
                            ".test", ".local", ".invalid", ".arpa", ".onion", ".localhost", ".Localhost",
                            ".example", ".123", ".", "x" * 200])
domains = st.builds(lambda ls, s: ".".join(ls) + s, st.lists(labels, min_size=1, max_size=4), suffixes)
plain = st.builds(lambda loc, d: f"{loc}@{d}", locals_, domains)
noise = st.sampled_from([" ", "\n", "@", "ö", "\u200b", '"', "<", ">", "\uff0e", "[1.2.3.4]", "\\", ",", "..",
                         "-", "."])
addresses = st.one_of(
    plain,
    st.builds(lambda a, n, at: a[:at] + n + a[at:], plain, noise, st.integers(0, 300)),
    st.text(max_size=40),
)


@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow])
@given(address=addresses)
@example(address="jane.doe.12345@nic.org.mt")
@example(address="NOC@NIC.org.mt")
@example(address="a@b.test")
@example(address="a@xn--bcher-kva.se")
def test_plain_email_answers_as_email_validator(address: str) -> None:
    fast = plain_email(address)
    try:
        valid = validate_email(address, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError:
        assert fast is None, f"{address!r}: email_validator refuses it, plain_email answers {fast}"
        return
    assert fast is None or fast == (valid.local_part, valid.normalized), address


@pytest.mark.parametrize(("address", "answer"), [
    ("jane.doe.12345@nic.org.mt", ("jane.doe.12345", "jane.doe.12345@nic.org.mt")),
    ("Jane.Doe@NIC.org.MT", ("Jane.Doe", "Jane.Doe@nic.org.mt")),
    ("NOC@nic.org.mt", ("noc", "noc@nic.org.mt")),
    ("security+mt@nic.org.mt", ("security+mt", "security+mt@nic.org.mt")),
])
def test_plain_email_answers_for_the_common_shape(address: str, answer: tuple[str, str]) -> None:
    assert plain_email(address) == answer


@pytest.mark.parametrize("address", ["jöran@bücher.se", "ann@xn--bcher-kva.se", "a@b.test", '"a b"@c.mt',
                                     "a@[192.0.2.1]", "a@nic.mt.local", "ab@cd--ef.mt"])
def test_plain_email_leaves_the_rest_to_email_validator(address: str) -> None:
    assert plain_email(address) is None


# --- phonenumbers' replaced functions -----------------------------------------------------------

PHONE_CHARS = ("+0123456789 ()-./x#;,~\u0663\u06f5\uff10\u00b2\uff58\uff03\u00a0\t"
               "abcdefghijklmnopqrstuvwxyzEXT\u0434\u043e\u0431")  # Arabic-Indic, full-width, Cyrillic
phone_texts = st.one_of(st.text(), st.text(alphabet=PHONE_CHARS, max_size=30),
                        st.text(alphabet="+0123456789 ()-./", max_size=25))


@settings(max_examples=1000)
@given(number=phone_texts, keep=st.booleans())
def test_normalize_digits_only_answers_as_phonenumbers(number: str, keep: bool) -> None:
    original = ORIGINAL["normalize_digits_only"]
    assert roster_policy.normalize_digits_only(number, keep) == original(number, keep)


@settings(max_examples=1000)
@given(number=st.one_of(phone_texts, st.builds(lambda a, b: a + b, phone_texts,
                                               st.sampled_from([" ext 12", " x 3", ";ext=4", "#", " 12#"]))))
def test_maybe_strip_extension_answers_as_phonenumbers(number: str) -> None:
    assert roster_policy._maybe_strip_extension(number) == ORIGINAL["_maybe_strip_extension"](number)


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(number=phone_texts, region=st.sampled_from([None, "MT", "US", "GB", "DE", "RU", "IT"]))
@example(number="+356 2133 1234", region="MT")
@example(number="2133 1234 ext. 5", region="MT")
def test_phone_numbers_read_as_before(number: str, region: str | None) -> None:
    """parse, validity and E.164 with the replacements equal the same with phonenumbers' own."""
    def answer() -> tuple[str, ...]:
        try:
            n = phonenumbers.parse(number, region)
        except phonenumbers.NumberParseException as e:
            return ("error", str(e.error_type), str(e))
        return (str(n), str(phonenumbers.is_valid_number(n)),
                phonenumbers.format_number(n, phonenumbers.PhoneNumberFormat.E164),
                str(roster_policy.e164(number, region)))

    fast = answer()
    for name, original in ORIGINAL.items():
        setattr(phonenumberutil, name, original)
    try:
        slow = answer()
    finally:
        for name, ours in REPLACED.items():
            setattr(phonenumberutil, name, ours)
    assert fast == slow


if __name__ == "__main__":
    print(f"_EXTN_PATTERN {extn_pattern_digest()}")
    sys.exit(0)

"""dkim_verify's copies of dkimpy's hot functions answer as dkimpy's own, on generated input.

Each replacement (the header split, the tag parser, the signature checks, the selection and
canonicalisation of the signed fields, the RSA encoding check) is compared with the upstream
function it stands in for: the same result, or the same exception with the same text. The last
test compares the whole verification with dkimpy's over signed messages mangled in the ways an
attacker or a relay would (tests/test_patched_libraries.py holds the upstream code to what was
copied).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from typing import Any

import dkim
import dkim.crypto
import dkim.util
import pytest
from dkim.canonicalization import CanonicalizationPolicy, Relaxed
from dkim_sign import ed25519_key, message, rsa_key, sign
from hypothesis import given, settings
from hypothesis import strategies as st

from tldops_mta.auth import dkim_verify


def outcome(fn: Callable[..., Any], *args: Any) -> tuple[Any, ...]:
    """What ``fn`` answers: its result, or the type and text of what it raises."""
    try:
        return ("returned", fn(*args))
    except Exception as e:
        return ("raised", type(e), str(e))


# -- the header split ------------------------------------------------------------------------

_NAMES = st.sampled_from([b"From", b"To", b"Subject", b"DKIM-Signature", b"X-a", b"::", b":x",
                          b"From ", b"a b", b"\xff", b"", b"d\tx"])
_TEXT = st.lists(st.sampled_from([b"a", b" ", b"\t", b":", b"b=", b"\r", b"\xff", b"\x0b", b"  ", b"x"]),
                 max_size=8).map(b"".join)
_FIELD = st.tuples(_NAMES, _TEXT, st.lists(st.tuples(st.sampled_from([b" ", b"\t", b"  "]), _TEXT),
                                            max_size=2)).map(
    lambda f: [f[0] + b":" + f[1]] + [ws + rest for ws, rest in f[2]])
_JUNK_LINE = st.sampled_from([b"From someone Mon Jan 1", b"no colon here", b" continued", b"\tx", b""])
_LINES = st.lists(st.one_of(_FIELD, _JUNK_LINE.map(lambda line: [line])), max_size=10).map(
    lambda fields: [line for f in fields for line in f])
_ENDS = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r"])


@st.composite
def _messages(draw: st.DrawFn) -> bytes:
    lines = draw(_LINES)
    raw = b"".join(line + draw(_ENDS) for line in lines)
    if draw(st.booleans()):
        raw += draw(st.sampled_from([b"\r\n", b"\n"])) + b"".join(
            draw(st.lists(st.sampled_from([b"body", b"\r\n", b"\n", b"\r", b" ", b"\r\n\r\n"]), max_size=8)))
    elif draw(st.booleans()) and raw.endswith(b"\n"):
        raw = raw.rstrip(b"\r\n")
    return raw


@settings(max_examples=3000, deadline=None)
@given(st.one_of(_messages(), st.binary(max_size=80)))
def test_the_header_split_is_dkimpys(raw: bytes) -> None:
    assert outcome(dkim_verify.rfc822_parse, raw) == outcome(dkim.rfc822_parse, raw)
    assert outcome(dkim_verify._rfc822_parse_lines, raw) == outcome(dkim.rfc822_parse, raw)


def test_the_usual_header_takes_the_regex_path() -> None:
    """A signed message with CRLF line ends, as mail arrives, is not read line by line."""
    raw = sign(message(), "nic.example", "sel", rsa_key(2048))
    head = raw[:raw.index(b"\r\n\r\n") + 2]
    assert not dkim_verify._FIELDS.findall(head)[-1][2]  # no rest: all fields
    assert dkim_verify.rfc822_parse(raw) == dkim.rfc822_parse(raw)


def test_a_header_of_many_colons_that_is_not_all_fields_costs_one_pass() -> None:
    """The regex path does not backtrack across fields: a bad last line is not retried
    against every colon of every field above it (which would never end)."""
    raw = b"".join(b"X:" + b":" * 40 + b"\r\n" for _ in range(200)) + b"bad line\r\n\r\nbody"
    started = time.monotonic()
    with pytest.raises(dkim.MessageFormatError):
        dkim_verify.rfc822_parse(raw)
    assert time.monotonic() - started < 1.0


# -- the tags of a signature -----------------------------------------------------------------

_TAG_TEXT = st.lists(st.sampled_from([b"a", b"b", b"bh", b"h", b"1", b"_", b"-", b"=", b";", b" ", b"\t",
                                      b"\r\n ", b"\xff", b"=="]), max_size=20).map(b"".join)


@settings(max_examples=2000, deadline=None)
@given(_TAG_TEXT)
def test_the_tag_parser_is_dkimpys(value: bytes) -> None:
    assert outcome(dkim_verify.parse_tag_value, value) == outcome(dkim.util.parse_tag_value, value)


_NOW = int(time.time())
# Far enough (>= 1000 s) from dkimpy's 36000 s of slack that the clock moving between the two
# calls cannot change an answer.
_TIMES = st.sampled_from([_NOW + d for d in (-10**6, -40000, -1000, 0, 1000, 40000, 10**6)]).map(
    lambda t: str(t).encode())
_VALUES: dict[bytes, st.SearchStrategy[bytes]] = {
    b"v": st.sampled_from([b"1", b"2", b"", b"1 "]),
    b"a": st.sampled_from([b"rsa-sha256", b"rsa-sha1", b"ed25519-sha256", b"rsa-md5", b""]),
    b"b": st.sampled_from([b"AAAA", b"AAA", b"AA==", b"A A\r\n A=", b"A=A=", b"", b"====", b"AB*=",
                           b" AAAA"]),
    b"bh": st.sampled_from([b"AAAA", b"AAA", b"AA==", b"A A A=", b"", b"*", b"AAAAA"]),
    b"d": st.sampled_from([b"nic.example", b"example", b"", b"a;b", b"x@y", b"\xc3\xa9.example",
                           b"\xff(", b"NIC.example"]),
    b"h": st.sampled_from([b"from", b"from:to"]),
    b"s": st.sampled_from([b"sel"]),
    b"i": st.sampled_from([b"@nic.example", b"a@sub.nic.example", b"nic.example", b"", b"x@other",
                           b"@NIC.EXAMPLE", b".nic.example", b"xnic.example"]),
    b"l": st.sampled_from([b"0", b"12", b"x", b"", b"1" * 80, b"12\n"]),
    b"q": st.sampled_from([b"dns/txt", b"dns", b""]),
    b"t": st.one_of(_TIMES, st.sampled_from([b"x", b"", b"1.5", b"12\n"])),
    b"x": st.one_of(_TIMES, st.sampled_from([b"x", b"", b"0"])),
    b"cv": st.sampled_from([b"pass", b"fail", b"none", b"other"]),
}


@settings(max_examples=3000, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(_VALUES)), st.just(b""), min_size=4).flatmap(
    lambda keys: st.fixed_dictionaries({k: _VALUES[k] for k in keys})))
def test_the_signature_checks_are_dkimpys(tags: dict[bytes, bytes]) -> None:
    assert (outcome(dkim_verify.validate_signature_fields, tags)
            == outcome(dkim.validate_signature_fields, tags))


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.sampled_from([b"from", b"to", b" from ", b"Subject", b"date\t", b"", b"FROM", b"\r\n x"]),
                max_size=6).map(b":".join))
def test_h_is_split_as_dkimpy_splits_it(h: bytes) -> None:
    """h= as the tag parser hands it over (stripped): the names dkimpy's regex split gives."""
    import re

    h = dkim_verify.parse_tag_value(b"h=" + h)[b"h"]
    assert dkim_verify.signed_fields(h) == [x.lower() for x in re.split(rb"\s*:\s*", h)]


# -- the signed fields, selected and canonicalised -------------------------------------------

_HEADER_NAMES = st.sampled_from([b"From", b"from", b"FROM", b"To", b"Subject", b"Date", b"X-Y"])


@settings(max_examples=2000, deadline=None)
@given(headers=st.lists(st.tuples(_HEADER_NAMES, st.just(b"v")).map(list), max_size=8),
       include=st.lists(st.sampled_from([b"from", b"to", b"subject", b"date", b"cc", b"x-y"]), max_size=10))
def test_field_selection_is_dkimpys(headers: list[list[bytes]], include: list[bytes]) -> None:
    headers = [[name, value + str(i).encode()] for i, (name, value) in enumerate(headers)]
    assert dkim_verify.select_headers(headers, include) == dkim.select_headers(headers, include)


_VALUE_TEXT = st.lists(st.sampled_from([b"a", b" ", b"\t", b"\r\n", b"\n", b"\r", b"\r\r\n", b"\x0b", b"\x0c",
                                        b"  ", b"\t ", b"\xff", b"b=AA AA"]), max_size=12).map(b"".join)


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([b"From", b"X-Y", b"a\t", b"B "]), _VALUE_TEXT), max_size=4))
def test_relaxed_canonicalisation_is_dkimpys(headers: list[tuple[bytes, bytes]]) -> None:
    assert dkim_verify.relaxed_headers(headers) == Relaxed.canonicalize_headers(headers)


@settings(max_examples=1500, deadline=None)
@given(raw=_messages(),
       include=st.lists(st.sampled_from([b"from", b"to", b"subject", b"x-a", b"dkim-signature", b"cc"]),
                        max_size=8),
       sig_value=_VALUE_TEXT, c=st.sampled_from([b"simple", b"relaxed"]))
def test_the_header_hash_is_dkimpys(raw: bytes, include: list[bytes], sig_value: bytes, c: bytes) -> None:
    """Canonicalising only the selected fields hashes the same octets as canonicalising all of
    them and then selecting, for any header rfc822_parse reads."""
    try:
        headers, _body = dkim.rfc822_parse(raw)
    except Exception:
        return
    policy = CanonicalizationPolicy.from_c_value(c + b"/simple")
    sig_header = (b"DKIM-Signature", b" a=1; b=" + sig_value + b"\r\n")
    theirs, ours = hashlib.sha256(), hashlib.sha256()
    selected_theirs = dkim.hash_headers(theirs, policy, policy.canonicalize_headers(headers), list(include),
                                        sig_header, {})
    selected_ours = dkim_verify.hash_headers(ours, policy, headers, list(include), sig_header)
    assert (selected_ours, ours.digest()) == (selected_theirs, theirs.digest())


# -- RSA: the encoding's one error -----------------------------------------------------------


@pytest.mark.parametrize("name", ["sha256", "sha1"])
def test_digest_too_large_exactly_where_dkimpys_encoding_says(name: str) -> None:
    """The OpenSSL path skips dkimpy's EMSA encoding, but raises DigestTooLargeError for the
    same modulus lengths (and keys OpenSSL loads, so that path is the one taken)."""
    for bits in range(256, 520, 4):
        n = secrets.randbits(bits) | (1 << (bits - 1)) | 1
        key = {"modulus": n, "publicExponent": 65537}
        assert dkim_verify._openssl_key(n, 65537) is not None
        signature = secrets.token_bytes((bits + 7) // 8)
        ours = outcome(dkim_verify.fast_rsassa_pkcs1_v1_5_verify, hashlib.new(name, b"x"), signature, key)
        theirs = outcome(dkim.crypto.RSASSA_PKCS1_v1_5_verify, hashlib.new(name, b"x"), signature, key)
        assert ours[0] == theirs[0] and ours[1:2] == theirs[1:2], (bits, ours, theirs)


def test_the_digest_info_lengths_are_those_dkimpy_encodes() -> None:
    for name, length in dkim_verify._DIGEST_INFO_LENGTHS.items():
        encoded = dkim.crypto.EMSA_PKCS1_v1_5_encode(hashlib.new(name), 256)
        assert len(encoded) - encoded.index(b"\x00", 2) - 1 == length


# -- the whole verification ------------------------------------------------------------------

_KEYS = {"rsa": rsa_key(2048), "rsa1024": rsa_key(1024), "ed": ed25519_key()}


def _signed(kind: str, c: tuple[str, str], length: bool) -> bytes:
    return sign(message(body="Please add Jane Doe.\r\n\r\nThanks\r\n"), "nic.example", "sel", _KEYS[kind],
                canonicalize=c, length=length)


_BASES = [_signed(kind, c, length) for kind in _KEYS
          for c in (("relaxed", "simple"), ("simple", "simple"), ("relaxed", "relaxed"))
          for length in (False, True)]


def _mutate(raw: bytes, how: str, at: int, text: bytes) -> bytes:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    i = at % len(lines)
    if how == "swap":
        j = (at // 7) % len(lines)
        lines[i], lines[j] = lines[j], lines[i]
    elif how == "fold" and b" " in lines[i]:
        k = lines[i].index(b" ")
        lines[i] = lines[i][:k] + b"\r\n\t" + lines[i][k + 1:]
    elif how == "blanks":
        lines[i] = lines[i].replace(b" ", b"  \t", 1) + b" "
    elif how == "from":
        lines.insert(i, b"From: attacker@evil.example")
    elif how == "body":
        body = body + text
    elif how == "bad b":
        lines = [line if b"bh=" in line else line.replace(b"b=", b"b=" + (text or b"A"), 1)
                 for line in lines]
    elif how == "bad bh":
        lines = [line.replace(b"bh=", b"bh=" + (text or b"A"), 1) for line in lines]
    elif how == "lf":
        return (b"\r\n".join(lines) + b"\r\n\r\n" + body).replace(b"\r\n", b"\n")
    elif how == "bytes":
        k = at % len(raw)
        return raw[:k] + text + raw[k + 1:]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@settings(max_examples=400, deadline=None)
@given(base=st.sampled_from(range(len(_BASES))),
       edits=st.lists(st.tuples(st.sampled_from(["none", "swap", "fold", "blanks", "from", "body", "bad b",
                                                 "bad bh", "lf", "bytes"]),
                                st.integers(0, 10**6), st.binary(max_size=3)), max_size=3))
def test_verification_answers_as_dkimpys(base: int, edits: list[tuple[str, int, bytes]]) -> None:
    raw = _BASES[base]
    for how, at, text in edits:
        raw = _mutate(raw, how, at, text)
    kind = list(_KEYS)[base // 6]
    record = _KEYS[kind].record_text().encode()

    def dnsfunc(_name: bytes, timeout: int = 5) -> bytes:
        return record

    try:
        theirs = dkim.DKIM(raw, minkey=0)
    except Exception as e:
        assert outcome(dkim_verify._Verifier, raw) == ("raised", type(e), str(e))
        return
    ours = dkim_verify._Verifier(raw, minkey=0)
    assert ours.headers == theirs.headers and ours.body == theirs.body
    fields = [(k, v) for k, v in ours.headers if k.lower() == b"dkim-signature"]
    for idx, field in enumerate(fields):
        expected = outcome(theirs.verify, idx, dnsfunc)
        try:
            tags = dkim_verify.parse_tag_value(field[1])
        except Exception:
            assert expected[:2] == ("raised", dkim.MessageFormatError)
            continue
        assert outcome(ours.verify_parsed, tags, field, dnsfunc) == expected
    if not edits:
        assert fields and ours.verify_parsed(dkim_verify.parse_tag_value(fields[0][1]), fields[0], dnsfunc)


def test_a_signature_unchanged_verifies_both_ways() -> None:
    """The differential test above is not comparing two failures."""
    for i, raw in enumerate(_BASES):
        record = list(_KEYS.values())[i // 6].record_text().encode()
        assert dkim.DKIM(raw, minkey=0).verify(dnsfunc=lambda _n, timeout=5, r=record: r)
        v = dkim_verify._Verifier(raw, minkey=0)
        field = next((k, x) for k, x in v.headers if k.lower() == b"dkim-signature")
        assert v.verify_parsed(dkim_verify.parse_tag_value(field[1]), field,
                               lambda _n, timeout=5, r=record: r)

"""Strict DKIM verification: which signatures a request may rely on, and why the others not.

dkimpy does the cryptography. What it lacks for an authentication that decides roster changes is
added here (the rules and the attacks they answer: docs/security.md):

- every signature is checked, not only the first: an attacker can put a broken one on top;
- keys are fetched first, concurrently, with dnspython's async resolver, and dkimpy only sees the
  fetched record. A DNS failure thus stays *temporary* (the request waits and is retried) and is
  never mistaken for a bad signature, which is *permanent*;
- a signature verified by dkimpy counts only under our policy: rsa-sha256 or ed25519-sha256
  (RFC 8301, RFC 8463), an RSA key of at least ``min_rsa_bits``, ``from`` in h=, no l= (an
  attacker could append content), no x= in the past, ``date`` and ``message-id`` in h= and
  in the message (else a replayed copy passes for new), a key not in testing mode (t=y);
- dkimpy is synchronous and CPU-bound, so parsing and verifying run in a worker thread;
- parsed keys are kept per (name, record), and ``fast_rsassa_pkcs1_v1_5_verify`` does dkimpy's
  RSA verification with OpenSSL (through ``cryptography``): the same check and answers
  (tests/test_dkim_verify.py compares them with dkimpy's own), at a fraction of the cost of
  dkimpy's pure-Python arithmetic (docs/architecture.md);
- dkimpy's per-message work (the header split, the tags, the checks of a signature, the
  selection and canonicalisation of the signed fields) is done by copies of its code that
  answer alike at half the cost (tests/test_dkim_fast_paths.py compares them).

Nothing in here raises on a hostile message: whatever a signature holds ends in a result.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import functools
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import dkim  # type: ignore[import-untyped]
import dkim.crypto  # type: ignore[import-untyped]
import dkim.util  # type: ignore[import-untyped]
import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdtypes.ANY.TXT
import dns.resolver
import nacl.exceptions
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim.canonicalization import (  # type: ignore[import-untyped]
    CanonicalizationPolicy,
    InvalidCanonicalizationPolicyError,
    Relaxed,
)
from publicsuffixlist import PublicSuffixList

from tldops_mta import metrics
from tldops_mta.settings.sections import DnsConfig

T = TypeVar("T")

Result = Literal["pass", "fail", "neutral", "temperror", "permerror"]

ACCEPTED_ALGORITHMS = frozenset({"rsa-sha256", "ed25519-sha256"})
KNOWN_ALGORITHMS = frozenset({"rsa-sha256", "rsa-sha1", "ed25519-sha256"})
RSA_FLOOR = 1024
"""No configuration can make a shorter RSA key count (RFC 8301 section 3.2)."""
MAX_SIGNATURES = 10
"""Signatures checked per message; each costs a DNS lookup and an RSA operation."""

_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_NAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_TOKEN_RE = re.compile(r"[A-Za-z0-9._-]{1,253}")
_RFC2045_TOKEN_RE = re.compile(r"[^\x00-\x20\x7f()<>@,;:\\\"/\[\]?=]+")
_DKIM1_RE = re.compile(rb"\s*v\s*=\s*DKIM1\s*(;|$)")

# Loaded once at import: reading the bundled list takes tens of milliseconds, which must not
# happen later on the event loop.
_PSL = PublicSuffixList()


# -- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignatureResult:
    """The outcome of one DKIM-Signature header field, in the order of the message (0 = top).

    ``result`` is the RFC 8601 outcome of the check itself: "pass" means dkimpy verified the
    signature, whether or not our policy accepts it; ``counts`` says whether it does, and
    ``reason`` why not (or why it failed). "temperror" is the only result that may change when
    the same message is checked again later. "neutral" marks a signature the verifier could not
    process for a reason not foreseen here.
    """

    index: int
    domain: str
    selector: str
    algorithm: str
    key_bits: int | None
    result: Result
    reason: str
    counts: bool


@dataclass(frozen=True)
class DkimReport:
    signatures: tuple[SignatureResult, ...] = ()

    def counting(self, from_domain: str, alignment: str) -> list[SignatureResult]:
        """Signatures that count and whose d= is aligned with the From domain."""
        return [s for s in self.signatures
                if s.counts and aligned(s.domain, from_domain, alignment)]

    def key_failures(self) -> str:
        """The key lookups that failed for now, and how (for the reason of a wait)."""
        return "; ".join(f"DKIM key {s.selector}._domainkey.{s.domain}: {s.reason}"
                         for s in self.signatures if s.result == "temperror") or "-"

    def temporary(self, from_domain: str, alignment: str) -> bool:
        """True when no aligned signature counts yet but one might once DNS answers.

        The caller then retries later instead of refusing: a refusal sent because a name
        server was down would turn a legitimate request away.
        """
        if self.counting(from_domain, alignment):
            return False
        return any(s.result == "temperror" and aligned(s.domain, from_domain, alignment)
                   for s in self.signatures)


# -- alignment -------------------------------------------------------------------------------


def _normalise_domain(domain: str) -> str:
    d = domain.strip().rstrip(".").lower()
    if d.isascii():
        return d
    try:
        return d.encode("idna").decode("ascii")
    except UnicodeError:
        return d


def aligned(d: str, from_domain: str, mode: str) -> bool:
    """Whether a signature by ``d`` speaks for mail From ``from_domain`` (DMARC's identifier
    alignment, RFC 7489 3.1.1).

    strict: the same name. relaxed: the same organisational domain, from the public suffix
    list bundled with ``publicsuffixlist`` (no network). A name that is itself a public suffix
    has no organisational domain, so it aligns only with itself.
    """
    if mode not in ("strict", "relaxed"):
        raise ValueError(f"alignment must be 'strict' or 'relaxed', not {mode!r}")
    a, b = _normalise_domain(d), _normalise_domain(from_domain)
    if not a or not b:
        return False
    if a == b:
        return True
    if mode == "strict":
        return False
    org_a, org_b = _PSL.privatesuffix(a), _PSL.privatesuffix(b)
    return org_a is not None and org_a == org_b


def organisational_domain(domain: str) -> str:
    """The registrable domain (public suffix list), as DMARC and relaxed alignment use it."""
    return _PSL.privatesuffix(domain.lower()) or domain.lower()


# -- key lookup ------------------------------------------------------------------------------


class KeyTemporaryError(Exception):
    """The key could not be looked up now (timeout, SERVFAIL, no server): ask again later."""


class KeyRecordError(Exception):
    """What DNS holds at the key's name cannot be a key record (e.g. several DKIM records)."""


class KeyResolver:
    """Fetches DKIM key records over DNS without blocking the event loop.

    With ``nameservers`` it asks exactly those (at ``port``); without, those of
    /etc/resolv.conf. ``timeout`` bounds a whole lookup, retries included.
    """

    KEEP = 4096
    """Key records kept between lookups (all of them are dropped when full)."""

    def __init__(self, nameservers: Sequence[str] = (), *, port: int = 53,
                 timeout: float = 5.0) -> None:
        self.timeout = timeout
        if nameservers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = list(nameservers)
            resolver.port = port
        else:
            try:
                resolver = dns.asyncresolver.Resolver()
            except dns.resolver.NoResolverConfiguration:
                # No resolv.conf: every lookup is a temporary failure, not a crash at start.
                resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.timeout = timeout
        resolver.lifetime = timeout
        # Keys are looked up once per TTL, not once per message: a burst of requests from
        # one domain costs one query, and the DNS server's TTL still governs key rotation.
        # The records themselves are also kept here until the same expiry, so that a
        # request whose key is known does not go through the resolver's machinery at all.
        resolver.cache = dns.resolver.LRUCache(4096)
        self._resolver = resolver
        self._records: dict[str, tuple[float, bytes]] = {}

    @classmethod
    def from_config(cls, dns_cfg: DnsConfig) -> KeyResolver:
        """A resolver for the [dns] section in force."""
        return cls(dns_cfg.nameservers, port=dns_cfg.port, timeout=dns_cfg.timeout)

    async def fetch(self, name: str) -> bytes | None:
        """The key record at ``name`` (its strings joined), or None if there is none.

        None is permanent (NXDOMAIN, no TXT). ``KeyTemporaryError`` may pass with time.
        ``KeyRecordError``: several TXT records and not exactly one starts ``v=DKIM1``.
        """
        known = self._records.get(name)
        if known is not None and known[0] > time.time():
            return known[1]
        if not self._resolver.nameservers:
            raise KeyTemporaryError("no DNS server configured")
        try:
            qname = dns.name.from_text(name)
        except dns.exception.DNSException as e:
            raise KeyRecordError(f"{name!r} is not a valid DNS name") from e
        m = metrics.worker_metrics()
        started = time.monotonic()
        try:
            # dnspython's lifetime can overshoot by its retry back-off; the configured
            # timeout is a promise to the operator, so it is also enforced here.
            async with asyncio.timeout(self.timeout):
                answer = await self._resolver.resolve(qname, "TXT", search=False,
                                                      lifetime=self.timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.YXDOMAIN):
            m.lookup_seconds.labels("dns").observe(time.monotonic() - started)
            return None
        except (TimeoutError, dns.exception.Timeout) as e:
            m.lookup_errors.labels("dns").inc()
            raise KeyTemporaryError(f"no answer within {self.timeout:g} s") from e
        except dns.resolver.NoNameservers as e:
            m.lookup_errors.labels("dns").inc()
            raise KeyTemporaryError(_no_nameservers_reason(e)) from e
        except (dns.exception.DNSException, OSError) as e:
            m.lookup_errors.labels("dns").inc()
            raise KeyTemporaryError(f"{type(e).__name__}: {e}") from e
        m.lookup_seconds.labels("dns").observe(time.monotonic() - started)
        records = [b"".join(r.strings) for r in answer
                   if isinstance(r, dns.rdtypes.ANY.TXT.TXT)]
        if not records:
            return None
        dkim1 = [r for r in records if _DKIM1_RE.match(r)]
        if len(records) == 1 or len(dkim1) == 1:
            record = records[0] if len(records) == 1 else dkim1[0]
            if len(self._records) >= self.KEEP:
                self._records.clear()
            self._records[name] = (float(answer.expiration), record)
            return record
        raise KeyRecordError(f"{len(records)} TXT records at {name}, {len(dkim1)} of them "
                             "v=DKIM1: the key is ambiguous")


def _no_nameservers_reason(e: dns.resolver.NoNameservers) -> str:
    errors = e.kwargs.get("errors") or []
    said = sorted({str(err[3]) for err in errors if len(err) > 3 and err[3]})
    return "no server answered" + (f" ({'; '.join(said)})" if said else "")


# -- dkimpy, with its key parsing cached and its RSA sped up ---------------------------------


@functools.lru_cache(maxsize=1024)
def evaluated_key(name: str | bytes, record: bytes) -> tuple[Any, Any, Any, Any]:
    """dkimpy's ``evaluate_pk`` of a key record, once per (name, record): the record is what
    DNS answered, so a rotated key is a new entry. Errors are not kept (raised each time)."""
    return dkim.evaluate_pk(name, record)  # type: ignore[no-any-return]


class _Verifier(dkim.DKIM):  # type: ignore[misc]
    """dkimpy's DKIM, with its hot paths done again at a fraction of the cost, answering alike.

    The key is loaded through ``evaluated_key``; the header is split by ``rfc822_parse``; only
    the fields h= selects are canonicalised (the same octets are hashed); a signature's tags
    come parsed (``verify_parsed``). Each replacement is a copy of dkimpy 1.1.8's code, held to
    it by tests/test_patched_libraries.py and compared with it on generated input by
    tests/test_dkim_fast_paths.py.
    """

    headers: list[list[bytes]]
    body: bytes | str
    domain: bytes | None
    selector: bytes | str
    signature_fields: dict[bytes, bytes]
    signed_headers: list[Any]
    include_headers: tuple[bytes, ...]

    def set_message(self, message: bytes | None) -> None:
        """dkimpy 1.1.8's ``DomainSigner.set_message``, with ``rfc822_parse`` below."""
        if message:
            self.headers, self.body = rfc822_parse(message)
        else:
            self.headers, self.body = [], ""
        self.domain = None
        self.selector = "default"
        self.signature_fields = {}
        self.signed_headers = []
        self.keysize = 0

    def verify_parsed(self, sig: dict[bytes, bytes], sig_header: tuple[bytes, bytes],
                      dnsfunc: Callable[..., bytes]) -> bool:
        """dkimpy 1.1.8's ``DKIM.verify`` and ``verify_headerprep`` of the signature
        ``sig_header``, whose tags ``sig`` holds as ``parse_tag_value`` read them: not parsed
        a second time."""
        self.signature_fields = sig
        validate_signature_fields(sig)
        self.domain = sig[b"d"]
        self.selector = sig[b"s"]
        include_headers = signed_fields(sig[b"h"])
        self.include_headers = tuple(include_headers)
        return self.verify_sig(sig, include_headers, sig_header, dnsfunc)

    def verify_sig(self, sig: dict[bytes, bytes], include_headers: list[bytes],
                   sig_header: tuple[bytes, bytes], dnsfunc: Callable[..., bytes]) -> bool:
        """A copy of dkimpy 1.1.8's ``DomainSigner.verify_sig`` (with ``load_pk_from_dns``
        inlined), the key parsed by ``evaluated_key``; no DnsTimeoutError, since ``dnsfunc``
        only hands over a fetched record. tests/test_patched_libraries.py fails when the
        upstream code differs."""
        name = sig[b"s"] + b"._domainkey." + sig[b"d"] + b"."
        try:
            self.pk, self.keysize, self.ktag, self.seqtlsrpt = evaluated_key(
                name, dnsfunc(name, timeout=self.timeout))
        except (dkim.KeyFormatError, binascii.Error):
            return False
        return bool(self.verify_sig_process(sig, include_headers, sig_header, dnsfunc))

    def verify_sig_process(self, sig: dict[bytes, bytes], include_headers: list[bytes],
                           sig_header: tuple[bytes, bytes], dnsfunc: Callable[..., bytes]) -> bool:
        """dkimpy 1.1.8's ``DomainSigner.verify_sig_process`` without its debug logging, the
        header fields hashed by ``hash_headers`` below and RSA by
        ``fast_rsassa_pkcs1_v1_5_verify``."""
        if self.tlsrpt == "strict" and not self.seqtlsrpt:
            raise dkim.ValidationError("Message is tlsrpt and Service Type is not tlsrpt")
        if not self.tlsrpt and self.seqtlsrpt:
            raise dkim.ValidationError("Message is not tlsrpt and Service Type is tlsrpt")
        try:
            canon_policy = CanonicalizationPolicy.from_c_value(sig.get(b"c", b"simple/simple"))
        except InvalidCanonicalizationPolicyError as e:
            raise dkim.MessageFormatError("invalid c= value: %r" % e.args[0]) from e  # noqa: UP031
        hasher = dkim.crypto.HASH_ALGORITHMS[sig[b"a"]]
        if b"bh" in sig:
            body = canon_policy.canonicalize_body(self.body)
            if b"l" in sig and not self.tlsrpt:
                body = body[:int(sig[b"l"])]
            bodyhash = hasher(body).digest()
            try:
                bh = base64.b64decode(b"".join(sig[b"bh"].split()))
            except TypeError as e:
                raise dkim.MessageFormatError(str(e)) from e
            if bodyhash != bh:
                raise dkim.ValidationError(
                    "body hash mismatch (got %r, expected %r)"  # noqa: UP031
                    % (base64.b64encode(bodyhash), sig[b"bh"]))
        if b"from" in include_headers:
            include_headers.append(b"from")
        h = hasher()
        self.signed_headers = hash_headers(h, canon_policy, self.headers, include_headers,
                                           sig_header)
        signature = base64.b64decode(b"".join(sig[b"b"].split()))
        if self.ktag == b"rsa":
            try:
                res = fast_rsassa_pkcs1_v1_5_verify(h, signature, self.pk)
                if res and self.keysize < self.minkey:
                    raise dkim.KeyFormatError("public key too small: %d" % self.keysize)  # noqa: UP031
                return res
            except (TypeError, dkim.crypto.DigestTooLargeError) as e:
                raise dkim.KeyFormatError("digest too large for modulus: %s" % e) from e  # noqa: UP031
        elif self.ktag == b"ed25519":
            try:
                self.pk.verify(h.digest(), signature)
                return True
            except nacl.exceptions.BadSignatureError:
                return False
        else:
            raise dkim.UnknownKeyTypeError(self.ktag)


def signed_fields(h: bytes) -> list[bytes]:
    """The names in an h= value as dkimpy's ``verify_headerprep`` reads them
    (``re.split(rb"\\s*:\\s*", h)``, lowered) from a value ``parse_tag_value`` stripped."""
    return [x.strip() for x in h.lower().split(b":")]


_LINE_END = re.compile(rb"\r?\n")
_FIELD_NAME = re.compile(rb"([\x21-\x7e]+?):")
_FIELDS = re.compile(rb"([\x21-\x7e]+?):([^\n]*\n(?:[ \t][^\n]*\n)*)|([\s\S]+)")
"""A field and its continuation lines as ``rfc822_parse`` reads them, CRLF-ended; or, where
none begins, the rest of the header (so findall never slides: one pass, whatever the text)."""


def rfc822_parse(message: bytes) -> tuple[list[list[bytes]], bytes]:
    """dkimpy 1.1.8's ``rfc822_parse``: the same fields, body and errors. A message whose lines
    all end in CRLF and whose header is only fields (the usual case) is read by one regex pass
    over the header instead of a loop over its lines; any other goes the upstream way."""
    if message.count(b"\n") == message.count(b"\r\n"):
        if message[:2] == b"\r\n":
            head, body = b"", message[2:]
        else:
            end = message.find(b"\r\n\r\n")
            head, body = (message, b"") if end < 0 else (message[:end + 2], message[end + 4:])
        found = _FIELDS.findall(head) if head[-2:] in (b"\r\n", b"") else [(b"", b"", head)]
        if not found or not found[-1][2]:
            return [[name, value] for name, value, _rest in found], body
    return _rfc822_parse_lines(message)


def _rfc822_parse_lines(message: bytes) -> tuple[list[list[bytes]], bytes]:
    """dkimpy 1.1.8's ``rfc822_parse``, its regexes compiled once (IndexError included, for a
    continuation line first)."""
    headers: list[list[bytes]] = []
    lines = _LINE_END.split(message)
    match = _FIELD_NAME.match
    i = 0
    while i < len(lines):
        line = lines[i]
        if len(line) == 0:
            i += 1
            break
        if line[0] in (0x09, 0x20):
            headers[-1][1] += line + b"\r\n"
        else:
            m = match(line)
            if m is not None:
                headers.append([m.group(1), line[m.end(0):] + b"\r\n"])
            elif line.startswith(b"From "):
                pass
            else:
                raise dkim.MessageFormatError(
                    "Unexpected characters in RFC822 header: %r" % line)  # noqa: UP031
        i += 1
    return headers, b"\r\n".join(lines[i:])


_B64ISH = re.compile(rb"[\s0-9A-Za-z+/]+[\s=]*$")
_D_SPECIALS = re.compile(rb"[\(\)<>\[\]:;@\\,]")
_L_VALUE = re.compile(rb"\d{,76}$")
_DIGITS = re.compile(rb"\d+$")


def validate_signature_fields(sig: dict[bytes, bytes]) -> None:
    """dkimpy 1.1.8's ``validate_signature_fields`` for a DKIM-Signature (not ARC), its
    regexes compiled once: the same ValidationError, with the same text, for the same tags
    (``%r`` of bytes writes what dkimpy's ``%s`` does, without a BytesWarning)."""
    for field in (b"v", b"a", b"b", b"bh", b"d", b"h", b"s"):
        if field not in sig:
            raise dkim.ValidationError("missing %r=" % field)  # noqa: UP031
    if sig[b"a"] not in dkim.crypto.HASH_ALGORITHMS:
        raise dkim.ValidationError("unknown signature algorithm: %r" % sig[b"a"])  # noqa: UP031
    b = sig[b"b"]
    if _B64ISH.match(b) is None or len(b"".join(b.split())) % 4 != 0:
        raise dkim.ValidationError("b= value is not valid base64 (%r)" % b)  # noqa: UP031
    # dkimpy matches b= again where bh= is meant (b= passed just above): only bh='s length counts
    if len(b"".join(sig[b"bh"].split())) % 4 != 0:
        raise dkim.ValidationError("bh= value is not valid base64 (%r)" % sig[b"bh"])  # noqa: UP031
    if b"cv" in sig and sig[b"cv"] not in (dkim.CV_Pass, dkim.CV_Fail, dkim.CV_None):
        raise dkim.ValidationError("cv= value is not valid (%r)" % sig[b"cv"])  # noqa: UP031
    d = sig[b"d"]
    if d.isascii() and _D_SPECIALS.search(d):
        raise dkim.ValidationError("d= value is not valid (%r)" % d)  # noqa: UP031
    if b"i" in sig and (not sig[b"i"].lower().endswith(d.lower())
                        or sig[b"i"][-len(d) - 1] not in (64, 46)):
        raise dkim.ValidationError(
            "i= domain is not a subdomain of d= (i=%r d=%r)" % (sig[b"i"], d))  # noqa: UP031
    if b"l" in sig and _L_VALUE.match(sig[b"l"]) is None:
        raise dkim.ValidationError("l= value is not a decimal integer (%r)" % sig[b"l"])  # noqa: UP031
    if b"q" in sig and sig[b"q"] != b"dns/txt":
        raise dkim.ValidationError("q= value is not dns/txt (%r)" % sig[b"q"])  # noqa: UP031
    t_sign: int | None = None
    if b"t" in sig:
        if _DIGITS.match(sig[b"t"]) is None:
            raise dkim.ValidationError("t= value is not a decimal integer (%r)" % sig[b"t"])  # noqa: UP031
        t_sign = int(sig[b"t"])
        if t_sign > int(time.time()) + 36000:
            raise dkim.ValidationError("t= value is in the future (%r)" % sig[b"t"])  # noqa: UP031
    if sig[b"v"] != b"1":
        raise dkim.ValidationError("v= value is not 1 (%r)" % sig[b"v"])  # noqa: UP031
    if b"x" in sig:
        if _DIGITS.match(sig[b"x"]) is None:
            raise dkim.ValidationError("x= value is not a decimal integer (%r)" % sig[b"x"])  # noqa: UP031
        x_sign = int(sig[b"x"])
        if x_sign < int(time.time()) - 36000:
            raise dkim.ValidationError("x= value is past (%r)" % sig[b"x"])  # noqa: UP031
        if t_sign and x_sign < t_sign:
            raise dkim.ValidationError(
                "x= value is less than t= value (x=%r t=%r)" % (sig[b"x"], sig[b"t"]))  # noqa: UP031


def select_headers(headers: list[list[bytes]], include_headers: list[bytes]) -> list[list[bytes]]:
    """dkimpy 1.1.8's ``select_headers`` (``include_headers`` in lower case, as verifying
    makes them), each field's name lowered once instead of once per comparison."""
    lowered = [x[0].lower() for x in headers]
    sign_headers = []
    lastindex: dict[bytes, int] = {}
    for h in include_headers:
        i = lastindex.get(h, len(headers))
        while i > 0:
            i -= 1
            if h == lowered[i]:
                sign_headers.append(headers[i])
                break
        lastindex[h] = i
    return sign_headers


_WSP_RUN = re.compile(rb"[\t ]+")


def relaxed_headers(headers: list[Any]) -> list[tuple[bytes, bytes]]:
    """dkimpy 1.1.8's ``Relaxed.canonicalize_headers`` (``unfold_header_value`` then
    ``compress_whitespace``) without a regex where none is needed: ``\\r?\\n`` removed by
    two replacements, and blanks compressed only where two are adjacent or one is a tab."""
    out = []
    for x in headers:
        value = x[1].replace(b"\r\n", b"").replace(b"\n", b"")
        if b"\t" in value or b"  " in value:
            value = _WSP_RUN.sub(b" ", value)
        out.append((x[0].lower().rstrip(), value.strip() + b"\r\n"))
    return out


def hash_headers(hasher: Any, canon_policy: Any, headers: list[list[bytes]],
                 include_headers: list[bytes], sig_header: tuple[bytes, bytes]) -> list[Any]:
    """dkimpy 1.1.8's ``hash_headers`` of ``canon_policy.canonicalize_headers(headers)``, as
    ``verify_sig_process`` calls it, with only the selected fields canonicalised: the same
    fields are selected, since canonicalisation changes no name (as ``rfc822_parse`` reads
    them: no white space) but its case, which selection ignores."""
    canonicalize = (relaxed_headers if canon_policy.header_algorithm is Relaxed
                    else canon_policy.canonicalize_headers)
    sign_headers = canonicalize(select_headers(headers, include_headers))
    cheaders = canonicalize([(sig_header[0], RE_BTAG.sub(_tag_name, sig_header[1]))])
    # One update of the concatenation: the same digest as an update per octet string.
    hasher.update(b"".join([x + b":" + y for x, y in sign_headers]
                           + [x + b":" + y.rstrip() for x, y in cheaders]))
    return sign_headers


def _tag_name(m: re.Match[bytes]) -> bytes:
    """RE_BTAG's replacement, ``\\1``, without parsing that template at each call."""
    return m.group(1)


# rsa-sha1 is still verified, to report it; our policy then refuses it (RFC 8301).
_OPENSSL_HASHES: dict[str, hashes.HashAlgorithm] = {
    "sha256": hashes.SHA256(), "sha1": hashes.SHA1()}  # noqa: S303


@functools.lru_cache(maxsize=1024)
def _openssl_key(n: int, e: int) -> tuple[rsa.RSAPublicKey, bytes] | None:
    """The key as OpenSSL holds it and its modulus in octets, or None for a key OpenSSL will
    not load (dkimpy's arithmetic then answers)."""
    try:
        return rsa.RSAPublicNumbers(e, n).public_key(), n.to_bytes((n.bit_length() + 7) // 8, "big")
    except (ValueError, TypeError, OverflowError):
        return None


_PKCS1V15 = padding.PKCS1v15()
_PREHASHED = {name: Prehashed(algorithm) for name, algorithm in _OPENSSL_HASHES.items()}
_DIGEST_INFO_LENGTHS = {"sha256": 19 + 32, "sha1": 15 + 20}
"""The length of the DER DigestInfo that EMSA_PKCS1_v1_5_encode builds for each hash: it
raises DigestTooLargeError when that plus 11 exceeds the modulus's length."""


def fast_rsassa_pkcs1_v1_5_verify(hash: Any, signature: bytes, public_key: dict[str, int]) -> bool:
    """dkimpy 1.1.8's ``dkim.crypto.RSASSA_PKCS1_v1_5_verify`` (RFC 8017 8.2.2 as dkimpy
    does it), by OpenSSL; tests/test_patched_libraries.py fails when the upstream code differs.

    dkimpy reads the signature as a number of any length and reduces it modulo n (pow does);
    OpenSSL wants exactly the modulus's length and a number below n. So a signature that is
    not already that is reduced and written at that length first: what dkimpy accepts, OpenSSL
    is shown, and the answers match. DigestTooLargeError is raised where dkimpy's encoding
    step raises it (the encoding itself is OpenSSL's work here).
    """
    n, e = public_key["modulus"], public_key["publicExponent"]
    modlen = max(1, (n.bit_length() + 7) // 8)
    name = str(hash.name).lower()
    prehashed = _PREHASHED.get(name)
    loaded = _openssl_key(n, e) if prehashed is not None else None
    if loaded is None or prehashed is None:
        encoded = dkim.crypto.EMSA_PKCS1_v1_5_encode(hash, modlen)
        s = int.from_bytes(signature, "big") % n if n > 0 else 0
        return bool(encoded == pow(s, e, n).to_bytes(modlen, "big"))
    if _DIGEST_INFO_LENGTHS[name] + 11 > modlen:
        raise dkim.crypto.DigestTooLargeError()
    key, modulus = loaded
    if len(signature) != modlen or signature >= modulus:  # octets of equal length compare as numbers
        signature = (int.from_bytes(signature, "big") % n).to_bytes(modlen, "big")
    try:
        key.verify(signature, hash.digest(), _PKCS1V15, prehashed)
    except InvalidSignature:
        return False
    return True


# dkimpy's verify_sig_process calls the name in its module: this process verifies with the
# faster one (dkim_keys does the same for signing).
dkim.RSASSA_PKCS1_v1_5_verify = fast_rsassa_pkcs1_v1_5_verify

UPSTREAM_RE_BTAG = dkim.RE_BTAG
"""dkimpy 1.1.8's pattern of the b= value that ``hash_headers`` blanks in the signature it
checks: ``([;\\s]b FWS =)(?: FWS [A-Za-z0-9+/=])*(?:\\r?\\n\\Z)?``."""
RE_BTAG = re.compile(rb"([;\s]b\s*=)(?:[\sa-zA-Z0-9+/=]*[a-zA-Z0-9+/=])?(?:\r?\n\Z)?")
"""The same matches, written so that the engine does not backtrack on every character of
the signature: dkimpy's FWS, ``(?:(?:\\s*\\r?\\n)?\\s+)?``, matches any run of whitespace, so
its repetition of "FWS then a base64 character" is the longest run of whitespace and base64
ending in a base64 character. A tenth of the time on a 2048-bit signature (about 30 us per
message); tests/test_dkim_verify.py compares the two on arbitrary headers."""
dkim.RE_BTAG = RE_BTAG  # hash_headers reads it from dkim's namespace, for signing too


# -- parsing the signature headers -----------------------------------------------------------


@dataclass
class _Signature:
    """One DKIM-Signature as read before any DNS lookup; ``outcome`` set means decided."""

    index: int
    tags: dict[bytes, bytes]
    domain: str = ""
    selector: str = ""
    algorithm: str = ""
    key_name: str | None = None
    outcome: tuple[Result, str] | None = None


@dataclass
class _Prepared:
    verifier: Any  # _Verifier, or None when dkimpy cannot parse the message
    signatures: list[_Signature]
    fields: list[tuple[bytes, bytes]]
    """The DKIM-Signature fields (name, value) as dkimpy read them, in order."""


def _text(value: bytes | None) -> str:
    """A tag value as text. Inner whitespace is kept, so "d=nic. example" stays invalid."""
    if value is None:
        return ""
    return value.decode("ascii", "replace").strip()


def _lenient_dkim_headers(raw: bytes) -> list[bytes]:
    """DKIM-Signature values from a header dkimpy refuses, only to report them as errors."""
    head = re.split(rb"\r?\n\r?\n", raw, maxsplit=1)[0]
    fields: list[list[bytes]] = []
    current: list[bytes] | None = None
    for line in re.split(rb"\r?\n", head):
        if line[:1] in (b" ", b"\t") and current is not None:
            current.append(line)  # a continuation line of the field: d= and s= may stand here
            continue
        current = None
        name, sep, rest = line.partition(b":")
        if sep and name.strip().lower() == b"dkim-signature":
            current = [rest]
            fields.append(current)
    return [b"\r\n".join(lines) for lines in fields]


def _prepare(raw: bytes, now: float, max_signatures: int) -> _Prepared:
    """Parse the message once and decide what can be decided without DNS."""
    try:
        verifier = _Verifier(raw, minkey=0)
        fields = [(k, v) for k, v in verifier.headers if k.lower() == b"dkim-signature"]
        values = [v for _k, v in fields]
        unparsable: str | None = None
    except Exception as e:  # dkimpy raises MessageFormatError, and IndexError on some garbage
        verifier = None
        fields = []
        values = _lenient_dkim_headers(raw)
        unparsable = f"message header cannot be parsed: {_short(e)}"
    out: list[_Signature] = []
    for i, value in enumerate(values):
        sig = _read_signature(i, value)
        out.append(sig)
        if sig.outcome is not None:
            continue
        if unparsable is not None:
            sig.outcome = ("permerror", unparsable)
        elif i >= max_signatures:
            sig.outcome = ("permerror", f"not checked: only the first {max_signatures} "
                                        "signatures are")
        else:
            sig.outcome = _static_checks(sig, now)
    return _Prepared(verifier, out, fields)


_TAG_NAME = re.compile(rb"^[a-zA-Z](\w)*")


def parse_tag_value(tag_list: bytes) -> dict[bytes, bytes]:
    """dkimpy 1.1.8's ``dkim.util.parse_tag_value``, its regex compiled once: the same tags
    and errors."""
    tags = {}
    tag_specs = tag_list.strip().split(b";")
    if not tag_specs[-1]:  # trailing semicolons are valid
        tag_specs.pop()
    match = _TAG_NAME.match
    for tag_spec in tag_specs:
        key, equals, value = tag_spec.partition(b"=")
        if not equals:
            raise dkim.util.InvalidTagSpec(tag_spec)
        key, value = key.strip(), value.strip()
        if match(key) is None:
            raise dkim.util.InvalidTagSpec(tag_spec)
        if key in tags:
            raise dkim.util.DuplicateTag(key)
        tags[key] = value
    return tags


def _read_signature(index: int, value: bytes) -> _Signature:
    try:
        tags = parse_tag_value(value)
    except dkim.util.DuplicateTag as e:
        why = f"DKIM-Signature repeats tag {_short(e.args[0] if e.args else b'', 20)}="
        return _Signature(index, {}, outcome=("permerror", why))
    except Exception:
        return _Signature(index, {}, outcome=("permerror", "DKIM-Signature is not a tag=value list"))
    return _Signature(index, tags, domain=_text(tags.get(b"d")).lower(),
                      selector=_text(tags.get(b"s")), algorithm=_text(tags.get(b"a")).lower())


def _static_checks(sig: _Signature, now: float) -> tuple[Result, str] | None:
    """Permanent errors visible in the header alone; sets ``key_name`` when a key is needed."""
    tags = sig.tags
    missing = [t.decode() for t in (b"v", b"a", b"b", b"bh", b"d", b"h", b"s") if t not in tags]
    if missing:
        return "permerror", "DKIM-Signature lacks " + ", ".join(f"{t}=" for t in missing)
    if tags[b"v"].strip() != b"1":
        return "permerror", "DKIM-Signature version is not 1"
    if sig.algorithm not in KNOWN_ALGORITHMS:
        return "permerror", f"unknown algorithm a={sig.algorithm[:40]}"
    if not _NAME_RE.fullmatch(sig.domain) or len(sig.domain) > 253:
        return "permerror", "d= is not a valid domain name"
    if not _NAME_RE.fullmatch(sig.selector):
        return "permerror", "s= is not a valid selector"
    key_name = f"{sig.selector}._domainkey.{sig.domain}."
    if len(key_name) > 254:
        return "permerror", "s= and d= together make too long a DNS name"
    if b"x" in tags:
        x = _text(tags[b"x"])
        if not x.isdigit() or len(x) > 12:
            return "permerror", "x= is not a time"
        if int(x) < now:
            when = dt.datetime.fromtimestamp(int(x), dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            return "permerror", f"signature expired at {when}"
    sig.key_name = key_name
    return None


# -- verification ----------------------------------------------------------------------------

_KeyOutcome = bytes | None | KeyTemporaryError | KeyRecordError


async def _fetch(resolver: KeyResolver, name: str) -> _KeyOutcome:
    try:
        return await resolver.fetch(name)
    except (KeyTemporaryError, KeyRecordError) as e:
        return e


async def verify(raw: bytes, resolver: KeyResolver, *, min_rsa_bits: int, now: float,
                 max_signatures: int = MAX_SIGNATURES, offload: bool = True) -> DkimReport:
    """Check every DKIM-Signature of ``raw`` (the message as received, CRLF or LF).

    ``now`` (Unix time) decides whether x= has passed. ``min_rsa_bits`` below 1024 is
    taken as 1024. Never raises for anything the message holds.

    ``offload`` runs the CPU-bound parts in a thread, for a loop that serves others. The
    worker process, whose loop exists for this work, passes False: under the GIL, handing
    each verification to a thread costs more in switching than it saves.
    """
    prepared = await _run(offload, _prepare, raw, now, max_signatures)
    names = sorted({s.key_name for s in prepared.signatures if s.key_name and s.outcome is None})
    # One key is the usual case: awaited directly, without a task per lookup.
    fetched = ([await _fetch(resolver, names[0])] if len(names) == 1
               else await asyncio.gather(*(_fetch(resolver, n) for n in names)))
    keys = dict(zip(names, fetched, strict=True))
    results = await _run(offload, _check_all, prepared, keys, max(min_rsa_bits, RSA_FLOOR))
    return DkimReport(tuple(results))


async def _run(offload: bool, fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(fn, *args) if offload else fn(*args)


def _check_all(prepared: _Prepared, keys: dict[str, _KeyOutcome],
               min_bits: int) -> list[SignatureResult]:
    out = []
    for sig in prepared.signatures:
        key_bits: int | None = None
        counts = False
        if sig.outcome is not None:
            result, reason = sig.outcome
        else:
            assert sig.key_name is not None
            result, reason, key_bits, counts = _check_one(
                prepared.verifier, prepared.fields[sig.index], sig, keys[sig.key_name], min_bits)
        out.append(SignatureResult(sig.index, sig.domain, sig.selector, sig.algorithm, key_bits,
                                   result, reason, counts))
    return out


def _check_one(verifier: _Verifier, field: tuple[bytes, bytes], sig: _Signature,
               key: _KeyOutcome, min_bits: int) -> tuple[Result, str, int | None, bool]:
    if isinstance(key, KeyTemporaryError):
        return "temperror", f"DNS lookup failed: {key}", None, False
    if isinstance(key, KeyRecordError):
        return "permerror", str(key), None, False
    if key is None:
        return "permerror", "key not found in DNS", None, False
    problem, kind, bits = _read_key(key, sig)
    if problem:
        return "permerror", problem, bits, False
    try:
        ok = verifier.verify_parsed(sig.tags, field, lambda _name, timeout=0: key)
    except dkim.ValidationError as e:
        if "body hash mismatch" in str(e):
            return "fail", "body hash mismatch", bits, False
        return "permerror", _short(e), bits, False
    except dkim.DKIMException as e:
        return "permerror", _short(e), bits, False
    except Exception as e:
        return "neutral", f"verifier error: {_short(e)}", bits, False
    if not ok:
        return "fail", "signature does not verify (signed headers changed, or another key)", \
            bits, False
    present = {name.lower() for name, _value in verifier.headers}
    refusals = _policy_refusals(sig, kind, bits, min_bits, _key_tags(key) or {}, present)
    if refusals:
        return "pass", "; ".join(refusals), bits, False
    return "pass", "", bits, True


@functools.lru_cache(maxsize=1024)
def _key_tags(record: bytes) -> dict[bytes, bytes] | None:
    """The tags of a key record (None if it has none that parse), once per record. The
    dict is shared: read it, never change it."""
    try:
        tags: dict[bytes, bytes] = dkim.util.parse_tag_value(record)
    except Exception:
        return None
    return tags


def _read_key(record: bytes, sig: _Signature) -> tuple[str, str, int | None]:
    """(problem or "", key type, bits) of a key record, checked against the signature."""
    tags = _key_tags(record)
    if tags is None:
        return "key record cannot be parsed", "", None
    if tags.get(b"p", b"x").strip() == b"":
        return "key has been revoked (empty p=)", "", None
    try:
        _pk, bits, ktag, _tlsrpt = evaluated_key(sig.key_name, record)
    except Exception as e:
        return f"key record is malformed: {_short(e)}", "", None
    kind = ktag.decode("ascii") if isinstance(ktag, bytes) else str(ktag)
    key_bits = int(bits) if isinstance(bits, int) else None
    if not sig.algorithm.startswith(kind + "-"):
        return f"key of type {kind} cannot check a={sig.algorithm}", kind, key_bits
    if b"h" in tags:
        allowed = {h.strip().lower() for h in tags[b"h"].split(b":")}
        wanted = sig.algorithm.split("-", 1)[1].encode("ascii")
        if wanted not in allowed:
            return f"key record does not allow {wanted.decode()} (h= of the key)", kind, key_bits
    if b"s" in {f.strip() for f in tags.get(b"t", b"").split(b":")} and b"i" in sig.tags:
        i_domain = _text(sig.tags[b"i"]).rpartition("@")[2].lower()
        if i_domain != sig.domain:
            return "key is for d= only (t=s) but i= is a subdomain", kind, key_bits
    return "", kind, key_bits


REPLAY_HEADERS = ((b"date", "Date"), (b"message-id", "Message-ID"))
"""What tells a replayed copy from the original (the replay window, the Message-IDs seen):
a signature that leaves either out, or a message without either, lets a copy pass for new
(DKIM replay, RFC 6376 8.6)."""


def _policy_refusals(sig: _Signature, kind: str, bits: int | None, min_bits: int,
                     key_tags: dict[bytes, bytes], present: set[bytes]) -> list[str]:
    refusals = []
    if sig.algorithm not in ACCEPTED_ALGORITHMS:
        refusals.append(f"{sig.algorithm} is not accepted (RFC 8301)")
    signed = set(signed_fields(sig.tags[b"h"]))
    if b"from" not in signed:
        refusals.append("signature does not cover From")
    elif unsigned := [name for h, name in REPLAY_HEADERS if h not in signed]:
        refusals.append(f"signature does not cover {' and '.join(unsigned)}, so a replayed copy "
                        "could pass for new")
    elif absent := [name for h, name in REPLAY_HEADERS if h not in present]:
        refusals.append(f"the message has no {' and '.join(absent)}, so a replayed copy could "
                        "not be recognised")
    if b"y" in {f.strip() for f in key_tags.get(b"t", b"").split(b":")}:
        # RFC 6376 3.6.1: mail signed in testing mode is to be treated as unsigned.
        refusals.append("key is in testing mode (t=y)")
    if b"l" in sig.tags:
        refusals.append("l= body length limit is not accepted")
    if kind == "rsa" and (bits is None or bits < min_bits):
        refusals.append(f"RSA key of {bits} bits is shorter than {min_bits}")
    return refusals


def _short(e: BaseException | bytes, limit: int = 160) -> str:
    """A one-line, bounded excerpt: reasons end up in logs and in a header field."""
    text = e.decode("ascii", "replace") if isinstance(e, bytes) else str(e) or type(e).__name__
    text = re.sub(r"\s+", " ", text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# -- Authentication-Results ------------------------------------------------------------------


def authentication_results(authserv_id: str, report: DkimReport) -> str:
    """The value of an Authentication-Results field (RFC 8601) for ``report``.

    One dkim clause per signature, in message order, so a Validator reading the stored message
    sees every signature and why it did or did not count. A signature that verified but that
    our policy does not accept is "policy", not "pass", so nobody mistakes it for proof.
    A d=, s= or a= that is not a plain token (from a hostile header) is left out, and reasons
    are always quoted, so the field always parses. Written as authres 1.2.0 writes it, without
    its objects per clause (tests/test_authentication_results.py holds the two to one text).
    """
    clauses = [_clause(s) for s in report.signatures] or ["dkim=none"]
    return "; ".join([authserv_id.lower(), *clauses])


class _Quoted(str):
    """A reason that authres always quotes unless it is a token.

    authres leaves any value holding "@" unquoted, and a reason can echo a hostile header
    ("@" and ";" included), which would break the field. Stands in for authres 1.2.0's
    QuotableValue (tests/test_patched_libraries.py fails when that code differs).
    """

    __slots__ = ()

    def quote_if_needed(self) -> str:
        if _RFC2045_TOKEN_RE.fullmatch(self):
            return str(self)
        return '"' + re.sub(r'(["\\])', r"\\\1", self) + '"'


def _clause(s: SignatureResult) -> str:
    result = "policy" if s.result == "pass" and not s.counts else s.result
    text = f"dkim={result.lower()}"
    if s.reason:
        text += " reason=" + _Quoted(re.sub(r"[^\x20-\x7e]", "?", s.reason)).quote_if_needed()
    for prop, value in (("d", s.domain), ("s", s.selector), ("a", s.algorithm)):
        if value and _TOKEN_RE.fullmatch(value):
            text += f" header.{prop}={value}"  # a token: authres leaves it unquoted
    return text

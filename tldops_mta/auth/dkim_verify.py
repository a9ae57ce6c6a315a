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
  dkimpy's pure-Python arithmetic (docs/architecture.md).

Nothing in here raises on a hostile message: whatever a signature holds ends in a result.
"""

from __future__ import annotations

import asyncio
import binascii
import datetime as dt
import functools
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import authres  # type: ignore[import-untyped]
import dkim  # type: ignore[import-untyped]
import dkim.crypto  # type: ignore[import-untyped]
import dkim.util  # type: ignore[import-untyped]
import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdtypes.ANY.TXT
import dns.resolver
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
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
    """dkimpy's DKIM, its key loading going through ``evaluated_key``."""

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


# rsa-sha1 is still verified, to report it; our policy then refuses it (RFC 8301).
_OPENSSL_HASHES: dict[str, hashes.HashAlgorithm] = {
    "sha256": hashes.SHA256(), "sha1": hashes.SHA1()}  # noqa: S303


@functools.lru_cache(maxsize=1024)
def _openssl_key(n: int, e: int) -> rsa.RSAPublicKey | None:
    """The key as OpenSSL holds it, or None for one it will not load (dkimpy's arithmetic
    then answers)."""
    try:
        return rsa.RSAPublicNumbers(e, n).public_key()
    except (ValueError, TypeError, OverflowError):
        return None


def fast_rsassa_pkcs1_v1_5_verify(hash: Any, signature: bytes, public_key: dict[str, int]) -> bool:
    """dkimpy 1.1.8's ``dkim.crypto.RSASSA_PKCS1_v1_5_verify`` (RFC 8017 8.2.2 as dkimpy
    does it), by OpenSSL; tests/test_patched_libraries.py fails when the upstream code differs.

    dkimpy reads the signature as a number of any length and reduces it modulo n (pow does);
    OpenSSL wants exactly the modulus's length and a number below n. So the number is reduced
    and written at that length first: what dkimpy accepts, OpenSSL is shown, and the answers
    match. DigestTooLargeError comes from the same encoding step as in dkimpy.
    """
    n, e = public_key["modulus"], public_key["publicExponent"]
    modlen = max(1, (n.bit_length() + 7) // 8)
    encoded = dkim.crypto.EMSA_PKCS1_v1_5_encode(hash, modlen)
    algorithm = _OPENSSL_HASHES.get(str(hash.name).lower())
    key = _openssl_key(n, e) if algorithm is not None else None
    s = int.from_bytes(signature, "big") % n if n > 0 else 0
    if key is None or algorithm is None:
        return bool(encoded == pow(s, e, n).to_bytes(modlen, "big"))
    try:
        key.verify(s.to_bytes(modlen, "big"), hash.digest(), padding.PKCS1v15(), Prehashed(algorithm))
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
    verifier: Any  # dkim.DKIM, or None when dkimpy cannot parse the message
    signatures: list[_Signature]


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
        values = [v for k, v in verifier.headers if k.lower() == b"dkim-signature"]
        unparsable: str | None = None
    except Exception as e:  # dkimpy raises MessageFormatError, and IndexError on some garbage
        verifier = None
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
    return _Prepared(verifier, out)


def _read_signature(index: int, value: bytes) -> _Signature:
    try:
        tags: dict[bytes, bytes] = dkim.util.parse_tag_value(value)
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
    missing = [t for t in ("v", "a", "b", "bh", "d", "h", "s") if t.encode() not in tags]
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
            result, reason, key_bits, counts = _check_one(prepared.verifier, sig,
                                                          keys[sig.key_name], min_bits)
        out.append(SignatureResult(sig.index, sig.domain, sig.selector, sig.algorithm, key_bits,
                                   result, reason, counts))
    return out


def _check_one(verifier: Any, sig: _Signature, key: _KeyOutcome,
               min_bits: int) -> tuple[Result, str, int | None, bool]:
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
        ok = verifier.verify(idx=sig.index, dnsfunc=lambda _name, timeout=0: key)
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
    signed = {h.lower() for h in re.split(rb"\s*:\s*", sig.tags[b"h"].strip())}
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
    are always quoted, so the field always parses.
    """
    results = [_clause(s) for s in report.signatures] or [
        authres.DKIMAuthenticationResult(result="none")]
    header = authres.AuthenticationResultsHeader(authserv_id=authserv_id, results=results)
    return str(header.header_value())


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


def _clause(s: SignatureResult) -> Any:
    result = "policy" if s.result == "pass" and not s.counts else s.result
    clause = authres.DKIMAuthenticationResult(result=result)
    if s.reason:
        clause.reason = _Quoted(re.sub(r"[^\x20-\x7e]", "?", s.reason))
    for prop, value in (("d", s.domain), ("s", s.selector), ("a", s.algorithm)):
        if value and _TOKEN_RE.fullmatch(value):
            clause.properties.append(authres.AuthenticationResultProperty("header", prop, value))
    return clause

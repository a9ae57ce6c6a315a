"""Test keys and DKIM-signed messages, made at test time (no private key is ever committed).

Signing goes through dkimpy's own header hashing (``DKIM.gen_header``) with tag lists built here,
because ``dkim.sign`` cannot write what the attacks need: ``x=``, a chosen ``t=``, or an ``h=``
without ``from`` (it refuses that). The signatures are real; only the choice of tags is ours.
"""

from __future__ import annotations

import base64
import functools
import math
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import dkim  # type: ignore[import-untyped]
import nacl.encoding
import nacl.signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dkim.canonicalization import CanonicalizationPolicy  # type: ignore[import-untyped]
from dkim.crypto import HASH_ALGORITHMS, parse_pem_private_key  # type: ignore[import-untyped]
from dns_server import TxtRecord, split_txt

Algorithm = Literal["rsa-sha256", "rsa-sha1", "ed25519-sha256"]

DEFAULT_HEADERS = ("from", "to", "subject", "date", "message-id",
                   "from", "to", "subject", "date")
"""Over-signed, as a careful sender signs: a second From/To/Subject/Date cannot be added unnoticed."""


@dataclass(frozen=True)
class TestKey:
    kind: Literal["rsa", "ed25519"]
    bits: int
    private: bytes
    """PKCS#1 PEM for RSA, base64 seed for Ed25519: what dkimpy's signer reads."""
    public_b64: str
    """The p= value."""

    __test__ = False  # not a pytest test class despite the name

    def record_text(self) -> str:
        """The key's TXT record as text: ``v=DKIM1; k=...; p=...``."""
        return f"v=DKIM1; k={self.kind}; p={self.public_b64}"

    def txt_record(self) -> TxtRecord:
        """The key's TXT record as DNS carries it: strings of at most 255 octets."""
        return split_txt(self.record_text())


@functools.cache
def rsa_key(bits: int, n: int = 0) -> TestKey:
    """An RSA key of ``bits``; ``n`` picks another key of the same size. Cached per process."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = private.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    spki = private.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    return TestKey("rsa", bits, pem, base64.b64encode(spki).decode("ascii"))


@functools.cache
def weak_rsa_key(bits: int = 768) -> TestKey:
    """An RSA key shorter than ``cryptography`` will generate (it refuses < 1024 bits).

    Built from primes found here and DER-encoded by hand, to prove that no configuration lets
    such a key count.
    """
    e = 65537
    while True:
        p, q = _prime(bits // 2), _prime(bits - bits // 2)
        n = p * q
        phi = (p - 1) * (q - 1)
        if p != q and n.bit_length() == bits and math.gcd(e, phi) == 1:
            break
    d = pow(e, -1, phi)
    private_der = _der_sequence(_der_int(x) for x in
                                (0, n, e, d, p, q, d % (p - 1), d % (q - 1), pow(q, -1, p)))
    pem = (b"-----BEGIN RSA PRIVATE KEY-----\n" + base64.encodebytes(private_der)
           + b"-----END RSA PRIVATE KEY-----\n")
    public_der = _der_sequence([_der_int(n), _der_int(e)])  # RFC 8017 RSAPublicKey
    return TestKey("rsa", bits, pem, base64.b64encode(public_der).decode("ascii"))


def _prime(bits: int) -> int:
    while True:
        candidate = secrets.randbits(bits) | (1 << (bits - 1)) | 1
        if _probably_prime(candidate):
            return candidate


def _probably_prime(n: int, rounds: int = 40) -> bool:
    if n < 4:
        return n in (2, 3)
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for _ in range(rounds):
        x = pow(secrets.randbelow(n - 3) + 2, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _der_int(v: int) -> bytes:
    raw = v.to_bytes(v.bit_length() // 8 + 1, "big")  # one spare byte keeps the sign bit 0
    while len(raw) > 1 and raw[0] == 0 and raw[1] < 0x80:
        raw = raw[1:]
    return b"\x02" + _der_length(len(raw)) + raw


def _der_sequence(items: Iterable[bytes]) -> bytes:
    body = b"".join(items)
    return b"\x30" + _der_length(len(body)) + body


@functools.cache
def ed25519_key(n: int = 0) -> TestKey:
    seed = nacl.signing.SigningKey.generate()
    public = seed.verify_key.encode(encoder=nacl.encoding.Base64Encoder).decode("ascii")
    private = seed.encode(encoder=nacl.encoding.Base64Encoder)
    return TestKey("ed25519", 256, private, public)


def dns_name(selector: str, domain: str) -> str:
    return f"{selector}._domainkey.{domain}"


def message(from_addr: str = "admin@nic.example", *, to: str = "requests@tld-ops.localhost",
            subject: str = "Update of the SSC roster", body: str = "Please add Jane Doe.\r\n",
            extra_headers: Sequence[str] = ()) -> bytes:
    """A plain request message with CRLF line ends."""
    lines = [f"From: {from_addr}", f"To: {to}", f"Subject: {subject}",
             "Date: Mon, 01 Jan 2024 10:00:00 +0000", "Message-ID: <req-1@nic.example>",
             "MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8", *extra_headers]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode("utf-8")


def sign(message_bytes: bytes, domain: str, selector: str, key: TestKey, *,
         algorithm: Algorithm | None = None, include_headers: Sequence[str] = DEFAULT_HEADERS,
         length: bool = False, expire: float | None = None, timestamp: float | None = None,
         canonicalize: tuple[str, str] = ("relaxed", "simple"), identity: str | None = None) -> bytes:
    """``message_bytes`` with a DKIM-Signature prepended.

    ``algorithm`` defaults to the key's natural one. ``expire`` sets x= that many seconds after
    ``timestamp`` (default: now), negative for a signature that has already expired.
    """
    alg = algorithm or ("ed25519-sha256" if key.kind == "ed25519" else "rsa-sha256")
    algb = alg.encode("ascii")
    signer = dkim.DKIM(message_bytes, signature_algorithm=algb)
    if alg.startswith("ed25519"):
        pk = nacl.signing.SigningKey(key.private, encoder=nacl.encoding.Base64Encoder)
    else:
        pk = parse_pem_private_key(key.private)
    policy = CanonicalizationPolicy.from_c_value("/".join(canonicalize).encode("ascii"))
    signer.hasher = HASH_ALGORITHMS[algb]
    body = policy.canonicalize_body(signer.body)
    body_hash = base64.b64encode(signer.hasher(body).digest())
    t = int(time.time() if timestamp is None else timestamp)
    headers = tuple(h.lower().encode("ascii") for h in include_headers)
    fields: list[tuple[bytes, bytes]] = [
        (b"v", b"1"),
        (b"a", algb),
        (b"c", policy.to_c_value()),
        (b"d", domain.encode("ascii")),
        (b"i", (identity or "@" + domain).encode("ascii")),
        (b"q", b"dns/txt"),
        (b"s", selector.encode("ascii")),
        (b"t", str(t).encode("ascii")),
    ]
    if length:
        fields.append((b"l", str(len(body)).encode("ascii")))
    if expire is not None:
        fields.append((b"x", str(int(t + expire)).encode("ascii")))
    fields += [(b"h", b" : ".join(headers)), (b"bh", body_hash), (b"b", b"0" * 60)]
    value = signer.gen_header(fields, headers, policy, b"DKIM-Signature", pk)
    return b"DKIM-Signature: " + bytes(value) + message_bytes

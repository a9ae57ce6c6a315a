"""Our own DKIM key: making a pair (``tldops dkim keygen``), reading it, signing what we send,
and the TXT record that publishes it (``tldops dkim check`` compares the two).

RSA (PEM, PKCS#1 or PKCS#8; 1024 bits at the least, 2048 made) or Ed25519 (the base64 seed
dkimpy reads, or a PKCS#8 PEM). The public half is published at SELECTOR._domainkey.DOMAIN.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dkim  # type: ignore[import-untyped]
import dkim.crypto  # type: ignore[import-untyped]
import dkim.util  # type: ignore[import-untyped]
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

if TYPE_CHECKING:
    from tldops_mta.settings.config import Config

SIGNED_HEADERS = (b"from", b"reply-to", b"to", b"cc", b"subject", b"date", b"message-id",
                  b"in-reply-to", b"references", b"mime-version", b"content-type",
                  b"content-transfer-encoding", b"auto-submitted", b"list-id", b"list-post",
                  b"list-help", b"list-unsubscribe", b"precedence")
"""The fields our signature covers when the mail has them: all a reader sees and acts on
(the TLP-labelled Subject, Reply-To with its one-time address), and the list's own fields."""

OVER_SIGNED = (b"from", b"reply-to", b"to", b"cc", b"subject", b"date", b"message-id")
"""Named once more in h= than the mail has them (RFC 6376 8.15): a second From (or Reply-To,
Subject...) added on the way breaks the signature instead of being shown to the reader."""

MIN_RSA_BITS = 1024
"""RFC 8301: signers MUST NOT use shorter RSA keys (``keygen`` makes 2048)."""


class KeyFileError(ValueError):
    """The key file holds no key we can sign with; the message says why, in a few words."""


@dataclass(frozen=True)
class OwnKey:
    algorithm: bytes
    """b"rsa-sha256" or b"ed25519-sha256"."""
    private: bytes
    """As dkimpy's signer reads it: PKCS#1 PEM (RSA) or the base64 seed (Ed25519)."""
    record: str
    """The TXT record's value that publishes the public half: ``v=DKIM1; k=...; p=...``."""


def generate(kind: str) -> tuple[bytes, str]:
    """(private key file contents, the TXT record's value)."""
    if kind == "ed25519":
        seed = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        contents = base64.b64encode(seed) + b"\n"
    else:
        contents = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption())
    return contents, read_key(contents).record


def read_key(data: bytes) -> OwnKey:
    """The key in a key file's contents; KeyFileError says what is wrong with it."""
    if b"-----BEGIN" not in data:
        return _ed25519(_seed(data))
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as e:
        raise KeyFileError("the key is encrypted; the daemon cannot ask for a passphrase") from e
    except (ValueError, UnsupportedAlgorithm) as e:
        raise KeyFileError("not a PEM private key that loads") from e
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return _ed25519(key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                          serialization.NoEncryption()))
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyFileError("neither an RSA nor an Ed25519 key, the two DKIM signs with")
    if key.key_size < MIN_RSA_BITS:
        raise KeyFileError(f"an RSA key of {key.key_size} bits; at least {MIN_RSA_BITS} (2048 advised)")
    pkcs1 = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                              serialization.NoEncryption())
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return OwnKey(b"rsa-sha256", pkcs1, f"v=DKIM1; k=rsa; p={base64.b64encode(spki).decode()}")


def _seed(data: bytes) -> bytes:
    try:
        seed = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError) as e:
        raise KeyFileError("neither a PEM private key nor a base64 Ed25519 seed") from e
    if len(seed) != 32:
        raise KeyFileError("neither a PEM private key nor a base64 Ed25519 seed (32 octets)")
    return seed


def _ed25519(seed: bytes) -> OwnKey:
    public = ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return OwnKey(b"ed25519-sha256", base64.b64encode(seed),
                  f"v=DKIM1; k=ed25519; p={base64.b64encode(public).decode()}")


def read_key_file(path: Path) -> OwnKey:
    """The key in ``path``; KeyFileError (its reason) when it cannot be read or used. Read
    again only when the file changed: loading an RSA key (OpenSSL checks it) takes tens of
    milliseconds, more than signing."""
    try:
        st = path.stat()
    except OSError as e:
        raise KeyFileError(f"cannot read {path}: {e.strerror}") from e
    return _read_key_file(path, st.st_ino, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=4)
def _read_key_file(path: Path, _inode: int, _mtime_ns: int, _size: int) -> OwnKey:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise KeyFileError(f"cannot read {path}: {e.strerror}") from e
    return read_key(data)


_FIELD_NAME = re.compile(rb"([!-9;-~]+)[ \t]*:")


def header_list(raw: bytes) -> list[bytes]:
    """The h= of our signature on ``raw``: each field of SIGNED_HEADERS as often as the mail
    has it, then OVER_SIGNED once more."""
    head = raw.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    present = [m.group(1).lower() for line in head.split(b"\n")
               if line[:1] not in (b" ", b"\t") and (m := _FIELD_NAME.match(line))]
    signed = [name for name in present if name in SIGNED_HEADERS]
    signed.sort(key=SIGNED_HEADERS.index)
    return signed + list(OVER_SIGNED)


def sign(raw: bytes, *, domain: str, selector: str, key: OwnKey) -> bytes:
    """``raw`` with a DKIM-Signature on top (relaxed/simple), over ``header_list(raw)``."""
    header = dkim.sign(raw, selector.encode(), domain.encode(), key.private,
                       signature_algorithm=key.algorithm, include_headers=header_list(raw))
    return bytes(header) + raw


def sign_outgoing(cfg: Config, raw: bytes) -> bytes:
    """A mail the daemon sends, signed once with the daemon's key (``dkim.key``) by its domain
    before it is stored, so every retry sends the same octets; as it is when no key is set."""
    path = cfg.dkim_key
    if path is None:
        return raw
    return sign(raw, domain=cfg.server.domain, selector=cfg.dkim_selector,
                key=read_key_file(path))


@functools.lru_cache(maxsize=4)
def _openssl_key(n: int, e: int, d: int, p: int, q: int, dmp1: int, dmq1: int,
                 iqmp: int) -> rsa.RSAPrivateKey:
    # Checked when the key file was read (read_key): not again at each signature.
    return rsa.RSAPrivateNumbers(p, q, d, dmp1, dmq1, iqmp, rsa.RSAPublicNumbers(e, n)).private_key(
        unsafe_skip_rsa_key_validation=True)


def fast_rsassa_pkcs1_v1_5_sign(hash: Any, private_key: dict[str, int]) -> bytes:
    """dkimpy 1.1.8's ``dkim.crypto.RSASSA_PKCS1_v1_5_sign`` (RFC 8017 8.2.1) by OpenSSL: the
    same octets (the scheme is deterministic), without dkimpy's pure-Python arithmetic
    (docs/architecture.md). tests/test_patched_libraries.py fails when the upstream code differs."""
    if str(hash.name).lower() != "sha256":
        return bytes(dkim.crypto.RSASSA_PKCS1_v1_5_sign(hash, private_key))
    k = private_key
    key = _openssl_key(k["modulus"], k["publicExponent"], k["privateExponent"], k["prime1"], k["prime2"],
                       k["exponent1"], k["exponent2"], k["coefficient"])
    return key.sign(hash.digest(), padding.PKCS1v15(), Prehashed(hashes.SHA256()))


# dkimpy's gen_header calls the name in its module: this process signs with the faster one.
dkim.RSASSA_PKCS1_v1_5_sign = fast_rsassa_pkcs1_v1_5_sign


def record_problem(record: bytes, key: OwnKey) -> str | None:
    """None when the published TXT ``record`` publishes ``key``; else what is wrong, briefly."""
    try:
        tags: dict[bytes, bytes] = dkim.util.parse_tag_value(record)
    except Exception:  # dkimpy's InvalidTagValueList, and others from odd input
        return "it is not a DKIM key record (its tags do not parse)"
    if tags.get(b"v", b"DKIM1").strip() != b"DKIM1":
        return "it is not a DKIM key record (v= is not DKIM1)"
    p = re.sub(rb"\s+", b"", tags.get(b"p", b""))
    if not p:
        return "it has no key (p= is empty: revoked)"
    want = dict(_tags(key.record))
    kind = tags.get(b"k", b"rsa").strip().decode("ascii", "replace")
    if kind != want["k"]:
        return f"it is for k={kind}, the key is k={want['k']}"
    if p.decode("ascii", "replace") != want["p"] and not _same_rsa_key(p, want["p"]):
        return "it publishes another key"
    if b"y" in {f.strip() for f in tags.get(b"t", b"").split(b":")}:
        return "it is in testing mode (t=y): receivers treat our mail as unsigned"
    return None


def _tags(record: str) -> list[tuple[str, str]]:
    return [(n.strip(), v.strip()) for n, _, v in (part.partition("=") for part in record.split(";"))]


def _same_rsa_key(published: bytes, ours: str) -> bool:
    """An RSA key may be published as SubjectPublicKeyInfo or as a bare RSAPublicKey."""
    try:
        mine = serialization.load_der_public_key(base64.b64decode(ours))
        theirs = serialization.load_der_public_key(base64.b64decode(published))  # reads both forms
    except (ValueError, binascii.Error, UnsupportedAlgorithm):
        return False
    return (isinstance(mine, rsa.RSAPublicKey) and isinstance(theirs, rsa.RSAPublicKey)
            and mine.public_numbers() == theirs.public_numbers())

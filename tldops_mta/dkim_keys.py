"""Our own DKIM keys: making a pair (``tldops dkim keygen``) and signing what we send.

RSA-2048 (PEM) or Ed25519 (the base64 seed dkimpy reads). The public half is printed as the
TXT record to publish at SELECTOR._domainkey.DOMAIN.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

SIGNED_HEADERS = [b"from", b"to", b"subject", b"date", b"message-id", b"mime-version",
                  b"content-type", b"auto-submitted"]


def generate(kind: str) -> tuple[bytes, str]:
    """(private key file contents, the TXT record's value)."""
    if kind == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
        seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())
        public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return base64.b64encode(seed) + b"\n", f"v=DKIM1; k=ed25519; p={base64.b64encode(public).decode()}"
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    spki = rsa_key.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, f"v=DKIM1; k=rsa; p={base64.b64encode(spki).decode()}"


def sign(raw: bytes, *, domain: str, selector: str, key_file: Path,
         headers: Sequence[bytes] = SIGNED_HEADERS) -> bytes:
    """``raw`` with a DKIM-Signature on top (relaxed/simple, the key's algorithm), over
    ``headers`` (those of them present)."""
    import dkim  # type: ignore[import-untyped]

    key = key_file.read_bytes()
    is_rsa = key.lstrip().startswith(b"-----BEGIN")
    header = dkim.sign(raw, selector.encode(), domain.encode(), key if is_rsa else key.strip(),
                       signature_algorithm=b"rsa-sha256" if is_rsa else b"ed25519-sha256",
                       include_headers=list(headers))
    return bytes(header) + raw

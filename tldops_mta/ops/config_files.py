"""The files the configuration names: each there, readable, and holding its kind of content.

Every path key of the schema with a ``file`` kind is checked the same way, by ``config check``
and before ``serve`` starts (or a SIGHUP is taken), so a missing DKIM key or an empty password
file is named at once instead of failing the first mail that needs it.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

from tldops_mta.settings.config import SCHEMA, Config, Problem


def _dkim_key(data: bytes) -> str | None:
    from tldops_mta.mail import dkim_keys  # dkimpy, loaded only where a key is configured

    try:
        dkim_keys.read_key(data)
    except dkim_keys.KeyFileError as e:
        return str(e)
    return None


def _tls_cert(data: bytes) -> str | None:
    from cryptography import x509  # loaded only where a certificate is configured

    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        return "not a PEM certificate that loads"
    return None


def _tls_key(data: bytes) -> str | None:
    # cryptography, loaded only where a TLS key is configured
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        serialization.load_pem_private_key(data, password=None)
    except TypeError:
        return "the key is encrypted; the daemon cannot ask for a passphrase"
    except (ValueError, UnsupportedAlgorithm):
        return "not a PEM private key that loads"
    return None


def _password(data: bytes) -> str | None:
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        return "not UTF-8 text"
    if not lines or not lines[0].strip():
        return "its first line, the password, is empty"
    return None


KINDS: dict[str, Callable[[bytes], str | None]] = {
    "dkim-key": _dkim_key,
    "tls-cert": _tls_cert,
    "tls-key": _tls_key,
    "password": _password,
}
"""What each kind of file must hold: the contents' problem, or None."""


def problems(cfg: Config) -> list[Problem]:
    """Every named file that is missing, unreadable or not of its kind; then a certificate
    and key that do not belong together."""
    found: list[Problem] = []
    for key in SCHEMA:
        path = cfg.file_path(key.dotted) if key.file else None
        if path is None:
            continue
        problem = file_problem(key.file, path)
        if problem is not None:
            found.append(Problem(key.dotted, problem))
    cert, tls_key = cfg.file_path("server.tls_cert"), cfg.file_path("server.tls_key")
    if cert and tls_key and not any(p.key.startswith("server.tls_") for p in found):
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, tls_key)
        except (ssl.SSLError, OSError) as e:
            found.append(Problem("server.tls_key", f"does not go with server.tls_cert ({e})"))
    return found


def file_problem(kind: str, path: Path) -> str | None:
    """What is wrong with ``path`` as a file of ``kind``, or None."""
    try:
        data = path.read_bytes()
    except OSError as e:
        return f"cannot read {path}: {e.strerror}"
    problem = KINDS[kind](data)
    return None if problem is None else f"{path}: {problem}"

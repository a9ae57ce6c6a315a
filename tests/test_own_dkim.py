"""The daemon's own DKIM key: its configuration (dkim.key, and the broadcast's old names), the
signature's coverage, `tldops dkim check` against the loopback DNS server, and the files the
configuration names, checked by kind by `config check` and before `serve` starts.

That every kind of mail the daemon writes is signed is checked in the end-to-end flows
themselves (tests/own_dkim.py).
"""

from __future__ import annotations

import base64
import json
import re
import smtplib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dkim
import own_dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from daemon_proc import DOMAIN, write_config
from dkim_sign import ed25519_key, rsa_key
from dns_server import DnsServer

from tldops_mta.mail import dkim_keys, outbox
from tldops_mta.mail.tlp import Tlp
from tldops_mta.settings import config


def tldops(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tldops_mta", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=60)


# -- the keys and their old names -----------------------------------------------------------------

def test_dkim_key_and_selector_with_their_old_names() -> None:
    assert config.load(None).dkim_key is None  # no key: mail goes unsigned
    new = config.load(None, {"dkim.key": "/k/new.key", "dkim.selector": "s2026"})
    assert (new.dkim_key, new.dkim_selector) == (Path("/k/new.key"), "s2026")
    old = config.load(None, {"broadcast.dkim_key": "/k/old.key", "broadcast.dkim_selector": "old"})
    assert (old.dkim_key, old.dkim_selector) == (Path("/k/old.key"), "old")
    same = config.load(None, {"dkim.key": "/k/a.key", "broadcast.dkim_key": "/k/a.key",
                              "dkim.selector": "s", "broadcast.dkim_selector": "s"})
    assert (same.dkim_key, same.dkim_selector) == (Path("/k/a.key"), "s")
    # The new name left at its default gives way to the old one; two different values, refused.
    left = config.load(None, {"dkim.selector": "tldops", "broadcast.dkim_selector": "old"})
    assert left.dkim_selector == "old"
    with pytest.raises(config.ConfigError) as e:
        config.load(None, {"dkim.key": "/k/a.key", "broadcast.dkim_key": "/k/b.key",
                           "dkim.selector": "new", "broadcast.dkim_selector": "old"})
    assert [p.key for p in e.value.problems] == ["dkim.key", "dkim.selector"]
    assert "'/k/a.key' and broadcast.dkim_key = '/k/b.key' (its old name) differ; set only dkim.key" \
        in str(e.value)


def test_config_check_refuses_two_different_keys_and_notes_none(tmp_path: Path) -> None:
    key = tmp_path / "k"
    key.write_bytes(rsa_key(2048).private)
    other = tmp_path / "other"
    other.write_bytes(rsa_key(2048, 1).private)
    both = write_config(tmp_path / "both.toml", {"dkim.key": str(key), "broadcast.dkim_key": str(other)})
    r = tldops("config", "check", "--config", str(both))
    assert r.returncode == 1 and "dkim.key: " in r.stderr and "set only dkim.key" in r.stderr
    r = tldops("config", "check", "--config", str(write_config(tmp_path / "none.toml", {})))
    assert r.returncode == 0
    assert "note: no dkim.key: the mail the daemon sends goes out without a DKIM signature" in r.stdout


# -- the signature ----------------------------------------------------------------------------------

def _signed(tmp_path: Path, kind: str) -> tuple[bytes, str]:
    key = rsa_key(2048) if kind == "rsa" else ed25519_key()
    path = tmp_path / f"{kind}.key"
    path.write_bytes(key.private)
    cfg = config.load(None, {"dkim.key": str(path)})
    raw = outbox.compose(from_addr=f"TLD-OPS <confirm+abc@{DOMAIN}>", to="admin@nic.org.mt",
                         subject="Please confirm a request for .mt", body="Answer to confirm.\n",
                         domain=DOMAIN, tlp=Tlp.AMBER, reply_to=f"confirm+abc@{DOMAIN}")
    return dkim_keys.sign_outgoing(cfg, raw), key.record_text()


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_our_signature_covers_what_a_reader_sees_and_nothing_can_be_added(tmp_path: Path, kind: str) -> None:
    signed, record = _signed(tmp_path, kind)

    def check(raw: bytes) -> bool:
        return bool(dkim.verify(raw, dnsfunc=lambda name, timeout=5: record.encode()))

    assert check(signed)
    assert re.search(rb"s=tldops;", signed) and re.search(rb"d=tld-ops\.localhost;", signed)
    head, body = signed.split(b"\r\n\r\n", 1)
    sig_end = head.index(b"\r\nFrom: ")
    signature, fields = head[:sig_end], head[sig_end:]
    for added in (b"From: Validator <validator@tld-ops.localhost>", b"Reply-To: attacker@evil.example",
                  b"Subject: [TLP:CLEAR] Please confirm", b"To: someone@else.example",
                  b"Date: Mon, 01 Jan 2024 10:00:00 +0000", b"Message-ID: <x@evil.example>",
                  b"Cc: someone@else.example"):
        above = signature + b"\r\n" + added + fields + b"\r\n\r\n" + body
        below = signature + fields + b"\r\n" + added + b"\r\n\r\n" + body
        assert not check(above) and not check(below), added
    assert not check(signed.replace(b"[TLP:AMBER]", b"[TLP:CLEAR]"))  # the label is signed


def test_no_key_no_signature() -> None:
    raw = outbox.compose(from_addr=f"postmaster@{DOMAIN}", to="a@b.example", subject="s", body="b",
                         domain=DOMAIN, tlp=Tlp.RED)
    assert dkim_keys.sign_outgoing(config.load(None), raw) == raw


# -- tldops dkim check -------------------------------------------------------------------------------

def _check(cfg: Path, *more: str) -> subprocess.CompletedProcess[str]:
    return tldops("dkim", "check", "--config", str(cfg), *more)


def test_dkim_check_compares_the_published_record_with_the_key(tmp_path: Path, dns_server: DnsServer) -> None:
    key = tmp_path / "dkim.key"
    made = tldops("dkim", "keygen", "--out", str(key))
    assert made.returncode == 0 and "set dkim.key to it" in made.stdout
    published = "".join(re.findall(r'"([^"]*)"', made.stdout))
    name = f"tldops._domainkey.{DOMAIN}"
    cfg = write_config(tmp_path / "c.toml", {"dkim.key": str(key), "dns.nameservers": [dns_server.host],
                                             "dns.port": dns_server.port, "dns.timeout": 2.0})

    def fails(why: str) -> None:
        r = _check(cfg)
        assert r.returncode == 1 and r.stdout == "", r
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("tldops: ") and why in r.stderr, r.stderr

    fails(f"no TXT record at {name}: publish the key there")
    dns_server.set_txt(name, [published])
    r = _check(cfg)
    assert (r.returncode, r.stdout) == (0, f"the TXT record at {name} publishes {key}\n"), r.stderr
    doc = json.loads(_check(cfg, "--json").stdout)
    assert doc["ok"] is True and doc["published"] == doc["expected"] == published
    # The same key written as a bare RSAPublicKey (PKCS#1) is the same key.
    spki = base64.b64decode(published.split("p=")[1])
    pkcs1 = serialization.load_der_public_key(spki).public_bytes(serialization.Encoding.DER,
                                                                 serialization.PublicFormat.PKCS1)
    dns_server.set_txt(name, [f"v=DKIM1; k=rsa; p={base64.b64encode(pkcs1).decode()}"])
    assert _check(cfg).returncode == 0
    for record, why in ((rsa_key(2048, 1).record_text(), "it publishes another key"),
                        (ed25519_key().record_text(), "it is for k=ed25519, the key is k=rsa"),
                        (published.replace("k=rsa;", "k=rsa; t=y;"), "it is in testing mode (t=y)"),
                        ("v=DKIM1; k=rsa; p=", "it has no key (p= is empty: revoked)")):
        dns_server.set_txt(name, [record])
        fails(f"the TXT record at {name} does not match {key}: {why}")
        r = _check(cfg, "--json")
        assert r.returncode == 1 and why in json.loads(r.stdout)["problem"]
    dns_server.servfail(name)
    fails(f"cannot look up the TXT record at {name} now")
    # The old names are read: the broadcast's selector names the record looked up.
    old = write_config(tmp_path / "old.toml", {
        "broadcast.dkim_key": str(key), "broadcast.dkim_selector": "old",
        "dns.nameservers": [dns_server.host], "dns.port": dns_server.port})
    dns_server.set_txt(f"old._domainkey.{DOMAIN}", [published])
    assert _check(old).returncode == 0
    none = _check(write_config(tmp_path / "none.toml", {}))
    assert none.returncode == 1 and "no DKIM key configured (dkim.key)" in none.stderr


# -- the files keys name -----------------------------------------------------------------------------

FILE_KEYS = [k for k in config.SCHEMA if k.file]

BAD: dict[str, tuple[bytes, str]] = {
    "dkim-key": (b"-----BEGIN RSA PRIVATE KEY-----\nbm90IGEga2V5\n-----END RSA PRIVATE KEY-----\n",
                 "not a PEM private key that loads"),
    "tls-cert": (b"hello\n", "not a PEM certificate that loads"),
    "tls-key": (b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
                "not a PEM private key that loads"),
    "password": (b"\nthe password on the second line\n", "its first line, the password, is empty"),
}
"""Per kind: contents of the wrong kind, and what config check says of them."""


def ec_key() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _good(kind: str, cert: tuple[Path, Path]) -> bytes:
    return {"dkim-key": rsa_key(2048).private, "tls-cert": cert[0].read_bytes(),
            "tls-key": cert[1].read_bytes(), "password": b"s3cret\n"}[kind]


def _files(tmp_path: Path, contents: Callable[[str], bytes | None]) -> dict[str, Any]:
    """Settings naming a file for every file key: ``contents(kind)`` written (None: no file).
    mailman.password_file is relative, so it is looked for under the state directory."""
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    settings: dict[str, Any] = {"storage.state_dir": str(state)}
    for k in FILE_KEYS:
        path = state / f"{k.name}.file" if k.under_state else tmp_path / f"{k.dotted}.file"
        data = contents(k.file)
        if data is not None:
            path.write_bytes(data)
        settings[k.dotted] = path.name if k.under_state else str(path)
    settings["broadcast.dkim_key"] = settings["dkim.key"]  # the old name may name the same file
    return settings


def _problems(tmp_path: Path, settings: dict[str, Any]) -> dict[str, str]:
    r = tldops("config", "check", "--json", "--config", str(write_config(tmp_path / "c.toml", settings)))
    doc = json.loads(r.stdout)
    assert r.returncode == (1 if doc["problems"] else 0)
    return dict(p.split(": ", 1) for p in doc["problems"])


def test_every_path_key_has_its_kind_of_file() -> None:
    assert {k.dotted: k.file for k in FILE_KEYS} == {
        "server.tls_cert": "tls-cert", "server.tls_key": "tls-key", "dkim.key": "dkim-key",
        "outbox.smarthost_password_file": "password", "broadcast.dkim_key": "dkim-key",
        "mailman.password_file": "password"}


def test_config_check_names_each_missing_or_unreadable_file(tmp_path: Path) -> None:
    found = _problems(tmp_path, _files(tmp_path, lambda kind: None))
    assert set(found) == {k.dotted for k in FILE_KEYS}
    for k in FILE_KEYS:
        assert found[k.dotted].startswith("cannot read ") and "No such file or directory" in found[k.dotted]
    assert str(tmp_path / "state" / "password_file.file") in found["mailman.password_file"]
    folder = _problems(tmp_path, {"dkim.key": str(tmp_path)})  # a directory is no key either
    assert folder == {"dkim.key": f"cannot read {tmp_path}: Is a directory"}


def test_config_check_names_each_file_of_the_wrong_kind(tmp_path: Path) -> None:
    found = _problems(tmp_path, _files(tmp_path, lambda kind: BAD[kind][0]))
    assert set(found) == {k.dotted for k in FILE_KEYS}
    for k in FILE_KEYS:
        assert found[k.dotted].endswith(BAD[k.file][1]), found[k.dotted]


def test_config_check_accepts_files_of_the_right_kind(tmp_path: Path, cert: tuple[Path, Path]) -> None:
    assert _problems(tmp_path, _files(tmp_path, lambda kind: _good(kind, cert))) == {}


@pytest.mark.parametrize(("data", "why"), [
    (serialization.load_pem_private_key(rsa_key(2048).private, None).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase")),
     "the key is encrypted; the daemon cannot ask for a passphrase"),
    (ec_key(), "neither an RSA nor an Ed25519 key, the two DKIM signs with"),
    (b"c2hvcnQ=\n", "neither a PEM private key nor a base64 Ed25519 seed (32 octets)"),
    (b"not base64 at all!\n", "neither a PEM private key nor a base64 Ed25519 seed"),
])
def test_a_dkim_key_is_one_the_daemon_can_sign_with(tmp_path: Path, data: bytes, why: str) -> None:
    (tmp_path / "k").write_bytes(data)
    assert _problems(tmp_path, {"dkim.key": str(tmp_path / "k")}) == {"dkim.key": f"{tmp_path / 'k'}: {why}"}


def test_a_pkcs8_or_ed25519_dkim_key_is_accepted(tmp_path: Path) -> None:
    pkcs8 = serialization.load_pem_private_key(rsa_key(2048).private, None).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    for name, data in (("pkcs8", pkcs8), ("ed25519", ed25519_key().private)):
        (tmp_path / name).write_bytes(data)
        assert _problems(tmp_path, {"dkim.key": str(tmp_path / name)}) == {}, name


def test_a_certificate_and_a_key_that_do_not_belong_together(tmp_path: Path, cert: tuple[Path, Path]) -> None:
    other = tmp_path / "other.key"
    other.write_bytes(serialization.load_pem_private_key(rsa_key(2048).private, None).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    found = _problems(tmp_path, {"server.tls_cert": str(cert[0]), "server.tls_key": str(other)})
    assert list(found) == ["server.tls_key"] and found["server.tls_key"].startswith("does not go with")


@pytest.mark.parametrize("key", [k.dotted for k in FILE_KEYS])
def test_serve_refuses_to_start_on_a_bad_file_and_changes_nothing(tmp_path: Path, cert: tuple[Path, Path],
                                                                  key: str) -> None:
    kind = next(k.file for k in FILE_KEYS if k.dotted == key)
    bad = tmp_path / "bad.file"
    bad.write_bytes(BAD[kind][0])
    settings: dict[str, Any] = {"storage.state_dir": str(tmp_path / "state"), "metrics.listen": "",
                                "server.listen": ["127.0.0.1:0"], key: str(bad)}
    if key.startswith("server.tls_"):  # the other half of the pair, good
        settings.setdefault("server.tls_cert", str(cert[0]))
        settings.setdefault("server.tls_key", str(cert[1]))
    r = tldops("serve", "--config", str(write_config(tmp_path / "c.toml", settings)), cwd=tmp_path)
    assert r.returncode == 1
    assert f"configuration: {key}: {bad}: {BAD[kind][1]}" in r.stderr.splitlines(), r.stderr
    assert '"ready"' not in r.stdout and not (tmp_path / "state").exists()


def test_the_flows_check_the_daemon_key_published_in_dns(dns_server: DnsServer) -> None:
    """tests/own_dkim.py's check refuses what it must: no signature, another domain's."""
    own_dkim.publish(dns_server)
    raw = outbox.compose(from_addr=f"postmaster@{DOMAIN}", to="a@b.example", subject="s", body="b",
                         domain=DOMAIN, tlp=Tlp.RED)
    with pytest.raises(AssertionError, match="0 DKIM signatures"):
        own_dkim.assert_signed([raw], dns_server)
    good = dkim_keys.sign(raw, domain=DOMAIN, selector=own_dkim.SELECTOR,
                          key=dkim_keys.read_key(own_dkim.KEY.private))
    assert own_dkim.assert_signed([good], dns_server) == 1
    with pytest.raises(AssertionError, match="does not verify"):
        own_dkim.assert_signed([good.replace(b"\r\n\r\nb", b"\r\n\r\nc")], dns_server)


def test_the_fast_rsa_signature_is_dkimpys_to_the_octet() -> None:
    import hashlib

    from dkim.crypto import RSASSA_PKCS1_v1_5_sign, parse_pem_private_key

    for n in range(3):
        private = parse_pem_private_key(rsa_key(2048, n).private)
        for text in (b"", b"a header hash", bytes(range(256))):
            digest = hashlib.sha256(text)
            fast = dkim_keys.fast_rsassa_pkcs1_v1_5_sign(digest, private)
            assert fast == RSASSA_PKCS1_v1_5_sign(digest, private)


def test_a_reload_naming_a_missing_key_is_refused_and_no_mail_goes_out_unsigned(
        start_daemon: Callable[..., Any], tmp_path: Path, dns_server: DnsServer) -> None:
    import shutil
    import signal

    own_dkim.publish(dns_server)
    d = start_daemon({**own_dkim.key_settings(tmp_path / "keys"), "worker.retry_base": 0.2})
    gone = tmp_path / "gone.key"
    write_config(d.config_path, {**d.settings, "dkim.key": str(gone)})
    mark = d.mark()
    d.signal(signal.SIGHUP)
    refused = d.wait_for("reload refused, keeping the running configuration", after=mark)
    assert "dkim.key" in str(refused["problems"]) and "gone.key" in str(refused["problems"])
    # A worker started later reads the file: the mail it writes waits for the key (it is
    # never sent unsigned), and goes, signed, once the key is there.
    with smtplib.SMTP(d.host, d.port, timeout=10) as s:
        s.sendmail("jane@nic.example", [f"help@{DOMAIN}"],
                   b"From: jane@nic.example\r\nSubject: help\r\n\r\nhow?\r\n")
    d.wait_for("outcome not recorded, will retry", lambda r: "gone.key" in r.get("reason", ""), after=mark)
    assert d.query("SELECT count(*) FROM outbox_messages") == [(0,)]
    shutil.copy(tmp_path / "keys" / "daemon-dkim.key", gone)
    d.wait_for("mail delivered", after=mark)
    assert own_dkim.assert_signed(own_dkim.outgoing_files(d.state_dir), dns_server) == 1

"""STARTTLS with a certificate made at test time: offered, TLS 1.2 or newer only, mail
delivered over it, and nothing sent in plain text before the handshake carried into it."""

from __future__ import annotations

import json
import smtplib
import ssl
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from daemon_proc import DaemonProc
from smtp_checks import GOOD_RCPT, assert_serving, expect, queue_id, spool_count, spooled
from smtp_raw import RawClient, message, open_session

Start = Callable[..., DaemonProc]


@pytest.fixture
def d(start_daemon: Start, cert: tuple[Path, Path]) -> DaemonProc:
    crt, key = cert
    return start_daemon({"server.tls_cert": str(crt), "server.tls_key": str(key)})


def verifying_context(cert: tuple[Path, Path]) -> ssl.SSLContext:
    """Trusts only our test certificate, and checks it names 127.0.0.1."""
    return ssl.create_default_context(cafile=str(cert[0]))


def test_starttls_is_offered_and_mail_goes_over_it(d: DaemonProc, cert: tuple[Path, Path]) -> None:
    data = message("over-tls")
    with smtplib.SMTP(d.host, d.port, timeout=10) as s:
        s.ehlo("client.test")
        assert s.has_extn("starttls")
        assert not s.has_extn("auth")
        assert s.starttls(context=verifying_context(cert)) == (220, b"2.0.0 Ready to start TLS")
        assert isinstance(s.sock, ssl.SSLSocket)
        version = s.sock.version()
        assert version in ("TLSv1.2", "TLSv1.3"), version
        assert s.sock.getpeercert(binary_form=True) == ssl.PEM_cert_to_DER_cert(
            cert[0].read_text())
        code, _ = s.ehlo("client.test")
        assert code == 250
        assert not s.has_extn("starttls")  # not twice
        assert not s.has_extn("auth")  # no AUTH, over TLS either
        code, text = s.docmd("AUTH", "PLAIN AHVzZXIAcGFzcw==")
        assert (code, text[:5]) == (502, b"5.5.1"), text
        s.mail("admin@nic.example")
        assert s.rcpt(GOOD_RCPT) == (250, b"2.1.5 Recipient OK")
        code, text = s.data(data)
    assert code == 250 and text.startswith(b"2.0.0 Ok: queued as "), text
    qid = text.decode().rsplit(" ", 1)[1]
    assert spooled(d) == [(qid, json.dumps([GOOD_RCPT]), data)]


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3],
                         ids=["TLSv1.2", "TLSv1.3"])
def test_tls_1_2_and_1_3_clients_are_served(d: DaemonProc, cert: tuple[Path, Path],
                                            version: ssl.TLSVersion) -> None:
    ctx = verifying_context(cert)
    ctx.minimum_version = ctx.maximum_version = version
    with smtplib.SMTP(d.host, d.port, timeout=10) as s:
        s.ehlo("client.test")
        assert s.starttls(context=ctx)[0] == 220
        assert isinstance(s.sock, ssl.SSLSocket)
        assert s.sock.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2",
                                    ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
        assert s.noop() == (250, b"2.0.0 OK")


def test_a_tls_1_1_client_is_refused(d: DaemonProc) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1/TLSv1_1 are deprecated
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.check_hostname = False
        old.verify_mode = ssl.CERT_NONE
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("ALL:@SECLEVEL=0")  # so that this client can offer TLS 1.1 at all
    mark = d.mark()
    with smtplib.SMTP(d.host, d.port, timeout=10) as s:
        s.ehlo("client.test")
        with pytest.raises(ssl.SSLError):
            s.starttls(context=old)
    # The server got the old client's hello and refused its protocol version.
    failed = d.wait_for("tls handshake failed", after=mark)
    assert failed["reason"] == "UNSUPPORTED_PROTOCOL"
    assert not [r for r in d.lines[mark:] if r.get("level") == "error"]
    d.wait_for("connection closed", lambda r: r.get("session") == failed["session"], after=mark)
    assert spool_count(d) == 0
    assert_serving(d)


def test_plain_text_pipelined_after_starttls_is_discarded(d: DaemonProc,
                                                          cert: tuple[Path, Path]) -> None:
    """CVE-2024-34083 shape: commands sent in clear text with STARTTLS must not run as if
    they had come over TLS."""
    c = open_session(d.connect())
    c.send(b"STARTTLS\r\nVRFY <" + GOOD_RCPT.encode() + b">\r\n")
    expect(c.reply(), 220, "2.0.0")
    assert c.buf == b""
    tls = verifying_context(cert).wrap_socket(c.sock, server_hostname=d.host)
    t = RawClient(tls)
    expect(t.cmd("NOOP"), 250, "2.0.0")  # the first reply is to NOOP, not 252 to the VRFY
    code, ehlo = t.cmd("EHLO client.test")
    assert code == 250 and "STARTTLS" not in ehlo
    expect(t.cmd("MAIL FROM:<admin@nic.example>"), 250, "2.1.0")
    expect(t.cmd(f"RCPT TO:<{GOOD_RCPT}>"), 250, "2.1.5")
    assert t.cmd("DATA")[0] == 354
    t.send(message("tls-raw") + b".\r\n")
    queue_id(t.reply())
    expect(t.cmd("QUIT"), 221, "2.0.0")
    assert spool_count(d) == 1
    assert [raw for _, _, raw in spooled(d)] == [message("tls-raw")]

"""The outbox through a smarthost that wants STARTTLS and a login, as a real relay does.

The daemon trusts the test's self-signed certificate through SSL_CERT_FILE (the default
verification paths), so the certificate is verified as in production: no test-only switch.
The mail that goes out is the help@ reply: from the null sender, as RFC 3834 wants.
"""

from __future__ import annotations

import smtplib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemon_proc import DOMAIN, DaemonProc
from smtp_sink import SmtpSink

USER, PASSWORD = "relay-user", "correct horse"


@pytest.fixture
def sink(cert: tuple[Path, Path]) -> Iterator[SmtpSink]:
    s = SmtpSink(tls=cert, login=(USER, PASSWORD))
    yield s
    s.stop()


def relayed_daemon(start_daemon: Callable[..., DaemonProc], sink: SmtpSink, cert: tuple[Path, Path],
                   tmp_path: Path, password: str, **extra: object) -> DaemonProc:
    secret = tmp_path / "relay-password"
    secret.write_text(password + "\n")
    return start_daemon({"outbox.smarthost": f"127.0.0.1:{sink.port}", "outbox.smarthost_user": USER,
                         "outbox.smarthost_password_file": str(secret), "worker.retry_base": 0.2,
                         **extra}, env={"SSL_CERT_FILE": str(cert[0])})


def ask_for_help(d: DaemonProc) -> None:
    with smtplib.SMTP(d.host, d.port, timeout=10) as s:
        s.sendmail("someone@nic.example", [f"help@{DOMAIN}"],
                   b"From: someone@nic.example\r\nSubject: help\r\n\r\nhow?\r\n")


def test_mail_goes_to_the_smarthost_over_starttls_with_a_login(
        start_daemon: Callable[..., DaemonProc], sink: SmtpSink, cert: tuple[Path, Path],
        tmp_path: Path) -> None:
    d = relayed_daemon(start_daemon, sink, cert, tmp_path, PASSWORD)
    ask_for_help(d)
    got = sink.wait_for(lambda r: "someone@nic.example" in r.rcpt_tos)
    assert (got.tls, got.login, got.mail_from) == (True, USER, "<>")  # the null sender
    assert d.wait_for("mail delivered")["how"] == "relayed"


def test_a_wrong_password_defers_the_mail_until_it_is_fixed(
        start_daemon: Callable[..., DaemonProc], sink: SmtpSink, cert: tuple[Path, Path],
        tmp_path: Path) -> None:
    d = relayed_daemon(start_daemon, sink, cert, tmp_path, "wrong")
    ask_for_help(d)
    deferred = d.wait_for("delivery deferred")
    assert "535" in deferred["error"] and sink.received == []
    (tmp_path / "relay-password").write_text(PASSWORD + "\n")  # read at each attempt
    got = sink.wait_for(lambda r: "someone@nic.example" in r.rcpt_tos)
    assert got.login == USER


def test_no_mail_goes_in_clear_when_the_smarthost_offers_no_starttls(
        start_daemon: Callable[..., DaemonProc], cert: tuple[Path, Path], tmp_path: Path) -> None:
    plain = SmtpSink()
    try:
        d = relayed_daemon(start_daemon, plain, cert, tmp_path, PASSWORD)
        ask_for_help(d)
        deferred = d.wait_for("delivery deferred")
        assert "STARTTLS" in deferred["error"]
        assert plain.received == []
    finally:
        plain.stop()


def test_mail_goes_to_a_smarthost_that_speaks_tls_from_the_first_byte(
        start_daemon: Callable[..., DaemonProc], cert: tuple[Path, Path], tmp_path: Path) -> None:
    smtps = SmtpSink(tls=cert, login=(USER, PASSWORD), implicit_tls=True)
    try:
        d = relayed_daemon(start_daemon, smtps, cert, tmp_path, PASSWORD,
                           **{"outbox.smarthost_tls": "tls"})
        ask_for_help(d)
        got = smtps.wait_for(lambda r: "someone@nic.example" in r.rcpt_tos)
        assert got.login == USER
    finally:
        smtps.stop()

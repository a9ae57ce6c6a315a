"""Configuration: one TOML file, every key declared once with its default, check and doc.

The schema is data (``SCHEMA``) so that validation, ``config show``, ``docs/configuration.md``
and the test that keeps the docs complete all read the same table. The code reads the values
through one frozen dataclass per section (``cfg.server.domain`` is a ``str``), which
tests/test_config_sections.py keeps in step with the schema.
"""

from __future__ import annotations

import ipaddress
import json
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tldops_mta.settings.sections import (
    AddressesConfig,
    AuthConfig,
    BouncesConfig,
    BroadcastConfig,
    DkimConfig,
    DnsConfig,
    FreshnessConfig,
    HousekeepingConfig,
    IanaConfig,
    ListConfig,
    LogConfig,
    MailmanConfig,
    MetricsConfig,
    OutboxConfig,
    OutreachConfig,
    PostmasterConfig,
    PublishConfig,
    RedelegationConfig,
    RulesConfig,
    ServerConfig,
    StorageConfig,
    ValidationConfig,
    WorkerConfig,
    build_section,
)

Check = Callable[[Any], str | None]
"""Returns None when a value is acceptable, else what is allowed."""


@dataclass(frozen=True)
class Key:
    section: str
    name: str
    default: Any
    check: Check
    doc: str
    file: str = ""
    """The kind of file the key names (a kind of config_files.KINDS), "" for none: ``config
    check`` and ``serve`` check that the file is there and holds that kind of content."""
    under_state: bool = False
    """A relative path is from storage.state_dir, not from the working directory."""

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}"


def _int_range(lo: int, hi: int) -> Check:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            return f"an integer from {lo} to {hi}"
        return None

    return check


def _float_range(lo: float, hi: float) -> Check:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
            return f"a number from {lo:g} to {hi:g}"
        return None

    return check


def _string(pattern: str, what: str) -> Check:
    rx = re.compile(pattern)

    def check(v: Any) -> str | None:
        if not isinstance(v, str) or not rx.fullmatch(v):
            return what
        return None

    return check


def _one_of(*choices: str) -> Check:
    def check(v: Any) -> str | None:
        if v not in choices:
            return "one of " + ", ".join(repr(c) for c in choices)
        return None

    return check


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def _path_or_empty(v: Any) -> str | None:
    if not isinstance(v, str) or "\0" in v:
        return "a file path, or \"\" for none"
    return None


def _path(v: Any) -> str | None:
    if not isinstance(v, str) or not v or "\0" in v:
        return "a non-empty path"
    return None


def parse_listen(spec: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` or ``[V6]:PORT``; raises ValueError with what is allowed."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]]+):(\d{1,5})", spec)
    if not m:
        raise ValueError("HOST:PORT or [IPv6]:PORT, e.g. 127.0.0.1:2525 or [::1]:2525")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 0 <= port <= 65535:
        raise ValueError("a port from 0 to 65535")
    if m.group(1):
        ipaddress.IPv6Address(host)
    return host, port


def _listen_list(v: Any) -> str | None:
    allowed = "a non-empty list of \"HOST:PORT\" or \"[IPv6]:PORT\" strings"
    if not isinstance(v, list) or not v or not all(isinstance(s, str) for s in v):
        return allowed
    for s in v:
        try:
            parse_listen(s)
        except ValueError:
            return allowed + f" (bad: {s!r})"
    return None


def _metrics_listen(v: Any) -> str | None:
    allowed = "\"HOST:PORT\", \"[IPv6]:PORT\", or \"\" for no endpoint"
    if not isinstance(v, str):
        return allowed
    if not v:
        return None
    try:
        parse_listen(v)
    except ValueError:
        return allowed
    return None


def _addresses(v: Any) -> str | None:
    allowed = "a list of IP addresses such as \"127.0.0.1\" or \"::1\""
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        return allowed
    for s in v:
        try:
            ipaddress.ip_address(s)
        except ValueError:
            return allowed + f" (bad: {s!r})"
    return None


def _networks(v: Any) -> str | None:
    allowed = "a list of IP networks such as \"127.0.0.0/8\" or \"::1/128\""
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        return allowed
    for s in v:
        try:
            ipaddress.ip_network(s, strict=False)
        except ValueError:
            return allowed + f" (bad: {s!r})"
    return None


_MAILBOX = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z0-9-]+"


def _mailboxes(v: Any) -> str | None:
    allowed = "a list of mail addresses such as [\"validator@example.org\"]"
    if not isinstance(v, list) or not all(isinstance(s, str) and re.fullmatch(_MAILBOX, s) for s in v):
        return allowed
    return None


_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = rf"(?=.{{1,253}}$)({_LABEL}\.)*{_LABEL}"
_LOCAL = r"[a-z0-9][a-z0-9._-]{0,40}"
_LOCAL_DOC = "a lower-case local part of letters, digits, '.', '_' or '-'"

SCHEMA: tuple[Key, ...] = (
    Key("server", "listen", ["127.0.0.1:2525"], _listen_list,
        "Addresses to listen on. IPv6 in brackets. Ignored when systemd passes sockets."),
    Key("server", "domain", "tld-ops.localhost", _string(_DOMAIN, "a DNS domain name"),
        "The mail domain of the service addresses (requests@, who@, ...)."),
    Key("server", "hostname", "", _string(f"|{_DOMAIN}", "a host name, or \"\" for the domain"),
        "Name in the greeting and EHLO reply. Empty means the domain. Always set, so no "
        "connection waits on a reverse lookup of our own name."),
    Key("server", "max_message_size", 2 * 1024 * 1024, _int_range(1024, 64 * 1024 * 1024),
        "Largest message accepted, in octets (SIZE in EHLO). Larger gets 552 5.3.4."),
    Key("server", "max_connections", 1000, _int_range(1, 100_000),
        "Open SMTP connections at once. More get 421 4.7.0 and are closed."),
    Key("server", "max_connections_per_ip", 50, _int_range(1, 100_000),
        "Open SMTP connections from one client address. More get 421 4.7.0."),
    Key("server", "limit_exempt", [], _networks,
        "Client networks not counted against max_connections_per_ip (e.g. a Postfix in "
        "front on loopback)."),
    Key("server", "trusted_relays", [], _networks,
        "Client networks whose XFORWARD is believed (a Postfix in front with "
        "smtp_send_xforward_command = yes): the spool then records the real client's address "
        "and HELO as the relay forwards them, and the relay's own address beside them. Others "
        "are not offered XFORWARD and get 550 5.7.0 for it."),
    Key("server", "max_recipients", 20, _int_range(1, 1000),
        "Recipients in one transaction. More get 452 4.5.3."),
    Key("server", "idle_timeout", 60.0, _float_range(0.1, 3600),
        "Seconds a client may stay silent between commands (and for the whole DATA "
        "phase) before 421 4.4.2."),
    Key("server", "session_timeout", 600.0, _float_range(0.1, 86400),
        "Seconds a whole connection may last, however busy, before 421 4.4.2. Cuts slow "
        "clients that send one byte at a time."),
    Key("server", "max_commands", 1000, _int_range(5, 1_000_000),
        "Commands in one connection. More get 421 4.7.0 and the connection is closed."),
    Key("server", "tls_cert", "", _path_or_empty,
        "PEM certificate chain for STARTTLS. Empty: no STARTTLS.", file="tls-cert"),
    Key("server", "tls_key", "", _path_or_empty, "PEM private key for tls_cert (unencrypted).",
        file="tls-key"),
    Key("server", "shutdown_grace", 10.0, _float_range(0, 600),
        "On SIGTERM, seconds to let transactions in DATA finish before closing."),
    Key("addresses", "requests", "requests", _string(_LOCAL, _LOCAL_DOC),
        "Local part for subscription, update and removal requests from IANA admin contacts."),
    Key("addresses", "confirm", "confirm", _string(_LOCAL, _LOCAL_DOC),
        "Local part for token confirmations (confirm+TOKEN@)."),
    Key("addresses", "decide", "decide", _string(_LOCAL, _LOCAL_DOC),
        "Local part for Validator decisions (decide+TOKEN@)."),
    Key("addresses", "who", "who", _string(_LOCAL, _LOCAL_DOC),
        "Local part for SSC roster queries."),
    Key("addresses", "list", "list", _string(_LOCAL, _LOCAL_DOC),
        "Local part of the built-in TLD-OPS list: a post from an SSC goes to every SSC."),
    Key("addresses", "update", "update", _string(_LOCAL, _LOCAL_DOC),
        "Local part for SSC self-updates."),
    Key("addresses", "help", "help", _string(_LOCAL, _LOCAL_DOC),
        "Local part that answers with the request template."),
    Key("addresses", "bounces", "bounces", _string(_LOCAL, _LOCAL_DOC),
        "Local part for delivery reports (bounces+TAG@)."),
    Key("addresses", "postmaster", "postmaster", _string(_LOCAL, _LOCAL_DOC),
        "Local part for the postmaster (RFC 5321 requires it). Its mail goes to "
        "postmaster.forward_to."),
    Key("addresses", "abuse", "abuse", _string(_LOCAL, _LOCAL_DOC),
        "Local part for abuse reports (RFC 2142). Its mail goes to postmaster.forward_to."),
    Key("postmaster", "forward_to", [], _mailboxes,
        "The operators' addresses: mail to postmaster@ and abuse@ is forwarded to them (the "
        "original attached unchanged, as message/rfc822), through the outbox. Our own mail, "
        "mail from the null sender and automatic answers to our mail are never forwarded "
        "(no loop). Empty: that mail stays in the spool, and `tldops status` reports it "
        "unread until `tldops spool read ID`."),
    Key("storage", "state_dir", "state", _path,
        "Runtime directory: the database lives here. Relative paths are from the working "
        "directory."),
    Key("storage", "database", "tldops.sqlite3", _path,
        "SQLite file name, relative to state_dir unless absolute."),
    Key("storage", "retention_days", 90, _int_range(1, 36_500),
        "Days the octets of a processed message (and of sent outgoing mail) are kept; the "
        "nightly housekeeping removes older ones. Their envelope, status and history stay."),
    Key("housekeeping", "hour", 3, _int_range(0, 23),
        "Hour of the day (UTC) of the nightly housekeeping: the retention purge and, once a "
        "month, the statistics mail to the Validators and the Standing Committee."),
    Key("housekeeping", "monthly_stats", True, _bool,
        "Mail `tldops stats` to validation.validators and validation.committee once a month."),
    Key("storage", "busy_timeout_ms", 5000, _int_range(0, 600_000),
        "How long a write waits for a lock held by another process before it fails "
        "(the SMTP reply is then 451 4.3.0)."),
    Key("storage", "max_size_mb", 0, _int_range(0, 1_000_000),
        "Cap on the database size in MiB; 0 means only the disk limits it. When full, "
        "new mail gets 452 4.3.1."),
    Key("storage", "commit_timeout", 30.0, _float_range(1, 600),
        "Seconds an SMTP session waits for its message to be committed before answering "
        "451 4.3.0 (a hung disk or a stuck spool appender). Longer than busy_timeout_ms."),
    Key("storage", "group_commit_max", 512, _int_range(1, 100_000),
        "Most writes committed together in one transaction (one fsync)."),
    Key("worker", "batch_size", 64, _int_range(1, 10_000),
        "Spooled messages the worker claims at once."),
    Key("worker", "linger", 0.05, _float_range(0, 5),
        "Seconds the worker lets a part-filled batch fill up before claiming it. Under load "
        "this makes fewer, larger transactions (less contention with the SMTP intake for "
        "the database); each message waits at most this much longer. 0: claim at once."),
    Key("worker", "max_idle", 300.0, _float_range(0, 86400),
        "Seconds the worker process stays with nothing to do before it exits; the SMTP "
        "process starts it again when mail arrives or queued work falls due (Postfix's "
        "max_idle). 0: it runs from start to stop."),
    Key("worker", "cpu_class", "auto", _one_of("auto", "idle", "batch"),
        "How the worker process shares the CPU with SMTP intake. 'idle' (SCHED_IDLE): it runs "
        "only on a core nothing else wants, so it never delays a 250 reply; where other "
        "programs keep every core busy it can fall far behind (`tldops status` warns when mail "
        "waits over 10 minutes). 'batch' (SCHED_BATCH, nice 10): a small share even then, at "
        "some cost to intake under load. 'auto': idle with two cores or more to run on, batch "
        "with one. Applies when the worker next starts."),
    Key("worker", "processes", 0, _int_range(0, 1024),
        "Worker processes that take spooled mail, each on a core of its own (they never take "
        "the same message twice). The first also runs the outbox, the queue's clock, the "
        "broadcast, the redelegation watch, housekeeping, Mailman and the freshness asks. "
        "0: one per CPU the daemon may run on (its affinity), at least 1. Applies when the "
        "daemon starts."),
    Key("worker", "max_attempts", 5, _int_range(1, 1000),
        "Attempts before a message that keeps failing is marked failed (kept, never "
        "dropped; `tldops spool retry` re-queues it)."),
    Key("worker", "retry_base", 30.0, _float_range(0.01, 86400),
        "Seconds before the first retry of a failed attempt; doubles each time."),
    Key("worker", "retry_max", 3600.0, _float_range(0.01, 604800),
        "Longest wait between retries, in seconds."),
    Key("worker", "max_wait", 600.0, _float_range(0, 604800),
        "Seconds after which a spooled message is taken ahead of the priority lanes (oldest "
        "first), so that no message waits for ever behind the fast lanes. 0: arrival order."),
    Key("worker", "fast_lane_budget", 10, _int_range(0, 100_000),
        "Messages from one known address (an IANA administrative contact, a Validator, an "
        "SSC) that are taken ahead of ordinary mail per fast_lane_window; beyond that its "
        "mail waits in the ordinary lane, so a flood that forges it cannot hold the lane. "
        "0: no known lane (replies to one-time addresses still go first). The spool appender "
        "decides the lane: a change applies when it next starts (a restart of tldops serve)."),
    Key("worker", "fast_lane_window", 600.0, _float_range(1, 604800),
        "Seconds over which fast_lane_budget counts. Applies when the spool appender next "
        "starts (a restart of tldops serve)."),
    Key("dns", "nameservers", [], _addresses,
        "DNS servers for DKIM key lookups (IP addresses). Empty: those of /etc/resolv.conf."),
    Key("dns", "port", 53, _int_range(1, 65535), "Port of the DNS servers above."),
    Key("dns", "timeout", 5.0, _float_range(0.1, 60),
        "Seconds a DNS lookup may take. A lookup that fails is temporary: the request waits."),
    Key("dkim", "min_rsa_bits", 2048, _int_range(1024, 16384),
        "Shortest RSA key a DKIM signature may use to count (never below 1024)."),
    Key("dkim", "alignment", "strict", _one_of("strict", "relaxed"),
        "strict: a signature counts only if d= is the From domain. relaxed: d= may be the "
        "From domain's organisational domain (public suffix list)."),
    Key("dkim", "key", "", _path_or_empty,
        "Private key that signs every mail the daemon sends, once, when it is written (`tldops "
        "dkim keygen` makes one: RSA-2048 PEM or Ed25519); by server.domain, over From, To, the "
        "labelled Subject, Date, Message-ID and the other fields a reader sees, those named once "
        "more than present (over-signed: a second From cannot be added). Publish it "
        "(docs/deploy.md) and compare with `tldops dkim check`. Empty: "
        "broadcast.dkim_key, its old name; both empty: mail goes out unsigned. Both set to "
        "different values: refused.", file="dkim-key"),
    Key("dkim", "selector", "tldops", _string(r"[a-z0-9][a-z0-9-]{0,62}", "a DNS label"),
        "Selector of dkim.key: its TXT record is SELECTOR._domainkey.DOMAIN. Left at \"tldops\": "
        "broadcast.dkim_selector, its old name. Both changed to different values: refused."),
    Key("iana", "rdap_url", "https://rdap.iana.org/",
        _string(r"https?://[^\s]+/", "an http(s) URL ending in /"),
        "Base URL of IANA's RDAP service; domain/TLD is appended."),
    Key("iana", "whois_host", "whois.iana.org",
        _string(f"{_DOMAIN}|[0-9.]+|[0-9A-Fa-f:]+", "a host name or address"),
        "IANA's WHOIS server, used when RDAP fails."),
    Key("iana", "whois_port", 43, _int_range(1, 65535), "Port of the WHOIS server."),
    Key("iana", "timeout", 10.0, _float_range(0.1, 120), "Seconds one RDAP or WHOIS query may take."),
    Key("iana", "fresh_for", 86400.0, _float_range(0, 30 * 86400),
        "Seconds a cached IANA answer is used without asking IANA again."),
    Key("iana", "usable_for", 7 * 86400.0, _float_range(0, 365 * 86400),
        "When IANA cannot be reached, cached answers up to this age still count; an older "
        "one makes the request wait and retry (never a refusal)."),
    Key("auth", "token_ttl", 7 * 86400.0, _float_range(60, 90 * 86400),
        "Seconds a confirmation token stays valid."),
    Key("auth", "max_open_confirmations", 3, _int_range(1, 1_000_000),
        "Requests of one ccTLD that may wait at once for its IANA administrative contact's "
        "confirmation; beyond them a request is refused without mail to the contact, so that "
        "a flood of requests forging the contact's address cannot flood their mailbox."),
    Key("auth", "replay_window", 7 * 86400.0, _float_range(60, 90 * 86400),
        "A signed request whose Date is older than this, or whose Message-ID was seen before, "
        "is not verified again: it needs a token confirmation."),
    Key("auth", "refusal_interval", 86400.0, _float_range(0, 30 * 86400),
        "At most one automatic reply of each kind (a refusal, the help template) per "
        "sender in this many seconds (no backscatter)."),
    Key("outbox", "smarthost", "",
        _string(r"|[^\s:]+:\d{1,5}|\[[0-9A-Fa-f:.]+\]:\d{1,5}", "\"\" or HOST:PORT"),
        "Relay for outgoing mail. Empty: outgoing mail is written to outbox.maildir instead."),
    Key("outbox", "maildir", "outgoing", _path,
        "Directory (relative to state_dir unless absolute) where outgoing mail is kept when "
        "no smarthost is set: one .eml file per message and recipient."),
    Key("outbox", "smarthost_tls", "starttls", _one_of("none", "starttls", "tls"),
        "How to talk to the smarthost: starttls (required, TLS 1.2 or newer), tls (TLS from "
        "the first byte, port 465), none (plain; only for a relay on loopback)."),
    Key("outbox", "smarthost_user", "", _string(r"[^\s]{0,200}", "a user name without spaces"),
        "Login for the smarthost (after TLS). Empty: no login."),
    Key("outbox", "smarthost_password_file", "", _path_or_empty,
        "File holding the smarthost password (its first line), so no secret sits in the "
        "configuration.", file="password"),
    Key("validation", "validators", ["validator@tld-ops.localhost"], _mailboxes,
        "The Validators' addresses: each waiting request is mailed to them, and only their "
        "DKIM-signed replies to decide+TOKEN@ count. The default is a placeholder that "
        "stays in the local outbox."),
    Key("validation", "committee", "committee@tld-ops.localhost",
        _string(f"|{_MAILBOX}", "a mail address or \"\""),
        "The Standing Committee's address, to which escalated requests are mailed. Empty: "
        "escalation is refused."),
    Key("validation", "decision_auth", "dkim", _one_of("dkim", "dkim-or-confirmation"),
        "How a Validator's decision by mail is authenticated. dkim: only with a DKIM "
        "signature of the Validator's domain that counts. dkim-or-confirmation: a decision "
        "without one is confirmed by a one-time token sent to the Validator's address."),
    Key("validation", "remind_after", 3 * 86400.0, _float_range(1, 365 * 86400),
        "Seconds a request may wait for a Validator before they are reminded (then again "
        "after as long)."),
    Key("validation", "expire_after", 14 * 86400.0, _float_range(1, 365 * 86400),
        "Seconds a request may wait for a Validator before it expires (the requester is "
        "told). Escalated requests do not expire."),
    Key("broadcast", "enabled", True, _bool,
        "Send the roster to every SSC on the schedule below. false: only `tldops broadcast now`."),
    Key("broadcast", "weekday", "monday", _one_of("monday", "tuesday", "wednesday", "thursday",
                                                  "friday", "saturday", "sunday"),
        "The day of the broadcasts: monthly on the first such day of the month, and weekly on "
        "it when the roster changed between the last broadcast and that day's hour."),
    Key("broadcast", "hour", 9, _int_range(0, 23), "The hour (UTC) of the broadcasts."),
    Key("broadcast", "weekly_if_changed", True, _bool,
        "Also broadcast weekly (on `weekday` at `hour`) when the roster changed between the "
        "last broadcast and that moment; a change is never broadcast at once."),
    Key("broadcast", "catch_up", 3 * 86400.0, _float_range(0, 31 * 86400),
        "A daemon that was down when a broadcast was due sends it when it comes back, once, "
        "if that is within this many seconds of the due time (else the next one is awaited)."),
    Key("broadcast", "dkim_key", "", _path_or_empty,
        "Old name of dkim.key, which signs every mail (the broadcast too); read when dkim.key "
        "is empty.", file="dkim-key"),
    Key("broadcast", "dkim_selector", "tldops", _string(r"[a-z0-9][a-z0-9-]{0,62}", "a DNS label"),
        "Old name of dkim.selector; read when dkim.selector is left at \"tldops\"."),
    Key("broadcast", "tlp", "AMBER", _one_of("RED", "AMBER+STRICT", "AMBER", "GREEN", "CLEAR"),
        "The TLP label of the roster, in the Subject ([TLP:AMBER] ...) of every mail that "
        "carries roster data. A reply is never labelled less strictly than what it answers "
        "(no label there means RED)."),
    Key("list", "name", "TLD-OPS", _string(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,40}",
                                           "letters, digits, spaces, '.', '_' or '-' (at most 41)"),
        "The list's name: in its List-Id and, when the author's domain publishes a strict DMARC "
        "policy (p=quarantine or p=reject), in the From of the copy (\"Name via TLD-OPS\"). "
        "Posts are archived nowhere: the TLP rules of the SECIR report forbid public archives."),
    Key("list", "moderate_first_posts", False, _bool,
        "Hold an SSC's first post (none of theirs distributed before) until a Validator "
        "releases it (`tldops list release ID`) or rejects it (`tldops list reject ID REASON`); "
        "the author and the Validators are told. Once one post is released, the author's "
        "later posts go straight through."),
    Key("redelegation", "check_every", 86400.0, _float_range(1, 30 * 86400),
        "Seconds between two checks of a ccTLD's IANA administrative contact (nightly)."),
    Key("redelegation", "spacing", 30.0, _float_range(0, 3600),
        "Seconds between two IANA lookups of the watch: the checks are spread out, never a burst."),
    Key("freshness", "enabled", True, _bool,
        "Ask each SSC once per freshness.interval_days whether their roster entry (name, phone, "
        "address, role) is still right. Turned on with an existing roster, the first asks are "
        "spread over one interval, never sent in one burst."),
    Key("freshness", "interval_days", 365, _int_range(1, 3650),
        "Days between two asks to one SSC, counted from when they were added or last confirmed."),
    Key("freshness", "max_per_hour", 20, _int_range(1, 10_000),
        "At most this many asks and reminders in any hour; what is due beyond waits."),
    Key("freshness", "remind_after", 14 * 86400.0, _float_range(60, 365 * 86400),
        "Seconds after an ask without an answer before the first reminder; the second follows "
        "after twice this."),
    Key("freshness", "stale_after", 42 * 86400.0, _float_range(60, 365 * 86400),
        "Seconds after an ask without an answer before the SSC is unconfirmed: the ccTLD's IANA "
        "administrative contact and the Validators are told. Nobody is removed."),
    Key("bounces", "threshold", 3, _int_range(1, 1000),
        "Permanent failures of one SSC address (bounces to bounces+TAG@, or refusals by the "
        "smarthost) within bounces.window before the Validators are told. Nobody is removed."),
    Key("bounces", "window", 30 * 86400.0, _float_range(3600, 365 * 86400),
        "Seconds over which failures are counted; an address is reported again at most once "
        "in this time."),
    Key("log", "level", "info", _one_of("debug", "info", "warning", "error"),
        "Least severe log level written. Personal data appears only at debug."),
    Key("metrics", "listen", "127.0.0.1:9325", _metrics_listen,
        "HOST:PORT of the Prometheus endpoint (/metrics), served by the SMTP process; keep it "
        "on loopback (or behind a proxy). Port 0: any free port (logged in the 'ready' line). "
        "Empty: no endpoint."),
    Key("mailman", "rest_url", "", _string(r"(https?://\S+)?", "an http(s):// URL, or \"\""),
        "Mailman 3 REST API (e.g. http://127.0.0.1:8001/3.1). Set: the roster's SSC addresses "
        "are kept as the members of mailman.list, and the broadcast is posted to the list."),
    Key("mailman", "user", "restadmin", _string(r"\S+", "a user name"),
        "User of the Mailman REST API."),
    Key("mailman", "password_file", "", _string(r".*", "a path, or \"\""),
        "File holding the REST API password (first line; relative to state_dir unless absolute).",
        file="password", under_state=True),
    Key("mailman", "list", "", _string(r"|[^\s@]+@[^\s@]+", "LIST@DOMAIN, or \"\""),
        "The Mailman list (its posting address) whose members are the roster's SSCs."),
    Key("mailman", "lmtp", "127.0.0.1:8024",
        _string(r"[^\s:]+:\d{1,5}|\[[0-9A-Fa-f:.]+\]:\d{1,5}", "HOST:PORT"),
        "Mailman's LMTP server, where the broadcast is posted (as an MTA delivers list mail)."),
    Key("mailman", "retry_base", 30.0, _float_range(0.05, 3600),
        "Seconds before the first retry of a failed Mailman call; doubles up to retry_max."),
    Key("mailman", "retry_max", 3600.0, _float_range(1, 86400),
        "Longest wait between two retries of a failed Mailman call (retried without end)."),
    Key("outreach", "interval_days", 90, _int_range(1, 3650),
        "`tldops invite` mails a non-subscribed ccTLD's IANA administrative contact at most "
        "once in this many days."),
    Key("outreach", "home_url", "", _string(r"(https://\S+)?", "an https:// URL, or \"\""),
        "The TLD-OPS home page, named in invitations (empty: not named)."),
    Key("publish", "dir", "", _path_or_empty,
        "Directory of the public membership page (index.html, members.json: the subscribed "
        "ccTLDs per region and how to join, no personal data), rewritten by the nightly "
        "housekeeping when it would change; created if missing. \"\": no page is written "
        "(`tldops publish DIR` writes one anyway). Best absolute: a relative path is from the "
        "daemon's working directory."),
    Key("rules", "dir", "", _path_or_empty,
        "The operator's policy directory: each of roster.toml, replies.toml and cctlds.csv in it "
        "replaces the shipped one, the others stay shipped; \"\" uses the shipped files. A "
        "directory that does not exist or cannot be read refuses start. Re-read on SIGHUP."),
)

SECTIONS: tuple[str, ...] = tuple(dict.fromkeys(k.section for k in SCHEMA))
_BY_DOTTED: dict[str, Key] = {k.dotted: k for k in SCHEMA}

@dataclass(frozen=True)
class Problem:
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` says why, key by key."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


class Config:
    """The effective configuration: defaults overlaid with the file and the flags.

    Each section is a typed, frozen attribute (``cfg.server.domain``); components keep the
    sections they read, and SIGHUP hands them new ones.
    """

    server: ServerConfig
    addresses: AddressesConfig
    postmaster: PostmasterConfig
    storage: StorageConfig
    housekeeping: HousekeepingConfig
    worker: WorkerConfig
    dns: DnsConfig
    dkim: DkimConfig
    iana: IanaConfig
    auth: AuthConfig
    outbox: OutboxConfig
    validation: ValidationConfig
    broadcast: BroadcastConfig
    list: ListConfig
    redelegation: RedelegationConfig
    freshness: FreshnessConfig
    bounces: BouncesConfig
    log: LogConfig
    metrics: MetricsConfig
    mailman: MailmanConfig
    outreach: OutreachConfig
    publish: PublishConfig
    rules: RulesConfig

    def __init__(self, values: Mapping[str, object], source: str | None = None) -> None:
        self._values = dict(values)
        self.source = source
        by_section = self.as_dict()
        self.server = build_section(ServerConfig, by_section["server"])
        self.addresses = build_section(AddressesConfig, by_section["addresses"])
        self.postmaster = build_section(PostmasterConfig, by_section["postmaster"])
        self.storage = build_section(StorageConfig, by_section["storage"])
        self.housekeeping = build_section(HousekeepingConfig, by_section["housekeeping"])
        self.worker = build_section(WorkerConfig, by_section["worker"])
        self.dns = build_section(DnsConfig, by_section["dns"])
        self.dkim = build_section(DkimConfig, by_section["dkim"])
        self.iana = build_section(IanaConfig, by_section["iana"])
        self.auth = build_section(AuthConfig, by_section["auth"])
        self.outbox = build_section(OutboxConfig, by_section["outbox"])
        self.validation = build_section(ValidationConfig, by_section["validation"])
        self.broadcast = build_section(BroadcastConfig, by_section["broadcast"])
        self.list = build_section(ListConfig, by_section["list"])
        self.redelegation = build_section(RedelegationConfig, by_section["redelegation"])
        self.freshness = build_section(FreshnessConfig, by_section["freshness"])
        self.bounces = build_section(BouncesConfig, by_section["bounces"])
        self.log = build_section(LogConfig, by_section["log"])
        self.metrics = build_section(MetricsConfig, by_section["metrics"])
        self.mailman = build_section(MailmanConfig, by_section["mailman"])
        self.outreach = build_section(OutreachConfig, by_section["outreach"])
        self.publish = build_section(PublishConfig, by_section["publish"])
        self.rules = build_section(RulesConfig, by_section["rules"])

    def as_dict(self) -> dict[str, dict[str, object]]:
        """Section -> key -> value, as the file or the defaults gave it (``config show``)."""
        out: dict[str, dict[str, object]] = {s: {} for s in SECTIONS}
        for k in SCHEMA:
            out[k.section][k.name] = self._values[k.dotted]
        return out

    def replace(self, **dotted: object) -> Config:
        """A copy with some keys changed (``replace(**{"server.domain": "x"})``), checked."""
        values = dict(self._values)
        values.update(dotted)
        problems = validate_values(values)
        if problems:
            raise ConfigError(problems)
        return Config(values, self.source)

    @property
    def hostname(self) -> str:
        return self.server.hostname or self.server.domain

    @property
    def state_dir(self) -> Path:
        return Path(self.storage.state_dir)

    @property
    def database_path(self) -> Path:
        return self.state_dir / self.storage.database

    @property
    def rules_dir(self) -> Path | None:
        """The operator's policy directory, or None: the shipped policy files only."""
        return Path(self.rules.dir) if self.rules.dir else None

    def file_path(self, dotted: str) -> Path | None:
        """The file a path key names, as the daemon opens it; None when the key is empty."""
        value = self._values[dotted]
        if not isinstance(value, str) or not value:
            return None
        path = Path(value)
        return self.state_dir / path if _BY_DOTTED[dotted].under_state and not path.is_absolute() else path

    @property
    def dkim_key(self) -> Path | None:
        """The daemon's signing key: dkim.key, else its old name broadcast.dkim_key."""
        return self.file_path("dkim.key") or self.file_path("broadcast.dkim_key")

    @property
    def dkim_selector(self) -> str:
        """dkim.selector, else (left at its default) its old name broadcast.dkim_selector.

        validate_values refuses two different values set under both names.
        """
        if self.dkim.selector == _BY_DOTTED["dkim.selector"].default:
            return self.broadcast.dkim_selector
        return self.dkim.selector


def validate_values(values: Mapping[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    for dotted, value in values.items():
        key = _BY_DOTTED.get(dotted)
        if key is None:
            problems.append(Problem(dotted, "unknown key"))
            continue
        allowed = key.check(value)
        if allowed is not None:
            problems.append(Problem(dotted, f"{value!r} is not allowed; expected {allowed}"))
    if bool(values.get("server.tls_cert")) != bool(values.get("server.tls_key")):
        problems.append(Problem("server.tls_key", "tls_cert and tls_key go together"))
    domain = "@" + str(values.get("server.domain", "")).lower()
    ours = [a for a in values.get("postmaster.forward_to") or [] if str(a).lower().endswith(domain)]
    if ours:
        problems.append(Problem("postmaster.forward_to", f"{ours[0]!r} is at server.domain: mail "
                                "there comes back to this daemon; name an operator's own address"))
    for new, old in ALIASES.items():
        if new in values and old in values and _aliased(values, new, old) is None:
            problems.append(Problem(new, f"{values[new]!r} and {old} = {values[old]!r} (its old name) "
                                         "differ; set only " + new))
    return problems


ALIASES = {"dkim.key": "broadcast.dkim_key", "dkim.selector": "broadcast.dkim_selector"}
"""New name -> old name. The old one counts when the new one is left at its default; both
set (neither at its default) to different values is a problem."""


def _aliased(values: Mapping[str, Any], new: str, old: str) -> Any:
    """The value in force of a key with an old name; None when the two disagree."""
    default = _BY_DOTTED[new].default
    if values[new] == default:
        return values[old]
    if values[old] != _BY_DOTTED[old].default and values[old] != values[new]:
        return None
    return values[new]


def flatten(doc: Mapping[str, Any]) -> tuple[dict[str, Any], list[Problem]]:
    """Turn parsed TOML into dotted keys, reporting what is not a known section."""
    flat: dict[str, Any] = {}
    problems: list[Problem] = []
    for section, body in doc.items():
        if section not in SECTIONS:
            problems.append(Problem(section, "unknown section; known: " + ", ".join(SECTIONS)))
            continue
        if not isinstance(body, dict):
            problems.append(Problem(section, "must be a [table]"))
            continue
        for name, value in body.items():
            flat[f"{section}.{name}"] = value
    return flat, problems


def defaults() -> dict[str, Any]:
    return {k.dotted: k.default for k in SCHEMA}


def load(path: Path | None, overrides: Mapping[str, object] | None = None) -> Config:
    """Read ``path`` (None: defaults only), apply overrides, and check everything.

    Raises ConfigError listing every problem, so an operator fixes them in one pass.
    """
    values = defaults()
    problems: list[Problem] = []
    if path is not None:
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigError([Problem(str(path), f"cannot read: {e.strerror}")]) from e
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError([Problem(str(path), f"not valid TOML: {e}")]) from e
        flat, problems = flatten(doc)
        values.update(flat)
    if overrides:
        values.update(overrides)
    problems += validate_values(values)
    if problems:
        raise ConfigError(problems)
    return Config(values, str(path) if path else None)


def render_docs() -> str:
    """The body of docs/configuration.md, from the schema."""
    lines = [
        "# Configuration",
        "",
        "tldops-mta reads one TOML file (`--config FILE`); every key has a safe default, so the",
        "file may be empty or absent. `tldops config check --config FILE` names each bad key or",
        "value and what is allowed; `tldops config show --json` prints the effective values.",
        "Flags on `serve` override the file: `--listen HOST:PORT` (repeatable),",
        "`--state-dir DIR`, `--domain DOMAIN`. SIGHUP re-reads the file; an invalid file is",
        "logged and the running configuration kept. Listening addresses change only on restart.",
        "",
        "This page is generated from `tldops_mta/settings/config.py` (`tldops config docs`).",
        "",
    ]
    for section in SECTIONS:
        lines += [f"## [{section}]", "", "| key | default | meaning |", "| --- | --- | --- |"]
        for k in SCHEMA:
            if k.section == section:
                lines.append(f"| `{k.name}` | `{json.dumps(k.default)}` | {k.doc} |")
        lines.append("")
    return "\n".join(lines)

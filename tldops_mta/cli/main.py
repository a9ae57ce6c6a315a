"""The ``tldops`` command: plain text for people, ``--json`` for scripts, non-zero on error."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import sqlite3
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tldops_mta import __version__, logs
from tldops_mta.cli.shared import (
    EXIT_ERROR,
    EXIT_OK,
    CliError,
)
from tldops_mta.policy.queue_states import State
from tldops_mta.settings import config as config_mod
from tldops_mta.settings import policy_files
from tldops_mta.settings.recipients import Service
from tldops_mta.store import lanes, private_state, spool, storage


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, metavar="FILE",
                   default=Path(os.environ["TLDOPS_CONFIG"]) if os.environ.get("TLDOPS_CONFIG") else None,
                   help="TOML configuration file (default: $TLDOPS_CONFIG, else built-in defaults)")
    p.add_argument("--state-dir", metavar="DIR", help="runtime directory (overrides storage.state_dir)")


def _action(subs: Any, name: str, help: str, *, json: bool = False) -> argparse.ArgumentParser:
    """A command (or a command's action) with the options every command has, and --json
    where it prints something a script may read."""
    p: argparse.ArgumentParser = subs.add_parser(name, help=help)
    _common(p)
    if json:
        p.add_argument("--json", action="store_true", help="print JSON for scripts")
    return p


def _day(text: str) -> dt.date:
    """A day as the operator writes it; argparse reports the error with the command's usage."""
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a day: write it as YYYY-MM-DD") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tldops", description="tldops-mta: the mail daemon of TLD-OPS.")
    parser.add_argument("--version", action="version", version=f"tldops-mta {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _action(sub, "serve", help="run the SMTP daemon until SIGTERM")
    p.add_argument("--listen", action="append", metavar="HOST:PORT",
                   help="listen here (repeatable; [::1]:2525 for IPv6); replaces server.listen")
    p.add_argument("--domain", help="mail domain of the service addresses")
    p.set_defaults(func="processes:cmd_serve")

    p = _action(sub, "worker", help="run the processing (worker and outbox) alone; "
                "'serve' starts it by itself")
    p.add_argument("--domain", help="mail domain of the service addresses")
    p.add_argument("--wake-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--slot", type=int, help=argparse.SUPPRESS)
    p.set_defaults(func="processes:cmd_worker")

    p = sub.add_parser("config", help="check or show the configuration")
    csub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = _action(csub, "check", help="report every bad key or value, and bad rules files", json=True)
    c.set_defaults(func="configuration:cmd_config_check")
    c = _action(csub, "show", help="print the effective configuration", json=True)
    c.set_defaults(func="configuration:cmd_config_show")
    c = _action(csub, "docs", help="print docs/configuration.md from the schema")
    c.set_defaults(func="configuration:cmd_config_docs")

    p = sub.add_parser("db", help="database maintenance")
    dsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    d = _action(dsub, "migrate", help="apply pending schema migrations", json=True)
    d.set_defaults(func="configuration:cmd_db_migrate")

    p = sub.add_parser("spool", help="inspect accepted messages")
    ssub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    s = _action(ssub, "list", help="newest messages first", json=True)
    s.add_argument("--status", choices=[st.value for st in spool.Status])
    s.add_argument("--service", choices=[sv.value for sv in Service],
                   help="only mail handled for this service address (postmaster, abuse, ...)")
    s.add_argument("--lane", choices=lanes.WORDS,
                   help="only mail in this priority lane (the order the worker takes it in)")
    s.add_argument("--limit", type=int, default=50)
    s.set_defaults(func="messages:cmd_spool_list")
    s = _action(ssub, "show", help="one message: envelope, history and header", json=True)
    s.add_argument("queue_id", metavar="ID")
    s.add_argument("--raw", action="store_true", help="print the whole message as received")
    s.set_defaults(func="messages:cmd_spool_show")
    s = _action(ssub, "retry", help="process a failed or rejected message again")
    s.add_argument("queue_id", metavar="ID")
    s.set_defaults(func="messages:cmd_spool_retry")
    s = _action(ssub, "read", help="mark mail to postmaster@ or abuse@ that was not forwarded "
                "as read (tldops status stops reporting it)")
    s.add_argument("queue_id", metavar="ID", nargs="+")
    s.set_defaults(func="messages:cmd_spool_read")

    p = sub.add_parser("queue", help="requests waiting for, or decided by, the Validator")
    qsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = _action(qsub, "list", help="newest requests first", json=True)
    q.add_argument("--state", choices=[st.value for st in State])
    q.add_argument("--limit", type=int, default=50)
    q.set_defaults(func="validation:cmd_queue_list")
    q = _action(qsub, "show", help="one request with its authentication evidence", json=True)
    q.add_argument("item_id", metavar="ID", type=int)
    q.set_defaults(func="validation:cmd_queue_show")
    for verb, says, needs_reason in (
            ("approve", "approve a request: the roster changes and everyone concerned is told", False),
            ("deny", "deny a request (or reverse a self-administered one), saying why", True),
            ("escalate", "send a request to the Standing Committee, saying why", True)):
        q = _action(qsub, verb, help=says, json=True)
        q.add_argument("item_id", metavar="ID", type=int)
        q.add_argument("reason", metavar="REASON", nargs="+" if needs_reason else "*",
                       help="why (required for deny and escalate); told to the requester")
        q.set_defaults(func="validation:cmd_queue_decide", event=verb)

    p = sub.add_parser("list", help="first posts to the list held for a Validator "
                       "(list.moderate_first_posts)")
    lsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    li = _action(lsub, "held", help="the held posts not yet decided, oldest first", json=True)
    li.set_defaults(func="validation:cmd_list_held")
    li = _action(lsub, "release", help="send a held post to the list", json=True)
    li.add_argument("item_id", metavar="ID", type=int)
    li.set_defaults(func="validation:cmd_list_decide", release=True, reason=[])
    li = _action(lsub, "reject", help="refuse a held post, saying why (told to its author)", json=True)
    li.add_argument("item_id", metavar="ID", type=int)
    li.add_argument("reason", metavar="REASON", nargs="+")
    li.set_defaults(func="validation:cmd_list_decide", release=False)

    p = sub.add_parser("roster", help="the Security and Stability Contacts of each ccTLD")
    rsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    r = _action(rsub, "show", help="the current roster as the broadcast shows it, with when each SSC "
                "last confirmed their entry")
    r.add_argument("--tld", help="only this ccTLD (A-label or U-label)")
    r.set_defaults(func="contacts:cmd_roster_export", format="text", confirmed=True)
    r = _action(rsub, "export", help="the current roster for import elsewhere")
    r.add_argument("--format", choices=["text", "csv", "vcard", "json"], default="csv")
    r.add_argument("--tld", help="only this ccTLD (A-label or U-label)")
    r.set_defaults(func="contacts:cmd_roster_export", confirmed=False)

    p = sub.add_parser("broadcast", help="the roster mail every SSC receives")
    bsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    b = _action(bsub, "now", help="send the roster to every SSC now (besides the schedule)", json=True)
    b.set_defaults(func="contacts:cmd_broadcast_now")
    b = _action(bsub, "status", help="the latest broadcasts and their deliveries", json=True)
    b.set_defaults(func="contacts:cmd_broadcast_status")
    b = _action(bsub, "preview", help="print the broadcast mail as it would go out (nothing is sent)")
    b.set_defaults(func="contacts:cmd_broadcast_preview")

    p = _action(sub, "stats", help="subscribed and non-subscribed ccTLDs per region, ASCII and "
                "IDN apart, as in the SECIR report's Tables 1 and 2 and Appendix A", json=True)
    p.add_argument("--at", metavar="DATE", type=_day,
                   help="as on this day (YYYY-MM-DD): the root zone and the roster of then")
    p.add_argument("--subscribed", metavar="FILE", type=Path,
                   help="count these ccTLDs as subscribed (one per line) instead of the roster's")
    p.add_argument("--csv", action="store_true", help="the summary as CSV, one row per kind and region")
    p.set_defaults(func="operations:cmd_stats")

    p = _action(sub, "publish", help="write the public membership page (index.html, members.json: "
                "subscribed ccTLDs per region, how to join; no personal data) into DIR", json=True)
    p.add_argument("dir", metavar="DIR", type=Path, nargs="?",
                   help="the web server's directory, created if missing (default: publish.dir)")
    p.set_defaults(func="operations:cmd_publish")

    p = _action(sub, "freshness", help="the SSCs whose entry is unconfirmed, and the next yearly "
                "asks due", json=True)
    p.add_argument("--next", type=int, default=20, metavar="N", help="how many of the next asks (default 20)")
    p.set_defaults(func="freshness:cmd_freshness")

    p = _action(sub, "backup", help="copy the whole database to FILE (safe while the daemon runs)",
                json=True)
    p.add_argument("file", metavar="FILE", type=Path, help="a new file (never overwritten)")
    p.set_defaults(func="operations:cmd_backup")
    p = _action(sub, "restore", help="replace the database by a backup (the daemon must be stopped)",
                json=True)
    p.add_argument("file", metavar="FILE", type=Path)
    p.set_defaults(func="operations:cmd_restore")

    p = sub.add_parser("person", help="one person's data: what we hold (export), or its erasure")
    psub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    pp = _action(psub, "export", help="all we hold about ADDRESS (a data-access request)", json=True)
    pp.add_argument("address", metavar="ADDRESS")
    pp.set_defaults(func="operations:cmd_person_export")
    pp = _action(psub, "erase", help="remove ADDRESS: off the roster, its mail and its mentions; "
                 "an audit record without personal data stays", json=True)
    pp.add_argument("address", metavar="ADDRESS")
    pp.add_argument("--reason", required=True, help="why (kept in the audit record)")
    pp.set_defaults(func="operations:cmd_person_erase")

    p = _action(sub, "invite", help="mail the IANA admin contact of each non-subscribed ccTLD an "
                "invitation with the request form (at most once per outreach.interval_days)", json=True)
    p.add_argument("--region", help="only this region: AF, AP, EUR, NA or LAC")
    p.add_argument("--dry-run", action="store_true", help="list who would be invited; send nothing")
    p.set_defaults(func="operations:cmd_invite")

    p = _action(sub, "status", help="the daemon's health: running?, spool, queue, outbox, "
                "broadcast, roster; exit 1 when something needs a look", json=True)
    p.set_defaults(func="operations:cmd_status")

    p = sub.add_parser("dkim", help="the daemon's own DKIM key, which signs every mail it sends")
    ksub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    k = _action(ksub, "keygen", help="make a key pair; print the DNS TXT record to publish")
    k.add_argument("--type", choices=["rsa", "ed25519"], default="rsa", help="RSA-2048 or Ed25519")
    k.add_argument("--out", type=Path, required=True, help="file for the private key (created 0600)")
    k.set_defaults(func="configuration:cmd_dkim_keygen")
    k = _action(ksub, "check", help="look the published TXT record up in DNS and compare it with "
                "dkim.key; exit 1 when it is missing or differs", json=True)
    k.set_defaults(func="configuration:cmd_dkim_check")

    p = sub.add_parser("iana", help="IANA administrative contacts of ccTLDs")
    isub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    i = _action(isub, "show", help="a ccTLD's administrative contact address, and where it came from",
                json=True)
    i.add_argument("tld", metavar="TLD",
                   help="the ccTLD as A-label or U-label, any case, dot or not: mt, .MT, xn--90ae")
    i.add_argument("--refresh", action="store_true", help="ask IANA even when the cached answer is fresh")
    i.set_defaults(func="contacts:cmd_iana_show")

    p = sub.add_parser("mailman", help="the Mailman 3 list whose members are the roster's SSCs")
    msub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    m = _action(msub, "sync", help="compare the roster with the list's members and make the list "
                "match (exit 1 with --dry-run when they differ)", json=True)
    m.add_argument("--dry-run", action="store_true", help="report the differences, change nothing")
    m.set_defaults(func="contacts:cmd_mailman_sync")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    private_state.restrict_umask()  # before anything is written; the daemon's children inherit it
    parser = build_parser()
    args = parser.parse_args(argv)
    group, name = str(args.func).split(":")
    # Each command group is imported when one of its commands runs, so a command loads only
    # the parts of the daemon it uses (the CLI's process boundary).
    module = importlib.import_module(f"tldops_mta.cli.{group}")
    func: Callable[[argparse.Namespace], int] = getattr(module, name)
    if group != "processes":
        # stdout is the command's answer; what goes wrong on the way (a failed lookup) is
        # logged on stderr, and nothing below a warning: the daemons log, commands answer.
        logs.setup("warning", stream=sys.stderr)
    try:
        return func(args)
    except config_mod.ConfigError as e:
        for p in e.problems:
            print(f"configuration: {p}", file=sys.stderr)
        return EXIT_ERROR
    except (CliError, storage.SchemaTooNew, policy_files.RulesError) as e:
        print(f"tldops: {e}", file=sys.stderr)
        return EXIT_ERROR
    except sqlite3.Error as e:
        print(f"tldops: database error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        return EXIT_OK
    except OSError as e:  # a port in use, an unreadable certificate, a read-only state dir
        print(f"tldops: {e}", file=sys.stderr)
        return EXIT_ERROR

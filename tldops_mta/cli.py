"""The ``tldops`` command: plain text for people, ``--json`` for scripts, non-zero on error."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from . import __version__, cctlds, logs, private_state, queue, rules, spool, storage
from . import config as config_mod
from .queue_states import State
from .recipients import Service
from .texts import counted, missing

T = TypeVar("T")

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    """A problem to tell the user in one line, then exit 1."""


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
    p.set_defaults(func=cmd_serve)

    p = _action(sub, "worker", help="run the processing (worker and outbox) alone; "
                "'serve' starts it by itself")
    p.add_argument("--domain", help="mail domain of the service addresses")
    p.add_argument("--wake-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("config", help="check or show the configuration")
    csub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = _action(csub, "check", help="report every bad key or value, and bad rules files", json=True)
    c.set_defaults(func=cmd_config_check)
    c = _action(csub, "show", help="print the effective configuration", json=True)
    c.set_defaults(func=cmd_config_show)
    c = _action(csub, "docs", help="print docs/configuration.md from the schema")
    c.set_defaults(func=cmd_config_docs)

    p = sub.add_parser("db", help="database maintenance")
    dsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    d = _action(dsub, "migrate", help="apply pending schema migrations", json=True)
    d.set_defaults(func=cmd_db_migrate)

    p = sub.add_parser("spool", help="inspect accepted messages")
    ssub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    s = _action(ssub, "list", help="newest messages first", json=True)
    s.add_argument("--status", choices=[st.value for st in spool.Status])
    s.add_argument("--service", choices=[sv.value for sv in Service],
                   help="only mail handled for this service address (postmaster, abuse, ...)")
    s.add_argument("--limit", type=int, default=50)
    s.set_defaults(func=cmd_spool_list)
    s = _action(ssub, "show", help="one message: envelope, history and header", json=True)
    s.add_argument("queue_id", metavar="ID")
    s.add_argument("--raw", action="store_true", help="print the whole message as received")
    s.set_defaults(func=cmd_spool_show)
    s = _action(ssub, "retry", help="process a failed or rejected message again")
    s.add_argument("queue_id", metavar="ID")
    s.set_defaults(func=cmd_spool_retry)
    s = _action(ssub, "read", help="mark mail to postmaster@ or abuse@ that was not forwarded "
                "as read (tldops status stops reporting it)")
    s.add_argument("queue_id", metavar="ID", nargs="+")
    s.set_defaults(func=cmd_spool_read)

    p = sub.add_parser("queue", help="requests waiting for, or decided by, the Validator")
    qsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = _action(qsub, "list", help="newest requests first", json=True)
    q.add_argument("--state", choices=[st.value for st in State])
    q.add_argument("--limit", type=int, default=50)
    q.set_defaults(func=cmd_queue_list)
    q = _action(qsub, "show", help="one request with its authentication evidence", json=True)
    q.add_argument("item_id", metavar="ID", type=int)
    q.set_defaults(func=cmd_queue_show)
    for verb, says, needs_reason in (
            ("approve", "approve a request: the roster changes and everyone concerned is told", False),
            ("deny", "deny a request (or reverse a self-administered one), saying why", True),
            ("escalate", "send a request to the Standing Committee, saying why", True)):
        q = _action(qsub, verb, help=says, json=True)
        q.add_argument("item_id", metavar="ID", type=int)
        q.add_argument("reason", metavar="REASON", nargs="+" if needs_reason else "*",
                       help="why (required for deny and escalate); told to the requester")
        q.set_defaults(func=cmd_queue_decide, event=verb)

    p = sub.add_parser("list", help="first posts to the list held for a Validator "
                       "(list.moderate_first_posts)")
    lsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    li = _action(lsub, "held", help="the held posts not yet decided, oldest first", json=True)
    li.set_defaults(func=cmd_list_held)
    li = _action(lsub, "release", help="send a held post to the list", json=True)
    li.add_argument("item_id", metavar="ID", type=int)
    li.set_defaults(func=cmd_list_decide, release=True, reason=[])
    li = _action(lsub, "reject", help="refuse a held post, saying why (told to its author)", json=True)
    li.add_argument("item_id", metavar="ID", type=int)
    li.add_argument("reason", metavar="REASON", nargs="+")
    li.set_defaults(func=cmd_list_decide, release=False)

    p = sub.add_parser("roster", help="the Security and Stability Contacts of each ccTLD")
    rsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    r = _action(rsub, "show", help="the current roster as the broadcast shows it")
    r.add_argument("--tld", help="only this ccTLD (A-label or U-label)")
    r.set_defaults(func=cmd_roster_export, format="text")
    r = _action(rsub, "export", help="the current roster for import elsewhere")
    r.add_argument("--format", choices=["text", "csv", "vcard", "json"], default="csv")
    r.add_argument("--tld", help="only this ccTLD (A-label or U-label)")
    r.set_defaults(func=cmd_roster_export)

    p = sub.add_parser("broadcast", help="the roster mail every SSC receives")
    bsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    b = _action(bsub, "now", help="send the roster to every SSC now (besides the schedule)", json=True)
    b.set_defaults(func=cmd_broadcast_now)
    b = _action(bsub, "status", help="the latest broadcasts and their deliveries", json=True)
    b.set_defaults(func=cmd_broadcast_status)
    b = _action(bsub, "preview", help="print the broadcast mail as it would go out (nothing is sent)")
    b.set_defaults(func=cmd_broadcast_preview)

    p = _action(sub, "stats", help="subscribed and non-subscribed ccTLDs per region, ASCII and "
                "IDN apart, as in the SECIR report's Tables 1 and 2 and Appendix A", json=True)
    p.add_argument("--at", metavar="DATE", type=_day,
                   help="as on this day (YYYY-MM-DD): the root zone and the roster of then")
    p.add_argument("--subscribed", metavar="FILE", type=Path,
                   help="count these ccTLDs as subscribed (one per line) instead of the roster's")
    p.add_argument("--csv", action="store_true", help="the summary as CSV, one row per kind and region")
    p.set_defaults(func=cmd_stats)

    p = _action(sub, "backup", help="copy the whole database to FILE (safe while the daemon runs)",
                json=True)
    p.add_argument("file", metavar="FILE", type=Path, help="a new file (never overwritten)")
    p.set_defaults(func=cmd_backup)
    p = _action(sub, "restore", help="replace the database by a backup (the daemon must be stopped)",
                json=True)
    p.add_argument("file", metavar="FILE", type=Path)
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("person", help="one person's data: what we hold (export), or its erasure")
    psub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    pp = _action(psub, "export", help="all we hold about ADDRESS (a data-access request)", json=True)
    pp.add_argument("address", metavar="ADDRESS")
    pp.set_defaults(func=cmd_person_export)
    pp = _action(psub, "erase", help="remove ADDRESS: off the roster, its mail and its mentions; "
                 "an audit record without personal data stays", json=True)
    pp.add_argument("address", metavar="ADDRESS")
    pp.add_argument("--reason", required=True, help="why (kept in the audit record)")
    pp.set_defaults(func=cmd_person_erase)

    p = _action(sub, "invite", help="mail the IANA admin contact of each non-subscribed ccTLD an "
                "invitation with the request form (at most once per outreach.interval_days)", json=True)
    p.add_argument("--region", help="only this region: AF, AP, EUR, NA or LAC")
    p.add_argument("--dry-run", action="store_true", help="list who would be invited; send nothing")
    p.set_defaults(func=cmd_invite)

    p = _action(sub, "status", help="the daemon's health: running?, spool, queue, outbox, "
                "broadcast, roster; exit 1 when something needs a look", json=True)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("dkim", help="the daemon's own DKIM key, which signs every mail it sends")
    ksub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    k = _action(ksub, "keygen", help="make a key pair; print the DNS TXT record to publish")
    k.add_argument("--type", choices=["rsa", "ed25519"], default="rsa", help="RSA-2048 or Ed25519")
    k.add_argument("--out", type=Path, required=True, help="file for the private key (created 0600)")
    k.set_defaults(func=cmd_dkim_keygen)
    k = _action(ksub, "check", help="look the published TXT record up in DNS and compare it with "
                "dkim.key; exit 1 when it is missing or differs", json=True)
    k.set_defaults(func=cmd_dkim_check)

    p = sub.add_parser("iana", help="IANA administrative contacts of ccTLDs")
    isub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    i = _action(isub, "show", help="a ccTLD's administrative contact address, and where it came from",
                json=True)
    i.add_argument("tld", metavar="TLD",
                   help="the ccTLD as A-label or U-label, any case, dot or not: mt, .MT, xn--90ae")
    i.add_argument("--refresh", action="store_true", help="ask IANA even when the cached answer is fresh")
    i.set_defaults(func=cmd_iana_show)

    p = sub.add_parser("mailman", help="the Mailman 3 list whose members are the roster's SSCs")
    msub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    m = _action(msub, "sync", help="compare the roster with the list's members and make the list "
                "match (exit 1 with --dry-run when they differ)", json=True)
    m.add_argument("--dry-run", action="store_true", help="report the differences, change nothing")
    m.set_defaults(func=cmd_mailman_sync)
    return parser


def load_config(args: argparse.Namespace) -> config_mod.Config:
    return config_mod.load(args.config, flag_overrides(args))


def secure_state(cfg: config_mod.Config) -> None:
    """The state made private before a command opens it (see private_state); what had to be
    tightened is said on stderr."""
    tightened = private_state.secure(cfg.state_dir, cfg.database_path)
    if tightened:
        print(f"tldops: made private ({len(tightened)} paths): "
              + ", ".join(private_state.summary(tightened)), file=sys.stderr)


def open_db(cfg: config_mod.Config) -> sqlite3.Connection:
    path = cfg.database_path
    if not path.exists():
        raise CliError(f"no database at {path}: start the daemon or run 'tldops db migrate'")
    secure_state(cfg)
    conn = storage.connect(path, busy_timeout_ms=cfg.storage.busy_timeout_ms)
    have = storage.check_schema(conn)
    if have < storage.latest_version():
        raise CliError(f"database schema is version {have}, {storage.latest_version()} is "
                       "current: run 'tldops db migrate'")
    return conn


def cctld_table(cfg: config_mod.Config) -> list[cctlds.Cctld]:
    try:
        return cctlds.load(cfg.rules_dir)
    except cctlds.CctldsError as e:
        raise CliError("; ".join(e.problems[:3])) from e


def named_cctld(cfg: config_mod.Config, name: str) -> cctlds.Cctld:
    """The ccTLD an operator named (A-label or U-label), in the root today: else one line
    saying what it is instead (no ccTLD, retired on a day), before anything is looked up."""
    try:
        return cctlds.find(cctld_table(cfg), name, dt.datetime.now(dt.UTC).date())
    except ValueError as e:
        raise CliError(str(e)) from e


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _print_listing(args: argparse.Namespace, rows: Sequence[T], as_json: Callable[[T], Any],
                   line: Callable[[T], str], *, empty: str, header: str | None = None) -> int:
    """What every listing command prints: the rows as JSON with --json; else ``empty`` when
    there are none, or the header and one line per row."""
    if args.json:
        _print_json([as_json(r) for r in rows])
        return EXIT_OK
    if not rows:
        print(empty)
        return EXIT_OK
    if header is not None:
        print(header)
    for r in rows:
        print(line(r))
    return EXIT_OK


def _when(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def flag_overrides(args: argparse.Namespace) -> dict[str, object]:
    """The configuration keys that command-line flags set (flags win over the file)."""
    flags = {"server.listen": getattr(args, "listen", None),
             "server.domain": getattr(args, "domain", None),
             "storage.state_dir": getattr(args, "state_dir", None)}
    return {k: v for k, v in flags.items() if v}


def cmd_serve(args: argparse.Namespace) -> int:
    from .daemon import serve

    return serve(args.config, flag_overrides(args))


def cmd_worker(args: argparse.Namespace) -> int:
    from .processing import main as worker_main

    return worker_main(args.config, flag_overrides(args), args.wake_fd, args.ready_fd)


def cmd_config_check(args: argparse.Namespace) -> int:
    problems: list[str] = []
    cfg = None
    try:
        cfg = load_config(args)
    except config_mod.ConfigError as e:
        problems += [str(p) for p in e.problems]
    if cfg is not None:
        from . import config_files

        problems += [str(p) for p in config_files.problems(cfg)]
        try:
            rules.load(cfg.rules_dir)
        except rules.RulesError as e:
            problems += [f"rules: {p}" for p in e.problems]
    notes = ["no dkim.key: the mail the daemon sends goes out without a DKIM signature"
             ] if cfg is not None and cfg.dkim_key is None else []
    if args.json:
        _print_json({"ok": not problems, "problems": problems, "notes": notes,
                     "source": str(args.config) if args.config else None})
    elif problems:
        for p in problems:
            print(p, file=sys.stderr)
    else:
        print(f"configuration OK ({args.config or 'built-in defaults'})")
        for note in notes:
            print(f"note: {note}")
    return EXIT_ERROR if problems else EXIT_OK


def cmd_config_show(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    if args.json:
        _print_json(cfg.as_dict())
        return EXIT_OK
    for section, body in cfg.as_dict().items():
        print(f"[{section}]")
        for k, v in body.items():
            print(f"{k} = {json.dumps(v)}")
        print()
    return EXIT_OK


def cmd_config_docs(args: argparse.Namespace) -> int:
    print(config_mod.render_docs(), end="")
    return EXIT_OK


def cmd_db_migrate(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    secure_state(cfg)
    conn = storage.connect(cfg.database_path, busy_timeout_ms=cfg.storage.busy_timeout_ms)
    try:
        applied = storage.migrate(conn)
        version = storage.schema_version(conn)
    finally:
        conn.close()
    if args.json:
        _print_json({"applied": applied, "version": version, "database": str(cfg.database_path)})
    elif applied:
        print(f"applied migrations {', '.join(map(str, applied))}; schema is now version {version}")
    else:
        print(f"schema is up to date (version {version})")
    return EXIT_OK


def cmd_spool_list(args: argparse.Namespace) -> int:
    conn = open_db(load_config(args))

    def line(e: spool.Entry) -> str:
        # Why it waits, was rejected or failed, in full (the last column may wrap); for a
        # message processed or in processing, the services it went to.
        services = ",".join(e.services or [])
        why = e.reason if e.reason and e.status not in (spool.Status.DONE, spool.Status.PROCESSING) else ""
        why = why.removeprefix(f"{spool.WAITING}: ")  # said in the status column
        what = f"{services}: {why}" if services and why else services or why
        return (f"{e.queue_id:<19}  {_when(e.received_at)}  {e.shown_status:<10}  {e.attempts:>3}  "
                f"{e.size:>8}  {what}")

    which = " and ".join(([f"with status {args.status}"] if args.status else [])
                         + ([f"for {args.service}@"] if args.service else []))
    return _print_listing(
        args, spool.listing(conn, args.status, args.limit, args.service), lambda e: e.as_dict(), line,
        empty=f"no messages {which}" if which else "spool is empty",
        header=(f"{'ID':<19}  {'RECEIVED (UTC)':<19}  {'STATUS':<10}  {'TRY':>3}  {'SIZE':>8}"
                "  SERVICES / REASON"))


PURGED = "octets removed (storage.retention_days, or a person's erasure)"


def cmd_spool_show(args: argparse.Namespace) -> int:
    conn = open_db(load_config(args))
    found = spool.show(conn, args.queue_id)
    if found is None:
        raise CliError(missing("message", args.queue_id))
    entry, raw = found
    if args.raw:
        sys.stdout.buffer.write(raw)
        return EXIT_OK
    header = raw.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    if args.json:
        _print_json({**entry.as_dict(), "header": header})
        return EXIT_OK
    print(f"id:          {entry.queue_id}")
    print(f"status:      {entry.status} (attempts {entry.attempts})")
    print(f"received:    {_when(entry.received_at)} UTC from {entry.client_addr} "
          f"(HELO {entry.helo}), session {entry.session_id}")
    if entry.relay_addr:
        print(f"relayed by:  {entry.relay_addr} (client and HELO as it forwarded them)")
    print(f"envelope:    from <{entry.mail_from}> to {', '.join('<' + r + '>' for r in entry.rcpt_to)}")
    print(f"size:        {entry.size} octets")
    if entry.services:
        print(f"services:    {', '.join(entry.services)}")
    if entry.reason:
        print(f"reason:      {entry.reason}")
    print("history:")
    for ev in entry.events:
        print(f"  {_when(ev['at'])}  {ev['status']:<10}  {ev['reason'] or ''}")
    if not raw:
        print(f"header:      ({PURGED})")
        return EXIT_OK
    print("header:")
    for line in header.splitlines():
        print("  " + line)
    return EXIT_OK


def cmd_queue_list(args: argparse.Namespace) -> int:
    return _print_listing(
        args, queue.listing(open_db(load_config(args)), args.state, args.limit), lambda i: i.as_dict(),
        lambda i: f"{i.id:>5}  {_when(i.created_at)}  {i.tld:<12}  {i.auth:<5}  {i.state:<21}  {i.requester}",
        empty="no requests" if not args.state else f"no requests {args.state}",
        header=f"{'ID':>5}  {'CREATED (UTC)':<19}  {'CCTLD':<12}  {'AUTH':<5}  {'STATE':<21}  REQUESTER")


def cmd_queue_show(args: argparse.Namespace) -> int:
    item = queue.show(open_db(load_config(args)), args.item_id)
    if item is None:
        raise CliError(missing("request", args.item_id))
    if args.json:
        _print_json(item.as_dict())
        return EXIT_OK
    ev = item.evidence or {}
    print(f"request:     {item.id} (.{item.tld}), {item.state}")
    print(f"requester:   {item.requester}; IANA admin {item.admin_email}; authenticated by {item.auth}")
    print(f"created:     {_when(item.created_at)} UTC from message {item.queue_id}; "
          f"updated {_when(item.updated_at)} UTC")
    decision = ev.get("decision") or {}
    print(f"decision:    {decision.get('verdict', '?')}: {decision.get('reason', '')}")
    iana = ev.get("iana") or {}
    if iana:
        print(f"IANA:        {iana.get('email')} ({iana.get('status')}, from {iana.get('source')}, "
              f"fetched {_when(float(iana.get('fetched_at') or 0))} UTC)")
    for sig in ev.get("dkim") or []:
        counts = "counts" if sig.get("counts") else "does not count"
        print(f"DKIM:        d={sig.get('domain')} s={sig.get('selector')} {sig.get('result')}, "
              f"{counts}{': ' + sig['reason'] if sig.get('reason') else ''}")
    if ev.get("authentication_results"):
        print(f"A-R:         {ev['authentication_results']}")
    change = item.change or {}
    if change:
        from . import roster

        print(f"asks:        {item.action} .{item.tld}; the roster then ('-' leaves, '+' comes):")
        for line in roster.diff_lines(roster.from_dicts(change.get("before", [])),
                                      roster.from_dicts(change.get("after", []))):
            print(f"  {line}")
        for w in change.get("warnings", []):
            print(f"warning:     {w}")
    print("history:")
    for e in item.events or []:
        print(f"  {_when(e['at'])}  {e['event']:<8}  -> {e['to_state']:<21}  {e['actor']} {e['who'] or ''}"
              f" ({e['auth'] or '-'}){': ' + e['reason'] if e['reason'] else ''}")
    return EXIT_OK


def cmd_spool_retry(args: argparse.Namespace) -> int:
    conn = open_db(load_config(args))
    ok = storage.commit_one(conn, spool.retry(args.queue_id, time.time()))
    if not ok:
        found = spool.show(conn, args.queue_id)
        if found is None:
            raise CliError(missing("message", args.queue_id))
        if not found[1]:
            raise CliError(f"{args.queue_id}: {PURGED}; it cannot be processed again")
        raise CliError(f"message {args.queue_id} is {found[0].shown_status}: only a failed or rejected "
                       "message is processed again")
    _wake_daemon(load_config(args))
    print(f"{args.queue_id} queued for processing again")
    return EXIT_OK


def cmd_spool_read(args: argparse.Namespace) -> int:
    """Postmaster mail a person has read (no operator to forward it to, or kept from a loop)."""
    import getpass

    from . import postmaster_desk

    conn = open_db(load_config(args))
    try:
        storage.commit_one(conn, postmaster_desk.mark_read(args.queue_id, time.time(), getpass.getuser()))
    except postmaster_desk.NotMarkable as e:
        raise CliError(str(e)) from e
    for queue_id in args.queue_id:
        print(f"{queue_id} marked read")
    return EXIT_OK


def cmd_queue_decide(args: argparse.Namespace) -> int:
    """A Validator's decision from the command line: same rules as by mail (first decision
    wins), recorded as made by the local user."""
    import getpass

    from . import decisions
    from .live import Live
    from .queue_states import Actor, Event

    cfg = load_config(args)
    live = Live(cfg, rules.load(cfg.rules_dir))
    conn = open_db(cfg)
    by = decisions.By(Actor.VALIDATOR, f"cli:{getpass.getuser()}", "cli")
    reason = " ".join(args.reason) or None
    result = storage.commit_one(conn, lambda c: decisions.act(live, c, args.item_id, Event(args.event),
                                                           by, reason))
    woke = result.ok and _wake_daemon(cfg)
    if args.json:
        _print_json({"ok": result.ok, "message": result.message, "state": result.state})
    elif result.ok:
        print(result.message + ("" if woke else MAIL_WAITS))
    else:
        print(f"tldops: {result.message}", file=sys.stderr)
    return EXIT_OK if result.ok else EXIT_ERROR


def cmd_list_held(args: argparse.Namespace) -> int:
    from . import list_desk

    return _print_listing(
        args, list_desk.pending(open_db(load_config(args))), lambda r: r,
        lambda r: f"#{r['id']:<5} {_when(r['held_at'])}  {r['tlp']:<17} {r['author']}: {r['subject']}"
                  f"  ({r['queue_id']})",
        empty="no post waits")


def cmd_list_decide(args: argparse.Namespace) -> int:
    """A Validator's decision on a held post: the first one counts, recorded as made by the
    local user; a release is taken up by the daemon at once."""
    import getpass

    from . import list_desk
    from .live import Live

    cfg = load_config(args)
    live = Live(cfg, rules.load(cfg.rules_dir))
    conn = open_db(cfg)
    by, reason = f"cli:{getpass.getuser()}", " ".join(args.reason) or None
    result = storage.commit_one(conn, lambda c: list_desk.decide(live, c, args.item_id, args.release,
                                                              by, reason))
    woke = result.ok and _wake_daemon(cfg)
    if args.json:
        _print_json({"ok": result.ok, "message": result.message})
    elif result.ok:
        print(result.message + ("" if woke else MAIL_WAITS))
    else:
        print(f"tldops: {result.message}", file=sys.stderr)
    return EXIT_OK if result.ok else EXIT_ERROR


def cmd_roster_export(args: argparse.Namespace) -> int:
    """The roster in a format (stdout); personal data, so only for the operator's eyes."""
    from . import roster, roster_formats

    cfg = load_config(args)
    named = named_cctld(cfg, args.tld).tld if args.tld else None
    conn = open_db(cfg)
    if named is not None:
        tlds = [named]
    else:
        tlds = [r[0] for r in conn.execute("SELECT DISTINCT tld FROM roster ORDER BY tld")]
    table = roster_formats.rows({tld: roster.current(conn, tld) for tld in tlds})
    label, now = f"TLP:{cfg.broadcast.tlp}", time.time()
    out = {"text": lambda: roster_formats.text(table, now, label),
           "csv": lambda: roster_formats.to_csv(table), "vcard": lambda: roster_formats.to_vcard(table),
           "json": lambda: roster_formats.to_json(table, now, label)}[args.format]()
    sys.stdout.write(out)
    return EXIT_OK


def cmd_broadcast_now(args: argparse.Namespace) -> int:
    from . import broadcast

    cfg = load_config(args)
    conn = open_db(cfg)
    now = time.time()
    period = f"manual-{dt.datetime.fromtimestamp(now, dt.UTC):%Y-%m-%dT%H:%M:%S.%fZ}"
    count = storage.commit_one(conn, lambda c: broadcast.claim_and_queue(c, cfg, period, "manual", now))
    _wake_daemon(cfg)
    if args.json:
        _print_json({"period": period, "recipients": count})
    else:
        print(f"{period}: roster queued to {counted(count or 0, 'SSC')} "
              "(the daemon sends it; see 'broadcast status')")
    return EXIT_OK


def cmd_broadcast_status(args: argparse.Namespace) -> int:
    from . import broadcast

    return _print_listing(
        args, broadcast.status(open_db(load_config(args))), lambda r: r,
        lambda r: f"{r['period']:<36}  {_when(r['claimed_at'])}  {r['recipients']:>5}  {r['sent']:>5}  "
                  f"{r['queued']:>6}  {r['failed']:>6}  {r['tlp']}",
        empty="no broadcast yet",
        header=(f"{'PERIOD':<36}  {'QUEUED AT (UTC)':<19}  {'SSCS':>5}  {'SENT':>5}  {'QUEUED':>6}  "
                f"{'FAILED':>6}  TLP"))


def cmd_broadcast_preview(args: argparse.Namespace) -> int:
    from . import broadcast

    cfg = load_config(args)
    built = broadcast.build(open_db(cfg), cfg, time.time(), "preview")
    sys.stdout.write(built.raw.decode("utf-8", "replace").replace("\r\n", "\n"))
    print(f"\n(to {counted(len(built.recipients), 'SSC')}; nothing was sent)", file=sys.stderr)
    return EXIT_OK


def cmd_dkim_keygen(args: argparse.Namespace) -> int:
    from . import dkim_keys

    cfg = load_config(args)
    if args.out.exists():
        raise CliError(f"{args.out} exists: not overwriting a key")
    private, record = dkim_keys.generate(args.type)
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    selector = cfg.dkim_selector
    print(f"private key written to {args.out}; set dkim.key to it. Publish:")
    chunks = " ".join(f'"{record[i:i + 250]}"' for i in range(0, len(record), 250))  # 255 a string
    print(f'{selector}._domainkey.{cfg.server.domain}. IN TXT ( {chunks} )')
    return EXIT_OK


def cmd_dkim_check(args: argparse.Namespace) -> int:
    """The record DNS publishes for the daemon's key, against the key (the resolver the
    daemon uses: dns.nameservers, else /etc/resolv.conf)."""
    import asyncio

    from . import dkim_keys
    from .dkim_verify import KeyRecordError, KeyResolver, KeyTemporaryError

    cfg = load_config(args)
    path = cfg.dkim_key
    if path is None:
        raise CliError("no DKIM key configured (dkim.key): the mail the daemon sends goes out unsigned")
    try:
        key = dkim_keys.read_key_file(path)
    except dkim_keys.KeyFileError as e:
        raise CliError(f"dkim.key: {e}") from e
    name = f"{cfg.dkim_selector}._domainkey.{cfg.server.domain}"
    problem: str | None
    try:
        record = asyncio.run(KeyResolver.from_config(cfg.dns).fetch(name))
    except KeyTemporaryError as e:
        raise CliError(f"cannot look up the TXT record at {name} now: {e}") from e
    except KeyRecordError as e:
        record, problem = None, str(e)
    else:
        problem = (f"no TXT record at {name}: publish the key there" if record is None
                   else dkim_keys.record_problem(record, key))
        if problem is not None and record is not None:
            problem = f"the TXT record at {name} does not match {path}: {problem}"
    if args.json:
        _print_json({"ok": problem is None, "name": name, "key": str(path), "problem": problem,
                     "published": None if record is None else record.decode("ascii", "replace"),
                     "expected": key.record})
        return EXIT_ERROR if problem else EXIT_OK
    if problem is not None:
        raise CliError(problem)
    print(f"the TXT record at {name} publishes {path}")
    return EXIT_OK


def _wake_daemon(cfg: config_mod.Config) -> bool:
    """The daemon takes up what this command queued now, not at its next look; False when
    no daemon runs (then nothing is sent until one does)."""
    from .daemon import wake

    return wake(cfg.state_dir)


MAIL_WAITS = "; the daemon is not running: the mail this makes goes out when it next runs"


def cmd_iana_show(args: argparse.Namespace) -> int:
    from . import iana

    cfg = load_config(args)
    tld = named_cctld(cfg, args.tld).tld
    secure_state(cfg)
    try:
        c = iana.lookup_blocking(cfg, tld, refresh=args.refresh)
    except iana.LookupUnavailable as e:
        raise CliError(f"cannot look up {args.tld} now, try again later: {e.reason}") from e
    except storage.StorageError as e:
        raise CliError(f"database error, try again later: {e}") from e
    age = max(0.0, time.time() - c.fetched_at)
    if args.json:
        _print_json({"tld": c.tld, "u_label": c.u_label, "admin_email": c.email, "status": c.status,
                     "source": c.source, "fetched_at": c.fetched_at,
                     "fetched_at_utc": _when(c.fetched_at) + "Z", "age_seconds": round(age, 1),
                     "from_cache": c.from_cache, "reason": c.reason,
                     "raw": c.raw.decode("utf-8", "replace")})
        return EXIT_OK
    print(f"tld:         {c.tld}" + (f" ({c.u_label})" if c.u_label != c.tld else ""))
    print(f"admin:       {c.email or '-'}")
    print(f"status:      {c.status}" + (" (IANA has no such top-level domain)" if c.status != "ok" else ""))
    print(f"source:      {c.source}, {'from the cache' if c.from_cache else 'fresh from IANA'}")
    print(f"fetched at:  {_when(c.fetched_at)} UTC ({age:.0f} s ago)")
    print(f"reason:      {c.reason}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    private_state.restrict_umask()  # before anything is written; the daemon's children inherit it
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    if func not in (cmd_serve, cmd_worker):
        # stdout is the command's answer; what goes wrong on the way (a failed lookup) is
        # logged on stderr, and nothing below a warning: the daemons log, commands answer.
        logs.setup("warning", stream=sys.stderr)
    try:
        return func(args)
    except config_mod.ConfigError as e:
        for p in e.problems:
            print(f"configuration: {p}", file=sys.stderr)
        return EXIT_ERROR
    except (CliError, storage.SchemaTooNew, rules.RulesError) as e:
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


def cmd_status(args: argparse.Namespace) -> int:
    """The same figures as systemd's STATUS= line and the metrics endpoint (health.read)."""
    from . import health
    from .daemon import running_pid

    cfg = load_config(args)
    h = health.read(open_db(cfg))
    pid = running_pid(cfg.state_dir)
    problems = ([] if pid is not None else ["the daemon is not running"]) + h.problems
    try:
        policy: dict[str, str] | None = rules.sources(cfg.rules_dir)
    except rules.RulesError as e:
        policy = None
        problems += [f"rules: {p}" for p in e.problems]
    if args.json:
        _print_json({**h.as_dict(), "running": pid is not None, "pid": pid, "rules": policy,
                     "problems": problems})
        return EXIT_ERROR if problems else EXIT_OK

    def counts(d: dict[str, int]) -> str:
        return ", ".join(f"{n} {k}" for k, n in d.items() if n) or "none"

    def age(seconds: float | None) -> str:
        return "" if seconds is None else f" (oldest {health.age_text(seconds)})"

    print(f"tldops-mta: {'running, pid ' + str(pid) if pid else 'NOT RUNNING'}; "
          f"database {cfg.database_path}, schema {h.schema_version}")
    print(f"spool:      {h.spool_waiting} waiting{age(h.oldest_waiting_s)}; {counts(h.spool)}")
    print(f"queue:      {h.queue_open} open; {counts(h.queue)}")
    sent_or_failed = {k: n for k, n in h.outbox.items() if k != "queued"}  # queued: said first
    print(f"outbox:     {h.outbox_queued} queued{age(h.oldest_queued_mail_s)}; {counts(sent_or_failed)}")
    if h.last_broadcast_at is None:
        print("broadcast:  none yet")
    else:
        done = (f"all delivered {_when(h.last_broadcast_completed_at)} UTC"
                if h.last_broadcast_undelivered == 0 and h.last_broadcast_completed_at
                else f"{h.last_broadcast_undelivered} deliveries still queued")
        print(f"broadcast:  {h.last_broadcast_period} queued {_when(h.last_broadcast_at)} UTC; {done}")
    print(f"roster:     {counted(h.sscs, 'SSC')} of {counted(h.subscribed_cctlds, 'ccTLD')}")
    print("rules:      " + ("; ".join(f"{name} {origin}" for name, origin in policy.items())
                            if policy is not None else "cannot be read (see problems)"))
    print("problems:   " + ("none" if not problems else problems[0]))
    for p in problems[1:]:
        print("            " + p)
    return EXIT_ERROR if problems else EXIT_OK


def cmd_stats(args: argparse.Namespace) -> int:
    from . import stats

    cfg = load_config(args)
    table = cctld_table(cfg)
    conn = open_db(cfg)
    day = args.at or dt.datetime.now(dt.UTC).date()
    if args.subscribed is not None:
        try:
            subscribed = stats.read_subscribed_file(args.subscribed.read_text(encoding="utf-8"),
                                                    table, day)
        except (OSError, ValueError) as e:
            raise CliError(f"{args.subscribed}: {e}") from e
        source = str(args.subscribed)
    elif args.at is not None:
        subscribed, source = stats.subscribed_on(conn, day), "roster history"
    else:
        subscribed, source = stats.subscribed_now(conn), "roster"
    result = stats.summarise(table, subscribed, day, source, stats.last_invitations(conn))
    if args.json:
        _print_json(result.as_dict())
    elif args.csv:
        sys.stdout.write(stats.render_csv(result))
    else:
        print(stats.render_text(result), end="")
    return EXIT_OK


def cmd_backup(args: argparse.Namespace) -> int:
    from . import backups

    cfg = load_config(args)
    if cfg.database_path.exists():
        secure_state(cfg)
    try:
        done = backups.backup(cfg.database_path, args.file, busy_timeout_ms=cfg.storage.busy_timeout_ms)
    except backups.BackupError as e:
        raise CliError(str(e)) from e
    if args.json:
        _print_json({"file": str(done.path), "size": done.size, "schema_version": done.schema_version})
    else:
        print(f"backup written to {done.path} ({done.size} octets, schema version {done.schema_version})")
    return EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    from . import backups
    from .daemon import running_pid

    cfg = load_config(args)
    pid = running_pid(cfg.state_dir)
    if pid is not None:
        raise CliError(f"the daemon is running (pid {pid}): stop it first (systemctl stop tldops-mta)")
    secure_state(cfg)
    try:
        done = backups.restore(args.file, cfg.database_path)
    except backups.BackupError as e:
        raise CliError(str(e)) from e
    if args.json:
        _print_json({"database": str(done.path), "schema_version": done.schema_version,
                     "migrations_applied": list(done.migrations_applied)})
    else:
        migrated = (f"; migrations {', '.join(map(str, done.migrations_applied))} applied"
                    if done.migrations_applied else "")
        print(f"restored {args.file} to {done.path} (schema version {done.schema_version}{migrated})")
    return EXIT_OK


def cmd_person_export(args: argparse.Namespace) -> int:
    from . import persons

    found = persons.export(open_db(load_config(args)), args.address)
    if args.json:
        _print_json(found)
        return EXIT_OK
    if not persons.holds_anything(found):
        print(f"nothing is held about {found['address']}")
        return EXIT_OK
    print(f"What tldops-mta holds about {found['address']}:")
    for section, items in found.items():
        if section == "address" or not items:
            continue
        print(f"\n{section.replace('_', ' ')}:")
        for item in items:
            print("  " + (json.dumps(item, ensure_ascii=False, sort_keys=True, default=str)
                          if isinstance(item, dict) else str(item)))
    return EXIT_OK


def cmd_person_erase(args: argparse.Namespace) -> int:
    import getpass

    from . import persons

    cfg = load_config(args)
    conn = open_db(cfg)
    try:
        erased = storage.commit_one(conn, lambda c: persons.erase(
            c, args.address, by=f"cli:{getpass.getuser()}", reason=" ".join(args.reason.split()),
            now=time.time()))
    except persons.EraseRefused as e:
        raise CliError(str(e)) from e
    counts = erased.counts()
    if args.json:  # the ids per kind: what `person export` listed beforehand
        _print_json({"erased": bool(counts), "counts": counts,
                     "ids": {k: v for k, v in erased.ids.items() if v}})
    elif counts:
        # Per kind, named as `person export` names its sections (no noun to put in the plural).
        print("erased, rows per kind: "
              + ", ".join(f"{kind.replace('_', ' ')} {n}" for kind, n in sorted(counts.items())))
    else:
        print("nothing was held about that address; an audit record of the request was kept")
    return EXIT_OK


def cmd_invite(args: argparse.Namespace) -> int:
    from . import outreach

    region = args.region.upper() if args.region else None
    if region is not None and region not in cctlds.REGIONS:
        raise CliError(f"{args.region} is not a region: one of {', '.join(cctlds.REGIONS)}")
    cfg = load_config(args)
    open_db(cfg).close()  # a clear error when there is no database yet
    try:
        done = outreach.run(cfg, region=region, dry_run=args.dry_run)
    except cctlds.CctldsError as e:
        raise CliError("; ".join(e.problems[:3])) from e
    except outreach.IanaUnreachable as e:  # each lookup's whole reason is in the log above
        sent = sum(i.skipped is None for i in e.done) if not args.dry_run else 0
        if sent:
            _wake_daemon(cfg)
        raise CliError(f"stopped: IANA could not be asked for {counted(len(e.tlds), 'ccTLD')} in a row "
                       f"({', '.join('.' + t for t in e.tlds)}), the last time: {e.reason}; "
                       f"{counted(sent, 'invitation')} sent; try again when IANA can be reached") from e
    invited = [i for i in done if i.skipped is None]
    if invited and not args.dry_run:
        _wake_daemon(cfg)
    if args.json:
        _print_json({"dry_run": args.dry_run, "invitations": [i.as_dict() for i in done]})
        return EXIT_OK
    verb = "would invite" if args.dry_run else "invited"
    for i in done:
        what = f"{verb} {i.admin}" if i.skipped is None else f"skipped: {i.skipped}"
        print(f"{i.region:<4} {i.shown:<28} {what}")
    print(f"{len(invited)} {verb}, {len(done) - len(invited)} skipped")
    return EXIT_OK


def cmd_mailman_sync(args: argparse.Namespace) -> int:
    from . import mailman

    cfg = load_config(args)
    if not mailman.enabled(cfg):
        raise CliError("no Mailman is configured (mailman.rest_url)")
    conn = open_db(cfg)
    try:
        if not args.dry_run:
            storage.commit_one(conn, lambda c: mailman.arm(c, cfg, time.time()))
        diff = mailman.sync(conn, cfg, dry_run=args.dry_run)
    except Exception as e:  # mailmanclient raises many kinds: say which, in one line
        raise CliError(f"Mailman at {cfg.mailman.rest_url}: {type(e).__name__}: {e}") from e
    if args.json:
        _print_json({**diff.as_dict(), "applied": not args.dry_run})
    else:
        verb = "would " if args.dry_run else ""
        for a, n in diff.add.items():
            print(f"+ {a} ({n}): {verb}subscribe")
        for a in diff.remove:
            print(f"- {a}: {verb}unsubscribe (not on the roster)")
        for a, (old, new) in diff.rename.items():
            print(f"~ {a}: {verb}rename {old!r} -> {new!r}")
        if diff.empty():
            print(f"{cfg.mailman.list}: the members are the roster's SSCs")
    return EXIT_ERROR if args.dry_run and not diff.empty() else EXIT_OK

"""The contacts: the roster, its broadcast, the Mailman list, IANA's admin contacts."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time

from tldops_mta.auth import iana
from tldops_mta.cli.shared import (
    EXIT_ERROR,
    EXIT_OK,
    CliError,
    load_config,
    named_cctld,
    open_db,
    print_json,
    print_listing,
    secure_state,
    wake_daemon,
    when,
)
from tldops_mta.policy.texts import counted
from tldops_mta.roster import broadcast, formats, freshness, mailman, roster_table
from tldops_mta.store import storage


def cmd_roster_export(args: argparse.Namespace) -> int:
    """The roster in a format (stdout); personal data, so only for the operator's eyes."""

    cfg = load_config(args)
    named = named_cctld(cfg, args.tld).tld if args.tld else None
    conn = open_db(cfg)
    if named is not None:
        tlds = [named]
    else:
        tlds = [r[0] for r in conn.execute("SELECT DISTINCT tld FROM roster ORDER BY tld")]
    table = formats.rows({tld: roster_table.current(conn, tld) for tld in tlds}, freshness.marks(conn, cfg))
    label, now = f"TLP:{cfg.broadcast.tlp}", time.time()
    out = {"text": lambda: formats.text(table, now, label, confirmed=args.confirmed),
           "csv": lambda: formats.to_csv(table), "vcard": lambda: formats.to_vcard(table),
           "json": lambda: formats.to_json(table, now, label)}[args.format]()
    sys.stdout.write(out)
    return EXIT_OK


def cmd_broadcast_now(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    conn = open_db(cfg)
    now = time.time()
    period = f"manual-{dt.datetime.fromtimestamp(now, dt.UTC):%Y-%m-%dT%H:%M:%S.%fZ}"
    count = storage.commit_one(conn, lambda c: broadcast.claim_and_queue(c, cfg, period, "manual", now))
    wake_daemon(cfg)
    if args.json:
        print_json({"period": period, "recipients": count})
    else:
        print(f"{period}: roster queued to {counted(count or 0, 'SSC')} "
              "(the daemon sends it; see 'broadcast status')")
    return EXIT_OK


def cmd_broadcast_status(args: argparse.Namespace) -> int:
    return print_listing(
        args, broadcast.status(open_db(load_config(args))), lambda r: r,
        lambda r: f"{r['period']:<36}  {when(r['claimed_at'])}  {r['recipients']:>5}  {r['sent']:>5}  "
                  f"{r['queued']:>6}  {r['failed']:>6}  {r['tlp']}",
        empty="no broadcast yet",
        header=(f"{'PERIOD':<36}  {'QUEUED AT (UTC)':<19}  {'SSCS':>5}  {'SENT':>5}  {'QUEUED':>6}  "
                f"{'FAILED':>6}  TLP"))


def cmd_broadcast_preview(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    built = broadcast.build(open_db(cfg), cfg, time.time(), "preview")
    sys.stdout.write(built.raw.decode("utf-8", "replace").replace("\r\n", "\n"))
    print(f"\n(to {counted(len(built.recipients), 'SSC')}; nothing was sent)", file=sys.stderr)
    return EXIT_OK


def cmd_iana_show(args: argparse.Namespace) -> int:
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
        print_json({"tld": c.tld, "u_label": c.u_label, "admin_email": c.email, "status": c.status,
                    "source": c.source, "fetched_at": c.fetched_at,
                    "fetched_at_utc": when(c.fetched_at) + "Z", "age_seconds": round(age, 1),
                    "from_cache": c.from_cache, "reason": c.reason,
                    "raw": c.raw.decode("utf-8", "replace")})
        return EXIT_OK
    print(f"tld:         {c.tld}" + (f" ({c.u_label})" if c.u_label != c.tld else ""))
    print(f"admin:       {c.email or '-'}")
    print(f"status:      {c.status}" + (" (IANA has no such top-level domain)" if c.status != "ok" else ""))
    print(f"source:      {c.source}, {'from the cache' if c.from_cache else 'fresh from IANA'}")
    print(f"fetched at:  {when(c.fetched_at)} UTC ({age:.0f} s ago)")
    print(f"reason:      {c.reason}")
    return EXIT_OK


def cmd_mailman_sync(args: argparse.Namespace) -> int:
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
        print_json({**diff.as_dict(), "applied": not args.dry_run})
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

"""Running the service: health, statistics, the membership page, backups, personal data,
invitations."""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import sys
import time
from pathlib import Path

from tldops_mta.cli.shared import (
    EXIT_ERROR,
    EXIT_OK,
    CliError,
    cctld_table,
    load_config,
    open_db,
    print_json,
    secure_state,
    wake_daemon,
    when,
)
from tldops_mta.daemon import health
from tldops_mta.daemon.pid_files import running as running_pid
from tldops_mta.ops import outreach, persons, publish, stats
from tldops_mta.policy.texts import counted
from tldops_mta.settings import cctlds, policy_files
from tldops_mta.settings.live import Live
from tldops_mta.store import backups, storage


def cmd_status(args: argparse.Namespace) -> int:
    """The same figures as systemd's STATUS= line and the metrics endpoint (health.read)."""

    cfg = load_config(args)
    h = health.read(open_db(cfg))
    pid = running_pid(cfg.state_dir)
    problems = ([] if pid is not None else ["the daemon is not running"]) + h.problems
    try:
        policy: dict[str, str] | None = policy_files.sources(cfg.rules_dir)
    except policy_files.RulesError as e:
        policy = None
        problems += [f"rules: {p}" for p in e.problems]
    if args.json:
        print_json({**h.as_dict(), "running": pid is not None, "pid": pid, "rules": policy,
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
        done = (f"all delivered {when(h.last_broadcast_completed_at)} UTC"
                if h.last_broadcast_undelivered == 0 and h.last_broadcast_completed_at
                else f"{h.last_broadcast_undelivered} deliveries still queued")
        print(f"broadcast:  {h.last_broadcast_period} queued {when(h.last_broadcast_at)} UTC; {done}")
    print(f"roster:     {counted(h.sscs, 'SSC')} of {counted(h.subscribed_cctlds, 'ccTLD')}")
    print("rules:      " + ("; ".join(f"{name} {origin}" for name, origin in policy.items())
                            if policy is not None else "cannot be read (see problems)"))
    print("problems:   " + ("none" if not problems else problems[0]))
    for p in problems[1:]:
        print("            " + p)
    return EXIT_ERROR if problems else EXIT_OK


def cmd_stats(args: argparse.Namespace) -> int:
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
    if source == "roster":  # now, from the roster: with the share of SSCs who confirmed lately
        result = stats.with_freshness_now(result, conn, cfg, table, time.time())
    if args.json:
        print_json(result.as_dict())
    elif args.csv:
        sys.stdout.write(stats.render_csv(result))
    else:
        print(stats.render_text(result), end="")
    return EXIT_OK


def cmd_publish(args: argparse.Namespace) -> int:
    """The public membership page, written now whether or not it changed (the nightly
    housekeeping writes it only when it would change)."""
    cfg = load_config(args)
    directory = args.dir if args.dir is not None else Path(cfg.publish.dir) if cfg.publish.dir else None
    if directory is None:
        raise CliError("name the directory to write the page into (tldops publish DIR), or set publish.dir")
    table = cctld_table(cfg)
    page = publish.gather(open_db(cfg), table, Live(cfg), dt.datetime.now(dt.UTC).date())
    try:
        done = publish.write(directory, page)
    except OSError as e:
        raise CliError(f"the page was not written, what {directory} held is unchanged: {e}") from e
    if args.json:
        print_json(done.as_dict())
    else:
        print(f"membership page written: {', '.join(str(p) for p in done.files)} "
              f"({counted(page.subscribed, 'ccTLD')} subscribed, data of {page.day.isoformat()} UTC)")
    return EXIT_OK


def cmd_backup(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    if cfg.database_path.exists():
        secure_state(cfg)
    try:
        done = backups.backup(cfg.database_path, args.file, busy_timeout_ms=cfg.storage.busy_timeout_ms)
    except backups.BackupError as e:
        raise CliError(str(e)) from e
    if args.json:
        print_json({"file": str(done.path), "size": done.size, "schema_version": done.schema_version})
    else:
        print(f"backup written to {done.path} ({done.size} octets, schema version {done.schema_version})")
    return EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
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
        print_json({"database": str(done.path), "schema_version": done.schema_version,
                    "migrations_applied": list(done.migrations_applied)})
    else:
        migrated = (f"; migrations {', '.join(map(str, done.migrations_applied))} applied"
                    if done.migrations_applied else "")
        print(f"restored {args.file} to {done.path} (schema version {done.schema_version}{migrated})")
    return EXIT_OK


def cmd_person_export(args: argparse.Namespace) -> int:
    found = persons.export(open_db(load_config(args)), args.address)
    if args.json:
        print_json(found)
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
        print_json({"erased": bool(counts), "counts": counts,
                    "ids": {k: v for k, v in erased.ids.items() if v}})
    elif counts:
        # Per kind, named as `person export` names its sections (no noun to put in the plural).
        print("erased, rows per kind: "
              + ", ".join(f"{kind.replace('_', ' ')} {n}" for kind, n in sorted(counts.items())))
    else:
        print("nothing was held about that address; an audit record of the request was kept")
    return EXIT_OK


def cmd_invite(args: argparse.Namespace) -> int:
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
            wake_daemon(cfg)
        raise CliError(f"stopped: IANA could not be asked for {counted(len(e.tlds), 'ccTLD')} in a row "
                       f"({', '.join('.' + t for t in e.tlds)}), the last time: {e.reason}; "
                       f"{counted(sent, 'invitation')} sent; try again when IANA can be reached") from e
    invited = [i for i in done if i.skipped is None]
    if invited and not args.dry_run:
        wake_daemon(cfg)
    if args.json:
        print_json({"dry_run": args.dry_run, "invitations": [i.as_dict() for i in done]})
        return EXIT_OK
    verb = "would invite" if args.dry_run else "invited"
    for i in done:
        what = f"{verb} {i.admin}" if i.skipped is None else f"skipped: {i.skipped}"
        print(f"{i.region:<4} {i.shown:<28} {what}")
    print(f"{len(invited)} {verb}, {len(done) - len(invited)} skipped")
    return EXIT_OK

"""The spool: what arrived, why it waits or was refused, retrying it, reading postmaster mail."""

from __future__ import annotations

import argparse
import getpass
import sys
import time

from tldops_mta.cli.shared import (
    EXIT_OK,
    CliError,
    load_config,
    open_db,
    print_json,
    print_listing,
    wake_daemon,
    when,
)
from tldops_mta.desks import postmaster_desk
from tldops_mta.policy.texts import missing
from tldops_mta.store import spool, storage


def cmd_spool_list(args: argparse.Namespace) -> int:
    conn = open_db(load_config(args))

    def line(e: spool.Entry) -> str:
        # Why it waits, was rejected or failed, in full (the last column may wrap); for a
        # message processed or in processing, the services it went to.
        services = ",".join(e.services or [])
        why = e.reason if e.reason and e.status not in (spool.Status.DONE, spool.Status.PROCESSING) else ""
        why = why.removeprefix(f"{spool.WAITING}: ")  # said in the status column
        what = f"{services}: {why}" if services and why else services or why
        return (f"{e.queue_id:<19}  {when(e.received_at)}  {e.shown_status:<10}  {e.lane:<8}  "
                f"{e.attempts:>3}  {e.size:>8}  {what}")

    which = " and ".join(([f"with status {args.status}"] if args.status else [])
                         + ([f"for {args.service}@"] if args.service else [])
                         + ([f"in the {args.lane} lane"] if args.lane else []))
    entries = spool.listing(conn, args.status, args.limit, args.service, args.lane)
    return print_listing(
        args, entries, lambda e: e.as_dict(), line,
        empty=f"no messages {which}" if which else "spool is empty",
        header=(f"{'ID':<19}  {'RECEIVED (UTC)':<19}  {'STATUS':<10}  {'LANE':<8}  {'TRY':>3}  {'SIZE':>8}"
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
        print_json({**entry.as_dict(), "header": header})
        return EXIT_OK
    print(f"id:          {entry.queue_id}")
    print(f"status:      {entry.status} (attempts {entry.attempts})")
    print(f"lane:        {entry.lane}")
    print(f"received:    {when(entry.received_at)} UTC from {entry.client_addr} "
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
        print(f"  {when(ev['at'])}  {ev['status']:<10}  {ev['reason'] or ''}")
    if not raw:
        print(f"header:      ({PURGED})")
        return EXIT_OK
    print("header:")
    for line in header.splitlines():
        print("  " + line)
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
    wake_daemon(load_config(args))
    print(f"{args.queue_id} queued for processing again")
    return EXIT_OK


def cmd_spool_read(args: argparse.Namespace) -> int:
    """Postmaster mail a person has read (no operator to forward it to, or kept from a loop)."""

    conn = open_db(load_config(args))
    try:
        storage.commit_one(conn, postmaster_desk.mark_read(args.queue_id, time.time(), getpass.getuser()))
    except postmaster_desk.NotMarkable as e:
        raise CliError(str(e)) from e
    for queue_id in args.queue_id:
        print(f"{queue_id} marked read")
    return EXIT_OK

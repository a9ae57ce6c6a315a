"""The Validator's work: the request queue and the list's held first posts."""

from __future__ import annotations

import argparse
import getpass
import sys

from tldops_mta.cli.shared import (
    EXIT_ERROR,
    EXIT_OK,
    MAIL_WAITS,
    CliError,
    load_config,
    open_db,
    print_json,
    print_listing,
    wake_daemon,
    when,
)
from tldops_mta.desks import list_desk
from tldops_mta.policy.queue_states import Actor, Event
from tldops_mta.policy.texts import missing
from tldops_mta.request_queue import listing, transitions
from tldops_mta.roster import roster_table
from tldops_mta.settings import policy_files
from tldops_mta.settings.live import Live
from tldops_mta.store import storage


def cmd_queue_list(args: argparse.Namespace) -> int:
    return print_listing(
        args, listing.listing(open_db(load_config(args)), args.state, args.limit), lambda i: i.as_dict(),
        lambda i: f"{i.id:>5}  {when(i.created_at)}  {i.tld:<12}  {i.auth:<5}  {i.state:<21}  {i.requester}",
        empty="no requests" if not args.state else f"no requests {args.state}",
        header=f"{'ID':>5}  {'CREATED (UTC)':<19}  {'CCTLD':<12}  {'AUTH':<5}  {'STATE':<21}  REQUESTER")


def cmd_queue_show(args: argparse.Namespace) -> int:
    item = listing.show(open_db(load_config(args)), args.item_id)
    if item is None:
        raise CliError(missing("request", args.item_id))
    if args.json:
        print_json(item.as_dict())
        return EXIT_OK
    ev = item.evidence or {}
    print(f"request:     {item.id} (.{item.tld}), {item.state}")
    print(f"requester:   {item.requester}; IANA admin {item.admin_email}; authenticated by {item.auth}")
    print(f"created:     {when(item.created_at)} UTC from message {item.queue_id}; "
          f"updated {when(item.updated_at)} UTC")
    decision = ev.get("decision") or {}
    print(f"decision:    {decision.get('verdict', '?')}: {decision.get('reason', '')}")
    iana = ev.get("iana") or {}
    if iana:
        print(f"IANA:        {iana.get('email')} ({iana.get('status')}, from {iana.get('source')}, "
              f"fetched {when(float(iana.get('fetched_at') or 0))} UTC)")
    for sig in ev.get("dkim") or []:
        counts = "counts" if sig.get("counts") else "does not count"
        print(f"DKIM:        d={sig.get('domain')} s={sig.get('selector')} {sig.get('result')}, "
              f"{counts}{': ' + sig['reason'] if sig.get('reason') else ''}")
    if ev.get("authentication_results"):
        print(f"A-R:         {ev['authentication_results']}")
    change = item.change or {}
    if change:

        print(f"asks:        {item.action} .{item.tld}; the roster then ('-' leaves, '+' comes):")
        for line in roster_table.diff_lines(roster_table.from_dicts(change.get("before", [])),
                                            roster_table.from_dicts(change.get("after", []))):
            print(f"  {line}")
        for w in change.get("warnings", []):
            print(f"warning:     {w}")
    print("history:")
    for e in item.events or []:
        print(f"  {when(e['at'])}  {e['event']:<8}  -> {e['to_state']:<21}  {e['actor']} {e['who'] or ''}"
              f" ({e['auth'] or '-'}){': ' + e['reason'] if e['reason'] else ''}")
    return EXIT_OK


def cmd_queue_decide(args: argparse.Namespace) -> int:
    """A Validator's decision from the command line: same rules as by mail (first decision
    wins), recorded as made by the local user."""

    cfg = load_config(args)
    live = Live(cfg, policy_files.load(cfg.rules_dir))
    conn = open_db(cfg)
    by = transitions.By(Actor.VALIDATOR, f"cli:{getpass.getuser()}", "cli")
    reason = " ".join(args.reason) or None
    result = storage.commit_one(conn, lambda c: transitions.act(live, c, args.item_id, Event(args.event),
                                                           by, reason))
    woke = result.ok and wake_daemon(cfg)
    if args.json:
        print_json({"ok": result.ok, "message": result.message, "state": result.state})
    elif result.ok:
        print(result.message + ("" if woke else MAIL_WAITS))
    else:
        print(f"tldops: {result.message}", file=sys.stderr)
    return EXIT_OK if result.ok else EXIT_ERROR


def cmd_list_held(args: argparse.Namespace) -> int:
    return print_listing(
        args, list_desk.pending(open_db(load_config(args))), lambda r: r,
        lambda r: f"#{r['id']:<5} {when(r['held_at'])}  {r['tlp']:<17} {r['author']}: {r['subject']}"
                  f"  ({r['queue_id']})",
        empty="no post waits")


def cmd_list_decide(args: argparse.Namespace) -> int:
    """A Validator's decision on a held post: the first one counts, recorded as made by the
    local user; a release is taken up by the daemon at once."""

    cfg = load_config(args)
    live = Live(cfg, policy_files.load(cfg.rules_dir))
    conn = open_db(cfg)
    by, reason = f"cli:{getpass.getuser()}", " ".join(args.reason) or None
    result = storage.commit_one(conn, lambda c: list_desk.decide(live, c, args.item_id, args.release,
                                                              by, reason))
    woke = result.ok and wake_daemon(cfg)
    if args.json:
        print_json({"ok": result.ok, "message": result.message})
    elif result.ok:
        print(result.message + ("" if woke else MAIL_WAITS))
    else:
        print(f"tldops: {result.message}", file=sys.stderr)
    return EXIT_OK if result.ok else EXIT_ERROR

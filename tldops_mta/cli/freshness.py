"""``tldops freshness``: who has not confirmed their roster entry, and who is asked next."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from tldops_mta.cli.shared import EXIT_OK, load_config, open_db, print_json, when
from tldops_mta.policy.texts import counted, utc_day
from tldops_mta.roster import freshness


def cmd_freshness(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    found = freshness.overview(open_db(cfg), cfg, max(0, args.next))
    if args.json:
        print_json({"enabled": cfg.freshness.enabled, **found})
        return EXIT_OK
    if not cfg.freshness.enabled:
        print("freshness is turned off (freshness.enabled): nobody is asked")
    _section("Unconfirmed (the roster marks them; nobody is removed)", found["unconfirmed"],
             lambda r: f"since {utc_day(r['unconfirmed_since'])}, "
                       + ("the IANA contact and the Validators were told" if r["notified_at"] else
                          "the notice is still to go"))
    _section("Asked, no answer yet", found["awaiting_answer"],
             lambda r: f"asked {utc_day(r['asked_at'])}, {counted(r['reminders'], 'reminder')}")
    _section("Next asks", found["next_asks"], lambda r: f"due {when(r['due_at'])} UTC, last confirmed "
             + (utc_day(r["confirmed_at"]) if r["confirmed_at"] else "never"))
    return EXIT_OK


def _section(title: str, rows: list[dict[str, Any]], what: Callable[[dict[str, Any]], str]) -> None:
    print(f"{title}: {len(rows) if rows else 'none'}")
    for r in rows:
        print(f"  .{r['tld']:<10} {r['role']:<9} {r['email']:<40} {what(r)}")


"""What every command does alike: the configuration, the database, listings, errors."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sqlite3
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from tldops_mta.daemon.pid_files import wake
from tldops_mta.settings import cctlds
from tldops_mta.settings import config as config_mod
from tldops_mta.store import private_state, storage

T = TypeVar("T")


EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    """A problem to tell the user in one line, then exit 1."""


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


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def print_listing(args: argparse.Namespace, rows: Sequence[T], as_json: Callable[[T], Any],
                  line: Callable[[T], str], *, empty: str, header: str | None = None) -> int:
    """What every listing command prints: the rows as JSON with --json; else ``empty`` when
    there are none, or the header and one line per row."""
    if args.json:
        print_json([as_json(r) for r in rows])
        return EXIT_OK
    if not rows:
        print(empty)
        return EXIT_OK
    if header is not None:
        print(header)
    for r in rows:
        print(line(r))
    return EXIT_OK


def when(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def flag_overrides(args: argparse.Namespace) -> dict[str, object]:
    """The configuration keys that command-line flags set (flags win over the file)."""
    flags = {"server.listen": getattr(args, "listen", None),
             "server.domain": getattr(args, "domain", None),
             "storage.state_dir": getattr(args, "state_dir", None)}
    return {k: v for k, v in flags.items() if v}


def wake_daemon(cfg: config_mod.Config) -> bool:
    """The daemon takes up what this command queued now, not at its next look; False when
    no daemon runs (then nothing is sent until one does)."""
    return wake(cfg.state_dir)


MAIL_WAITS = "; the daemon is not running: the mail this makes goes out when it next runs"

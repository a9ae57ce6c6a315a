"""Setting up: the configuration, the database schema, the daemon's own DKIM key."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

from tldops_mta.auth.dkim_verify import KeyRecordError, KeyResolver, KeyTemporaryError
from tldops_mta.cli.shared import (
    EXIT_ERROR,
    EXIT_OK,
    CliError,
    load_config,
    print_json,
    secure_state,
)
from tldops_mta.mail import dkim_keys
from tldops_mta.ops import config_files
from tldops_mta.settings import config as config_mod
from tldops_mta.settings import policy_files
from tldops_mta.store import storage


def cmd_config_check(args: argparse.Namespace) -> int:
    problems: list[str] = []
    cfg = None
    try:
        cfg = load_config(args)
    except config_mod.ConfigError as e:
        problems += [str(p) for p in e.problems]
    if cfg is not None:

        problems += [str(p) for p in config_files.problems(cfg)]
        try:
            policy_files.load(cfg.rules_dir)
        except policy_files.RulesError as e:
            problems += [f"rules: {p}" for p in e.problems]
    notes = ["no dkim.key: the mail the daemon sends goes out without a DKIM signature"
             ] if cfg is not None and cfg.dkim_key is None else []
    if args.json:
        print_json({"ok": not problems, "problems": problems, "notes": notes,
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
        print_json(cfg.as_dict())
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
        print_json({"applied": applied, "version": version, "database": str(cfg.database_path)})
    elif applied:
        print(f"applied migrations {', '.join(map(str, applied))}; schema is now version {version}")
    else:
        print(f"schema is up to date (version {version})")
    return EXIT_OK


def cmd_dkim_keygen(args: argparse.Namespace) -> int:
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
        print_json({"ok": problem is None, "name": name, "key": str(path), "problem": problem,
                    "published": None if record is None else record.decode("ascii", "replace"),
                    "expected": key.record})
        return EXIT_ERROR if problem else EXIT_OK
    if problem is not None:
        raise CliError(problem)
    print(f"the TXT record at {name} publishes {path}")
    return EXIT_OK

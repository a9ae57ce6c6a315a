"""The desks in their registry: one desk for every service address, one owner for every
token purpose, and a message routed by the services the worker read once.

The purposes issued are read from the source (every call that issues a token), so a new
purpose that nobody declares fails here, before a confirm+ answer to it would be refused.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import time
from pathlib import Path

import pytest

import tldops_mta
from tldops_mta.auth.dkim_verify import KeyResolver
from tldops_mta.auth.iana import IanaClient
from tldops_mta.auth.message_facts import MessageFacts
from tldops_mta.auth.sender_auth import SenderAuth
from tldops_mta.auth.token_purposes import DuplicatePurpose, Purpose, registry
from tldops_mta.settings import config
from tldops_mta.settings.live import Live
from tldops_mta.settings.recipients import Service, Services
from tldops_mta.store import spool, storage
from tldops_mta.store.storage import Reader
from tldops_mta.worker import dispatch
from tldops_mta.worker.spool_loop import Worker

PACKAGE = Path(tldops_mta.__file__).parent

ISSUERS = {"issue": 1, "one_time_address": 2, "ask_token": 2}
"""The calls that issue a token, and where their purpose argument is."""


def modules() -> list[str]:
    found = pkgutil.walk_packages([str(PACKAGE)], "tldops_mta.")
    return sorted(m.name.removeprefix("tldops_mta.") for m in found
                  if not m.ispkg and m.name != "tldops_mta.__main__")


def issued_purposes() -> dict[str, list[str]]:
    """Each purpose issued anywhere in the package -> where (module:line)."""
    found: dict[str, list[str]] = {}
    for name in modules():
        module = importlib.import_module(f"tldops_mta.{name}")
        tree = ast.parse(Path(str(module.__file__)).read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            params = {a.arg for a in fn.args.args + fn.args.kwonlyargs}
            for call in ast.walk(fn):
                if not isinstance(call, ast.Call):
                    continue
                f = call.func
                callee = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                if callee not in ISSUERS or len(call.args) <= ISSUERS[callee]:
                    continue
                arg = call.args[ISSUERS[callee]]
                where = f"{name}:{call.lineno}"
                if isinstance(arg, ast.Name) and arg.id in params:
                    # Passed through by an issuer itself: its callers name the purpose.
                    assert fn.name in ISSUERS, f"{where}: a purpose passed through {fn.name}"
                    continue
                if isinstance(arg, ast.Constant):
                    value = arg.value
                elif isinstance(arg, ast.Name):
                    value = getattr(module, arg.id)
                elif isinstance(arg, ast.Attribute) and isinstance(arg.value, ast.Name):
                    value = getattr(getattr(module, arg.value.id), arg.attr)
                else:
                    raise AssertionError(f"{where}: a purpose this test cannot read")
                assert isinstance(value, str), where
                if where not in found.setdefault(value, []):  # (a nested function is walked twice)
                    found[value].append(where)
    return found


def declared_purposes() -> list[tuple[str, Purpose]]:
    """Every module-level ``PURPOSES`` declaration in the package: (module, purpose)."""
    return [(name, p) for name in modules()
            for p in getattr(importlib.import_module(f"tldops_mta.{name}"), "PURPOSES", ())
            if isinstance(p, Purpose)]


def test_every_token_purpose_issued_has_exactly_one_registered_owner() -> None:
    issued = issued_purposes()
    assert len(issued) >= 8, issued  # requests, withdrawals, decisions (2), who, list, update, reconfirm
    declared = declared_purposes()
    names = [p.name for _, p in declared]
    assert sorted(names) == sorted(set(names)), f"declared twice: {names}"
    assert set(dispatch.PURPOSES) == set(names), "a declaration the dispatcher's registry leaves out"
    assert set(issued) <= set(dispatch.PURPOSES), \
        {p: issued[p] for p in set(issued) - set(dispatch.PURPOSES)}
    assert set(dispatch.PURPOSES) <= set(issued), "a purpose declared that nothing issues"
    for purpose in dispatch.PURPOSES.values():
        assert purpose.owner, purpose
        if purpose.redeem is not None:  # what the confirm+ desk says of it names only what it has
            purpose.said.format(request_id=1, result="x")
            assert set(purpose.logged) <= {"request_id", "result"} and purpose.event


def test_a_purpose_declared_twice_is_refused() -> None:
    one = Purpose("x", "who", None)
    with pytest.raises(DuplicatePurpose, match="'x' declared by who and list"):
        registry([one], [Purpose("x", "list", None)])


async def make(tmp_path: Path) -> tuple[Live, storage.Writer, Reader]:
    cfg = config.load(None, {"storage.state_dir": str(tmp_path)})
    conn = storage.connect(cfg.database_path)
    storage.migrate(conn)
    writer = storage.Writer(conn)
    writer.start()
    return Live(cfg), writer, Reader(storage.connect(cfg.database_path))


async def test_the_dispatcher_has_a_desk_for_every_service(tmp_path: Path) -> None:
    live, writer, reader = await make(tmp_path)
    try:
        desks = dispatch.desks(live, reader, SenderAuth(live, KeyResolver()),
                               IanaClient(live.cfg.iana, writer, reader))
        assert set(desks) == set(Service)
        assert set(dispatch.ORDER) == set(Service) and len(dispatch.ORDER) == len(Service)
        dispatch.Dispatcher(desks)
        with pytest.raises(ValueError, match="no desk for help"):
            dispatch.Dispatcher({s: d for s, d in desks.items() if s is not Service.HELP})
    finally:
        await writer.close()
        reader.close()


async def test_a_message_goes_to_the_desk_of_its_first_service_with_its_tag(tmp_path: Path) -> None:
    live, writer, reader = await make(tmp_path)
    seen: list[tuple[Service, Services]] = []

    class Recording:
        def __init__(self, service: Service) -> None:
            self.service = service

        async def handle(self, p: spool.Pending, facts: MessageFacts, services: Services) -> spool.Outcome:
            seen.append((self.service, services))
            return spool.Outcome(p.id, spool.Status.DONE, "seen", (self.service.value,))

    worker = Worker(live, writer, reader, dispatch.Dispatcher({s: Recording(s) for s in Service}))
    try:
        await writer.run(spool.insert(spool.Arrival(
            queue_id=spool.new_queue_id(), received_at=time.time(), session_id="s", client_addr="127.0.0.1",
            client_port=1, helo="h", mail_from="a@nic.example",
            rcpt_to=("requests@tld-ops.localhost", "confirm+first@tld-ops.localhost",
                     "confirm+second@tld-ops.localhost", "nobody@elsewhere.example"),
            smtputf8=False, raw=b"From: a@nic.example\r\nSubject: s\r\n\r\nbody\r\n")))
        assert await worker.step()
        [(desk, services)] = seen
        assert desk is Service.CONFIRM  # confirmations before requests
        assert services == {Service.CONFIRM, Service.REQUESTS}
        assert services.tag(Service.CONFIRM) == "first"
        row = await reader.run(lambda c: c.execute("SELECT status, services FROM spool").fetchone())
        assert row == ("done", '["confirm", "requests"]')
    finally:
        await writer.close()
        reader.close()


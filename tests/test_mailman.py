"""The Mailman 3 backend (issue 9) against a real Mailman 3 on loopback (its REST API, its
LMTP server, SQLite), started once for the session (tests/mailman_instance.py); each test
has its own list and its own daemon, whose approvals go through the real workflow.
"""

from __future__ import annotations

import email
import itertools
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from auth_env import form
from daemon_proc import DOMAIN, write_config
from mailman_instance import MAIL_DOMAIN, REST_PASSWORD, REST_USER, Mailman
from mailmanclient import Client
from test_workflow import JANE, JOHN, Flow, flow, subscribed

from tldops_mta.logs import redact_address

# The first test also waits for the session's Mailman: on a clean machine its virtualenv is
# built first (~20 s from the package index, more on a slow mirror).
pytestmark = pytest.mark.timeout(600)

_names = itertools.count(1)


@pytest.fixture(scope="session")
def mailman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mailman]:
    m = Mailman(tmp_path_factory.mktemp("mailman"))
    try:
        m.start()
        Client(m.rest_url, REST_USER, REST_PASSWORD).create_domain(MAIL_DOMAIN)
        yield m
    finally:
        m.close()


class Env:
    """A daemon whose Mailman list is a fresh one on the session's Mailman."""

    def __init__(self, f: Flow, mm: Mailman, ml: Any) -> None:
        self.f = f
        self.mm = mm
        self.ml = ml
        self.client = Client(mm.rest_url, REST_USER, REST_PASSWORD)

    def members(self) -> dict[str, str]:
        ml = self.client.get_list(self.ml.fqdn_listname)
        return {str(m.email): str(m.display_name or "") for m in ml.members}

    def applied(self, *addresses: str, after: int) -> None:
        """Once the daemon's Mailman loop has applied each of ``addresses``: as many log lines
        as there are addresses for each redacted form (Jane's and John's are both j***@...),
        and none of them waits any longer."""
        wanted = Counter(redact_address(a) for a in addresses)

        def done(_r: dict[str, Any]) -> bool:
            logged = Counter(str(r.get("address")) for r in self.f.d.lines[after:]
                             if r.get("event") == "mailman member")
            return all(logged[a] >= n for a, n in wanted.items())

        self.f.d.wait_for("mailman member", done, after=after, timeout=30)
        assert not {r[0] for r in self.pending()} & set(addresses)

    def pending(self) -> list[tuple[Any, ...]]:
        return self.f.d.query("SELECT address, attempts FROM mailman_pending ORDER BY address")


def new_list(mm: Mailman) -> Any:
    return Client(mm.rest_url, REST_USER, REST_PASSWORD).get_domain(MAIL_DOMAIN).create_list(
        f"ssc{next(_names)}")


def settings(tmp_path: Path, mm: Mailman, ml: Any) -> dict[str, Any]:
    """The daemon's [mailman] keys for list ``ml``."""
    password = tmp_path / "mailman-password"
    password.write_text(REST_PASSWORD + "\n")
    return {"mailman.rest_url": mm.rest_url, "mailman.user": REST_USER,
            "mailman.password_file": str(password), "mailman.list": ml.fqdn_listname,
            "mailman.lmtp": f"127.0.0.1:{mm.lmtp_port}", "mailman.retry_base": 0.2, "mailman.retry_max": 1.0}


def reconfigured(f: Flow, **changes: Any) -> None:
    """The daemon restarted with ``changes`` to its configuration (None: the key removed)."""
    f.d.stop()
    f.d.settings = {k: v for k, v in {**f.d.settings, **changes}.items() if v is not None}
    write_config(f.d.config_path, f.d.settings)
    f.d.start()


@pytest.fixture
def env(tmp_path: Path, mailman: Mailman) -> Iterator[Env]:
    ml = new_list(mailman)
    (tmp_path / "wd").mkdir()
    with flow(tmp_path / "wd", **settings(tmp_path, mailman, ml)) as f:
        yield Env(f, mailman, ml)


def test_approved_subscription_update_and_removal_are_applied_to_the_list(env: Env) -> None:
    f = env.f
    mark = f.d.mark()
    subscribed(f, JANE, JOHN)
    env.applied("jane.doe@nic.org.mt", "john.roe@nic.org.mt", after=mark)
    assert env.members() == {"jane.doe@nic.org.mt": "Jane Doe", "john.roe@nic.org.mt": "John Roe"}
    assert env.pending() == []

    # An update: John's place goes to Ann (another address), Jane's name is corrected.
    ann = ("secondary", "Ann", "Lee", "+356 2133 9999", "ann.lee@nic.org.mt", "john.roe@nic.org.mt")
    jane = ("primary", "Janet", "Doe", JANE[3], JANE[4], JANE[4])
    mark = f.d.mark()
    assert f.submit(form("update", sscs=(jane, ann)))[0] == "done"
    assert f.tldops("queue", "approve", "2").returncode == 0
    env.applied("ann.lee@nic.org.mt", "john.roe@nic.org.mt", "jane.doe@nic.org.mt", after=mark)
    assert env.members() == {"jane.doe@nic.org.mt": "Janet Doe", "ann.lee@nic.org.mt": "Ann Lee"}

    mark = f.d.mark()
    assert f.submit(form("remove", sscs=(), removals=("all",)))[0] == "done"
    assert f.tldops("queue", "approve", "3").returncode == 0
    env.applied("ann.lee@nic.org.mt", "jane.doe@nic.org.mt", after=mark)
    assert env.members() == {}
    assert env.pending() == []


def test_mailman_down_during_an_approval_the_change_waits_and_is_applied_whole(env: Env) -> None:
    f, mm = env.f, env.mm
    mm.stop()
    try:
        mark = f.d.mark()
        subscribed(f, JANE, JOHN)
        # The roster changed at once; the Mailman operations wait in the same database.
        assert [r[4] for r in f.roster()] == ["jane.doe@nic.org.mt", "john.roe@nic.org.mt"]
        failed = f.d.wait_for("mailman call failed, will retry", lambda r: r.get("attempts", 0) >= 2,
                              after=mark, timeout=30)
        assert "Error" in failed["error"]
        assert {r[0] for r in env.pending()} == {"jane.doe@nic.org.mt", "john.roe@nic.org.mt"}
        assert f.d.events("mailman member") == []
    finally:
        mm.start()
    env.applied("jane.doe@nic.org.mt", "john.roe@nic.org.mt", after=mark)
    assert env.members() == {"jane.doe@nic.org.mt": "Jane Doe", "john.roe@nic.org.mt": "John Roe"}
    assert env.pending() == []


def test_sync_reports_and_repairs_changes_made_behind_our_back(env: Env) -> None:
    f = env.f
    mark = f.d.mark()
    subscribed(f, JANE, JOHN)
    env.applied("jane.doe@nic.org.mt", "john.roe@nic.org.mt", after=mark)
    assert json.loads(f.tldops("mailman", "sync", "--dry-run", "--json").stdout) == {
        "add": {}, "remove": [], "rename": {}, "applied": False}

    # Behind our back: John unsubscribed, a stranger subscribed, Jane renamed.
    env.ml.unsubscribe("john.roe@nic.org.mt", pre_confirmed=True, pre_approved=True)
    env.ml.subscribe("stranger@example.net", "Stranger", pre_verified=True, pre_confirmed=True,
                     pre_approved=True)
    address = env.client.get_address("jane.doe@nic.org.mt")
    address.display_name = "J. D."
    address.save()
    behind = {"jane.doe@nic.org.mt": "J. D.", "stranger@example.net": "Stranger"}
    assert env.members() == behind

    dry = f.tldops("mailman", "sync", "--dry-run", "--json")
    assert dry.returncode == 1, dry.stderr
    assert json.loads(dry.stdout) == {
        "add": {"john.roe@nic.org.mt": "John Roe"}, "remove": ["stranger@example.net"],
        "rename": {"jane.doe@nic.org.mt": {"list": "J. D.", "roster": "Jane Doe"}}, "applied": False}
    assert env.members() == behind  # a dry run changes nothing
    text = f.tldops("mailman", "sync", "--dry-run").stdout
    assert "+ john.roe@nic.org.mt (John Roe): would subscribe" in text
    assert "- stranger@example.net: would unsubscribe (not on the roster)" in text

    done = f.tldops("mailman", "sync")
    assert done.returncode == 0, done.stderr
    assert "~ jane.doe@nic.org.mt: rename 'J. D.' -> 'Jane Doe'" in done.stdout
    assert env.members() == {"jane.doe@nic.org.mt": "Jane Doe", "john.roe@nic.org.mt": "John Roe"}
    again = f.tldops("mailman", "sync", "--dry-run")
    assert again.returncode == 0 and "the members are the roster's SSCs" in again.stdout


def test_the_broadcast_is_posted_once_to_the_list_and_mailman_delivers_it(env: Env) -> None:
    f, mm = env.f, env.mm
    # The list's owner lets the daemon's own address post (as a real deployment configures it).
    env.ml.settings["default_nonmember_action"] = "accept"
    env.ml.settings.save()
    mark = f.d.mark()
    subscribed(f, JANE, JOHN)
    env.applied("jane.doe@nic.org.mt", "john.roe@nic.org.mt", after=mark)
    done = f.tldops("broadcast", "now", "--json")
    assert done.returncode == 0, done.stderr
    period = json.loads(done.stdout)["period"]
    posted = f.d.wait_for("broadcast posted to the list", lambda r: r.get("period") == period, timeout=30)
    assert posted["list"] == env.ml.fqdn_listname
    # Posted once; its octets (every SSC's data) are not kept once Mailman took them.
    assert f.d.query("SELECT count(*), length(raw) FROM mailman_posts WHERE period = ?"
                     " AND posted_at IS NOT NULL", (period,)) == [(1, 0)]
    # Not mailed to each SSC by the daemon itself: one post, Mailman delivers it.
    assert f.d.query("SELECT outbox_message_id FROM broadcasts WHERE period = ?", (period,)) == [(None,)]
    for ssc in ("jane.doe@nic.org.mt", "john.roe@nic.org.mt"):
        got = mm.sink.wait_for(lambda r, ssc=ssc: ssc in r.rcpt_tos and b"TLD-OPS roster" in r.data,
                               timeout=30)
        msg = email.message_from_bytes(got.data)
        assert msg["List-Id"] is not None and env.ml.list_id in msg["List-Id"]
        assert msg["From"] == f"TLD-OPS <postmaster@{DOMAIN}>"
        assert "jane.doe@nic.org.mt" in got.data.decode("utf-8", "replace")  # the roster itself
    assert not [r for r in f.sink.to("jane.doe@nic.org.mt") if b"TLD-OPS roster" in r.data]


def test_a_list_configured_later_gets_the_whole_roster_and_without_one_nothing_is_kept(
        tmp_path: Path, mailman: Mailman) -> None:
    (tmp_path / "wd").mkdir()
    with flow(tmp_path / "wd") as f:
        subscribed(f, JANE, JOHN)
        # No Mailman configured: the roster change leaves no address to tell one.
        assert f.d.query("SELECT count(*) FROM mailman_pending") == [(0,)]

        ml = new_list(mailman)
        reconfigured(f, **settings(tmp_path, mailman, ml))
        env = Env(f, mailman, ml)
        env.applied("jane.doe@nic.org.mt", "john.roe@nic.org.mt", after=0)
        assert env.members() == {"jane.doe@nic.org.mt": "Jane Doe", "john.roe@nic.org.mt": "John Roe"}
        assert f.d.query("SELECT list FROM mailman_backend") == [(ml.fqdn_listname,)]

        reconfigured(f, **{k: None for k in settings(tmp_path, mailman, ml)})
        assert f.d.query("SELECT count(*) FROM mailman_backend") == [(0,)]
        assert f.submit(form("remove", sscs=(), removals=("John.Roe@nic.org.mt",)))[0] == "done"
        assert f.tldops("queue", "approve", "2").returncode == 0
        assert f.d.query("SELECT count(*) FROM mailman_pending") == [(0,)]
        assert env.members() == {"jane.doe@nic.org.mt": "Jane Doe", "john.roe@nic.org.mt": "John Roe"}

"""tldops queue list|show: what the Validator sees of the requests, in text and JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
from auth_env import ADMIN, AuthEnv, auth_daemon, request


@pytest.fixture
def env(tmp_path) -> Iterator[AuthEnv]:
    with auth_daemon(tmp_path) as e:
        yield e


def tldops(env: AuthEnv, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tldops_mta", *args, "--state-dir",
                           str(env.d.state_dir)], capture_output=True, text=True, timeout=60)


def test_a_verified_request_is_listed_and_shown_with_its_evidence(env: AuthEnv) -> None:
    qid = env.send(env.signed(request(ADMIN)))
    assert env.processed(qid)[0] == "done"
    listed = json.loads(tldops(env, "queue", "list", "--json").stdout)
    assert [(i["tld"], i["auth"], i["state"], i["requester"], i["queue_id"]) for i in listed] == [
        ("mt", "dkim", "awaiting-validator", ADMIN, qid)]
    text = tldops(env, "queue", "list", "--state", "awaiting-validator")
    assert text.returncode == 0 and "awaiting-validator" in text.stdout and ADMIN in text.stdout
    assert "no requests approved" in tldops(env, "queue", "list", "--state", "approved").stdout

    item_id = str(listed[0]["id"])
    shown = json.loads(tldops(env, "queue", "show", item_id, "--json").stdout)
    assert shown["evidence"]["decision"]["verdict"] == "verified"
    assert shown["evidence"]["iana"]["email"] == ADMIN
    text = tldops(env, "queue", "show", item_id).stdout
    assert "decision:    verified" in text
    assert "DKIM:        d=nic.org.mt" in text and "counts" in text
    assert "IANA:        " + ADMIN in text


def test_an_unknown_request_is_an_error(env: AuthEnv) -> None:
    r = tldops(env, "queue", "show", "99")
    assert r.returncode != 0 and "no request 99" in r.stderr

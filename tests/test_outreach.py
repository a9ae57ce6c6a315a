"""`tldops invite`: each non-subscribed ccTLD's IANA administrative contact (from the loopback
RDAP server) is mailed an invitation with the request form, once per interval, recorded,
and shown by `tldops stats`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from auth_env import auth_daemon
from iana_servers import rdap_fixture

NA = ["bm", "ca", "gl", "pm", "pr", "us"]


def rdap_answer(tld: str) -> tuple[int, bytes]:
    """IANA's answer for ``tld``, made from the .mt fixture: its admin is admin@nic.TLD.example."""
    text = rdap_fixture("mt").decode()
    text = text.replace("admin@nic.org.mt", f"admin@nic.{tld}.example").replace('"ldhName": "mt"',
                                                                               f'"ldhName": "{tld}"')
    return 200, text.encode()


def test_invite_mails_each_admin_once_per_interval_and_stats_show_it(tmp_path: Path) -> None:
    with auth_daemon(tmp_path, **{"outreach.home_url": "https://tld-ops.example/"}) as env:
        for tld in NA:
            if tld != "pr":  # IANA gives nothing for .pr here: skipped, said why
                env.rdap.answers[tld] = rdap_answer(tld)

        def tldops(*args: str) -> dict[str, object]:
            r = subprocess.run([sys.executable, "-m", "tldops_mta", *args, "--json", "--config",
                                str(env.d.config_path)], capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stderr
            return json.loads(r.stdout)  # type: ignore[no-any-return]

        dry = tldops("invite", "--region", "NA", "--dry-run")
        by_tld = {i["tld"]: i for i in dry["invitations"]}  # type: ignore[union-attr, index]
        assert sorted(by_tld) == NA
        assert by_tld["gl"]["invited"] is True and by_tld["gl"]["admin"] == "admin@nic.gl.example"
        assert by_tld["pr"]["invited"] is False
        assert "no administrative contact" in str(by_tld["pr"]["skipped"])
        assert env.d.query("SELECT count(*) FROM invitations") == [(0,)]
        assert env.d.query("SELECT count(*) FROM outbox_messages WHERE purpose = 'invitation'") == [(0,)]

        done = tldops("invite", "--region", "NA")
        invited = sorted(i["tld"] for i in done["invitations"] if i["invited"])  # type: ignore[union-attr, index]
        assert invited == ["bm", "ca", "gl", "pm", "us"]
        assert sorted(r[0] for r in env.d.query("SELECT tld FROM invitations")) == invited
        mails = env.delivered(5)
        gl = next(m for m in mails if m["To"] == "admin@nic.gl.example")
        assert "invitation" in str(gl["Subject"]) and str(gl["Subject"]).startswith("[TLP:CLEAR]")
        body = gl.get_payload(decode=True).decode()  # type: ignore[union-attr]
        assert "Action: subscribe\nccTLD: gl" in body.replace("\r\n", "\n")
        assert "https://tld-ops.example/" in body and "requests@tld-ops.localhost" in body
        assert gl["Auto-Submitted"] == "auto-generated"

        again = tldops("invite", "--region", "NA")
        assert not any(i["invited"] for i in again["invitations"])  # type: ignore[union-attr, index]
        assert all("again after 90 days" in str(i["skipped"])
                   for i in again["invitations"] if i["tld"] != "pr")  # type: ignore[union-attr, index]
        assert env.d.query("SELECT count(*) FROM invitations") == [(5,)]

        missing = tldops("stats")["non_subscribed"]["NA"]  # type: ignore[index]
        when = {m["tld"]: m["invited_at"] for m in missing}
        assert when["gl"] is not None and when["pr"] is None

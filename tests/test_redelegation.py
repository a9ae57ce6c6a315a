"""The redelegation watch (issue 6): a changed IANA administrative contact is found by the
nightly check, recorded, told to the Validators and to the new contact; nothing is removed."""

from __future__ import annotations

from pathlib import Path

from iana_servers import rdap_fixture
from test_workflow import JANE, JOHN, VALIDATOR, flow, subscribed

NEW_ADMIN = "newadmin@nic.org.mt"


def test_a_changed_admin_contact_is_found_reported_and_confirmed_by_the_new_one(tmp_path: Path) -> None:
    with flow(tmp_path, **{"redelegation.check_every": 1.0, "redelegation.spacing": 0.0}) as f:
        subscribed(f, JANE, JOHN)
        assert f.d.query("SELECT tld, admin_email, needs_reconfirmation FROM cctlds") == [
            ("mt", "admin@nic.org.mt", 0)]
        f.d.wait_for("redelegation check", lambda r: r.get("result") == "unchanged")
        f.env.rdap.answers["mt"] = (200, rdap_fixture("mt").replace(b"admin@nic.org.mt", NEW_ADMIN.encode()))
        f.d.wait_for("redelegation check", lambda r: r.get("result") == "administrative contact changed")
        assert f.d.query("SELECT tld, old_admin, new_admin, resolved_at FROM redelegations") == [
            ("mt", "admin@nic.org.mt", NEW_ADMIN, None)]
        assert f.d.query("SELECT needs_reconfirmation FROM cctlds") == [(1,)]
        told = f.mail_to(VALIDATOR, "administrative contact of .mt changed")
        assert NEW_ADMIN in told.get_payload() and "Nothing was removed" in told.get_payload()
        ask = f.mail_to(NEW_ADMIN, "Please confirm the Security and Stability Contacts of .mt")
        assert "Jane Doe" in ask.get_payload()
        # The next checks see the same change: nobody is told twice.
        f.d.wait_for("redelegation check", lambda r: r.get("result") == "change already known")
        assert len(f.mails_to(VALIDATOR, "changed")) == 1
        assert [r[4] for r in f.roster()] == [JANE[4], JOHN[4]]  # nothing removed
        assert f.answer(str(ask["Reply-To"]), NEW_ADMIN) == (
            "done", "reconfirm: the SSCs of .mt are confirmed by its new administrative contact")
        assert f.d.query("SELECT admin_email, needs_reconfirmation FROM cctlds") == [(NEW_ADMIN, 0)]
        assert f.d.query("SELECT resolved_at IS NOT NULL FROM redelegations") == [(1,)]

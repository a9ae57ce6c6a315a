# ruff: noqa: RUF001  (Cyrillic names and an IDN ccTLD are the point here)
"""The roster's formats parse back to the same roster (issue 6): CSV, vCard; text and JSON."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from tldops_mta.policy.roster_policy import RosterEntry
from tldops_mta.roster import formats as rf

JANE = RosterEntry("primary", "Jane", "Doe", "+35621334455", "jane.doe@nic.org.mt")
IVAN = RosterEntry("secondary", "Иван", "Петров, мл.", "+35929883000", "иван@регистър.бг")
ROSTER = {"xn--90ae": [IVAN], "mt": [JANE]}

names = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30).filter(
    lambda s: s.strip() == s and s.strip())
entries = st.builds(RosterEntry, st.sampled_from(["primary", "secondary", "third"]), names, names,
                    st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True),
                    st.from_regex(r"[a-z][a-z0-9.]{0,20}@[a-z]{1,10}\.[a-z]{2,4}", fullmatch=True))


def test_text_shows_idn_cctlds_by_both_labels_sorted_by_a_label() -> None:
    table = rf.rows(ROSTER)
    text = rf.text(table, 0.0, "TLP:AMBER")
    assert text.index(".mt") < text.index(".бг (.xn--90ae)")
    assert text.startswith("[TLP:AMBER] TLD-OPS roster, 1970-01-01 00:00 UTC\n2 ccTLDs, 2 Security")
    assert "  Иван Петров, мл. (secondary)\n    +35929883000  иван@регистър.бг\n" in text
    assert max(len(line) for line in text.splitlines()) <= 60  # a phone shows it unwrapped


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(["mt", "nl", "xn--90ae", "xn--p1ai"]),
                       st.lists(entries, min_size=1, max_size=3), max_size=4))
def test_csv_and_vcard_parse_back_to_the_same_roster(roster: dict[str, list[RosterEntry]]) -> None:
    table = rf.rows(roster)
    want = {tld: [r.entry for r in table if r.tld == tld] for tld in roster}
    assert rf.from_csv(rf.to_csv(table)) == want
    assert rf.from_vcard(rf.to_vcard(table)) == want


def test_json_carries_the_label_and_both_labels_of_each_cctld() -> None:
    data = json.loads(rf.to_json(rf.rows(ROSTER), 5.0, "TLP:AMBER"))
    assert data["tlp"] == "TLP:AMBER" and data["made_at"] == 5.0
    assert data["roster"][1] == {"cctld": "xn--90ae", "cctld_unicode": "бг", **IVAN.__dict__,
                                 "unconfirmed_since": None}


def test_an_unconfirmed_ssc_is_marked_in_every_format_and_still_parses_back() -> None:
    march = 1_804_000_000.0  # 2027-03-01
    table = rf.rows(ROSTER, {("mt", JANE.email): (None, march)})
    marked = "    +35621334455  jane.doe@nic.org.mt\n    unconfirmed since 2027-03\n"
    assert marked in rf.text(table, 0.0, "A")
    assert "unconfirmed since" not in rf.text(rf.rows(ROSTER), 0.0, "A")
    assert rf.to_csv(table).splitlines()[1].endswith(",jane.doe@nic.org.mt,2027-03")
    assert rf.to_vcard(table).count("NOTE:unconfirmed since 2027-03") == 1
    assert json.loads(rf.to_json(table, 0.0, "A"))["roster"][0]["unconfirmed_since"] == "2027-03"
    assert rf.from_csv(rf.to_csv(table)) == ROSTER and rf.from_vcard(rf.to_vcard(table)) == ROSTER

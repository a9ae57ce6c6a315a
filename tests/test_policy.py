"""The roster policy (rules/roster.toml) on parsed request forms: pure, table-driven."""

from __future__ import annotations

from pathlib import Path

import pytest

from tldops_mta.policy import roster_policy
from tldops_mta.policy.request_form import parse_form
from tldops_mta.policy.roster_policy import RosterEntry, judge
from tldops_mta.settings import policy_files

REPO_RULES = policy_files.load(Path(__file__).resolve().parent.parent / "rules")

JANE = RosterEntry("primary", "Jane", "Doe", "+35621334455", "jane.doe@nic.org.mt")
JOHN = RosterEntry("secondary", "John", "Roe", "+35621334456", "john.roe@nic.org.mt")


def ssc(role: str, first: str, last: str, phone: str, email: str, replaces: str = "") -> str:
    text = f"SSC: {role}\nFirst name: {first}\nLast name: {last}\nPhone: {phone}\nEmail: {email}\n"
    return text + (f"Replaces: {replaces}\n" if replaces else "")


def form(action: str, *blocks: str, extra: str = "") -> str:
    return f"Action: {action}\nccTLD: mt\n" + "".join(blocks) + extra


def run(text: str, current: tuple[RosterEntry, ...] = (), tld: str = "mt") -> roster_policy.Judgement:
    f = parse_form(text)
    assert f.ok, f.problems
    return judge(f, tld, current, REPO_RULES)


def test_a_subscription_is_stored_in_e164_with_normalised_addresses() -> None:
    j = run(form("subscribe", ssc("primary", "Jane", "Doe", "2133 4455", "Jane.Doe@NIC.org.mt"),
                 ssc("secondary", "John", "Roe", "+356 2133 4456", "john.roe@nic.org.mt")))
    assert j.problems == () and j.warnings == ()
    # A number without country code is read in the ccTLD's country (Malta).
    assert [(r.phone, r.email) for r in j.roster] == [
        ("+35621334455", "Jane.Doe@nic.org.mt"), ("+35621334456", "john.roe@nic.org.mt")]


def test_idn_and_smtputf8_addresses_are_allowed() -> None:
    j = run(form("subscribe", ssc("primary", "Jöran", "Åberg", "+46 8 123 456 78", "jöran@bücher.se"),
                 ssc("secondary", "Ann", "Berg", "+46 8 123 456 79", "ann@xn--bcher-kva.se")))
    assert j.problems == ()
    assert j.roster[0].email == "jöran@bücher.se"


@pytest.mark.parametrize(("text", "current", "problem"), [
    (form("subscribe", ssc("primary", "Noc", "Team", "+356 2133 4455", "NOC@nic.org.mt")), (),
     "NOC@nic.org.mt is a role mailbox"),
    (form("subscribe", ssc("primary", "Sec", "Team", "+356 2133 4455", "security+mt@nic.org.mt")), (),
     "security+mt@nic.org.mt is a role mailbox"),
    (form("subscribe", ssc("primary", "Jane", "Doe", "+356 2133", "jane@nic.org.mt")), (),
     "the primary SSC's phone '+356 2133' is not a valid number"),
    (form("subscribe", ssc("primary", "Jane", "Doe", "+356 2133 4455", "jane@nic..org.mt")), (),
     "the primary SSC's address"),
    (form("subscribe", ssc("primary", "A", "A", "+356 2133 4451", "a@nic.org.mt"),
          ssc("secondary", "B", "B", "+356 2133 4452", "a@nic.org.mt")), (),
     "the same address would hold two roles"),
    (form("subscribe", ssc("primary", "A", "A", "+356 2133 4451", "a@nic.org.mt")), (JANE, JOHN),
     "the ccTLD is already subscribed"),
    (form("update", ssc("third", "C", "C", "+356 2133 4453", "c@nic.org.mt",
                        replaces="nobody@nic.org.mt")), (JANE, JOHN),
     "Replaces: nobody@nic.org.mt is not an SSC of this ccTLD"),
    (form("update", ssc("primary", "C", "C", "+356 2133 4453", "c@nic.org.mt",
                        replaces="john.roe@nic.org.mt")), (JANE, JOHN),
     "the primary role is held by an SSC who stays"),
    (form("remove", extra="Remove: other@nic.org.mt\n"), (JANE, JOHN),
     "other@nic.org.mt is not an SSC of this ccTLD"),
])
def test_what_the_policy_refuses(text: str, current: tuple[RosterEntry, ...], problem: str) -> None:
    j = run(text, current)
    assert any(problem.lower() in str(p).lower() for p in j.problems), j.problems


def test_a_fourth_ssc_is_refused_and_fewer_than_two_is_a_warning() -> None:
    third = RosterEntry("third", "Cy", "Zed", "+35621334457", "cy@nic.org.mt")
    fourth = form("update", ssc("third", "Di", "Zed", "+356 2133 4458", "di@nic.org.mt",
                                replaces="cy@nic.org.mt"))
    assert run(fourth, (JANE, JOHN, third)).problems == ()  # a replacement keeps three
    j = judge(parse_form(fourth), "mt", (JANE, JOHN, third),
              {"roster": {"ssc": {"max_per_cctld": 2, "min_per_cctld": 1}}})
    assert [str(p) for p in j.problems] == [
        "the ccTLD would have 3 SSCs; at most 2 are allowed. Name fewer SSCs, or replace one."]
    j = run(form("remove", extra="Remove: john.roe@nic.org.mt\n"), (JANE, JOHN))
    assert j.problems == () and j.roster == (JANE,)
    assert j.warnings == ("the ccTLD would have 1 SSC; 2 are expected",)


def test_an_update_replaces_exactly_the_sscs_it_names() -> None:
    j = run(form("update", ssc("secondary", "Maria", "Borg", "+356 2133 4457",
                               "maria.borg@nic.org.mt", replaces="john.roe@nic.org.mt")), (JANE, JOHN))
    assert j.problems == ()
    assert [r.email for r in j.roster] == ["jane.doe@nic.org.mt", "maria.borg@nic.org.mt"]


def test_a_ccTLD_without_a_country_wants_the_country_code() -> None:
    # .eu is no country: a number without its country code cannot be read.
    j = run(form("subscribe", ssc("primary", "A", "B", "02 123 4567", "a@eurid.eu")), tld="eu")
    assert any("not a valid number" in str(p) and "country code" in str(p) for p in j.problems)
    # An IDN ccTLD listed in rules/roster.toml: .рф reads Russian numbers.
    assert roster_policy.region_of("xn--p1ai", roster_policy.table(REPO_RULES)) == "RU"


@pytest.mark.parametrize(("roster_toml", "expected"), [
    ("[ssc]\nmax_per_cctld = 1\nmin_per_cctld = 2\n", "[ssc] wants whole numbers"),
    ("[phones]\nregion_of = { uk = \"UK\" }\n", "region_of.uk = 'UK' is not a country code"),
    ("[addresses]\nrole_local_parts = \"noc\"\n", "role_local_parts wants a list"),
    ("[colours]\nred = 1\n", "unknown section [colours]"),
])
def test_a_wrong_rules_table_is_refused_on_load(tmp_path: Path, roster_toml: str, expected: str) -> None:
    (tmp_path / "roster.toml").write_text(roster_toml, encoding="utf-8")
    with pytest.raises(policy_files.RulesError) as e:
        policy_files.load(tmp_path)
    assert any(expected in p for p in e.value.problems), e.value.problems


def test_only_problems_that_reveal_the_roster_are_marked_private() -> None:
    role = form("update", ssc("secondary", "Network", "Ops", "+356 2133 9999", "noc@nic.org.mt",
                              replaces="nobody@nic.org.mt"))
    j = run(role, (JANE, JOHN))
    # The role mailbox is the sender's own mistake; whether nobody@ is an SSC is the roster's.
    assert sorted((p.private, p.what.split(" ")[0]) for p in j.problems) == [
        (False, "noc@nic.org.mt"), (True, "Replaces:"), (True, "the")]  # the role held by John
    again = run(form("subscribe", ssc("primary", "Ann", "Lee", "+356 2133 9999", "ann.lee@nic.org.mt")),
                (JANE, JOHN))
    assert [(p.private, p.what) for p in again.problems] == [(True, "the ccTLD is already subscribed")]

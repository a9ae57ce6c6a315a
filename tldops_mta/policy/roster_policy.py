"""The roster policy (rules/roster.toml) applied to a request form: pure decisions.

What a request would make of a ccTLD's roster, and whether that is allowed: at most
``max_per_cctld`` SSCs (blocking), at least ``min_per_cctld`` (a warning for the Validator),
people only (role mailboxes refused), phone numbers valid and stored as E.164 (read in the
ccTLD's country when written without a country code), addresses valid (IDN domains and
SMTPUTF8 local parts allowed) and stored normalised. One person may be an SSC of several
ccTLDs: nothing here looks at other ccTLDs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import email_validator
import phonenumbers
from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES
from phonenumbers import phonenumberutil

from tldops_mta.policy.request_form import FormProblem, RequestForm, SscEntry
from tldops_mta.policy.texts import counted

DEFAULTS: dict[str, Any] = {
    "ssc": {"max_per_cctld": 3, "min_per_cctld": 2},
    "addresses": {"role_local_parts": ["info", "noc", "hostmaster", "security", "abuse",
                                       "postmaster", "webmaster", "admin", "support"]},
    "phones": {"region_of": {}},
    "workflow": {"self_administration": False},
}


@dataclass(frozen=True)
class RosterEntry:
    """A current SSC of the ccTLD, as the roster holds it."""

    role: str
    first_name: str
    last_name: str
    phone: str
    email: str


@dataclass(frozen=True)
class Judgement:
    """``problems`` block the request (it changes nothing and its sender is told);
    ``warnings`` go to the Validator with it; ``roster`` is what it would make."""

    problems: tuple[FormProblem, ...]
    warnings: tuple[str, ...]
    roster: tuple[RosterEntry, ...]
    entries: tuple[SscEntry, ...]
    """The form's SSCs with their phone in E.164 and their address normalised."""


def table(rules: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """rules/roster.toml over the defaults."""
    given = rules.get("roster", {})
    return {section: {**defaults, **given.get(section, {})} for section, defaults in DEFAULTS.items()}


def _roles(t: Mapping[str, Any]) -> frozenset[str]:
    """The role mailboxes' local parts of a ``table``, lower-cased."""
    return frozenset(p.lower() for p in t["addresses"]["role_local_parts"])


def check(rules: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """What is wrong with rules/roster.toml, for ``tldops config check`` and SIGHUP."""
    t = table(rules)
    out: list[str] = []
    given = rules.get("roster", {})
    for section in given:
        if section not in DEFAULTS:
            out.append(f"rules/roster.toml: unknown section [{section}]")
    high, low = t["ssc"]["max_per_cctld"], t["ssc"]["min_per_cctld"]
    if not (isinstance(high, int) and isinstance(low, int) and 1 <= low <= high <= 10):
        out.append("rules/roster.toml: [ssc] wants whole numbers 1 <= min_per_cctld <= "
                   f"max_per_cctld <= 10 (has {low!r} and {high!r})")
    parts = t["addresses"]["role_local_parts"]
    if not (isinstance(parts, list) and all(isinstance(p, str) and p for p in parts)):
        out.append("rules/roster.toml: [addresses] role_local_parts wants a list of local parts")
    if not isinstance(t["workflow"]["self_administration"], bool):
        out.append("rules/roster.toml: [workflow] self_administration wants true or false")
    regions = t["phones"]["region_of"]
    if not isinstance(regions, dict):
        out.append("rules/roster.toml: [phones] region_of wants a table of ccTLD = \"XX\"")
    else:
        for tld, region in regions.items():
            if region not in phonenumbers.SUPPORTED_REGIONS:
                out.append(f"rules/roster.toml: [phones] region_of.{tld} = {region!r} is not "
                           "a country code phonenumbers knows")
    return out


def region_of(tld: str, t: Mapping[str, Any]) -> str | None:
    """The country a number without country code is read in, for this ccTLD (A-label)."""
    key = tld.lower().lstrip(".")
    mapped = t["phones"]["region_of"].get(key)
    if isinstance(mapped, str):
        return mapped
    code = key.upper()
    return code if len(code) == 2 and code in phonenumbers.SUPPORTED_REGIONS else None


_NOT_DIGITS = {c: None for c in range(128) if not 0x30 <= c <= 0x39}
_upstream_normalize_digits_only = phonenumberutil.normalize_digits_only


def normalize_digits_only(number: str, keep_non_digits: bool = False) -> str:
    """phonenumbers' own, put in its place (parse calls it twice per number): ASCII text,
    whose only digits are 0-9, without a Unicode lookup and a string copy per character."""
    if not keep_non_digits and type(number) is str and number.isascii():
        return number.translate(_NOT_DIGITS)
    return str(_upstream_normalize_digits_only(number, keep_non_digits))


_NO_EXTENSION = str.maketrans("", "", "0123456789 +()-./")
"""Characters none of which _EXTN_PATTERN's alternatives can begin or end an extension with:
each needs a letter, ';', ',', '#' or '~' (or their full-width forms)."""
_upstream_maybe_strip_extension = phonenumberutil._maybe_strip_extension


def _maybe_strip_extension(number: str) -> tuple[str, str]:
    """phonenumbers' own, put in its place: a number written with digits, spaces and ``+()-./``
    alone holds no extension, which its regex search (3 us) finds out character by character."""
    if type(number) is str and not number.translate(_NO_EXTENSION):
        return ("", number)
    found: tuple[str, str] = _upstream_maybe_strip_extension(number)
    return found


phonenumberutil.normalize_digits_only = normalize_digits_only
phonenumberutil._maybe_strip_extension = _maybe_strip_extension
phonenumbers.enable_pattern_cache()  # metadata patterns kept compiled, not looked up in re's cache


def e164(phone: str, region: str | None) -> str | None:
    """The number in E.164, or None when it is not a valid number."""
    try:
        number = phonenumbers.parse(phone, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def judge(form: RequestForm, tld: str, current: Sequence[RosterEntry],
          rules: Mapping[str, Mapping[str, Any]]) -> Judgement:
    """Apply the policy to a well-formed ``form`` for ``tld`` (A-label) and its ``current``
    roster."""
    t = table(rules)
    problems: list[FormProblem] = []
    warnings: list[str] = []
    region = region_of(tld, t)
    entries = _checked_entries(form.sscs, region, _roles(t), problems)
    roster = _after(form, entries, current, problems)
    high, low = t["ssc"]["max_per_cctld"], t["ssc"]["min_per_cctld"]
    if len(roster) > high:
        problems.append(FormProblem(None, f"the ccTLD would have {len(roster)} SSCs; at most "
                                    f"{high} are allowed", "Name fewer SSCs, or replace one.",
                                    private=True))
    elif 0 < len(roster) < low:
        warnings.append(f"the ccTLD would have {counted(len(roster), 'SSC')}; {low} are expected")
    emails = [r.email.lower() for r in roster]
    if len(set(emails)) != len(emails):
        problems.append(FormProblem(None, "the same address would hold two roles",
                                    "Give each SSC their own address.", private=True))
    return Judgement(tuple(sorted(problems, key=lambda p: p.line or 0)), tuple(warnings),
                     tuple(roster), tuple(entries))


def entry_problems(form: RequestForm, tld: str | None,
                   rules: Mapping[str, Mapping[str, Any]]) -> list[FormProblem]:
    """The checks of each SSC alone (address, role mailbox, phone), which need no roster:
    run on a form that has other problems too, so its one reply lists them all."""
    t = table(rules)
    problems: list[FormProblem] = []
    region = region_of(tld, t) if tld else None
    _checked_entries(form.sscs, region, _roles(t), problems)
    return problems


def _checked_entries(sscs: Sequence[SscEntry], region: str | None, roles: frozenset[str],
                     problems: list[FormProblem]) -> list[SscEntry]:
    """The SSCs with their address normalised and phone in E.164, where valid; a problem,
    at the line of the value, where not."""
    entries: list[SscEntry] = []
    for s in sscs:
        email = s.email
        plain = plain_email(email)
        if plain is None:
            try:
                valid = validate_email(email, check_deliverability=False, allow_smtputf8=True)
            except EmailNotValidError as e:
                problems.append(FormProblem(s.email_line or s.line, f"the {s.role} SSC's address "
                                            f"{email[:60]!r} is not valid ({e})",
                                            "Give the SSC's own address."))
            else:
                plain = valid.local_part, valid.normalized
        if plain is not None:
            if plain[0].split("+", 1)[0].lower() in roles:
                problems.append(FormProblem(
                    s.email_line or s.line, f"{plain[1][:60]} is a role mailbox, not a person",
                    "TLD-OPS lists people: give the SSC's personal address."))
            email = plain[1]
        phone = e164(s.phone, region)
        if phone is None:
            how = ("with its country code, such as +356 2133 4455" if region is None else
                   f"with its country code, or as dialled in {region}")
            problems.append(FormProblem(s.phone_line or s.line, f"the {s.role} SSC's phone "
                                        f"{s.phone[:40]!r} is not a valid number", f"Write it {how}."))
            phone = s.phone
        entries.append(s if email is s.email and phone is s.phone else
                       SscEntry(s.role, s.first_name, s.last_name, phone, email, s.replaces, s.line,
                                s.phone_line, s.email_line))
    return entries


_PLAIN_EMAIL = re.compile(
    r"([A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*)"
    r"@((?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+(?:[A-Za-z0-9][A-Za-z0-9-]*)?[A-Za-z])")
_CASE_INSENSITIVE = frozenset(CASE_INSENSITIVE_MAILBOX_NAMES)


def plain_email(address: str) -> tuple[str, str] | None:
    """(local part, normalised address) as ``validate_email(address, check_deliverability=False,
    allow_smtputf8=True)`` gives them, for the plain ASCII shape most addresses have
    (``jane.doe@nic.org.mt``); None when that shape does not hold, and then only
    email_validator can answer (Unicode, quotes, ``xn--`` labels, special-use domains...).

    email_validator walks such an address character by character (UTS #46 checks, NFC
    windows) to reach an answer that needs none of it: ASCII dot-atoms and LDH labels are
    their own normal form, but for the domain's case and RFC 2142's case-insensitive local
    parts. tests/test_policy_equivalence.py holds both answers equal."""
    m = _PLAIN_EMAIL.fullmatch(address) if len(address) <= 254 else None  # EMAIL_MAX_LENGTH
    if m is None:
        return None
    local, domain = m.group(1), m.group(2).lower()
    if "--" in domain:  # R-LDH and Punycode labels
        return None
    for label in domain.split("."):
        if len(label) > 63:
            return None
    for d in email_validator.SPECIAL_USE_DOMAIN_NAMES:
        if domain == d or domain.endswith("." + d):
            return None
    if local.lower() in _CASE_INSENSITIVE:
        local = local.lower()
    return local, f"{local}@{domain}"


def _after(form: RequestForm, entries: Sequence[SscEntry], current: Sequence[RosterEntry],
           problems: list[FormProblem]) -> list[RosterEntry]:
    """The roster the request would leave (problems where it names what is not there)."""
    on_roster = {r.email.lower(): r for r in current}
    new = [RosterEntry(e.role, e.first_name, e.last_name, e.phone, e.email) for e in entries]
    if form.action == "subscribe":
        if current:
            problems.append(FormProblem(None, "the ccTLD is already subscribed",
                                        "Send 'Action: update' to change its SSCs.", private=True))
            return list(current)
        return new
    if form.action == "remove":
        if form.remove_all:
            return []
        for address in form.removals:
            if address.lower() not in on_roster:
                problems.append(FormProblem(None, f"{address} is not an SSC of this ccTLD",
                                            "Name SSCs by the address the roster has for them.",
                                            private=True))
        return [r for r in current if r.email.lower() not in {a.lower() for a in form.removals}]
    # update: each new SSC takes the place of the one it names
    leaving = set()
    for e in entries:
        if e.replaces is None or e.replaces.lower() not in on_roster:
            problems.append(FormProblem(e.line, f"Replaces: {e.replaces} is not an SSC of this "
                                        "ccTLD", "Name the SSC being replaced by their roster address.",
                                        private=True))
        else:
            leaving.add(e.replaces.lower())
    staying = [r for r in current if r.email.lower() not in leaving]
    for n in new:
        holder = next((r for r in staying if r.role == n.role), None)
        if holder is not None:
            problems.append(FormProblem(None, f"the {n.role} role is held by an SSC who stays",
                                        "Replace that SSC, or give the new one another role.", private=True))
    return staying + new

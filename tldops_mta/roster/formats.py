"""The roster as people and programs read it: a text table, CSV, vCard, JSON. Pure.

What the broadcast sends and ``tldops roster export`` writes. Each ccTLD is shown by its
A-label, and by its U-label too when it is an IDN; rows are sorted by ccTLD (A-label),
then role. CSV and vCard parse back to the same roster (tests/test_roster_formats.py).
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tldops_mta.policy.roster_policy import RosterEntry
from tldops_mta.policy.texts import counted, utc_day
from tldops_mta.roster.roster_table import ROLE_ORDER
from tldops_mta.settings.cctlds import tld_labels

CSV_FIELDS = ("cctld", "cctld_unicode", "role", "first_name", "last_name", "phone", "email",
              "unconfirmed_since")

Marks = Mapping[tuple[str, str], tuple[float | None, float | None]]
"""(ccTLD, address in lower case) -> (last confirmed, unconfirmed since): freshness's marks."""


@dataclass(frozen=True)
class Row:
    tld: str
    """A-label, lower case."""
    tld_unicode: str
    """U-label; the same as ``tld`` for an ASCII ccTLD."""
    entry: RosterEntry
    confirmed_at: float | None = None
    """When the SSC last confirmed their entry (freshness), None if never."""
    unconfirmed_since: float | None = None
    """Set while the SSC is unconfirmed: no answer to the yearly ask, or their mail bounced."""

    @property
    def shown_tld(self) -> str:
        return f".{self.tld}" if self.tld_unicode == self.tld else f".{self.tld_unicode} (.{self.tld})"

    @property
    def mark(self) -> str:
        """'unconfirmed since 2027-03', or '' for an SSC who is not unconfirmed."""
        if self.unconfirmed_since is None:
            return ""
        return "unconfirmed since " + time.strftime("%Y-%m", time.gmtime(self.unconfirmed_since))


def rows(by_tld: Mapping[str, Sequence[RosterEntry]], marks: Marks | None = None) -> list[Row]:
    out = []
    for tld in sorted(by_tld):
        try:
            u_label = tld_labels(tld)[1]
        except ValueError:
            u_label = tld
        for e in sorted(by_tld[tld], key=lambda e: ROLE_ORDER.get(e.role, 9)):
            confirmed, unconfirmed = (marks or {}).get((tld, e.email.lower()), (None, None))
            out.append(Row(tld, u_label, e, confirmed, unconfirmed))
    return out


def counts(table: Sequence[Row]) -> tuple[int, int]:
    """(ccTLDs, SSCs)."""
    return len({r.tld for r in table}), len(table)


def text(table: Sequence[Row], made_at: float, label: str, confirmed: bool = False) -> str:
    """A table a phone shows without wrapping: one ccTLD heading, then one SSC per two
    short lines (name and role; phone and address), and a third for an unconfirmed SSC.
    ``confirmed``: a line with when each SSC last confirmed (``roster show``)."""
    tlds, sscs = counts(table)
    made = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(made_at))
    out = [f"[{label}] TLD-OPS roster, {made}",
           f"{counted(tlds, 'ccTLD')}, {counted(sscs, 'Security and Stability Contact')}", ""]
    current = None
    for r in table:
        if r.tld != current:
            if current is not None:
                out.append("")
            out.append(r.shown_tld)
            current = r.tld
        out += entry_lines(r)
        if confirmed:
            last = utc_day(r.confirmed_at) if r.confirmed_at else "never"
            out.append(f"    last confirmed: {last}")
    out += ["", f"[{label}] Share only as the label allows."]
    return "\n".join(out) + "\n"


def entry_lines(r: Row) -> list[str]:
    """One SSC as the text table shows it: what an SSC asked to re-confirm their entry sees."""
    e = r.entry
    return [f"  {e.first_name} {e.last_name} ({e.role})", f"    {e.phone}  {e.email}",
            *([f"    {r.mark}"] if r.mark else [])]


def to_csv(table: Sequence[Row]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(CSV_FIELDS)
    for r in table:
        e = r.entry
        w.writerow([r.tld, r.tld_unicode, e.role, e.first_name, e.last_name, e.phone, e.email,
                    r.mark.removeprefix("unconfirmed since ")])
    return buf.getvalue()


def from_csv(data: str) -> dict[str, list[RosterEntry]]:
    out: dict[str, list[RosterEntry]] = {}
    for row in csv.DictReader(io.StringIO(data)):
        out.setdefault(row["cctld"], []).append(RosterEntry(
            row["role"], row["first_name"], row["last_name"], row["phone"], row["email"]))
    return out


def to_vcard(table: Sequence[Row]) -> str:
    """One vCard 3.0 per SSC, the ccTLD and role in ORG and TITLE, so an address book
    groups them and a search for ".mt" finds them."""
    import vobject  # here: only the broadcast and the export need it

    cards = []
    for r in table:
        e = r.entry
        card = vobject.vCard()
        card.add("n").value = vobject.vcard.Name(family=e.last_name, given=e.first_name)
        card.add("fn").value = f"{e.first_name} {e.last_name}"
        card.add("org").value = ["TLD-OPS", r.shown_tld]
        card.add("title").value = f"{r.entry.role} SSC of .{r.tld}"
        tel = card.add("tel")
        tel.value = e.phone
        tel.type_param = "VOICE"
        mail = card.add("email")
        mail.value = e.email
        mail.type_param = "INTERNET"
        card.add("x-tldops-cctld").value = r.tld
        card.add("x-tldops-role").value = e.role
        if r.mark:
            card.add("note").value = r.mark
        cards.append(card.serialize())
    return "".join(cards)


def from_vcard(data: str) -> dict[str, list[RosterEntry]]:
    import vobject  # only the import of a vCard file needs it

    out: dict[str, list[RosterEntry]] = {}
    for card in vobject.readComponents(data):
        n = card.n.value
        out.setdefault(card.x_tldops_cctld.value, []).append(RosterEntry(
            card.x_tldops_role.value, n.given, n.family, card.tel.value, card.email.value))
    return out


def to_json(table: Sequence[Row], made_at: float, label: str) -> str:
    return json.dumps({
        "tlp": label, "made_at": made_at,
        "roster": [{"cctld": r.tld, "cctld_unicode": r.tld_unicode, **r.entry.__dict__,
                    "unconfirmed_since": r.mark.removeprefix("unconfirmed since ") or None}
                   for r in table],
    }, ensure_ascii=False, indent=2) + "\n"

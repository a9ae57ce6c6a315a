"""The ccTLDs of the root zone, with their country and region: ``cctlds.csv`` of the rules.

Data, not code: an operator adds a newly delegated ccTLD (or retires one) by editing a line
of a copy in ``rules.dir``, before a release ships it.
Each ccTLD carries the dates it entered and left the root, so that statistics can be asked
for any day (``tldops stats --at 2015-06-17`` counts the root as it was then). Regions are
the five of the SECIR report (its Tables 1 and 2 and Appendix A): AF, AP, EUR, NA, LAC.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import idna

from tldops_mta.settings import policy_files

FILE = "cctlds.csv"
COLUMNS = ("tld", "unicode", "country", "region", "delegated", "retired", "counted")
REGIONS = {"AF": "Africa", "AP": "Asia-Pacific", "EUR": "Europe", "NA": "North America",
           "LAC": "Latin America and Caribbean"}
"""In the report's order."""


@functools.lru_cache(maxsize=4096)
def tld_labels(name: str) -> tuple[str, str]:
    """(A-label, U-label) of a TLD written any way a person might: "MT", ".mt", "мкд", "xn--d1alf".

    Requests and operators name ccTLDs in both forms; the cache and IANA's services know only
    the A-label, so everything is keyed on it and both forms find the same entry. Kept per
    name (IDNA is costly, and a few hundred TLDs are all there is); a name that is no TLD
    raises each time.
    """
    s = name.strip()
    if s.startswith("."):
        s = s[1:]
    if not s:
        raise ValueError(f"{name!r} is not a top-level domain: it is empty")
    try:
        a_label = idna.encode(s, uts46=True).decode("ascii")
        u_label = idna.decode(a_label)
    except (ValueError, UnicodeError) as e:  # idna.IDNAError is a UnicodeError
        raise ValueError(f"{name!r} is not a top-level domain: {e}") from e
    if "." in a_label:
        raise ValueError(f"{name!r} is not a top-level domain: give a single label, such as 'mt'")
    if a_label.isdigit():
        raise ValueError(f"{name!r} is not a top-level domain: a TLD is not all digits")
    return a_label, u_label


class CctldsError(policy_files.RulesError):
    """A problem of cctlds.csv: one of the policy files' problems."""


@dataclass(frozen=True)
class Cctld:
    tld: str
    """A-label, lower case, no dot."""
    unicode: str
    """U-label of an IDN ccTLD; empty for an ASCII one."""
    country: str
    region: str
    delegated: dt.date
    retired: dt.date | None
    counted: bool = True
    """False for a ccTLD delegated but not in use, which statistics leave out as the report
    does (.gb, "reserved")."""

    @property
    def idn(self) -> bool:
        return self.tld.startswith("xn--")

    @property
    def shown(self) -> str:
        """``.mt``; an IDN as its U-label, then its A-label in brackets."""
        return f".{self.unicode} ({self.tld})" if self.idn else f".{self.tld}"

    def in_root(self, day: dt.date) -> bool:
        return self.delegated <= day and (self.retired is None or self.retired > day)

    def counts_on(self, day: dt.date) -> bool:
        """In the root that day and in use: what the statistics count."""
        return self.counted and self.in_root(day)


class NotACctld(ValueError):
    """A name that is not a ccTLD in the root on the day asked about: what it is instead
    (``what``) and how that is known (``detail``), for a reply or a one-line CLI error."""

    def __init__(self, name: str, what: str, detail: str, on: dt.date | None = None) -> None:
        super().__init__(f"{name} {what} ({detail})")
        self.name = name
        self.what = what
        self.detail = detail
        self.on = on
        """The day it left (or enters) the root; None for a name cctlds.csv does not list."""


def find(table: Iterable[Cctld], name: str, day: dt.date) -> Cctld:
    """The ccTLD ``name`` names, written as A-label or U-label, any case, with or without its
    dot, if it is in the root on ``day``. Anything else raises ValueError: a name that is no
    domain label at all (as ``tld_labels`` says), or NotACctld: not in cctlds.csv (a gTLD
    such as com, an unassigned code), retired (with its date), not yet delegated.

    Every ccTLD a person names goes through here before anything is looked up or stored, so
    that IANA is never asked about, and the roster never keyed on, something TLD-OPS does
    not serve."""
    a_label, u_label = tld_labels(name)
    shown = f"{u_label} ({a_label})" if a_label != u_label else a_label
    row = next((c for c in table if c.tld == a_label), None)
    if row is None:
        raise NotACctld(shown, "is not a ccTLD", f"not in rules/{FILE}")
    if row.retired is not None and row.retired <= day:
        raise NotACctld(shown, "is a retired ccTLD", f"retired {row.retired.isoformat()}", row.retired)
    if row.delegated > day:
        raise NotACctld(shown, "is not yet a ccTLD", f"delegated {row.delegated.isoformat()}",
                        row.delegated)
    return row


def load(override: Path | None) -> list[Cctld]:
    """Every row of the cctlds.csv in force (the operator's ``rules.dir`` one, else the
    shipped one); CctldsError names each bad line, or why the file cannot be read."""
    try:
        f = policy_files.in_force(override)[FILE]
        text = f.text()
    except policy_files.RulesError as e:
        raise CctldsError(e.problems) from e
    return parse(text, f.label)


def parse(text: str, name: str = FILE) -> list[Cctld]:
    rows = csv.reader(text.splitlines())
    header = next(rows, None)
    if header is None or tuple(h.strip() for h in header) != COLUMNS:
        raise CctldsError([f"{name}: the first line must be {','.join(COLUMNS)}"])
    out: list[Cctld] = []
    problems: list[str] = []
    seen: set[str] = set()
    for line, row in enumerate(rows, start=2):
        if not row or row[0].startswith("#"):
            continue
        where = f"{name} line {line}"
        if len(row) != len(COLUMNS):
            problems.append(f"{where}: {len(row)} fields, {len(COLUMNS)} expected")
            continue
        tld, uni, country, region, delegated, retired, counted = (f.strip() for f in row)
        if not tld or tld != tld.lower() or tld.startswith(".") or tld in seen:
            problems.append(f"{where}: '{tld}' must be a lower-case A-label without dot, listed once")
            continue
        if tld.startswith("xn--") != bool(uni):
            problems.append(f"{where}: an IDN (xn--) needs its U-label, an ASCII ccTLD none")
            continue
        if counted not in ("yes", "no"):
            problems.append(f"{where}: counted must be yes or no")
            continue
        if region not in REGIONS:
            problems.append(f"{where}: region '{region}' is not one of {', '.join(REGIONS)}")
            continue
        try:
            start = dt.date.fromisoformat(delegated)
            end = dt.date.fromisoformat(retired) if retired else None
        except ValueError:
            problems.append(f"{where}: dates must be YYYY-MM-DD (retired may be empty)")
            continue
        seen.add(tld)
        out.append(Cctld(tld, uni, country, region, start, end, counted == "yes"))
    if problems:
        raise CctldsError(problems)
    return out

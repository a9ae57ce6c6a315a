"""Subscription statistics as in the SECIR report (Tables 1 and 2, Appendix A): per region,
ASCII and IDN apart, subscribed and not, and the list of ccTLDs still missing.

``summarise`` is pure (ccTLDs, a subscribed set, a day); the shell around it finds the
subscribed set (the roster now, the roster history on a past day, or a file) and prints.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from tldops_mta.policy import texts
from tldops_mta.roster import freshness
from tldops_mta.settings.cctlds import REGIONS, Cctld, find
from tldops_mta.settings.config import Config


def percent(part: int, whole: int) -> int | None:
    """Whole percent as the report prints them; None of nothing (an empty region)."""
    return round(100 * part / whole) if whole else None


@dataclass(frozen=True)
class Count:
    subscribed: int = 0
    missing: int = 0

    @property
    def total(self) -> int:
        return self.subscribed + self.missing

    def pct(self, n: int) -> int | None:
        return percent(n, self.total)

    def as_dict(self) -> dict[str, Any]:
        return {"subscribed": self.subscribed, "subscribed_pct": self.pct(self.subscribed),
                "non_subscribed": self.missing, "non_subscribed_pct": self.pct(self.missing),
                "total": self.total}


@dataclass(frozen=True)
class Missing:
    cctld: Cctld
    invited_at: float | None


@dataclass(frozen=True)
class Stats:
    day: dt.date
    source: str
    """Where the subscribed set came from: 'roster', 'roster history', or a file name."""
    counts: dict[str, dict[str, Count]]
    """kind ('ascii', 'idn') -> region ('total' first, then REGIONS) -> Count."""
    missing: dict[str, list[Missing]] = field(default_factory=dict)
    """region -> the ccTLDs not subscribed (ASCII first, then IDN, each alphabetical)."""
    unknown: tuple[str, ...] = ()
    """Subscribed ccTLDs that cctlds.csv does not list for that day (not counted)."""
    fresh: dict[str, tuple[int, int]] = field(default_factory=dict)
    """region ('total' first) -> (SSCs, those confirmed or added within freshness's interval);
    empty when not counted (a past day, a file, freshness turned off)."""
    fresh_days: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.day.isoformat(), "source": self.source,
            "counts": {kind: {region: c.as_dict() for region, c in by.items()}
                       for kind, by in self.counts.items()},
            "non_subscribed": {region: [
                {"tld": m.cctld.tld, "unicode": m.cctld.unicode, "country": m.cctld.country,
                 "idn": m.cctld.idn, "invited_at": m.invited_at} for m in ms]
                for region, ms in self.missing.items()},
            "not_in_cctlds_csv": list(self.unknown),
            **({"confirmed_within_days": self.fresh_days, "sscs_confirmed": {
                region: {"sscs": n, "confirmed": k, "confirmed_pct": percent(k, n)}
                for region, (n, k) in self.fresh.items()}} if self.fresh else {}),
        }


def summarise(cctlds: Iterable[Cctld], subscribed: set[str], day: dt.date, source: str,
              invited: Mapping[str, float] | None = None) -> Stats:
    """The statistics of ``day``: only ccTLDs in the root that day count."""
    invited = invited or {}
    in_root = [c for c in cctlds if c.counts_on(day)]
    counts: dict[str, dict[str, Count]] = {}
    for kind in ("ascii", "idn"):
        of_kind = [c for c in in_root if c.idn == (kind == "idn")]
        by = {"total": _count(of_kind, subscribed)}
        by.update({r: _count([c for c in of_kind if c.region == r], subscribed) for r in REGIONS})
        counts[kind] = by
    missing = {r: [Missing(c, invited.get(c.tld))
                   for c in sorted((c for c in in_root if c.region == r and c.tld not in subscribed),
                                   key=lambda c: (c.idn, c.tld))]
               for r in REGIONS}
    known = {c.tld for c in in_root}
    return Stats(day, source, counts, missing, tuple(sorted(subscribed - known)))


def with_freshness(s: Stats, cctlds: Iterable[Cctld], by_tld: Mapping[str, tuple[int, int]],
                   days: int) -> Stats:
    """``s`` with the share of SSCs confirmed within ``days`` per region (``by_tld``: ccTLD ->
    SSCs, confirmed; a ccTLD not in cctlds.csv counts in the total only)."""
    region = {c.tld: c.region for c in cctlds}
    fresh = {r: (0, 0) for r in ("total", *REGIONS)}
    for tld, (n, k) in by_tld.items():
        for r in ("total", region.get(tld)):
            if r in fresh:
                fresh[r] = (fresh[r][0] + n, fresh[r][1] + k)
    return replace(s, fresh=fresh, fresh_days=days)


def with_freshness_now(s: Stats, conn: sqlite3.Connection, cfg: Config, cctlds: Iterable[Cctld],
                       now: float) -> Stats:
    """``s`` with the roster's freshness now, when freshness is turned on."""
    if not cfg.freshness.enabled:
        return s
    return with_freshness(s, cctlds, freshness.confirmed_within(conn, cfg, now), cfg.freshness.interval_days)


def _count(cs: list[Cctld], subscribed: set[str]) -> Count:
    n = sum(1 for c in cs if c.tld in subscribed)
    return Count(n, len(cs) - n)


# -- where the subscribed set comes from ---------------------------------------------------


def subscribed_now(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT DISTINCT tld FROM roster")}


def subscribed_on(conn: sqlite3.Connection, day: dt.date) -> set[str]:
    """The ccTLDs with at least one SSC at the end of ``day`` (UTC), from the roster's
    history: each ccTLD's last change up to then says what it had."""
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.UTC).timestamp()
    rows = conn.execute(
        "SELECT c.tld, c.after FROM roster_changes c JOIN ("
        " SELECT tld, max(id) AS id FROM roster_changes WHERE at < ? GROUP BY tld) last"
        " ON last.id = c.id", (end,)).fetchall()
    return {tld for tld, after in rows if json.loads(after)}


def last_invitations(conn: sqlite3.Connection) -> dict[str, float]:
    return dict(conn.execute("SELECT tld, max(sent_at) FROM invitations GROUP BY tld").fetchall())


def read_subscribed_file(text: str, cctlds: Iterable[Cctld], day: dt.date) -> set[str]:
    """One ccTLD per line (A-label or U-label, dot or not); '#' starts a comment. Each must
    be a ccTLD in the root on ``day``; ValueError names the first line that is not."""
    table = list(cctlds)
    out = set()
    for n, line in enumerate(text.splitlines(), 1):
        word = line.split("#", 1)[0].strip()
        if word:
            try:
                out.add(find(table, word, day).tld)
            except ValueError as e:
                raise ValueError(f"line {n}: {e}") from e
    return out


# -- output ----------------------------------------------------------------------------------


def _pct(p: int | None) -> str:
    return "    " if p is None else f"{p:3d}%"


def render_text(s: Stats) -> str:
    out = io.StringIO()
    out.write(f"TLD-OPS subscriptions on {s.day.isoformat()} (subscribed: {s.source})\n")
    for kind, title in (("ascii", "ASCII ccTLDs"), ("idn", "IDN ccTLDs")):
        out.write(f"\n{title}\n")
        out.write(f"{'Region':<30} {'Subscribed':>15} {'Non-subscribed':>19} {'Total':>7}\n")
        for region, c in s.counts[kind].items():
            name = "Total" if region == "total" else REGIONS[region]
            out.write(f"{name:<30} {c.subscribed:>9}  {_pct(c.pct(c.subscribed))} {c.missing:>13}  "
                      f"{_pct(c.pct(c.missing))} {c.total:>7}\n")
    out.write("\nNon-subscribed ccTLDs per region\n")
    for region, ms in s.missing.items():
        ascii_, idn = [m for m in ms if not m.cctld.idn], [m for m in ms if m.cctld.idn]
        out.write(f"\n{REGIONS[region]} ({region}): {len(ascii_)} ASCII, {len(idn)} IDN\n")
        for heading, group in (("", ascii_), ("  IDN:\n", idn)):
            if group and heading:
                out.write(heading)
            for i, m in enumerate(group, start=1):
                invited = "" if m.invited_at is None else f"  invited {texts.utc_day(m.invited_at)}"
                out.write(f"  {i:>3}) {m.cctld.shown:<28} {m.cctld.country}{invited}\n")
    if s.fresh:
        out.write(f"\nSecurity and Stability Contacts confirmed (or added) in the last {s.fresh_days} days\n")
        out.write(f"{'Region':<30} {'SSCs':>7} {'Confirmed':>15}\n")
        for r, (n, k) in s.fresh.items():
            name = "Total" if r == "total" else REGIONS[r]
            out.write(f"{name:<30} {n:>7} {k:>9}  {_pct(percent(k, n))}\n")
    if s.unknown:
        out.write(f"\nSubscribed but not in cctlds.csv on that day (not counted): "
                  f"{', '.join('.' + t for t in s.unknown)}\n")
    return out.getvalue()


def render_csv(s: Stats) -> str:
    """The summary, one row per kind and region (Tables 1 and 2)."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(["date", "kind", "region", "subscribed", "subscribed_pct", "non_subscribed",
                "non_subscribed_pct", "total"])
    for kind, by in s.counts.items():
        for region, c in by.items():
            d = c.as_dict()
            w.writerow([s.day.isoformat(), kind, region, d["subscribed"], _blank(d["subscribed_pct"]),
                        d["non_subscribed"], _blank(d["non_subscribed_pct"]), d["total"]])
    return out.getvalue()


def _blank(v: int | None) -> str:
    return "" if v is None else str(v)

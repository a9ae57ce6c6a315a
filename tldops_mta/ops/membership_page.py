"""The public membership page of TLD-OPS: the ccTLDs that have joined, per region, the counts
of the SECIR report's Tables 1 and 2, and how to join.

Pure: plain data (``Page``) in, text out (``render_html``, ``render_json``); ``publish``
gathers the data and writes the files. The page is public, so it is built from what is
public only: ccTLDs, countries, counts and our service addresses, never an SSC. It is
meant for any phone and any web server: one file, inline CSS, no script, no external
resource, every value escaped.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass
from html import escape
from typing import Any

from tldops_mta.ops.stats import Count, Stats
from tldops_mta.policy.texts import counted
from tldops_mta.settings.cctlds import REGIONS, Cctld

KINDS = {"ascii": "ASCII ccTLDs", "idn": "IDN ccTLDs"}
"""The report's Table 1 and Table 2, in its order."""

FORM = """\
Action: subscribe
ccTLD: (your ccTLD)

SSC: primary
First name:
Last name:
Phone:
Email:

SSC: secondary
First name:
Last name:
Phone:
Email:
"""
"""The request form in short (docs/requests.md); help@ answers with it in full."""


@dataclass(frozen=True)
class Region:
    code: str
    name: str
    members: tuple[Cctld, ...]
    """The subscribed ccTLDs of the region (shown as the statistics show them: ``Cctld.shown``)."""
    counts: dict[str, Count]
    """kind ('ascii', 'idn') -> the region's row of Table 1 or 2."""


@dataclass(frozen=True)
class Page:
    day: dt.date
    """The date of the data (UTC)."""
    roster_version: int
    """The roster's last change (max roster_changes id) the page was made from."""
    regions: tuple[Region, ...]
    totals: dict[str, Count]
    """kind -> the Total row of Table 1 or 2."""
    requests: str
    help: str

    @property
    def subscribed(self) -> int:
        return sum(len(r.members) for r in self.regions)


def build(summary: Stats, table: Iterable[Cctld], subscribed: set[str], roster_version: int,
          requests: str, help: str) -> Page:
    """The page from ``stats.summarise``'s figures (not counted again) and the ccTLDs listed
    on its day: a member is a subscribed ccTLD the figures count, so the lists and the
    counts always agree."""
    listed = sorted((c for c in table if c.tld in subscribed and c.counts_on(summary.day)),
                    key=lambda c: (c.idn, c.tld))
    regions = tuple(
        Region(code, name, tuple(c for c in listed if c.region == code),
               {kind: summary.counts[kind][code] for kind in KINDS})
        for code, name in REGIONS.items())
    return Page(summary.day, roster_version, regions,
                {kind: summary.counts[kind]["total"] for kind in KINDS}, requests, help)


def as_dict(page: Page) -> dict[str, Any]:
    """members.json: the page's data, for scripts (and for the next night's comparison)."""
    return {
        "date": page.day.isoformat(),
        "roster_version": page.roster_version,
        "subscribed": page.subscribed,
        "regions": [{"code": r.code, "name": r.name,
                     "members": [{"tld": c.tld, "unicode": c.unicode if c.idn else "", "country": c.country,
                                  "idn": c.idn} for c in r.members],
                     "counts": {kind: c.as_dict() for kind, c in r.counts.items()}}
                    for r in page.regions],
        "totals": {kind: c.as_dict() for kind, c in page.totals.items()},
        "join": {"requests": page.requests, "help": page.help, "form": FORM},
    }


def render_json(page: Page) -> str:
    return json.dumps(as_dict(page), ensure_ascii=False, indent=2) + "\n"


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _share(c: Count, n: int) -> str:
    pct = c.pct(n)
    return f"{n}" if pct is None else f"{n} <span class=\"pct\">({pct}%)</span>"


def _table(kind: str, page: Page) -> str:
    rows = [(r.name, r.counts[kind]) for r in page.regions] + [("Total", page.totals[kind])]
    total = ' class="total"'
    body = "\n".join(
        f"<tr{total if name == 'Total' else ''}><th scope=\"row\">{_e(name)}</th>"
        f"<td>{_share(c, c.subscribed)}</td><td>{_share(c, c.missing)}</td><td>{c.total}</td></tr>"
        for name, c in rows)
    number = 1 if kind == "ascii" else 2
    return (f"<table id=\"table-{number}\">\n<caption>Table {number}. {_e(KINDS[kind])}</caption>\n"
            "<thead><tr><th scope=\"col\">Region</th><th scope=\"col\">Subscribed</th>"
            "<th scope=\"col\">Not subscribed</th><th scope=\"col\">Total</th></tr></thead>\n"
            f"<tbody>\n{body}\n</tbody>\n</table>")


def _region(r: Region) -> str:
    a, i = r.counts["ascii"], r.counts["idn"]
    summary = f"{a.subscribed} of {a.total} ASCII ccTLDs" + (
        f", {i.subscribed} of {i.total} IDN ccTLDs" if i.total else "")
    items = "\n".join(f"<li><span class=\"tld\">{_e(m.shown)}</span> "
                      f"<span class=\"country\">{_e(m.country)}</span></li>" for m in r.members)
    listing = f"<ul class=\"members\">\n{items}\n</ul>" if r.members else "<p>None yet.</p>"
    return (f"<section id=\"{_e(r.code)}\">\n<h2>{_e(r.name)}</h2>\n"
            f"<p class=\"summary\">{summary}</p>\n{listing}\n</section>")


STYLE = """\
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1b1b1b;background:#fff}
main{max-width:62rem;margin:0 auto;padding:1rem}
h1{font-size:1.6rem;line-height:1.25;margin:.5rem 0}
h2{font-size:1.25rem;margin:1.75rem 0 .25rem;border-bottom:2px solid #1f5f8b}
a{color:#1f5f8b}
nav ul{list-style:none;padding:0;margin:.5rem 0;display:flex;flex-wrap:wrap;gap:.25rem 1rem}
.tables{display:flex;flex-wrap:wrap;gap:0 2rem}
.tables table{flex:1 1 22rem}
table{border-collapse:collapse;width:100%;margin:.5rem 0 1rem}
caption{text-align:left;font-weight:600;padding:.25rem 0}
th,td{padding:.3rem .35rem;border-bottom:1px solid #d6d6d6;text-align:right;vertical-align:top}
th[scope=row],thead th:first-child{text-align:left;font-weight:normal}
thead th{font-weight:600;vertical-align:bottom}
tr.total th,tr.total td{font-weight:600;border-top:2px solid #888}
.pct,time{white-space:nowrap}
.pct{color:#555}
.summary{color:#444;margin:.25rem 0}
ul.members{list-style:none;padding:0;margin:.5rem 0;columns:15rem;column-gap:2rem}
ul.members li{break-inside:avoid;padding:.1rem 0;overflow-wrap:anywhere}
.tld{font-weight:600;margin-right:.35rem}
pre{background:#f3f3f3;padding:.75rem;white-space:pre-wrap;overflow-wrap:anywhere;font-size:.9rem}
code{overflow-wrap:anywhere}
footer{color:#555;font-size:.9rem;margin-top:2rem}
@media (max-width:30rem){main{padding:.75rem}th,td{padding:.25rem .2rem;font-size:.875rem}}
"""


def render_html(page: Page) -> str:
    """index.html: valid HTML5 that reads on a phone, no script, nothing fetched."""
    day = page.day.isoformat()
    requests, help_ = _e(page.requests), _e(page.help)
    nav = "".join(f"<li><a href=\"#{_e(r.code)}\">{_e(r.name)}</a></li>" for r in page.regions)
    regions = "\n".join(_region(r) for r in page.regions)
    tables = "\n".join(_table(kind, page) for kind in KINDS)
    joined = "has joined" if page.subscribed == 1 else "have joined"
    return f"""\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>TLD-OPS: the ccTLDs that have joined</title>
<style>
{STYLE}</style>
</head>
<body>
<main>
<h1>TLD-OPS: the ccTLDs that have joined</h1>
<p>TLD-OPS is the incident-response contact list of the ccTLD operators: the Security and
Stability Contacts of each ccTLD can reach one another during a large DNS incident, even
when the web is down. It is open to every ccTLD, and free.</p>
<p><strong id="subscribed">{counted(page.subscribed, "ccTLD")}</strong> {joined}. Data of
<time datetime="{day}">{day}</time> (UTC).</p>
<nav><ul>{nav}<li><a href="#join">How to join</a></li></ul></nav>
<section id="counts">
<h2>Subscriptions per region</h2>
<div class="tables">
{tables}
</div>
</section>
{regions}
<section id="join">
<h2>How to join</h2>
<p>The administrative contact of the ccTLD, as IANA lists it, mails the request form below,
filled in with two or three Security and Stability Contacts (SSCs), to
<a href="mailto:{requests}"><code>{requests}</code></a>, or sends it with that address in
Cc (it is then asked to confirm). Each SSC is a person, with a phone number that reaches
them during an incident. A Validator checks the request; the SSCs then receive the
contact list by mail.</p>
<pre>{_e(FORM)}</pre>
<p>A mail to <a href="mailto:{help_}"><code>{help_}</code></a> is answered with the form
and how to fill it in; the same form updates or removes a ccTLD's contacts.</p>
</section>
<footer><p>This page names ccTLDs only: the contacts themselves are shared with the
members alone.</p></footer>
</main>
</body>
</html>
"""

"""The public membership page (`tldops publish`, publish.dir in the nightly housekeeping),
against the real daemon: ccTLDs subscribed through the real request path, the page parsed
by a strict HTML5 parser and rendered by headless Chromium, written atomically.

The page is public: no SSC's name, address or phone may be in it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import struct
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

import html5lib
import pytest
from auth_env import form
from daemon_proc import DOMAIN, DaemonProc
from test_only_cctlds import BG, rdap_answer
from test_workflow import JANE, JOHN, Flow, flow, subscribed

from tldops_mta.ops import publish

KENYA = "Kenya <b>&"
"""Kenya's country in the operator's cctlds.csv of these tests: markup that must stay text."""
KE = (("primary", "Wanjiru", "Kamau", "+254 20 2345678", "wanjiru.kamau@nic.ke"),
      ("secondary", "Otieno", "Odhiambo", "+254 722 123456", "otieno.odhiambo@nic.ke"))
BG_SSCS = (("primary", "Ivana", "Petrova", "+359 2 987 6543", "ivana.petrova@bg-registry.example.net"),
           ("secondary", "Georgi", "Ivanov", "+359 888 123 456", "georgi.ivanov@bg-registry.example.net"))
SHOWN = {".mt", ".ke", f".{BG} (xn--90ae)"}
CHROMIUM_TIMEOUT = 60


def join(f: Flow, tld: str, sscs: tuple[tuple[str, ...], ...]) -> None:
    """``tld`` subscribed with ``sscs`` by its IANA admin's signed request, approved."""
    assert f.submit(form(tld=tld, sscs=sscs))[0] == "done"
    request_id = f.d.query("SELECT max(id) FROM requests")[0][0]
    assert f.tldops("queue", "approve", str(request_id)).returncode == 0
    for s in sscs:
        f.mail_to(s[4], "Welcome")


@pytest.fixture(scope="module")
def joined(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Flow, Path]]:
    """.mt, .ke and the IDN xn--90ae subscribed; the page written by `tldops publish` into a
    directory that did not exist."""
    work = tmp_path_factory.mktemp("publish")
    with flow(work, rules_edit=("cctlds.csv", "ke,,Kenya,AF", f"ke,,{KENYA},AF")) as f:
        for tld in ("ke", "xn--90ae"):
            f.env.rdap.answers[tld] = rdap_answer(tld)  # the test's admin is theirs too
        subscribed(f, JANE, JOHN)
        join(f, "ke", KE)
        join(f, BG, BG_SSCS)
        out = work / "www" / "members"
        r = f.tldops("publish", str(out))
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(f"membership page written: {out / 'index.html'}, {out / 'members.json'}")
        assert "(3 ccTLDs subscribed, data of " in r.stdout
        yield f, out


def strict_dom(text: str) -> ET.Element:
    """The document as a strict HTML5 parser reads it: any parse error raises."""
    parser = html5lib.HTMLParser(strict=True, namespaceHTMLElements=False)
    root: ET.Element = parser.parse(text)
    return root


def text_of(e: ET.Element) -> str:
    return "".join(e.itertext())


def by_class(root: ET.Element, tag: str, cls: str) -> list[ET.Element]:
    return [e for e in root.iter(tag) if cls in (e.get("class") or "").split()]


def table_rows(root: ET.Element, number: int) -> dict[str, list[str]]:
    """Table 1 or 2 of the page: region -> the texts of its cells."""
    table = next(t for t in root.iter("table") if t.get("id") == f"table-{number}")
    tbody = table.find("tbody")
    assert tbody is not None
    return {text_of(tr.find("th")): [text_of(td) for td in tr.findall("td")]  # type: ignore[arg-type]
            for tr in tbody.findall("tr")}


def expected_cells(counts: dict[str, int]) -> list[str]:
    def share(n: int, pct: int | None) -> str:
        return f"{n}" if pct is None else f"{n} ({pct}%)"

    return [share(counts["subscribed"], counts["subscribed_pct"]),
            share(counts["non_subscribed"], counts["non_subscribed_pct"]), str(counts["total"])]


REGION_NAMES = {"total": "Total", "AF": "Africa", "AP": "Asia-Pacific", "EUR": "Europe",
                "NA": "North America", "LAC": "Latin America and Caribbean"}


def assert_counts_shown(root: ET.Element, stats: dict[str, object]) -> None:
    """Tables 1 and 2 of the page say what `tldops stats` says, region by region."""
    counts = stats["counts"]
    assert isinstance(counts, dict)
    for number, kind in ((1, "ascii"), (2, "idn")):
        rows = table_rows(root, number)
        assert list(rows) == [*list(REGION_NAMES.values())[1:], "Total"]
        for region, name in REGION_NAMES.items():
            assert rows[name] == expected_cells(counts[kind][region]), (kind, region)


# -- the page -----------------------------------------------------------------------------------

def test_the_page_lists_every_subscribed_cctld_with_the_reports_counts_and_no_person(
        joined: tuple[Flow, Path]) -> None:
    f, out = joined
    html = (out / "index.html").read_text("utf-8")
    raw_json = (out / "members.json").read_text("utf-8")
    root = strict_dom(html)
    assert {text_of(e) for e in by_class(root, "span", "tld")} == SHOWN
    europe = next(s for s in root.iter("section") if s.get("id") == "EUR")
    assert [text_of(e) for e in by_class(europe, "span", "tld")] == [".mt", f".{BG} (xn--90ae)"]
    assert any(m.get("name") == "viewport" for m in root.iter("meta"))
    stats = json.loads(f.tldops("stats", "--json").stdout)
    assert_counts_shown(root, stats)
    assert f"requests@{DOMAIN}" in html and f"help@{DOMAIN}" in html

    # members.json: the same data.
    data = json.loads(raw_json)
    assert [r["code"] for r in data["regions"]] == ["AF", "AP", "EUR", "NA", "LAC"]
    members = {r["code"]: [m["tld"] for m in r["members"]] for r in data["regions"]}
    assert members == {"AF": ["ke"], "AP": [], "EUR": ["mt", "xn--90ae"], "NA": [], "LAC": []}
    bg = data["regions"][2]["members"][1]
    assert (bg["unicode"], bg["country"], bg["idn"]) == (BG, "Bulgaria", True)
    for region in data["regions"]:
        for kind in ("ascii", "idn"):
            assert region["counts"][kind] == stats["counts"][kind][region["code"]]
    assert data["totals"] == {kind: stats["counts"][kind]["total"] for kind in ("ascii", "idn")}
    assert data["subscribed"] == 3 and data["date"] == stats["at"]
    assert data["roster_version"] == f.d.query("SELECT max(id) FROM roster_changes")[0][0]
    assert data["join"]["requests"] == f"requests@{DOMAIN}"

    # Nobody on the roster is named, in either file, in any form.
    people = f.d.query("SELECT first_name, last_name, phone, email FROM roster")
    assert len(people) == 6
    written = [ssc[3] for ssc in (JANE, JOHN, *KE, *BG_SSCS)]
    for first, last, phone, address in people:
        for trace in (f"{first} {last}", last, phone, phone.lstrip("+"), address, address.split("@")[0],
                      *written):
            assert trace not in html and trace not in raw_json, trace

    # Readable by a web server, in a directory made for it.
    for p in (out / "index.html", out / "members.json"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o644
    for d in (out, out.parent):
        assert stat.S_IMODE(d.stat().st_mode) == 0o755
    assert sorted(os.listdir(out)) == ["index.html", "members.json"]  # no temporary file left

    again = json.loads(f.tldops("publish", str(out), "--json").stdout)
    assert again == {"dir": str(out), "files": [str(out / "index.html"), str(out / "members.json")],
                     "written": True, "date": data["date"], "roster_version": data["roster_version"],
                     "subscribed": 3}


def test_a_country_with_markup_is_shown_as_text(joined: tuple[Flow, Path]) -> None:
    _, out = joined
    html = (out / "index.html").read_text("utf-8")
    root = strict_dom(html)
    countries = [text_of(e) for e in by_class(root, "span", "country")]
    assert KENYA in countries
    assert not list(root.iter("b"))
    assert "Kenya &lt;b&gt;&amp;" in html
    africa = json.loads((out / "members.json").read_text("utf-8"))["regions"][0]
    assert africa["members"][0]["country"] == KENYA


def test_no_script_and_nothing_fetched(joined: tuple[Flow, Path]) -> None:
    _, out = joined
    root = strict_dom((out / "index.html").read_text("utf-8"))
    tags = {e.tag for e in root.iter()}
    assert not tags & {"script", "link", "img", "iframe", "object", "embed", "audio", "video", "source",
                       "base", "form", "noscript"}
    for e in root.iter():
        assert not [a for a in e.attrib if a.lower().startswith("on")], e.attrib  # no event handlers
        for attr in ("src", "href", "action", "srcset", "poster", "data"):
            value = (e.get(attr) or "").strip().lower()
            if value:
                assert value.startswith(("#", "mailto:")), (e.tag, attr, value)
    style = "".join(text_of(s) for s in root.iter("style"))
    assert style and "url(" not in style and "@import" not in style and "@font-face" not in style
    assert not [e for e in root.iter() if e.get("style")]  # no inline style attribute to hide one in


# -- writing it -----------------------------------------------------------------------------------

@contextlib.contextmanager
def small_filesystem(where: Path) -> Iterator[Path]:
    """A tmpfs of its own at ``where`` (root only): it can be filled and made read-only."""
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(where)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"cannot mount a tmpfs for the test: {r.stderr}"
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, timeout=30)


def fill(directory: Path) -> None:
    """Take every free block of ``directory``'s filesystem."""
    with (directory / "filler").open("wb", buffering=0) as filler, contextlib.suppress(OSError):
        while True:
            filler.write(b"\0" * 4096)


def test_a_failed_write_leaves_the_old_page_and_no_temporary_file(joined: tuple[Flow, Path],
                                                                  tmp_path: Path) -> None:
    f, _ = joined
    if os.geteuid() != 0:
        # Without root, a read-only directory is what stops the write.
        www = tmp_path / "www"
        assert f.tldops("publish", str(www)).returncode == 0
        before = {n: (www / n).read_bytes() for n in publish.FILES}
        www.chmod(0o555)
        try:
            failed = f.tldops("publish", str(www))
        finally:
            www.chmod(0o755)
        assert failed.returncode == 1 and "the page was not written" in failed.stderr
        assert {n: (www / n).read_bytes() for n in publish.FILES} == before
        assert sorted(os.listdir(www)) == ["index.html", "members.json"]
        return
    with small_filesystem(tmp_path / "fs") as fs:
        www = fs / "www"
        assert f.tldops("publish", str(www)).returncode == 0
        before = {n: (www / n).read_bytes() for n in publish.FILES}

        fill(fs)  # the temporary file is made, then its octets find no room
        full = f.tldops("publish", str(www))
        assert full.returncode == 1, full.stdout
        assert "the page was not written" in full.stderr and "No space left on device" in full.stderr
        assert {n: (www / n).read_bytes() for n in publish.FILES} == before
        assert sorted(os.listdir(www)) == ["index.html", "members.json"]

        (fs / "filler").unlink()
        r = subprocess.run(["mount", "-o", "remount,ro", str(fs)], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        read_only = f.tldops("publish", str(www))
        assert read_only.returncode == 1 and "Read-only file system" in read_only.stderr
        assert {n: (www / n).read_bytes() for n in publish.FILES} == before
        assert sorted(os.listdir(www)) == ["index.html", "members.json"]


def test_publish_without_a_directory_says_how_to_name_one(joined: tuple[Flow, Path]) -> None:
    f, _ = joined
    r = f.tldops("publish")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip() == ("tldops: name the directory to write the page into "
                                "(tldops publish DIR), or set publish.dir")


# -- the nightly housekeeping ---------------------------------------------------------------------

def night(d: DaemonProc) -> str:
    """Run the nightly housekeeping now (as if last night's run were due); what it did with
    the membership page."""
    mark = d.mark()
    d.execute("DELETE FROM housekeeping_runs")
    return str(d.wait_for("housekeeping done", after=mark, timeout=30)["membership_page"])


def test_housekeeping_rewrites_the_page_only_when_the_roster_changed(tmp_path: Path) -> None:
    www = tmp_path / "www"
    with flow(tmp_path, **{"housekeeping.hour": 0, "publish.dir": str(www)}) as f:
        assert not www.exists()  # a new database runs no housekeeping at its first start
        assert night(f.d) == "written"
        first = (www / "index.html").stat()
        assert json.loads((www / "members.json").read_text("utf-8"))["roster_version"] == 0
        assert stat.S_IMODE(first.st_mode) == 0o644 and stat.S_IMODE(www.stat().st_mode) == 0o755

        assert night(f.d) == "unchanged"
        same = (www / "index.html").stat()
        assert (same.st_ino, same.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)

        subscribed(f, JANE, JOHN)
        mark = f.d.mark()
        assert night(f.d) == "written"
        assert f.d.wait_for("membership page written", after=mark)["subscribed"] == 1
        assert (www / "index.html").stat().st_ino != first.st_ino
        root = strict_dom((www / "index.html").read_text("utf-8"))
        assert {text_of(e) for e in by_class(root, "span", "tld")} == {".mt"}
        assert json.loads((www / "members.json").read_text("utf-8"))["roster_version"] == 1

        assert night(f.d) == "unchanged"


def test_a_page_that_cannot_be_written_is_logged_and_written_the_next_night(
        start_daemon: Callable[..., DaemonProc], tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the page's directory should be\n")
    www = blocker / "www"
    d = start_daemon({"housekeeping.hour": 0, "publish.dir": str(www)})
    mark = d.mark()
    assert night(d) == "failed"  # and the rest of the housekeeping was done
    error = d.wait_for("membership page not written; tried again next night", after=mark)
    assert error["level"] == "error" and error["dir"] == str(www) and "Not a directory" in error["error"]
    blocker.unlink()
    blocker.mkdir()
    assert night(d) == "written"
    assert sorted(os.listdir(www)) == ["index.html", "members.json"]


# -- in a real browser ----------------------------------------------------------------------------

def chromium(*args: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("chromium")
    assert exe is not None, "headless Chromium is missing (Debian package chromium; .ci/run installs it)"
    return subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={workdir / 'chromium-profile'}", *args],
        capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT, check=False)


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", head
    width, height = struct.unpack(">II", head[16:24])
    return width, height


@pytest.mark.parametrize(("width", "height"), [(390, 844), (1280, 900)], ids=["phone", "desktop"])
def test_chromium_renders_every_cctld_and_the_counts(joined: tuple[Flow, Path], tmp_path: Path,
                                                     width: int, height: int) -> None:
    f, out = joined
    url = (out / "index.html").as_uri()
    size = f"--window-size={width},{height}"
    dumped = chromium(size, "--dump-dom", url, workdir=tmp_path)
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    root = html5lib.HTMLParser(namespaceHTMLElements=False).parse(dumped.stdout)
    assert {text_of(e) for e in by_class(root, "span", "tld")} == SHOWN
    assert_counts_shown(root, json.loads(f.tldops("stats", "--json").stdout))

    shot = tmp_path / f"page-{width}.png"
    done = chromium(size, f"--screenshot={shot}", url, workdir=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert png_size(shot) == (width, height)

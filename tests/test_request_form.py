"""The request form (docs/requests.md): what it reads, what it forgives, what it refuses.

Pure: text in, a RequestForm out. Each refusal names its line and says how to fix it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from email.message import Message
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tldops_mta.policy import request_form
from tldops_mta.policy.request_form import RequestForm, SscEntry, parse_form

SUBSCRIBE = """Action: subscribe
ccTLD: mt

SSC: primary
First name: Jane
Last name: Doe
Phone: +356 2133 4455
Email: jane.doe@nic.org.mt

SSC: secondary
First name: John
Last name: Roe
Phone: +356 2133 4456
Email: john.roe@nic.org.mt
"""

JANE = SscEntry("primary", "Jane", "Doe", "+356 2133 4455", "jane.doe@nic.org.mt", None, 4, 7, 8)
JOHN = SscEntry("secondary", "John", "Roe", "+356 2133 4456", "john.roe@nic.org.mt", None, 10, 13, 14)


def problems(form: RequestForm) -> list[str]:
    return [str(p) for p in form.problems]


def test_a_subscription_is_read() -> None:
    form = parse_form(SUBSCRIBE)
    assert problems(form) == []
    assert (form.action, form.tld, form.sscs) == ("subscribe", "mt", (JANE, JOHN))


def test_the_examples_of_the_documentation_parse_cleanly() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "requests.md").read_text("utf-8")
    blocks = re.findall(r"```\n(Action:.*?)```", doc, re.S)
    assert len(blocks) == 3
    for block in blocks:
        assert problems(parse_form(block)) == [], block


@pytest.mark.parametrize("variant", [
    # case and spacing of field names, values with extra spaces
    SUBSCRIBE.replace("First name:", "FIRST NAME :").replace("Email:", "e-mail:")
             .replace("Phone: +356", "Phone:    +356"),
    # a quoted reply
    "\n".join("> " + line for line in SUBSCRIBE.splitlines()),
    # prose around the form, a signature after it with form-like lines in it
    "Hello,\nplease subscribe us.\n\n" + SUBSCRIBE + "\nThanks!\n-- \nJane\nPhone: +356 1\n",
    # the same form pasted twice
    SUBSCRIBE + "\n" + SUBSCRIBE,
])
def test_what_a_person_might_do_is_forgiven(variant: str) -> None:
    form = parse_form(variant)
    assert problems(form) == []
    assert form.action == "subscribe" and form.tld == "mt"
    assert [(s.role, s.first_name, s.last_name, s.phone, s.email) for s in form.sscs] == [
        (s.role, s.first_name, s.last_name, s.phone, s.email) for s in (JANE, JOHN)]


def test_an_update_says_whom_each_new_ssc_replaces() -> None:
    form = parse_form("Action: update\nccTLD: .MT\nSSC: secondary\nFirst name: Maria\n"
                      "Last name: Borg\nPhone: +356 2133 4457\nEmail: maria.borg@nic.org.mt\n"
                      "Replaces: john.roe@nic.org.mt\n")
    assert problems(form) == []
    assert form.tld == "MT"
    assert [(s.role, s.email, s.replaces) for s in form.sscs] == [
        ("secondary", "maria.borg@nic.org.mt", "john.roe@nic.org.mt")]


@pytest.mark.parametrize(("text", "removals", "remove_all"), [
    ("Action: remove\nccTLD: mt\nRemove: john.roe@nic.org.mt\nRemove: JOHN.ROE@nic.org.mt\n",
     ("john.roe@nic.org.mt",), False),
    ("Action: remove\nccTLD: mt\nRemove: all\n", (), True),
])
def test_a_removal_names_addresses_or_all(text: str, removals: tuple[str, ...],
                                          remove_all: bool) -> None:
    form = parse_form(text)
    assert problems(form) == []
    assert (form.action, form.removals, form.remove_all, form.sscs) == ("remove", removals,
                                                                          remove_all, ())


@pytest.mark.parametrize(("text", "expected"), [
    ("ccTLD: mt\n", ["the request does not say what it asks"]),
    ("Action: subscribe\n", ["the request does not name its ccTLD",
                             "'subscribe' names no SSC"]),
    ("Action: join\nccTLD: mt\n", ["line 1: 'join' is not an action"]),
    ("Action: subscribe\nccTLD: mt\nAction: remove\n",
     ["line 3: a second Action line says 'remove', line 1 says 'subscribe'",
      "'subscribe' names no SSC"]),
    ("Action: subscribe\nccTLD: mt\nccTLD: de\n" + SUBSCRIBE[28:],
     ["line 3: a second ccTLD line says 'de', line 2 says 'mt'"]),
    (SUBSCRIBE.replace("Phone: +356 2133 4455", "Fone: +356 2133 4455"),
     ["line 4: the primary SSC lacks Phone", "line 7: 'Fone: +356 2133 4455' is not a field"]),
    (SUBSCRIBE.replace("SSC: secondary", "SSC: backup"), ["line 10: 'backup' is not an SSC role"]),
    (SUBSCRIBE.replace("SSC: secondary", "SSC: primary"),
     ["line 10: a second 'SSC: primary' block (the first is line 4)"]),
    (SUBSCRIBE.replace("Last name: Doe", "Last name: Doe\nLast name: Dough"),
     ["line 7: a second Last name line for this SSC (the first is line 6)"]),
    (SUBSCRIBE.replace("Email: jane.doe@nic.org.mt", "Email: jane.doe at nic.org.mt"),
     ["line 8: 'jane.doe at nic.org.mt' is not an email address"]),
    (SUBSCRIBE.replace("Phone: +356 2133 4455", "Phone: call me"),
     ["line 7: 'call me' is not a phone number"]),
    ("Action: subscribe\nccTLD: mt\nFirst name: Jane\n",
     ["line 3: 'First name' is outside an SSC block", "'subscribe' names no SSC"]),
    (SUBSCRIBE + "Replaces: old@nic.org.mt\n", ["line 15: 'Replaces:' belongs to updates"]),
    (SUBSCRIBE + "Remove: old@nic.org.mt\n", ["line 15: 'Remove:' belongs to removals"]),
    # A detail after a blank line still belongs to its SSC; a repeated one does not.
    (SUBSCRIBE + "\nReplaces: old@nic.org.mt\n", ["line 16: 'Replaces:' belongs to updates"]),
    (SUBSCRIBE + "\nEmail: other@nic.org.mt\n", ["line 16: 'Email' is outside an SSC block"]),
    (SUBSCRIBE.replace("Phone: +356 2133 4455\n", "Phone: +356 2133 4455\nwith a note\n"),
     ["line 8: 'with a note' is not a field"]),
    (SUBSCRIBE.replace("Action: subscribe", "Action: update"),
     ["line 4: the update does not say whom the primary SSC replaces",
      "line 10: the update does not say whom the secondary SSC replaces"]),
    ("Action: remove\nccTLD: mt\n", ["a removal names nobody"]),
    ("Action: remove\nccTLD: mt\nRemove: all\nRemove: a@nic.org.mt\n",
     ["line 3: 'Remove: all' and single addresses together"]),
    ("Action: remove\nccTLD: mt\nRemove: John\n", ["line 3: 'John' is not an email address"]),
])
def test_every_problem_is_named_with_its_line(text: str, expected: list[str]) -> None:
    got = problems(parse_form(text))
    assert len(got) == len(expected), got
    for want, have in zip(sorted(expected, key=_line), got, strict=True):
        assert have.startswith(want), (want, have)
        assert have.count(". ") >= 1 and len(have) > len(want) + 10, "no fix given: " + have


def _line(problem: str) -> int:
    m = re.match(r"line (\d+):", problem)
    return int(m.group(1)) if m else 0


def _outcome(f: Callable[[], object]) -> object:
    """What ``f`` answers, or how it fails: the same failure is part of the same answer."""
    try:
        return ("ok", f())
    except Exception as e:
        return ("raised", type(e), e.args)


PARAMS = st.lists(st.sampled_from([
    "charset=utf-8", "charset=UTF-8", 'charset="iso-8859-1"', "charset*=utf-8''%e2%82%ac", "charset*0=ut",
    "charset*1=f-8", "charset*=x-unknown'en'abc", "charset*=''utf-8", "format=flowed", "charset=",
    'charset="a\\"b"', "charset=\u00e9", "CHARSET=Latin1", "charset", ";", "=",
    "charset=utf-8; charset=ascii", "charset*=utf-8'en'%FF", "charset=\udcff"]), max_size=4)


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(["text/plain", "TEXT/HTML", "text", "", "multipart/alternative"]), PARAMS,
       st.text(max_size=12), st.booleans())
@example("text/plain", ["charset=utf-8"], "", False)
def test_the_charset_is_the_one_get_content_charset_gives(ctype: str, params: list[str], noise: str,
                                                           twice: bool) -> None:
    """body_text reads a part's charset from a cache of Content-Type values: the same answer
    (or the same failure) as the stdlib's get_content_charset, for a value read once or again."""
    value = "; ".join([ctype, *params]) + noise
    part = Message()
    part["Content-Type"] = value
    if twice:
        part["Content-Type"] = "text/plain; charset=koi8-r"  # the first one counts
    for _ in range(2):  # the second from the cache
        assert _outcome(lambda: request_form._charset(part)) == _outcome(part.get_content_charset)

"""TLP labels: the report's rules as a pure function (issue 6)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tldops_mta.mail import tlp
from tldops_mta.mail.tlp import Tlp, for_reply, labelled, labels_in, of_message


@pytest.mark.parametrize(("text", "level"), [
    ("[TLP:AMBER] outage", Tlp.AMBER), ("[TLP-AMBER] outage", Tlp.AMBER),  # the report's spelling
    ("tlp:amber+strict", Tlp.AMBER_STRICT), ("TLP: AMBER + STRICT", Tlp.AMBER_STRICT),
    ("TLP:WHITE", Tlp.CLEAR), ("TLP:CLEAR", Tlp.CLEAR), ("TLP_GREEN", Tlp.GREEN),
    ("Re: [TLP:RED] keys", Tlp.RED),
])
def test_labels_old_and_new_are_read(text: str, level: Tlp) -> None:
    assert labels_in(text) == [level]


def test_words_that_merely_contain_tlp_are_not_labels() -> None:
    # A label read where none was meant would relax the RED of an unlabelled message.
    assert labels_in("XTLP:AMBER, TLP:AMBERS, the tlp amber thing, TLP:AMBER-ish") == []


def test_no_label_means_red_and_the_stricter_wins() -> None:
    assert of_message("DNSSEC rollover") is Tlp.RED
    assert of_message("[TLP:GREEN] rollover", "details are TLP:AMBER") is Tlp.AMBER


def test_a_reply_inherits_and_never_relaxes() -> None:
    assert for_reply([Tlp.AMBER]) is Tlp.AMBER
    assert for_reply([Tlp.AMBER], [Tlp.GREEN]) is Tlp.AMBER  # the respondent cannot relax it
    assert for_reply([Tlp.GREEN], [Tlp.RED]) is Tlp.RED
    assert for_reply([]) is Tlp.RED


@given(st.lists(st.sampled_from(list(Tlp))), st.lists(st.sampled_from(list(Tlp))))
def test_a_reply_is_at_least_as_strict_as_everything_it_answers(answered: list[Tlp], own: list[Tlp]) -> None:
    level = for_reply(answered, own)
    assert all(level >= x for x in [*answered, *own])


def test_the_subject_label_is_replaced_not_stacked() -> None:
    assert labelled("Re: [TLP-AMBER] outage", Tlp.RED) == "[TLP:RED] Re: outage"
    assert labelled("roster", Tlp.AMBER_STRICT) == "[TLP:AMBER+STRICT] roster"
    assert Tlp.parse("amber") is Tlp.AMBER and Tlp.parse("TLP:WHITE") is Tlp.CLEAR
    with pytest.raises(ValueError, match="not a TLP label"):
        Tlp.parse("purple")


PIECES = ["[", "]", " ", "\t", "TLP", "tlp", "Tl", "P", ":", "-", "AMBER", "red", "+STRICT", "x",
          "\u212a", "\u0130", "[TLP:GREEN]"]


@given(st.lists(st.sampled_from(PIECES), max_size=14).map("".join) | st.text(max_size=40),
       st.sampled_from(list(Tlp)))
def test_labelled_is_the_regular_expression_s_answer(subject: str, level: Tlp) -> None:
    # labelled skips the regex when "tlp" is nowhere in the subject: the answer must be the same.
    bare = tlp._BRACKETED.sub(" ", subject).strip()
    assert labelled(subject, level) == f"[{level.label}] {bare}".rstrip()

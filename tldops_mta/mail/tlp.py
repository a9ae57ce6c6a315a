"""Traffic Light Protocol labels (TLP 2.0) as the SECIR report wants them used (docs/security.md).

Pure functions over text. No label means RED; a reply inherits the label of what it
answers; when labels meet, the stricter wins; nothing relaxes a label. The old spellings are
read too: the report's ``[TLP-AMBER]`` and TLP 1.0's ``TLP:WHITE`` (now CLEAR). What the
daemon writes always carries the 2.0 spelling: ``[TLP:AMBER]`` at the head of the Subject.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import IntEnum


class Tlp(IntEnum):
    """Ordered from the least to the most restricted: max() is "the stricter wins"."""

    CLEAR = 0
    GREEN = 1
    AMBER = 2
    AMBER_STRICT = 3
    RED = 4

    @property
    def label(self) -> str:
        return "TLP:" + self.name.replace("_", "+")

    @classmethod
    def parse(cls, text: str) -> Tlp:
        """``AMBER``, ``TLP:AMBER+STRICT``, ``tlp-white`` ...; ValueError when none of them."""
        found = labels_in(text if re.match(r"(?i)\s*tlp", text) else "TLP:" + text)
        if len(found) != 1:
            raise ValueError(f"{text!r} is not a TLP label (RED, AMBER+STRICT, AMBER, GREEN, CLEAR)")
        return found[0]


_LABEL = re.compile(
    r"(?<![A-Za-z0-9])TLP\s*[:\-_]\s*(RED|AMBER\s*\+\s*STRICT|AMBER|GREEN|CLEAR|WHITE)(?![A-Za-z0-9-])",
    re.IGNORECASE)
"""Strict on purpose: a label read where none was meant could relax the RED of no label."""
_NAMES = {"RED": Tlp.RED, "AMBER+STRICT": Tlp.AMBER_STRICT, "AMBER": Tlp.AMBER,
          "GREEN": Tlp.GREEN, "CLEAR": Tlp.CLEAR, "WHITE": Tlp.CLEAR}
_BRACKETED = re.compile(r"\s*\[\s*" + _LABEL.pattern + r"\s*\]\s*", re.IGNORECASE)


def _may_hold_label(text: str) -> bool:
    """False where no label can be written (the common case): no regex walks that text."""
    return "tlp" in text.lower()


def labels_in(text: str) -> list[Tlp]:
    """Every label written in ``text``, in order."""
    if not _may_hold_label(text):
        return []
    return [_NAMES[re.sub(r"\s+", "", m.group(1)).upper()] for m in _LABEL.finditer(text)]


def of_message(subject: str, body: str = "") -> Tlp:
    """The label a message carries: the strictest written in its Subject or text; RED
    when it has none."""
    found = labels_in(subject) + labels_in(body)
    return max(found) if found else Tlp.RED


def for_reply(answered: Iterable[Tlp], own: Iterable[Tlp] = ()) -> Tlp:
    """The label of a reply: never less strict than what it answers, nor than what its
    writer chose. Nothing answered and nothing chosen: RED."""
    levels = [*answered, *own]
    return max(levels) if levels else Tlp.RED


def labelled(subject: str, level: Tlp) -> str:
    """``subject`` headed by ``[TLP:LEVEL]``, with any bracketed label it had taken out
    (the new one is never less strict: callers pass for_reply's answer)."""
    bare = (_BRACKETED.sub(" ", subject) if _may_hold_label(subject) else subject).strip()
    return f"[{level.label}] {bare}".rstrip()


_ANY_WRITTEN = re.compile(r"\s*[\[(]?\s*" + _LABEL.pattern + r"\s*[\])]?\s*[:\-]?\s*", re.IGNORECASE)


def relabelled(subject: str, level: Tlp) -> str:
    """``subject`` with exactly one label, ``[TLP:LEVEL]`` at its head: every label it wrote,
    bracketed or not and in any spelling (``TLP-AMBER``, ``(TLP:WHITE)``), taken out. For mail
    passed on to others (the list), whose readers must see one label, never two that differ."""
    bare = " ".join(_ANY_WRITTEN.sub(" ", subject).split())
    return f"[{level.label}] {bare}".rstrip()

"""The policy files in force: shipped with the code, each replaceable by the operator's own.

``roster.toml``, ``replies.toml`` and ``cctlds.csv`` ship inside the package (the repository's
top-level ``rules/``, installed as ``tldops_mta.shipped_rules``), so they are the default
wherever the daemon runs, whatever its working directory. A file of the same name in the
configured ``rules.dir`` replaces the shipped one; the others stay shipped. A configured
directory that cannot be read is an error, never "no rules". Read at start, re-read on
SIGHUP, checked by ``config check``; one bad file makes the whole set invalid, so a
half-edited directory never replaces a working one.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

Rules = dict[str, dict[str, Any]]
"""The policy tables, keyed by file name without ``.toml`` (``roster``, ``replies``)."""

FILES = ("roster.toml", "replies.toml", "cctlds.csv")
SHIPPED = "shipped"
_SHIPPED_PACKAGE = "tldops_mta.shipped_rules"


class RulesError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class PolicyFile:
    name: str
    origin: str
    """``shipped``, or the path of the operator's file that replaces it."""
    file: Traversable

    @property
    def label(self) -> str:
        """How problems name it: the operator's path, or ``cctlds.csv (shipped)``."""
        return f"{self.name} ({SHIPPED})" if self.origin == SHIPPED else self.origin

    def text(self) -> str:
        try:
            return self.file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise RulesError([f"{self.label}: {getattr(e, 'strerror', None) or e}"]) from e


def in_force(override: Path | None) -> dict[str, PolicyFile]:
    """Each policy file: the one in ``override`` (``rules.dir``) when it holds it, else the
    shipped one. RulesError when ``override`` cannot be listed or holds a policy-looking file
    that is none of ours (a misspelt name would otherwise leave the shipped one in force)."""
    own: dict[str, Path] = {}
    if override is not None:
        try:
            entries = sorted(override.iterdir())
        except OSError as e:
            raise RulesError([f"rules.dir {override}: {e.strerror or e}"]) from e
        strangers = [p for p in entries if p.suffix in (".toml", ".csv") and p.name not in FILES]
        if strangers:
            raise RulesError([f"{p}: not a policy file (those are {', '.join(FILES)})" for p in strangers])
        own = {p.name: p.absolute() for p in entries if p.name in FILES}
    shipped = resources.files(_SHIPPED_PACKAGE)
    return {name: PolicyFile(name, str(own[name]), own[name]) if name in own
            else PolicyFile(name, SHIPPED, shipped / name) for name in FILES}


def sources(override: Path | None) -> dict[str, str]:
    """Where each policy file in force comes from: ``shipped`` or the operator's path."""
    return {name: f.origin for name, f in in_force(override).items()}


def load(override: Path | None) -> Rules:
    """The policy tables in force, every file checked (cctlds.csv too, though its rows are
    read by ``cctlds.load``); RulesError names every problem."""
    files = in_force(override)
    rules: Rules = {}
    problems: list[str] = []
    for name, f in files.items():
        if name.endswith(".toml"):
            try:
                rules[name.removesuffix(".toml")] = tomllib.loads(f.text())
            except tomllib.TOMLDecodeError as e:
                problems.append(f"{f.label}: {e}")
            except RulesError as e:
                problems += e.problems
    if problems:
        raise RulesError(problems)
    # Tables with a meaning are checked too, so a wrong value is refused like a bad file.
    # Imported here: the roster policy's checks need phonenumbers, which only this step uses,
    # and cctlds imports this module (for RulesError).
    from tldops_mta.policy import roster_policy, texts
    from tldops_mta.settings import cctlds

    problems = roster_policy.check(rules) + texts.check(rules)
    try:
        cctlds.parse(files[cctlds.FILE].text(), files[cctlds.FILE].label)
    except RulesError as e:  # CctldsError is one
        problems += e.problems
    if problems:
        raise RulesError(problems)
    return rules

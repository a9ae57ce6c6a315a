"""Policy files in ``rules/``: read at start, re-read on SIGHUP, checked by ``config check``.

Each ``*.toml`` file is one policy table, keyed by its file name without the suffix. A file
that does not parse makes the whole set invalid, so a half-edited directory never replaces
a working one.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

Rules = dict[str, dict[str, Any]]


class RulesError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def load(directory: Path) -> Rules:
    """All policy tables under ``directory`` (absent directory: none)."""
    if not directory.exists():
        return {}
    if not directory.is_dir():
        raise RulesError([f"{directory}: not a directory"])
    rules: Rules = {}
    problems: list[str] = []
    for path in sorted(directory.glob("*.toml")):
        try:
            rules[path.stem] = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            problems.append(f"{path}: {e}")
    if problems:
        raise RulesError(problems)
    # Tables with a meaning are checked too, so a wrong value is refused like a bad file.
    from . import policy, texts  # here: policy's checks need phonenumbers, which only this step uses

    problems = policy.check(rules) + texts.check(rules)
    if problems:
        raise RulesError(problems)
    return rules

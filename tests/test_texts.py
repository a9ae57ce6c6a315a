"""The texts of the daemon's mails (rules/replies.toml): checked, and filled safely."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from tldops_mta.policy import texts

RULES = Path(__file__).resolve().parent.parent / "rules"
SHIPPED = {"replies": tomllib.loads((RULES / "replies.toml").read_text("utf-8"))}


def test_the_shipped_texts_have_every_template_and_only_known_placeholders() -> None:
    assert texts.check(SHIPPED) == []
    assert set(SHIPPED["replies"]) == set(texts.FIELDS)


def test_a_typo_in_a_placeholder_and_a_missing_template_are_reported() -> None:
    replies = {k: dict(v) for k, v in SHIPPED["replies"].items()}
    replies["outcome"]["subject"] = "Your request for .{tdl}"
    del replies["welcome"]
    problems = texts.check({"replies": replies})
    assert "rules/replies.toml: [welcome] wants a subject and a body (strings)" in problems
    assert any(p.startswith("rules/replies.toml: [outcome] subject uses {tdl}; it may use {action}")
               for p in problems)


def test_values_go_in_as_text_other_braces_stay_and_the_subject_is_one_line() -> None:
    rules = {"replies": {"decision": {"subject": "#{id}: {result}", "body": "{result} {x} {{id}}\n"}}}
    subject, body = texts.render(rules, "decision", {"id": 7, "tld": "mt",
                                                     "result": "a\r\nBcc: victim@example.org"})
    assert subject == "#7: a Bcc: victim@example.org"  # no header can be smuggled in
    assert body == "a\r\nBcc: victim@example.org {x} {7}\n"


def test_without_a_template_the_values_still_go_out_labelled() -> None:
    subject, body = texts.render({}, "removed", {"tld": "mt", "name": "Jane Doe", "help": "help@x"})
    assert subject == "[TLD-OPS] removed"
    assert "tld: mt\nname: Jane Doe\n" in body


def test_config_check_reports_a_bad_template(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    path = rules / "replies.toml"
    path.write_text(path.read_text("utf-8").replace("Dear {name},", "Dear {nmae},", 1), "utf-8")
    config = tmp_path / "tldops.toml"
    config.write_text(f'[rules]\ndir = "{rules}"\n')
    r = subprocess.run([sys.executable, "-m", "tldops_mta", "config", "check", "--config", str(config)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "[welcome] body uses {nmae}" in r.stdout + r.stderr

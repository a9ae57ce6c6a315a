"""The texts of the daemon's mails (rules/replies.toml): checked, and filled safely."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

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


@settings(max_examples=300, deadline=None)
@given(body=st.lists(st.sampled_from(["{id}", "{tld}", "{diff}", "{nope}", "{", "}", "{ID}", "{a b}", "x",
                                      "\n", " ", "é{", "{{tld}}"]), max_size=30).map("".join),
       values=st.dictionaries(st.sampled_from(["id", "tld", "diff"]),
                              st.text(max_size=20) | st.integers()))
def test_a_template_cut_once_fills_as_the_regular_expression_did(body: str,
                                                                 values: dict[str, object]) -> None:
    # render cuts each template at its placeholders once (cached), where it ran re.sub per
    # mail: the text must be what re.sub gives, braces of every other kind left as written.
    rules = {"replies": {"received": {"subject": body, "body": body}}}
    filled = {k: str(v) for k, v in values.items()}

    def by_sub(text: str) -> str:
        return re.sub(r"\{([a-z_]+)\}", lambda m: filled.get(m.group(1), m.group(0)), text)

    assert texts.render(rules, "received", values) == (" ".join(by_sub(body).split()),
                                                        by_sub(body.lstrip("\n")))

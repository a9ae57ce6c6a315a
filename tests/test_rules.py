"""The policy files in force: shipped with the code, replaced file by file by the operator's
rules.dir, and a rules.dir that cannot be read refuses start instead of meaning "no rules"."""

from __future__ import annotations

import email
import json
import signal
import smtplib
import subprocess
import sys
import tomllib
from pathlib import Path

from daemon_proc import DOMAIN, DaemonProc, write_config

from tldops_mta.policy import roster_policy
from tldops_mta.settings import cctlds, policy_files

SHIPPED_REPLIES = tomllib.loads((Path(__file__).resolve().parent.parent / "rules" / "replies.toml")
                                .read_text("utf-8"))
OWN_HELP_SUBJECT = "[TLD-OPS] Comment envoyer une demande"


def tldops(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tldops_mta", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=60)


def own_replies(directory: Path) -> Path:
    """The operator's replies.toml in ``directory``: the shipped one with its own help subject."""
    text = (Path(__file__).resolve().parent.parent / "rules" / "replies.toml").read_text("utf-8")
    shipped_subject = SHIPPED_REPLIES["help"]["subject"]
    assert f'subject = "{shipped_subject}"' in text
    path = directory / "replies.toml"
    path.write_text(text.replace(f'subject = "{shipped_subject}"', f'subject = "{OWN_HELP_SUBJECT}"'),
                    "utf-8")
    return path


def test_without_rules_dir_every_policy_file_is_the_shipped_one(tmp_path: Path) -> None:
    assert policy_files.sources(None) == {"roster.toml": "shipped", "replies.toml": "shipped",
                                   "cctlds.csv": "shipped"}
    loaded = policy_files.load(None)
    roles = roster_policy.table(loaded)["addresses"]["role_local_parts"]
    built_in = roster_policy.DEFAULTS["addresses"]["role_local_parts"]
    assert {"cert", "csirt"} <= set(roles) and len(roles) > len(built_in)
    assert loaded["replies"]["help"] == SHIPPED_REPLIES["help"]
    assert {"mt", "xn--p1ai"} <= {c.tld for c in cctlds.load(None)}
    # The built-in defaults (what an empty configuration gives) name no rules.dir.
    r = tldops("config", "show", "--json", cwd=tmp_path)
    assert json.loads(r.stdout)["rules"]["dir"] == ""


def test_the_operators_file_replaces_only_the_shipped_file_of_its_name(tmp_path: Path) -> None:
    own = own_replies(tmp_path)
    assert policy_files.sources(tmp_path) == {"roster.toml": "shipped", "replies.toml": str(own),
                                       "cctlds.csv": "shipped"}
    loaded = policy_files.load(tmp_path)
    assert loaded["replies"]["help"]["subject"] == OWN_HELP_SUBJECT
    assert "csirt" in roster_policy.table(loaded)["addresses"]["role_local_parts"]  # roster.toml: shipped
    assert len(cctlds.load(tmp_path)) == len(cctlds.load(None))  # cctlds.csv: shipped
    (tmp_path / "cctlds.csv").write_text(",".join(cctlds.COLUMNS) + "\nmt,,Malta,EUR,1992-12-02,,yes\n")
    assert [c.tld for c in cctlds.load(tmp_path)] == ["mt"]
    assert policy_files.sources(tmp_path)["cctlds.csv"] == str(tmp_path / "cctlds.csv")


def test_a_rules_dir_that_cannot_be_used_is_named_by_every_reader(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    for reader in (policy_files.load, policy_files.sources, cctlds.load):
        try:
            reader(missing)
        except policy_files.RulesError as e:
            assert e.problems == [f"rules.dir {missing}: No such file or directory"]
        else:
            raise AssertionError(f"{reader.__qualname__} read a rules.dir that does not exist")
    # A misspelt policy file would leave the shipped one in force without a word: refused.
    (tmp_path / "rosters.toml").write_text("[ssc]\nmax_per_cctld = 2\n")
    try:
        policy_files.load(tmp_path)
    except policy_files.RulesError as e:
        assert e.problems == [f"{tmp_path / 'rosters.toml'}: not a policy file "
                              "(those are roster.toml, replies.toml, cctlds.csv)"]
    else:
        raise AssertionError("a misspelt policy file was ignored")


def test_a_missing_rules_dir_refuses_start_and_config_check_says_so(tmp_path: Path) -> None:
    missing = tmp_path / "etc-rules"
    conf = write_config(tmp_path / "tldops.toml", {
        "rules.dir": str(missing), "storage.state_dir": str(tmp_path / "state"),
        "server.listen": ["127.0.0.1:0"], "metrics.listen": ""})
    check = tldops("config", "check", "--config", str(conf))
    assert check.returncode == 1
    assert check.stderr == f"rules: rules.dir {missing}: No such file or directory\n"
    as_json = json.loads(tldops("config", "check", "--config", str(conf), "--json").stdout)
    assert as_json["ok"] is False and as_json["problems"] == [
        f"rules: rules.dir {missing}: No such file or directory"]
    served = tldops("serve", "--config", str(conf))  # returns at once: it never listens
    assert served.returncode == 1
    assert served.stderr == f"tldops: rules.dir {missing}: No such file or directory\n"
    assert not (tmp_path / "state" / "tldops.pid").exists()
    missing.mkdir()  # the same configuration with the directory there (empty): all shipped
    assert tldops("config", "check", "--config", str(conf)).returncode == 0


def help_answer(d: DaemonProc, sender: str) -> str:
    """The Subject of the help@ answer ``sender`` gets, once it was written."""
    mark = d.mark()
    with smtplib.SMTP(d.host, d.port, timeout=10) as s:
        s.sendmail(sender, [f"help@{DOMAIN}"],
                   f"From: {sender}\r\nTo: help@{DOMAIN}\r\nSubject: help\r\n\r\nhow?\r\n".encode())
    d.wait_for("mail delivered", after=mark)
    for path in (d.state_dir / "outgoing").glob("*.eml"):
        m = email.message_from_bytes(path.read_bytes())
        if m["To"] == sender:
            return str(m["Subject"])
    raise AssertionError(f"no help answer to {sender}")


def test_ready_line_status_and_sighup_name_each_policy_file_and_its_source(start_daemon) -> None:
    d: DaemonProc = start_daemon()
    shipped = {"roster.toml": "shipped", "replies.toml": "shipped", "cctlds.csv": "shipped"}
    assert d.wait_for("ready")["rules"] == shipped
    assert SHIPPED_REPLIES["help"]["subject"] in help_answer(d, "one@nic.example")

    # The operator's replies.toml, taken up on SIGHUP; the other files stay shipped.
    own = own_replies(d.workdir / "rules")
    mark = d.mark()
    d.signal(signal.SIGHUP)
    assert d.wait_for("reloaded", after=mark)["rules"] == {**shipped, "replies.toml": str(own)}
    d.wait_for("worker reloaded", after=mark)
    assert OWN_HELP_SUBJECT in help_answer(d, "two@nic.example")

    plain = tldops("status", "--config", str(d.config_path))
    assert plain.returncode == 0, plain.stderr
    assert f"rules:      roster.toml shipped; replies.toml {own}; cctlds.csv shipped\n" in plain.stdout
    as_json = json.loads(tldops("status", "--json", "--config", str(d.config_path)).stdout)
    assert as_json["rules"] == {**shipped, "replies.toml": str(own)}

    # The directory gone: the reload is refused, the running rules stay, status says why.
    own.unlink()
    (d.workdir / "rules").rmdir()
    mark = d.mark()
    d.signal(signal.SIGHUP)
    refused = d.wait_for("reload refused, keeping the running configuration", after=mark)
    assert "No such file or directory" in str(refused["problems"])
    assert d.alive
    gone = tldops("status", "--config", str(d.config_path))
    assert gone.returncode == 1
    assert "rules:      cannot be read (see problems)" in gone.stdout
    assert f"rules: rules.dir {d.workdir / 'rules'}: No such file or directory" in gone.stdout

"""The crash-safety proofs of tests/crash_safety.py, short enough for every run: SIGKILL
under smtp-source load, in the middle of a broadcast, around a Validator's approval, and
while a mix of confirm+, decide+, who@, update@, list@, bounces+ and help@ mail is processed.
Each with one worker process and with two (worker.processes); and one of two workers killed
alone mid-batch while the other goes on. The long run (20 kills, 300 SSCs) is
``.venv/bin/python tests/crash_safety.py``."""

from __future__ import annotations

import random
from pathlib import Path

import crash_safety
import pytest

PROCESSES = pytest.mark.parametrize("processes", [1, 2])


@PROCESSES
def test_sigkill_under_smtp_source_load_loses_and_duplicates_nothing(tmp_path: Path, processes: int) -> None:
    r = crash_safety.under_load(tmp_path, kills=5, rng=random.Random(3), processes=processes)
    assert r.kills == 5 and r.acknowledged > 0
    # Every acknowledged message was found and processed once (under_load raises otherwise);
    # a message stored without its 250 (cut off by the kill) is processed too, once.
    assert r.stored >= r.acknowledged and r.requests == r.stored


@PROCESSES
def test_sigkill_in_the_middle_of_a_broadcast_sends_each_ssc_one_copy(tmp_path: Path, processes: int) -> None:
    # Enough SSCs that the outbox takes several of its batches (32 files each, made durable
    # together) to send them: a kill then falls between two of them, never after the last.
    r = crash_safety.during_broadcast(tmp_path, sscs=200, kills=2, processes=processes)
    assert r.deliveries == 200
    assert all(0 < n < 200 for n in r.sent_at_kills), r.sent_at_kills  # killed mid-way, each time


@PROCESSES
def test_sigkill_around_an_approval_applies_it_exactly_once(tmp_path: Path, processes: int) -> None:
    r = crash_safety.during_approval(tmp_path, approvals=3, rng=random.Random(3), processes=processes)
    assert r.approvals == 3 and r.committed_after_restart >= 1


@PROCESSES
def test_sigkill_while_every_kind_of_mail_is_processed_handles_each_once(tmp_path: Path,
                                                                         processes: int) -> None:
    r = crash_safety.every_path(tmp_path, per_kind=20, kills=4, rng=random.Random(3), processes=processes)
    assert r.kills == 4 and set(r.sent) == set(crash_safety.KINDS)
    # Every confirmation, decision, who@, update@, list post, bounce and help@ once, none
    # refused (every_path checks each exactly and says what broke).
    assert r.failures == []


def test_one_of_two_workers_killed_mid_batch_leaves_the_other_alone(tmp_path: Path) -> None:
    r = crash_safety.one_worker_killed(tmp_path, messages=80)
    # The killed batch was processed again after slot 1's restart, nothing else twice
    # (one_worker_killed checks each message's claims and effects, and says what broke).
    assert r.killed_in_hand > 0 and r.requests == r.messages == 80

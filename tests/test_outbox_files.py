"""The outbox's files (no smarthost): each delivery one whole file, written and fsynced
under a temporary name, then renamed; a file that cannot be written fails alone."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tldops_mta.mail import outbox


def batch(n: int) -> list[outbox.Due]:
    return [outbox.Due(10 + i, 7, f"ssc{i}@nic.example", 0, "bounces+b1@tld-ops.localhost",
                       f"Subject: {i}\r\n\r\n{'x' * 70000 * (i % 2)}body {i}\r\n".encode())
            for i in range(n)]


@pytest.fixture
def dir_fd(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def test_each_delivery_is_one_whole_file(tmp_path: Path, dir_fd: int) -> None:
    deliveries = batch(5)
    assert outbox.write_files(dir_fd, deliveries) == [None] * 5
    assert sorted(os.listdir(tmp_path)) == [f"00000007-{10 + i:08d}-ssc{i}@nic.example.eml" for i in range(5)]
    for d in deliveries:
        path = tmp_path / f"00000007-{d.id:08d}-{d.rcpt}.eml"
        assert path.read_bytes() == (f"X-Envelope-From: <{d.mail_from}>\r\nX-Envelope-To: <{d.rcpt}>\r\n"
                                     .encode() + d.raw)
        assert path.stat().st_mode & 0o777 == 0o600


def test_a_file_that_cannot_be_written_fails_alone_and_leaves_nothing(tmp_path: Path, dir_fd: int) -> None:
    deliveries = batch(3)
    (tmp_path / "00000007-00000011-ssc1@nic.example.eml").mkdir()  # its name taken
    errors = outbox.write_files(dir_fd, deliveries)
    assert errors[0] is None and errors[2] is None and isinstance(errors[1], IsADirectoryError)
    assert sorted(os.listdir(tmp_path)) == ["00000007-00000010-ssc0@nic.example.eml",
                                            "00000007-00000011-ssc1@nic.example.eml",
                                            "00000007-00000012-ssc2@nic.example.eml"]
    assert (tmp_path / "00000007-00000011-ssc1@nic.example.eml").is_dir()  # no temporary file left

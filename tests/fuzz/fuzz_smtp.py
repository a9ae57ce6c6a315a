#!/usr/bin/env python3
"""atheris target `smtp`: octets as what an SMTP client sends, over a real loopback TCP
connection, to the daemon's SMTP front (smtp_server.Runtime/Protocol/Intake, content_checks)
served in this process, with its spool link to an in-process Appender over a socket pair.

Run through tests/fuzz/run (it seeds the corpus and counts executions), or directly with
libFuzzer flags: `.venv/bin/python tests/fuzz/fuzz_smtp.py -atheris_runs=10000 CORPUS_DIR`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fuzz._atheris import main

main("smtp", include=("tldops_mta", "aiosmtpd"))

#!/usr/bin/env python3
"""atheris target `message`: octets as a spooled message into what the worker reads from it:
message_facts.read, the address fields, request_form.body_text and parse_form, the TLP label,
and DKIM (dkim_verify's parsing and verification, the key from this process's seed keys).

Run through tests/fuzz/run (it seeds the corpus and counts executions), or directly with
libFuzzer flags: `.venv/bin/python tests/fuzz/fuzz_message.py -atheris_runs=10000 CORPUS_DIR`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fuzz._atheris import main

main("message", include=("tldops_mta", "email", "dkim"))

#!/usr/bin/env python3
"""atheris target `address`: octets as a From:/Cc: value (three readings: compat32's surrogate
escapes, UTF-8, UTF-16) into addresses.parse_single and parse_address_list.

Run through tests/fuzz/run (it seeds the corpus and counts executions), or directly with
libFuzzer flags: `.venv/bin/python tests/fuzz/fuzz_address.py -atheris_runs=10000 CORPUS_DIR`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fuzz._atheris import main

main("address", include=("tldops_mta.auth.addresses",))

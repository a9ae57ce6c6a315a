#!/usr/bin/env python3
"""atheris target `rdap`: octets as an RDAP HTTP body (status 200 and 404) into iana.read_rdap.

Run through tests/fuzz/run (it seeds the corpus and counts executions), or directly with
libFuzzer flags: `.venv/bin/python tests/fuzz/fuzz_rdap.py -atheris_runs=10000 CORPUS_DIR`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fuzz._atheris import main

main("rdap", include=("tldops_mta.auth.iana", "tldops_mta.auth.iana_answers"))

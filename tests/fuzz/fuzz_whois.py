#!/usr/bin/env python3
"""atheris target `whois`: octets as a WHOIS answer into iana.read_whois.

Run through tests/fuzz/run (it seeds the corpus and counts executions), or directly with
libFuzzer flags: `.venv/bin/python tests/fuzz/fuzz_whois.py -atheris_runs=10000 CORPUS_DIR`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fuzz._atheris import main

main("whois", include=("tldops_mta.auth.iana", "tldops_mta.auth.iana_answers"))

#!/usr/bin/env python3
"""atheris target `form`: octets as a mail's text (UTF-8, errors replaced) into
request_form.parse_form and named_tlds, directly and through html_to_text.

Run through tests/fuzz/run (it seeds the corpus and counts executions), or directly with
libFuzzer flags: `.venv/bin/python tests/fuzz/fuzz_form.py -atheris_runs=10000 CORPUS_DIR`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fuzz._atheris import main

main("form", include=("tldops_mta.policy.request_form",))

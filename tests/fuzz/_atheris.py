"""What every atheris target script does: instrument the code under test, seed the corpus,
hand the target's check to libFuzzer.

Only the modules named in ``include`` are instrumented (coverage feedback and comparison
hooks), the invariant checks in targets.py are not: the fuzzer should steer by the code under
test. tests/fuzz/run reads the ``fuzz-ready`` line to time the fuzzing apart from start-up.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

import atheris


def main(name: str, include: Sequence[str]) -> None:
    tests = str(Path(__file__).resolve().parents[1])
    if tests not in sys.path:
        sys.path.insert(0, tests)
    with atheris.instrument_imports(include=list(include)):
        from fuzz import seeds, targets
    one = targets.ENTRIES[name]
    corpora = [a for a in sys.argv[1:] if not a.startswith("-")]
    written = seeds.write(name, Path(corpora[0])) if corpora else len(seeds.for_target(name))
    print(f"fuzz-ready {name} seeds={written} t={time.monotonic():.6f}", file=sys.stderr, flush=True)
    atheris.Setup(sys.argv, one)
    atheris.Fuzz()

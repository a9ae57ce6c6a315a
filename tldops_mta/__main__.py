"""``python -m tldops_mta``: the ``tldops`` command (both call cli.main.main, the one entry point)."""

import sys

from tldops_mta.cli.main import main

sys.exit(main())

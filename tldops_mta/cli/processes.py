"""The processes: the SMTP daemon and the worker run alone.

Each command imports its process's code inside the function: ``tldops serve`` must not load
the worker's modules and libraries (they stay out of the SMTP process), nor ``tldops worker``
the SMTP front's.
"""

from __future__ import annotations

import argparse

from tldops_mta.cli.shared import flag_overrides


def cmd_serve(args: argparse.Namespace) -> int:
    from tldops_mta.daemon.serve import serve  # the SMTP process: not the worker's modules

    return serve(args.config, flag_overrides(args))


def cmd_worker(args: argparse.Namespace) -> int:
    from tldops_mta.worker.processing import main as worker_main  # the worker process

    return worker_main(args.config, flag_overrides(args), args.wake_fd, args.ready_fd, args.slot)

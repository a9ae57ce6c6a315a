"""The processes: the SMTP daemon and the worker run alone."""

from __future__ import annotations

import argparse

from tldops_mta.cli.shared import (
    flag_overrides,
)
from tldops_mta.daemon.serve import serve
from tldops_mta.worker.processing import main as worker_main


def cmd_serve(args: argparse.Namespace) -> int:
    return serve(args.config, flag_overrides(args))


def cmd_worker(args: argparse.Namespace) -> int:
    return worker_main(args.config, flag_overrides(args), args.wake_fd, args.ready_fd)

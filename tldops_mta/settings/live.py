"""The configuration and the rules/ tables in force in one process, and what is derived.

Replaced whole on SIGHUP: readers take ``cfg`` and ``rules`` afresh at each step, so a change
applies to the next message or command and never half-way through one.
"""

from __future__ import annotations

from tldops_mta.settings import cctlds
from tldops_mta.settings.config import Config
from tldops_mta.settings.policy_files import Rules
from tldops_mta.settings.recipients import Service, local_parts


class Live:
    def __init__(self, cfg: Config, rules: Rules | None = None) -> None:
        self.rules: Rules = {}
        self._cctlds: list[cctlds.Cctld] | None = None
        self.apply(cfg, rules)

    def apply(self, cfg: Config, rules: Rules | None = None) -> None:
        """The new configuration; the new rules too when given (else the old ones stay)."""
        self.cfg = cfg
        if rules is not None:
            self.rules = rules
            self._cctlds = None  # read again with the other rules (SIGHUP)
        self.parts: dict[str, Service] = local_parts(cfg.addresses.as_mapping())

    def service_address(self, service: str, tag: str | None = None) -> str:
        """Our own address for ``service`` (``confirm+TAG@domain``), as configured."""
        local = self.cfg.addresses.local_part(service)
        domain = self.cfg.server.domain
        return f"{local}+{tag}@{domain}" if tag else f"{local}@{domain}"

    def cctld_table(self) -> list[cctlds.Cctld]:
        """rules/cctlds.csv, read at first use after start or SIGHUP; CctldsError when it
        cannot be read (then read again at the next use, not kept)."""
        if self._cctlds is None:
            self._cctlds = cctlds.load(self.cfg.rules_dir)
        return self._cctlds

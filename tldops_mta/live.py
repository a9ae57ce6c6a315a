"""The configuration and the rules/ tables in force in one process, and what is derived.

Replaced whole on SIGHUP: readers take ``cfg`` and ``rules`` afresh at each step, so a change
applies to the next message or command and never half-way through one.
"""

from __future__ import annotations

from .config import Config
from .recipients import Service, local_parts
from .rules import Rules


class Live:
    def __init__(self, cfg: Config, rules: Rules | None = None) -> None:
        self.rules: Rules = {}
        self.apply(cfg, rules)

    def apply(self, cfg: Config, rules: Rules | None = None) -> None:
        """The new configuration; the new rules too when given (else the old ones stay)."""
        self.cfg = cfg
        if rules is not None:
            self.rules = rules
        self.parts: dict[str, Service] = local_parts(cfg.as_dict()["addresses"])

    def service_address(self, service: str, tag: str | None = None) -> str:
        """Our own address for ``service`` (``confirm+TAG@domain``), as configured."""
        local = self.cfg[f"addresses.{service}"]
        domain = self.cfg["server.domain"]
        return f"{local}+{tag}@{domain}" if tag else f"{local}@{domain}"

"""The configuration in force in one process, and what is derived from it.

Replaced whole on SIGHUP: readers take ``cfg`` afresh at each step, so a change applies to
the next message or command and never half-way through one.
"""

from __future__ import annotations

from .config import Config
from .recipients import Service, local_parts


class Live:
    def __init__(self, cfg: Config) -> None:
        self.apply(cfg)

    def apply(self, cfg: Config) -> None:
        self.cfg = cfg
        self.parts: dict[str, Service] = local_parts(cfg.as_dict()["addresses"])

    def service_address(self, service: str, tag: str | None = None) -> str:
        """Our own address for ``service`` (``confirm+TAG@domain``), as configured."""
        local = self.cfg[f"addresses.{service}"]
        domain = self.cfg["server.domain"]
        return f"{local}+{tag}@{domain}" if tag else f"{local}@{domain}"

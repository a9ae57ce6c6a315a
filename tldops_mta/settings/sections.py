"""The configuration's sections as the daemon's code reads them: one frozen dataclass each.

``config.SCHEMA`` stays the one table of keys, defaults, checks and docs; each class here names
the same keys with their Python types, so a reader gets ``cfg.server.domain`` as a ``str``
rather than an untyped value. tests/test_config_sections.py keeps the two in step (same
sections, same keys, defaults of the declared types). Lists become tuples: a section is
immutable, and SIGHUP replaces it whole.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

S = TypeVar("S")
"""A section class."""


@dataclass(frozen=True)
class ServerConfig:
    """[server] The SMTP listener: where, as whom, and the limits each connection meets."""

    listen: tuple[str, ...]
    domain: str
    hostname: str
    max_message_size: int
    max_connections: int
    max_connections_per_ip: int
    limit_exempt: tuple[str, ...]
    trusted_relays: tuple[str, ...]
    max_recipients: int
    idle_timeout: float
    session_timeout: float
    max_commands: int
    tls_cert: str
    tls_key: str
    shutdown_grace: float


@dataclass(frozen=True)
class AddressesConfig:
    """[addresses] The local parts of the service addresses at server.domain."""

    requests: str
    confirm: str
    decide: str
    who: str
    list: str
    update: str
    help: str
    bounces: str
    postmaster: str
    abuse: str

    def local_part(self, service: str) -> str:
        """The local part of the service named ``service`` (a recipients.Service value)."""
        return self.as_mapping()[service]

    def as_mapping(self) -> dict[str, str]:
        """Service name -> local part, for recipients.local_parts."""
        return {"requests": self.requests, "confirm": self.confirm, "decide": self.decide, "who": self.who,
                "list": self.list, "update": self.update, "help": self.help, "bounces": self.bounces,
                "postmaster": self.postmaster, "abuse": self.abuse}


@dataclass(frozen=True)
class PostmasterConfig:
    """[postmaster] Where mail to postmaster@ and abuse@ is forwarded."""

    forward_to: tuple[str, ...]


@dataclass(frozen=True)
class StorageConfig:
    """[storage] The state directory, the database and how it is written."""

    state_dir: str
    database: str
    retention_days: int
    busy_timeout_ms: int
    max_size_mb: int
    commit_timeout: float
    group_commit_max: int


@dataclass(frozen=True)
class HousekeepingConfig:
    """[housekeeping] The nightly retention purge and the monthly statistics mail."""

    hour: int
    monthly_stats: bool


@dataclass(frozen=True)
class WorkerConfig:
    """[worker] The worker process: batches, retries, its share of the CPU, and the order in
    which it takes mail (the priority lanes, decided by the spool appender)."""

    batch_size: int
    linger: float
    max_idle: float
    cpu_class: str
    processes: int
    max_attempts: int
    retry_base: float
    retry_max: float
    max_wait: float
    fast_lane_budget: int
    fast_lane_window: float


@dataclass(frozen=True)
class DnsConfig:
    """[dns] The resolvers used for DKIM key lookups."""

    nameservers: tuple[str, ...]
    port: int
    timeout: float


@dataclass(frozen=True)
class DkimConfig:
    """[dkim] Checking senders' DKIM signatures, and the key that signs our own mail."""

    min_rsa_bits: int
    alignment: str
    key: str
    selector: str


@dataclass(frozen=True)
class IanaConfig:
    """[iana] Where and how the IANA root zone database is asked, and how long answers count."""

    rdap_url: str
    whois_host: str
    whois_port: int
    timeout: float
    fresh_for: float
    usable_for: float


@dataclass(frozen=True)
class AuthConfig:
    """[auth] Token lifetimes and the replay and refusal windows of sender authentication."""

    token_ttl: float
    replay_window: float
    refusal_interval: float
    max_open_confirmations: int


@dataclass(frozen=True)
class OutboxConfig:
    """[outbox] How outgoing mail leaves: a smarthost, or files in a directory."""

    smarthost: str
    maildir: str
    smarthost_tls: str
    smarthost_user: str
    smarthost_password_file: str


@dataclass(frozen=True)
class ValidationConfig:
    """[validation] The Validators, the Standing Committee, and how long a request waits for them."""

    validators: tuple[str, ...]
    committee: str
    decision_auth: str
    remind_after: float
    expire_after: float


@dataclass(frozen=True)
class BroadcastConfig:
    """[broadcast] The schedule and the label of the roster broadcast."""

    enabled: bool
    weekday: str
    hour: int
    weekly_if_changed: bool
    catch_up: float
    dkim_key: str
    dkim_selector: str
    tlp: str


@dataclass(frozen=True)
class ListConfig:
    """[list] The built-in TLD-OPS list."""

    name: str
    moderate_first_posts: bool


@dataclass(frozen=True)
class RedelegationConfig:
    """[redelegation] How often and how gently ccTLD administrative contacts are checked at IANA."""

    check_every: float
    spacing: float


@dataclass(frozen=True)
class FreshnessConfig:
    """[freshness] How often each SSC is asked to re-confirm their entry, and what follows silence."""

    enabled: bool
    interval_days: int
    max_per_hour: int
    remind_after: float
    stale_after: float


@dataclass(frozen=True)
class BouncesConfig:
    """[bounces] When repeated delivery failures of an SSC address are reported."""

    threshold: int
    window: float


@dataclass(frozen=True)
class LogConfig:
    """[log] How much the daemon logs."""

    level: str


@dataclass(frozen=True)
class MetricsConfig:
    """[metrics] The Prometheus endpoint."""

    listen: str


@dataclass(frozen=True)
class MailmanConfig:
    """[mailman] The Mailman 3 list kept as the roster's SSCs, and how it is reached."""

    rest_url: str
    user: str
    password_file: str
    list: str
    lmtp: str
    retry_base: float
    retry_max: float


@dataclass(frozen=True)
class OutreachConfig:
    """[outreach] Invitations to ccTLDs that are not subscribed."""

    interval_days: int
    home_url: str


@dataclass(frozen=True)
class PublishConfig:
    """[publish] The public membership page."""

    dir: str


@dataclass(frozen=True)
class RulesConfig:
    """[rules] The operator's policy directory."""

    dir: str


def build_section(cls: type[S], values: Mapping[str, object]) -> S:
    """An instance of the section class ``cls`` from its checked values (by key name).

    Lists become tuples and integers given for a float key become floats, so each field
    holds exactly its declared type; anything else that does not fit raises TypeError (the
    schema and the class disagree, which tests/test_config_sections.py catches first).
    """
    kwargs: dict[str, object] = {}
    for name, hint in field_types(cls).items():
        kwargs[name] = coerce_field(hint, values[name], f"{cls.__name__}.{name}")
    return cls(**kwargs)


def coerce_field(hint: object, value: object, where: str) -> object:
    """``value`` (as TOML gives it, already checked) in the field type ``hint``."""
    if hint == tuple[str, ...]:
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return tuple(value)
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is bool or hint is str:
        if isinstance(value, hint):
            return value
    else:
        raise TypeError(f"{where}: field type {hint!r} is not one a configuration key may have")
    raise TypeError(f"{where}: {value!r} is not a {hint!r}")


def field_types(cls: type) -> Mapping[str, object]:
    """The fields of a section class and their types, in declaration order (read once)."""
    found = _FIELD_TYPES.get(cls)
    if found is None:
        hints = typing.get_type_hints(cls)
        found = _FIELD_TYPES[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    return found


_FIELD_TYPES: dict[type, Mapping[str, object]] = {}

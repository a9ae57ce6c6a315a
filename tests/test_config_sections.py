"""The typed sections and the schema say the same thing: a key added to one and not the other,
or a default that does not fit its field, fails here before anything reads it."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from tldops_mta.settings import config, sections


def section_classes() -> dict[str, type]:
    """Config's typed section attributes: name -> dataclass."""
    hints = typing.get_type_hints(config.Config)
    return {name: cls for name, cls in hints.items() if dataclasses.is_dataclass(cls)}


def test_every_schema_section_is_a_typed_attribute_and_nothing_else_is() -> None:
    assert list(section_classes()) == list(config.SECTIONS)


@pytest.mark.parametrize("section", config.SECTIONS)
def test_a_section_class_has_exactly_the_schema_keys_with_defaults_of_their_types(section: str) -> None:
    cls = section_classes()[section]
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    keys = [k for k in config.SCHEMA if k.section == section]
    fields = sections.field_types(cls)
    assert sorted(fields) == sorted(k.name for k in keys), f"[{section}] fields and schema keys differ"
    for k in keys:
        hint = fields[k.name]
        # The declared default as it is (no int for a float, no tuple for a list) ...
        exact = {tuple[str, ...]: list}.get(hint, hint)
        assert type(k.default) is exact, f"{k.dotted}: default {k.default!r} is not a {hint}"
        # ... and as the section holds it.
        value = sections.coerce_field(hint, k.default, k.dotted)
        assert value == (tuple(k.default) if isinstance(k.default, list) else k.default)


def test_values_from_the_file_arrive_in_the_declared_types() -> None:
    cfg = config.load(None, {"server.idle_timeout": 60, "server.listen": ["127.0.0.1:1", "[::1]:2"],
                             "postmaster.forward_to": ["ops@example.org"]})
    assert cfg.server.idle_timeout == 60.0 and type(cfg.server.idle_timeout) is float
    assert cfg.server.listen == ("127.0.0.1:1", "[::1]:2")
    assert cfg.postmaster.forward_to == ("ops@example.org",)
    # config show prints what the file said, unchanged.
    assert cfg.as_dict()["server"]["idle_timeout"] == 60
    assert cfg.as_dict()["server"]["listen"] == ["127.0.0.1:1", "[::1]:2"]


def test_a_section_is_frozen_and_replace_makes_a_new_checked_one() -> None:
    cfg = config.load(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.server.domain = "x.example"  # type: ignore[misc]
    new = cfg.replace(**{"server.domain": "x.example", "worker.retry_base": 2})
    assert new.server.domain == "x.example" and new.worker.retry_base == 2.0
    assert cfg.server.domain == "tld-ops.localhost"
    with pytest.raises(config.ConfigError):
        cfg.replace(**{"worker.retry_base": "soon"})


def test_each_service_has_its_local_part() -> None:
    cfg = config.load(None, {"addresses.who": "roster"})
    assert cfg.addresses.local_part("who") == "roster"
    assert cfg.addresses.as_mapping() == {k.name: cfg.as_dict()["addresses"][k.name]
                                          for k in config.SCHEMA if k.section == "addresses"}
    with pytest.raises(KeyError):
        cfg.addresses.local_part("nobody")


def test_a_field_type_no_key_may_have_is_refused() -> None:
    with pytest.raises(TypeError):
        sections.coerce_field(list[int], [1], "x.y")
    with pytest.raises(TypeError):
        sections.coerce_field(int, True, "x.y")

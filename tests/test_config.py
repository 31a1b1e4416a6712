from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared.config import SETTINGS, Config, ConfigError

README = Path(__file__).resolve().parents[1] / "README.md"


def test_defaults_match_the_documented_addresses() -> None:
    config = Config.from_env({})
    assert config.registry_addr == "127.0.0.1:50051"
    assert config.orchestrator_addr == "127.0.0.1:50052"
    assert config.registry_dial_target == "127.0.0.1:50051"


def test_every_malformed_setting_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as raised:
        Config.from_env({"ARBITER_REGISTRY_ADDR": "nowhere", "ARBITER_LEASE_SECONDS": "-1"})
    assert "ARBITER_REGISTRY_ADDR" in str(raised.value)
    assert "ARBITER_LEASE_SECONDS" in str(raised.value)


def test_missing_database_url_says_how_to_get_one() -> None:
    with pytest.raises(ConfigError, match="make run"):
        Config.from_env({}).require_database_url()


def test_readme_configuration_table_lists_exactly_the_defined_settings() -> None:
    documented = set(re.findall(r"^\| `(ARBITER_[A-Z_]+)` \|", README.read_text(), flags=re.MULTILINE))
    assert documented == {setting.env for setting in SETTINGS}

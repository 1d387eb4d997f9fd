"""Seller settings: precedence defaults < file < env < flags, and strictness."""

from __future__ import annotations

from pathlib import Path

import pytest

from bake.errors import ConfigError
from bake.settings import DEFAULT_ALLOW, load_settings


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_defaults_are_safe() -> None:
    s = load_settings(environ={})
    assert s.egress.allow == DEFAULT_ALLOW
    assert s.egress.enforce == "require"
    assert s.egress.allow_http == () and s.egress.allow_cidrs == ()
    assert s.registry.repository == "" and s.image_repository == "bake"
    assert s.source("egress.allow") == "default"


def test_precedence_file_env_flag(tmp_path: Path) -> None:
    path = config(tmp_path, "[egress]\nsetup_timeout = 10\nenforce = \"warn\"\n"
                            "[registry]\npush = false\n")
    s = load_settings(path, environ={"BAKE_EGRESS_SETUP_TIMEOUT": "20"},
                      overrides={"registry.push": True})
    assert s.egress.setup_timeout == 20 and s.source("egress.setup_timeout") == \
        "env BAKE_EGRESS_SETUP_TIMEOUT"
    assert s.egress.enforce == "warn" and s.source("egress.enforce") == str(path)
    assert s.registry.push is True and s.source("registry.push") == "flag"


def test_env_lists_are_comma_separated() -> None:
    s = load_settings(environ={"BAKE_EGRESS_ALLOW": "a.example, b.example"})
    assert s.egress.allow == ("a.example", "b.example")


def test_config_found_through_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = config(tmp_path, "[build]\nbases = [\"x:*\"]\n")
    monkeypatch.setenv("BAKE_CONFIG", str(path))
    assert load_settings().build.bases == ("x:*",)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[egres]\n", "did you mean 'egress'"),
        ("[egress]\nalow = []\n", "did you mean 'allow'"),
        ("[egress]\nsetup_timeout = \"soon\"\n", "egress.setup_timeout"),
        ("[egress]\nsetup_timeout = -1\n", "positive"),
        ("[egress]\nenforce = \"maybe\"\n", "egress.enforce"),
        ("[egress]\nallow = \"pypi.org\"\n", "list of strings"),
        ("[registry]\npush = \"yes\"\n", "true or false"),
        ("[registry]\nrepository = \"Bad Repo\"\n", "registry.repository"),
        ("[registry]\nrepository = \"127.0.0.1:5000/bake:tag\"\n", "without a tag"),
        ("[build]\nca_bundle = \"/nonexistent/ca.pem\"\n", "does not exist"),
        ("[build]\npip_index_url = \"ftp://mirror\"\n", "http"),
        ("[build]\ntemplates = [\"/nonexistent\"]\n", "build.templates"),
        ("not toml = = \n", "not valid TOML"),
    ],
)
def test_bad_config_names_the_field(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(config(tmp_path, text), environ={})
    assert needle in str(info.value)
    assert info.value.exit_code == 2


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="BAKE_EGRESS_SETUP_TIMEOUT"):
        load_settings(environ={"BAKE_EGRESS_SETUP_TIMEOUT": "later"})


def test_missing_explicit_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_bases_are_patterns() -> None:
    s = load_settings(environ={})
    assert s.base_allowed("python:3.11-slim")
    assert s.base_allowed("pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime")
    assert not s.base_allowed("evil.example/python:3.11")
    assert not s.base_allowed("ubuntu:24.04")

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


# -- the seller's environment, read once ---------------------------------------------------------


def test_an_engine_address_bake_cannot_use_is_exit_2_naming_the_variable() -> None:
    from bake.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        load_settings(None, environ={"DOCKER_HOST": "ssh://seller@build-host"})
    assert caught.value.exit_code == 2 and caught.value.field == "DOCKER_HOST"
    assert caught.value.source == "env DOCKER_HOST" and "ssh -L" in (caught.value.hint or "")
    for good in ("unix:///run/docker.sock", "tcp://10.0.0.5:2376"):
        assert load_settings(None, environ={"DOCKER_HOST": good}).env.docker_host == good


def _context(config: Path, name: str, host: str, *, tls: bool) -> None:
    import hashlib
    import json

    ident = hashlib.sha256(name.encode()).hexdigest()
    meta = config / "contexts" / "meta" / ident
    meta.mkdir(parents=True)
    (meta / "meta.json").write_text(json.dumps(
        {"Name": name, "Metadata": {}, "Endpoints": {"docker": {"Host": host,
                                                                "SkipTLSVerify": False}}}))
    if tls:
        folder = config / "contexts" / "tls" / ident / "docker"
        folder.mkdir(parents=True)
        for name_ in ("ca.pem", "cert.pem", "key.pem"):
            (folder / name_).write_text("x")


def test_the_docker_context_names_the_engine_as_the_cli_reads_it(tmp_path: Path) -> None:
    config = tmp_path / "docker"
    _context(config, "remote", "tcp://10.9.8.7:2376", tls=True)
    env = {"DOCKER_CONFIG": str(config), "DOCKER_CONTEXT": "remote"}
    host = load_settings(None, environ=env).env
    assert host.docker_host == "tcp://10.9.8.7:2376" and host.docker_tls_verify
    assert host.docker_cert_path.endswith("/docker") and "remote" in host.sources["docker_host"]
    # config.json's currentContext, when no variable names one; DOCKER_HOST beats both.
    (config / "config.json").write_text('{"currentContext": "remote"}')
    assert load_settings(None, environ={"DOCKER_CONFIG": str(config)}).env.docker_host == \
        "tcp://10.9.8.7:2376"
    explicit = dict(env, DOCKER_HOST="unix:///x.sock")
    assert load_settings(None, environ=explicit).env.docker_host == "unix:///x.sock"


def test_a_docker_context_that_does_not_exist_is_exit_2(tmp_path: Path) -> None:
    from bake.errors import ConfigError

    with pytest.raises(ConfigError, match="docker context 'nope'") as caught:
        load_settings(None, environ={"DOCKER_CONFIG": str(tmp_path), "DOCKER_CONTEXT": "nope"})
    assert caught.value.field == "DOCKER_CONTEXT"
    assert load_settings(None, environ={"DOCKER_CONTEXT": "default"}).env.docker_host == ""


@pytest.mark.parametrize("url", ["htp://mirroruser:S3CRET@mirror.example/simple",
                                 "mirroruser:S3CRET@mirror.example/simple",
                                 "http://mirroruser:S3CRET@mirror.example/simple with space"])
def test_a_bad_index_url_is_refused_without_showing_its_credentials(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, environ={"BAKE_BUILD_PIP_INDEX_URL": url})
    assert "S3CRET" not in str(caught.value) and "mirroruser" not in str(caught.value)
    assert caught.value.field == "build.pip_index_url" and "***@mirror.example" in str(caught.value)

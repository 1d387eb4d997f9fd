"""The docker CLI driving BuildKit: the build argv, the CLI it finds, a failed build's summary."""

from __future__ import annotations

from pathlib import Path

import pytest

from bake.builder.buildkit import PROXY_ARGS, DockerCLI, plan_build, redacted, run_build
from bake.errors import SetupError

CLI = DockerCLI(("/usr/bin/docker", "build"), (("DOCKER_BUILDKIT", "1"),), "20.10.24", "x")


def plan(**kw: object):  # type: ignore[no-untyped-def]
    options: dict[str, object] = {
        "iidfile": Path("/w/iid"), "labels": {"bake.key": "k"}, "proxy_url": "http://172.17.0.1:39100",
        "no_network": False, "secrets": {"bake_pip": Path("/w/s/pip.conf")},
    }
    options.update(kw)
    return plan_build(CLI, Path("/w/ctx"), **options)  # type: ignore[arg-type]


def test_every_predefined_proxy_arg_is_set_explicitly() -> None:
    argv = plan().argv
    values = dict(a.split("=", 1) for a in argv if "=" in a and a.split("=")[0] in PROXY_ARGS)
    assert set(values) == set(PROXY_ARGS)
    assert values["HTTPS_PROXY"] == values["https_proxy"] == "http://172.17.0.1:39100"
    # Empty, not absent: the CLI fills absent ones from ~/.docker/config.json proxies.
    assert values["NO_PROXY"] == values["ALL_PROXY"] == ""


def test_no_proxy_means_empty_args_and_offline_build() -> None:
    argv = plan(proxy_url=None, no_network=True).argv
    assert "--network=none" in argv
    assert all(not a.endswith("39100") for a in argv)


def test_build_argv_grants_nothing() -> None:
    argv = " ".join(plan().argv)
    for forbidden in ("--allow", "network.host", "security.insecure", "--network=host",
                      "--privileged", " -t ", "--tag"):
        assert forbidden not in argv


def test_secrets_and_labels_are_single_arguments() -> None:
    argv = plan(labels={"bake.manifest": '{"a": "b c\\nRUN x"}'}).argv
    i = argv.index("--label")
    assert argv[i + 1] == 'bake.manifest={"a": "b c\\nRUN x"}'
    assert "id=bake_pip,src=/w/s/pip.conf" in argv


def test_build_env_drops_proxy_variables(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HTTPS_PROXY", "http://seller-proxy:3128")
    env = plan().env
    assert "HTTPS_PROXY" not in env and env["DOCKER_BUILDKIT"] == "1"


def test_a_failed_build_is_summed_up_by_the_step_s_own_error() -> None:
    from bake.builder.buildkit import _failure

    log = [
        "#6 9.620 Looking in indexes: http://172.17.0.1:35093/simple",
        "#6 9.708 ERROR: Could not find a version that satisfies the requirement zzz==1.0",
        "#6 9.711 ERROR: No matching distribution found for zzz==1.0",
        "#6 ERROR: executor failed running [/bin/sh -c python3 -m venv /opt/venv ...]: exit 1",
        "------",
        "executor failed running [/bin/sh -c python3 -m venv /opt/venv ...]: exit code: 1",
    ]
    assert _failure(log) == "ERROR: No matching distribution found for zzz==1.0"
    assert _failure(["ERROR: failed to solve: no such file"]) == "failed to solve: no such file"
    assert _failure([]) == "no output"


def test_uvs_failures_are_one_line_with_what_to_do() -> None:
    from bake.builder.buildkit import _failure

    digest, other = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    mismatch = ["#8 2.4 error: Failed to download `six==1.16.0`",
                "#8 2.4   cause: Hash mismatch for `six==1.16.0`", "#8 2.4",
                "#8 2.4     Expected:", f"#8 2.4       {digest}", "#8 2.4     Computed:",
                f"#8 2.4       {other}", "#8 ERROR: executor failed running [...]"]
    assert _failure(mismatch) == (
        f"six==1.16.0 does not match its locked hash: expected {digest}, received {other} "
        "(bake build --no-cache fetches it again)")
    broken = ["#8 2.452 error: Failed to download `rotting==1.0`",
              "#8 2.452   cause: Failed to extract archive: rotting-1.0-py3-none-any.whl",
              "#8 2.452   cause: Invalid zip file structure",
              "#8 ERROR: executor failed running [/bin/sh -c ...]: exit code: 1"]
    assert _failure(broken) == ("rotting==1.0 could not be installed: Invalid zip file "
                                "structure (bake build --no-cache fetches its files again)")


def test_the_cli_answer_is_kept_until_a_candidate_changes(tmp_path: Path) -> None:
    from bake.builder import buildkit

    fake = tmp_path / "docker"
    fake.write_text("#!/bin/sh\n[ \"$1\" = version ] && echo 20.10.24 && exit 0\nexit 1\n")
    fake.chmod(0o755)
    calls = tmp_path / "calls"
    buildkit.find_cli.cache_clear()
    first = buildkit.find_cli(str(fake))
    assert first.argv == (str(fake), "build") and first.version == "20.10.24"
    # The binary changes (size and mtime): the next process asks it again.
    fake.write_text(fake.read_text().replace("exit 0", f"touch {calls}; exit 0"))
    buildkit.find_cli.cache_clear()
    again = buildkit.find_cli(str(fake))
    assert again.version == "20.10.24"
    assert calls.exists(), "a changed binary is asked again"
    calls.unlink()
    buildkit.find_cli.cache_clear()
    buildkit.find_cli(str(fake))
    assert not calls.exists(), "an unchanged binary is not asked again"
    buildkit.find_cli.cache_clear()


REF = "reg/bake:" + "a" * 64


def test_build_argv_carries_inline_cache_and_cache_sources() -> None:
    cli = DockerCLI(("/usr/bin/docker", "build"), (("DOCKER_BUILDKIT", "1"),), "20.10", "x")
    argv = plan_build(cli, Path("/w/ctx"), iidfile=Path("/w/iid"), labels={}, proxy_url=None,
                      no_network=True, secrets={}, cache_from=(REF,),
                      inline_cache=True).argv
    assert "BUILDKIT_INLINE_CACHE=1" in argv
    assert argv[argv.index("--cache-from") + 1] == REF
    plain = plan_build(cli, Path("/w/ctx"), iidfile=Path("/w/iid"), labels={}, proxy_url=None,
                       no_network=True, secrets={}).argv
    assert "--cache-from" not in plain and "BUILDKIT_INLINE_CACHE=1" not in plain


def test_a_credential_a_step_prints_is_redacted_in_every_line_bake_shows(
        tmp_path: Path) -> None:
    """Should a build step print a credential (the Hub token is mounted in the fetch steps),
    neither what bake reports nor what its error quotes carries it."""
    token = "hf_redactMe0123456789"
    fake = tmp_path / "docker"
    fake.write_text("#!/bin/sh\n"
                    f"echo '#8 0.3 token={token}'\n"
                    f"echo '#8 0.4 again {token}{token} done' >&2\n"
                    "echo '#8 ERROR: executor failed running: exit code: 1'\n"
                    "exit 1\n")
    fake.chmod(0o755)
    cli = DockerCLI((str(fake), "build"), (), "20.10", str(fake))
    plan = plan_build(cli, tmp_path, iidfile=tmp_path / "iid", labels={}, proxy_url=None,
                      no_network=True, secrets={}, redact=[token, ""])
    assert token not in repr(plan)
    seen: list[str] = []
    with pytest.raises(SetupError) as caught:
        run_build(plan, timeout=30, on_line=seen.append)
    shown = "\n".join(seen) + caught.value.log_tail + caught.value.message
    assert token not in shown
    assert "#8 0.3 token=[redacted]" in seen
    assert "#8 0.4 again [redacted][redacted] done" in seen
    assert redacted("nothing here", [token]) == "nothing here"

"""``bake doctor`` without an engine: every check runs, each failure carries its fix."""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bake import doctor
from bake.doctor import Check, check_allowlist_addresses, refused_addresses, run_checks
from bake.engine import Engine
from bake.settings import HostEnv, load_settings

NAMES = ["config", "environment", "engine", "buildkit", "base image", "confinement",
         "docker0 containers", "allowlist", "registry"]


def by_name(checks: list[Check]) -> dict[str, Check]:
    assert [c.name for c in checks] == NAMES
    return {c.name: c for c in checks}


def test_a_dead_engine_fails_with_the_command_that_fixes_it() -> None:
    checks = by_name(run_checks())
    engine = checks["engine"]
    assert not engine.ok and "cannot reach the Docker Engine" in engine.detail
    # The unit tier points DOCKER_HOST at a dead socket: the fix names that variable.
    assert engine.fix.startswith("unset DOCKER_HOST")
    assert not checks["base image"].ok and checks["base image"].fix == engine.fix
    assert checks["config"].ok and "every setting is its default" in checks["config"].detail
    assert checks["registry"].ok  # not configured is fine


def test_every_failing_check_has_a_fix_and_json(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[build]\ndocker_cli = "/nonexistent/docker"\n'
                      '[registry]\nrepository = "127.0.0.1:9/bake"\n')
    checks = run_checks(config=str(config))
    failing = [c for c in checks if not c.ok]
    assert {c.name for c in failing} >= {"engine", "buildkit", "registry"}
    for check in failing:
        assert check.fix, check
        data = check.to_json()
        assert data["ok"] is False and data["fix"] == check.fix and data["name"] == check.name
    buildkit = by_name(checks)["buildkit"]
    assert "/nonexistent/docker (does not exist)" in buildkit.detail
    assert str(config) in buildkit.fix  # where to change the setting


def test_a_broken_config_fails_but_the_other_checks_still_run(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[egres]\nallow = []\n")
    checks = by_name(run_checks(config=str(config)))
    assert not checks["config"].ok and "did you mean 'egress'" in checks["config"].detail
    assert checks["config"].fix.startswith(f"edit {config}")
    assert checks["buildkit"].detail  # ran, with defaults


def test_config_says_where_each_setting_came_from(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[egress]\nsetup_timeout = 60\n')
    monkeypatch.setenv("BAKE_EGRESS_ENFORCE", "warn")
    check = by_name(run_checks(config=str(config)))["config"]
    assert check.ok and f"{config} (chosen by --config)" in check.detail
    assert f"egress.setup_timeout from {config}" in check.detail
    assert "egress.enforce from env BAKE_EGRESS_ENFORCE" in check.detail
    assert check.to_json()["extra"] == {"egress.enforce": "env BAKE_EGRESS_ENFORCE",
                                        "egress.setup_timeout": str(config)}


class VersionedEngine(Engine):
    """An engine that answers /version without a socket."""

    def __init__(self, version: str, api: str) -> None:
        super().__init__()
        self.answer = {"Version": version, "ApiVersion": api}

    def version(self, timeout: float = 5.0) -> dict[str, object]:
        return self.answer


def test_a_live_engine_is_reported_with_its_version() -> None:
    check = doctor.check_engine(VersionedEngine("20.10.24", "1.41"), HostEnv())
    assert check.ok and "Docker Engine 20.10.24 (API 1.41)" in check.detail
    old = doctor.check_engine(VersionedEngine("19.03.1", "1.40"), HostEnv())
    assert not old.ok and "1.41" in old.detail and "docker.io" in old.fix


def test_the_environment_check_names_each_variable_and_never_the_token() -> None:
    env = HostEnv.read({"HF_TOKEN": "hf_secret_value", "DOCKER_HOST": "tcp://10.1.2.3:2376",
                        "DOCKER_TLS_VERIFY": "1"})
    check = doctor.check_environment(env)
    assert "docker_host = tcp://10.1.2.3:2376 from env DOCKER_HOST" in check.detail
    assert "hf_token = (set, not shown) from env HF_TOKEN" in check.detail
    assert "hf_secret_value" not in json.dumps(check.to_json())
    assert check.to_json()["extra"]["hf_endpoint"] == "unset"


@pytest.mark.parametrize(("enforce", "ok"), [("require", False), ("warn", True)])
def test_unconfined_egress_fails_only_when_required(monkeypatch: pytest.MonkeyPatch,
                                                    enforce: str, ok: bool) -> None:
    from bake.egress import lockdown
    from bake.settings import EgressSettings, Settings

    monkeypatch.setattr(lockdown, "locked_rules_present", lambda engine: False)
    check = doctor.check_confinement(Settings(egress=EgressSettings(enforce=enforce)),
                                     Engine(), engine_ok=True)
    assert check.ok is ok and "not installed" in check.detail
    assert ("bake egress lock" in check.fix) is not ok
    offline = doctor.check_confinement(
        Settings(egress=EgressSettings(allow=(), enforce="require")), Engine(), engine_ok=True)
    assert offline.ok and "--network=none" in offline.detail


@pytest.fixture
def registry() -> Iterator[tuple[str, list[int]]]:
    """A loopback HTTP server answering manifest requests with the status the test sets."""
    status = [404]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self.send_response(status[0] if "/manifests/" in self.path else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}", status
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("status", "ok", "words"), [
    (404, True, "answers and lets bake look up images"),  # no such tag: reachable, allowed
    (200, True, "answers and lets bake look up images"),
    (401, False, "answered 401"),
    (500, False, "answered 500"),
])
def test_registry_answers(registry: tuple[str, list[int]], status: int, ok: bool,
                          words: str) -> None:
    from bake.settings import RegistrySettings, Settings

    address, answer = registry
    answer[0] = status
    check = doctor.check_registry(Settings(registry=RegistrySettings(repository=f"{address}/b")),
                                  Engine())
    assert check.ok is ok and words in check.detail, check
    assert bool(check.fix) is not ok
    if status == 401:
        assert f"docker login {address}" in check.fix


def test_a_registry_that_does_not_answer_says_so() -> None:
    from bake.settings import RegistrySettings, Settings

    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    check = doctor.check_registry(Settings(registry=RegistrySettings(
        repository=f"127.0.0.1:{port}/bake")), Engine())
    assert not check.ok and "cannot reach the registry" in check.detail
    assert "docker-registry serve" in check.fix


def test_the_cli_exits_1_and_prints_the_fixes(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "bake", "doctor"], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "✗ engine:" in proc.stdout and "fix: unset DOCKER_HOST" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "bake", "doctor", "--json"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1
    data = json.loads(proc.stdout)
    assert [c["name"] for c in data] == NAMES


# -- the seller's own containers on docker0 (issue 13, item 2) -------------------------------


def test_neighbours_are_the_bridge_containers_that_are_not_bakes() -> None:
    from bake.egress import lockdown

    def container(name: str, *, networks: tuple[str, ...] = ("bridge",), mode: str = "default",
                  state: str = "running",
                  labels: dict[str, str] | None = None) -> dict[str, object]:
        return {"Names": [f"/{name}"], "State": state, "Image": "nginx", "Labels": labels or {},
                "HostConfig": {"NetworkMode": mode},
                "NetworkSettings": {"Networks": {n: {} for n in networks}}}

    listing = [
        container("web"),
        container("db", state="exited"),
        container("on-bridge-by-mode", networks=(), mode="bridge", state="created"),
        container("elsewhere", networks=("seller-net",), mode="seller-net"),
        container("offline", networks=("none",), mode="none"),
        container("bake-canary-0123456789abcdef"),
        container("bake-job-0123456789abcdef", networks=("none",), mode="none"),
        container("renamed-job", labels={"bake.job": "k"}),
    ]
    class Listing(Engine):
        def containers(self, *, label: str | None = None,
                       all: bool = True) -> list[dict[str, object]]:
            return listing  # type: ignore[return-value]

    assert lockdown.bridge_neighbours(Listing()) == [
        lockdown.Neighbour("db", "exited", "nginx"),
        lockdown.Neighbour("on-bridge-by-mode", "created", "nginx"),
        lockdown.Neighbour("web", "running", "nginx"),
    ]


def test_what_the_lock_does_to_neighbours_is_said_plainly() -> None:
    from bake.egress.lockdown import Neighbour, describe_neighbours

    assert describe_neighbours([], "docker0", locked=True) == "no containers on docker0 but bake's"
    two = [Neighbour("db", "exited"), Neighbour("web", "running")]
    text = describe_neighbours(two, "docker0", locked=True)
    assert text.startswith("2 containers on docker0 that are not bake's are confined by the lock "
                           "too: db (exited; confined once started), web.")
    assert "reach only TCP ports 39100-39163 on this host" in text
    assert "no internet, no DNS, no other container, no other host port" in text
    assert "published ports answer connections from this host only" in text
    assert "docker network connect NET NAME" in text
    one = describe_neighbours([Neighbour("web", "running")], "docker0", locked=False)
    assert one.startswith("1 container on docker0 that is not bake's would be confined by "
                          "`bake egress lock`: web.")


def test_the_neighbours_check_is_a_notice_even_without_an_engine() -> None:
    check = by_name(run_checks())["docker0 containers"]
    assert check.ok and "does not answer" in check.detail


# -- the allowlist: names the proxy would refuse after DNS, and the exact fix ----------------


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    answers: dict[str, list[str]] = {}

    def fake(host: str, port: int, *args: object, **kw: object) -> list[tuple[object, ...]]:
        # doctor asks as the proxy does: the absolute name, so no search domain applies.
        assert host.endswith("."), host
        host = host.removesuffix(".")
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[host]]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return answers


def test_public_addresses_pass(dns: dict[str, list[str]]) -> None:
    dns["pypi.org"] = ["151.101.0.223"]
    assert refused_addresses(load_settings(environ={})) == {}
    assert check_allowlist_addresses(load_settings(environ={})).ok


def test_a_documentation_range_gateway_is_named_with_its_fix(dns: dict[str, list[str]]) -> None:
    dns["pypi.org"] = ["203.0.113.80"]
    dns["files.pythonhosted.org"] = ["203.0.113.80", "151.101.0.223"]
    settings = load_settings(environ={})
    assert refused_addresses(settings) == {"pypi.org": ["203.0.113.80"],
                                           "files.pythonhosted.org": ["203.0.113.80"]}
    check = check_allowlist_addresses(settings)
    assert not check.ok
    assert 'allow_cidrs = ["203.0.113.80/32"]' in check.fix


def test_allow_cidrs_settles_it(dns: dict[str, list[str]]) -> None:
    dns["pypi.org"] = ["203.0.113.80"]
    settings = load_settings(environ={"BAKE_EGRESS_ALLOW_CIDRS": "203.0.113.0/24"})
    assert check_allowlist_addresses(settings).ok


def test_loopback_is_refused_even_for_an_allowlisted_name(dns: dict[str, list[str]]) -> None:
    dns["pypi.org"] = ["127.0.0.1"]
    assert refused_addresses(load_settings(environ={})) == {"pypi.org": ["127.0.0.1"]}


def test_the_lock_is_one_commit_per_table() -> None:
    """bake's chains are declared (made, or emptied) and filled in one iptables-restore
    commit, the jumps to them added in the same one; nothing else of the table is named."""
    from bake.egress import lockdown

    chains = lockdown._rules("docker0", "iptables")
    text = lockdown._restore_text(chains, new_parent=False, jumps=[lockdown.CHAIN_FWD])
    lines = text.splitlines()
    assert lines[0] == "*filter" and lines[-1] == "COMMIT" and text.count("COMMIT") == 1
    assert lines[1:3] == [f":{lockdown.CHAIN_IN} - [0:0]", f":{lockdown.CHAIN_FWD} - [0:0]"]
    filled = [line for line in lines if line.startswith("-A ")]
    assert len(filled) == sum(len(rules) for rules in chains.values())
    assert all(line.split()[1] in chains for line in filled)
    assert lines[-2] == f"-I DOCKER-USER 1 -j {lockdown.CHAIN_FWD}"
    assert "FORWARD" not in text.replace("-FWD", "")
    fresh = lockdown._restore_text(chains, new_parent=True, jumps=list(chains))
    assert ":DOCKER-USER - [0:0]" in fresh and "-I FORWARD 1 -j DOCKER-USER" in fresh

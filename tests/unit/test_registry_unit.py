"""The image cache's plans: names, auth headers, sizes, durations, prune order, the deps twin.

No engine.  The registry auth flow is tested against a loopback server that
speaks the Registry API's token protocol (the ``Registry`` seam of STYLE.md
rule 7); the real registry is in tests/integration/test_registry.py.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from bake.builder.buildkit import DockerCLI, plan_build
from bake.builder.templates import Template, Variant
from bake.cache.images import BakedImage, baked_from, parse_duration, parse_size, plan_prune
from bake.cache.key import compute_key
from bake.cache.registry import (
    MANIFEST_TYPES,
    Credentials,
    ManifestRef,
    Registry,
    credential_helper,
    credentials_from_config,
    is_insecure,
    is_loopback,
    manifest_url,
    parse_challenge,
    split_image,
    token_url,
)
from bake.errors import RegistryError, UsageError
from bake.prebake import PREBAKE_COMMAND, deps_twin, variant_spec
from bake.resolve import ResolvedJob
from bake.settings import RegistrySettings, Settings
from bake.spec import JobFile, parse_spec

KEY = "a" * 64


# --- names and URLs ----------------------------------------------------------------------------


@pytest.mark.parametrize(("image", "host", "name", "config_key"), [
    (f"127.0.0.1:5000/bake-test:{KEY}", "127.0.0.1:5000", "bake-test", "127.0.0.1:5000"),
    (f"registry.example.com/team/bake:{KEY}", "registry.example.com", "team/bake",
     "registry.example.com"),
    (f"localhost:5000/a/b/c:{KEY}", "localhost:5000", "a/b/c", "localhost:5000"),
    (f"bake:{KEY}", "registry-1.docker.io", "library/bake", "https://index.docker.io/v1/"),
    (f"team/bake:{KEY}", "registry-1.docker.io", "team/bake", "https://index.docker.io/v1/"),
    (f"docker.io/team/bake:{KEY}", "registry-1.docker.io", "team/bake",
     "https://index.docker.io/v1/"),
])
def test_split_image_reads_names_as_docker_does(image: str, host: str, name: str,
                                                config_key: str) -> None:
    assert split_image(image) == ManifestRef(host, name, KEY, config_key)


def test_manifest_url() -> None:
    ref = ManifestRef("127.0.0.1:5000", "team/bake", KEY, "127.0.0.1:5000")
    assert manifest_url("http", ref) == f"http://127.0.0.1:5000/v2/team/bake/manifests/{KEY}"


def test_manifest_types_cover_oci_and_docker_lists() -> None:
    assert "application/vnd.oci.image.index.v1+json" in MANIFEST_TYPES
    assert "application/vnd.docker.distribution.manifest.v2+json" in MANIFEST_TYPES
    assert "application/vnd.docker.distribution.manifest.list.v2+json" in MANIFEST_TYPES


# --- auth headers --------------------------------------------------------------------------------


def test_parse_bearer_challenge_with_commas_and_escapes() -> None:
    header = ('Bearer realm="https://auth.example.com/token",service="registry.example.com",'
              'scope="repository:team/bake:pull,push",error="insufficient \\"scope\\""')
    kind, params = parse_challenge(header)
    assert kind == "bearer"
    assert params == {
        "realm": "https://auth.example.com/token",
        "service": "registry.example.com",
        "scope": "repository:team/bake:pull,push",
        "error": 'insufficient "scope"',
    }


def test_parse_basic_challenge() -> None:
    assert parse_challenge('Basic realm="Registry Realm"') == ("basic",
                                                               {"realm": "Registry Realm"})


def test_token_url_keeps_the_realms_query_and_adds_service_and_scope() -> None:
    url = token_url({"realm": "https://auth.example.com/token?account=x", "service": "reg"},
                    "repository:team/bake:pull")
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "auth.example.com", "/token")
    assert parse_qs(parts.query) == {"account": ["x"], "service": ["reg"],
                                     "scope": ["repository:team/bake:pull"]}


def test_token_url_refuses_a_realm_that_is_not_http() -> None:
    with pytest.raises(RegistryError, match="not an http"):
        token_url({"realm": "file:///etc/passwd"}, "repository:a:pull")


def _auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def test_credentials_from_docker_config_auths() -> None:
    config = {"auths": {
        "https://registry.example.com/v1/": {"auth": _auth("alice", "pa:ss")},
        "127.0.0.1:5000": {"auth": _auth("bob", "pw")},
        "https://index.docker.io/v1/": {"auth": _auth("carol", "hub")},
        "token.example.com": {"identitytoken": "refresh-me"},
    }}
    assert credentials_from_config(config, "registry.example.com") == Credentials("alice",
                                                                                  "pa:ss")
    assert credentials_from_config(config, "127.0.0.1:5000") == Credentials("bob", "pw")
    assert credentials_from_config(config, "https://index.docker.io/v1/") == Credentials(
        "carol", "hub")
    assert credentials_from_config(config, "token.example.com") == Credentials(
        identity_token="refresh-me")
    assert credentials_from_config(config, "elsewhere.example.com") is None
    assert credentials_from_config({}, "127.0.0.1:5000") is None
    assert credentials_from_config({"auths": {"x": {"auth": "%%%"}}}, "x") is None


def test_credential_helper_for_a_registry_beats_the_store() -> None:
    config = {"credHelpers": {"registry.example.com": "ecr-login"}, "credsStore": "pass"}
    assert credential_helper(config, "registry.example.com") == "ecr-login"
    assert credential_helper(config, "127.0.0.1:5000") == "pass"
    assert credential_helper({}, "127.0.0.1:5000") is None


def test_basic_header() -> None:
    assert Credentials("alice", "s3cret").basic() == "Basic " + _auth("alice", "s3cret")


# --- plain HTTP or TLS -------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1:5000", True), ("127.9.9.9:80", True), ("localhost:5000", True),
    ("[::1]:5000", True), ("registry.example.com", False), ("10.0.0.5:5000", False),
])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_is_insecure_follows_the_engines_registry_config() -> None:
    cidrs = ["127.0.0.0/8", "10.20.0.0/16"]
    configs = {"mirror.internal:5000": {"Secure": False}, "docker.io": {"Secure": True}}
    assert is_insecure("mirror.internal:5000", [], cidrs, configs)
    assert is_insecure("reg.internal:5000", ["10.20.3.4"], cidrs, configs)
    assert not is_insecure("reg.example.com", ["93.184.216.34"], cidrs, configs)
    assert not is_insecure("docker.io", [], cidrs, configs)
    assert not is_insecure("x", ["not-an-address"], ["not-a-cidr"], {})


# --- sizes, durations, prune order --------------------------------------------------------------


@pytest.mark.parametrize(("text", "size"), [
    ("0", 0), ("1024", 1024), ("500m", 500 << 20), ("50g", 50 << 30), ("50G", 50 << 30),
    ("1.5t", int(1.5 * (1 << 40))), ("512MiB", 512 << 20), ("2gb", 2 << 30), ("64k", 64 << 10),
])
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "g", "-1g", "5x", "1e9", "ten"])
def test_parse_size_refuses_nonsense(text: str) -> None:
    with pytest.raises(UsageError, match="--keep-size"):
        parse_size(text)


@pytest.mark.parametrize(("text", "seconds"), [
    ("7d", 7 * 86400), ("12h", 12 * 3600), ("1d12h", 36 * 3600), ("2w", 14 * 86400),
    ("90s", 90), ("30m", 1800), ("1.5h", 5400),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "7", "d", "7days", "soon", "1h-2m", "h1"])
def test_parse_duration_refuses_nonsense(text: str) -> None:
    with pytest.raises(UsageError, match="--older-than"):
        parse_duration(text)


NOW = 1_000_000_000.0
DAY = 86400.0


def _image(name: str, *, used_days_ago: float | None, size: int = 100, in_use: bool = False,
           created_days_ago: float = 30) -> BakedImage:
    return BakedImage(
        image=f"bake:{name * 64}"[:69], key=name * 64, template="python", size=size + 1000,
        unique_size=size, created=NOW - created_days_ago * DAY,
        last_used=None if used_days_ago is None else NOW - used_days_ago * DAY,
        id=f"sha256:{name}", in_use=in_use,
    )


def test_prune_by_age_removes_the_least_recently_used_first() -> None:
    images = [_image("a", used_days_ago=1), _image("b", used_days_ago=9),
              _image("c", used_days_ago=20), _image("d", used_days_ago=8)]
    plan = plan_prune(images, now=NOW, older_than=7 * DAY, keep_size=None)
    assert [i.key[0] for i in plan.remove] == ["c", "b", "d"]
    assert plan.spared == ()


def test_prune_to_a_size_stops_once_under_budget() -> None:
    images = [_image("a", used_days_ago=1, size=300), _image("b", used_days_ago=3, size=300),
              _image("c", used_days_ago=2, size=300)]
    plan = plan_prune(images, now=NOW, older_than=None, keep_size=400)
    assert [i.key[0] for i in plan.remove] == ["b", "c"]


def test_prune_never_removes_an_image_in_use() -> None:
    images = [_image("a", used_days_ago=30, in_use=True), _image("b", used_days_ago=20),
              _image("c", used_days_ago=1)]
    by_age = plan_prune(images, now=NOW, older_than=7 * DAY, keep_size=None)
    assert [i.key[0] for i in by_age.remove] == ["b"]
    assert [i.key[0] for i in by_age.spared] == ["a"]
    by_size = plan_prune(images, now=NOW, older_than=None, keep_size=0)
    assert [i.key[0] for i in by_size.remove] == ["b", "c"]
    assert [i.key[0] for i in by_size.spared] == ["a"]


def test_prune_counts_a_never_used_image_from_its_creation() -> None:
    images = [_image("a", used_days_ago=None, created_days_ago=10),
              _image("b", used_days_ago=None, created_days_ago=1)]
    plan = plan_prune(images, now=NOW, older_than=7 * DAY, keep_size=None)
    assert [i.key[0] for i in plan.remove] == ["a"]


def test_prune_with_both_limits() -> None:
    images = [_image("a", used_days_ago=10, size=100), _image("b", used_days_ago=3, size=500),
              _image("c", used_days_ago=2, size=500), _image("d", used_days_ago=1, size=500)]
    plan = plan_prune(images, now=NOW, older_than=7 * DAY, keep_size=1000)
    assert [i.key[0] for i in plan.remove] == ["a", "b"]


def test_baked_from_keeps_only_the_repositorys_keyed_tags() -> None:
    entries = [
        {"Id": "sha256:1", "RepoTags": [f"reg:5000/bake:{KEY}", "reg:5000/bake:latest",
                                        f"other/bake:{KEY}"],
         "Labels": {"bake.template": "python"}, "Size": 300, "SharedSize": 200,
         "Created": 5},
        {"Id": "sha256:2", "RepoTags": [f"reg:5000/bake-other:{KEY}"], "Size": 1},
        {"Id": "sha256:3", "RepoTags": None, "Size": 1},
        {"Id": "sha256:4", "RepoTags": [f"reg:5000/bake:{'b' * 64}"], "Size": 50,
         "SharedSize": -1, "Created": 6},
    ]
    found = baked_from(entries, "reg:5000/bake", in_use={"sha256:4"})
    assert [(i.image, i.size, i.unique_size, i.template, i.in_use) for i in found] == [
        (f"reg:5000/bake:{KEY}", 300, 100, "python", False),
        (f"reg:5000/bake:{'b' * 64}", 50, 50, "", True),
    ]


# --- prebake: variants and the deps twin ----------------------------------------------------------


def _template(tmp_path: Path) -> Template:
    return Template(name="python", folder=tmp_path, search_path=(tmp_path,),
                    default_base="python:3.11-slim", digest="sha256:" + "1" * 64,
                    variants=(Variant("sci", None, ("numpy==2.1.3", "six==1.16.0")),))


def _resolved(spec: object, template: Template) -> ResolvedJob:
    return ResolvedJob(spec=spec, template=template, base_ref="python:3.11-slim",  # type: ignore[arg-type]
                       base_from="python:3.11-slim", base_digest="sha256:" + "2" * 64,
                       models=(), datasets=(),
                       file_digests=tuple("3" * 64 for _ in spec.files))  # type: ignore[attr-defined]


def test_variant_spec_is_a_checked_synthetic_job(tmp_path: Path) -> None:
    template = _template(tmp_path)
    spec = variant_spec(template, template.variants[0])
    assert spec.template == "python" and spec.base is None
    assert spec.requirements == ("numpy==2.1.3", "six==1.16.0")
    assert spec.files == () and spec.command == PREBAKE_COMMAND
    assert variant_spec(template, template.variants[0], base="python:3.12-slim").base == (
        "python:3.12-slim")


def test_a_jobs_deps_twin_has_the_variants_key(tmp_path: Path) -> None:
    """A buyer's job with a variant's requirements finds the variant's image as its twin."""
    template = _template(tmp_path)
    (tmp_path / "main.py").write_text("print(1)\n")
    job = parse_spec({
        "name": "buyer", "template": "python",
        "python": {"requirements": ["numpy==2.1.3", "six==1.16.0"]},
        "job": {"files": ["main.py"], "command": ["python", "main.py"], "env": {"A": "1"}},
    }, root=tmp_path)
    assert job.files and isinstance(job.files[0], JobFile)
    twin = deps_twin(job)
    assert twin is not None
    variant = variant_spec(template, template.variants[0])
    assert compute_key(_resolved(twin, template)) == compute_key(_resolved(variant, template))
    assert compute_key(_resolved(job, template)) != compute_key(_resolved(variant, template))
    assert deps_twin(variant) is None  # a variant is its own twin: no --cache-from of itself


def test_build_argv_carries_inline_cache_and_cache_sources() -> None:
    cli = DockerCLI(("/usr/bin/docker", "build"), (("DOCKER_BUILDKIT", "1"),), "20.10", "x")
    argv = plan_build(cli, Path("/w/ctx"), iidfile=Path("/w/iid"), labels={}, proxy_url=None,
                      no_network=True, secrets={}, cache_from=("reg/bake:" + KEY,),
                      inline_cache=True).argv
    assert "BUILDKIT_INLINE_CACHE=1" in argv
    assert argv[argv.index("--cache-from") + 1] == "reg/bake:" + KEY
    plain = plan_build(cli, Path("/w/ctx"), iidfile=Path("/w/iid"), labels={}, proxy_url=None,
                       no_network=True, secrets={}).argv
    assert "--cache-from" not in plain and "BUILDKIT_INLINE_CACHE=1" not in plain


# --- the manifest request against a loopback token-auth registry ---------------------------------


@dataclass
class FakeRegistry:
    """Speaks the Registry API token flow: 401 + Bearer challenge, /token, then the manifest."""

    port: int = 0
    user: str = "alice"
    password: str = "s3cret"
    present: set[str] = field(default_factory=lambda: {"present"})
    requests: list[tuple[str, str, str]] = field(default_factory=list)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_HEAD(self) -> None:
                fake.requests.append(("HEAD", self.path, self.headers.get("Accept", "")))
                if self.headers.get("Authorization") != "Bearer tok-1":
                    challenge = (f'Bearer realm="http://127.0.0.1:{fake.port}/token?x=1",'
                                 'service="fake",scope="repository:team/bake:pull"')
                    self._send(401, {"WWW-Authenticate": challenge})
                    return
                tag = self.path.rsplit("/", 1)[1]
                self._send(200 if tag in fake.present else 404, {})

            def do_GET(self) -> None:
                fake.requests.append(("GET", self.path, self.headers.get("Authorization", "")))
                query = parse_qs(urlsplit(self.path).query)
                good = "Basic " + _auth(fake.user, fake.password)
                if (self.headers.get("Authorization") == good
                        and query.get("scope") == ["repository:team/bake:pull"]
                        and query.get("service") == ["fake"]):
                    self._send(200, {"Content-Type": "application/json"},
                               json.dumps({"token": "tok-1"}).encode())
                else:
                    self._send(401, {"Content-Type": "application/json"}, json.dumps(
                        {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]}
                    ).encode())

        return Handler


@pytest.fixture
def fake_registry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeRegistry]:
    fake = FakeRegistry()
    server = ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
    fake.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    config = tmp_path / "docker"
    config.mkdir()
    (config / "config.json").write_text(json.dumps(
        {"auths": {f"127.0.0.1:{fake.port}": {"auth": _auth("alice", "s3cret")}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    yield fake
    server.shutdown()
    server.server_close()


def _registry(port: int) -> Registry:
    return Registry(Settings(registry=RegistrySettings(repository=f"127.0.0.1:{port}/team/bake")))


def test_exists_answers_the_token_challenge_with_docker_credentials(
        fake_registry: FakeRegistry) -> None:
    registry = _registry(fake_registry.port)
    assert registry.exists(f"127.0.0.1:{fake_registry.port}/team/bake:present") is True
    assert [r[0] for r in fake_registry.requests] == ["HEAD", "GET", "HEAD"]
    assert all(t in fake_registry.requests[0][2] for t in MANIFEST_TYPES)
    fake_registry.requests.clear()
    # The token is kept: the next question is one request.
    assert registry.exists(f"127.0.0.1:{fake_registry.port}/team/bake:absent") is False
    assert [r[0] for r in fake_registry.requests] == ["HEAD"]


def test_exists_with_wrong_credentials_says_to_log_in(fake_registry: FakeRegistry,
                                                      tmp_path: Path) -> None:
    fake_registry.password = "changed"
    registry = _registry(fake_registry.port)
    with pytest.raises(RegistryError, match="refused access") as info:
        registry.exists(f"127.0.0.1:{fake_registry.port}/team/bake:present")
    assert "bad credentials" in info.value.message
    assert info.value.hint is not None and "docker login" in info.value.hint


@dataclass
class Recorder:
    warnings: list[str] = field(default_factory=list)

    def stage(self, text: str) -> None:
        pass

    def log(self, line: str) -> None:
        pass

    def warn(self, text: str) -> None:
        self.warnings.append(text)


def test_unreachable_registry_is_a_warning_and_no_push() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    registry = _registry(port)
    recorder = Recorder()
    assert registry.pull(f"127.0.0.1:{port}/team/bake:{KEY}", recorder) is False
    assert registry.push(f"127.0.0.1:{port}/team/bake:{KEY}", recorder) is False
    assert "cannot reach the registry" in recorder.warnings[0]
    assert "building locally" in recorder.warnings[0]
    assert recorder.warnings[1].startswith("not pushed:")

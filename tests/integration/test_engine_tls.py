"""An engine reached as the docker CLI reaches a remote one: tcp:// with TLS, client certificates.

A second dockerd listens on a loopback port with ``--tlsverify``; its CA, server and
client certificates are made here with openssl.  bake finds it from the same
variables the CLI reads (DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH), builds
on it, answers the next build from the key (the fast path), and says clearly when
the certificates are wrong.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import BASE, Host
from tests.machines import MachineError, docker, free_port, loaded_from_host, second_engine

SPEC = """\
name = "over-tls"
template = "python"
[job]
command = ["python", "-c", "print('hello over TLS')"]
"""


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certs(folder: Path, name: str) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by it."""
    folder.mkdir(parents=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             f"/CN={name}-ca", "-keyout", "ca-key.pem", "-out", "ca.pem", cwd=folder)
    for who, ext in (("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
                     ("client", "extendedKeyUsage=clientAuth")):
        (folder / f"{who}.ext").write_text(ext + "\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}-{who}",
                 "-keyout", f"{who}-key.pem", "-out", f"{who}.csr", cwd=folder)
        _openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
                 "-CAcreateserial", "-days", "2", "-extfile", f"{who}.ext",
                 "-out", f"{who}.pem", cwd=folder)
    # Where DOCKER_CERT_PATH points: the client's files under the CLI's names.
    client = folder / "client-dir"
    client.mkdir()
    for src, dst in (("ca.pem", "ca.pem"), ("client.pem", "cert.pem"),
                     ("client-key.pem", "key.pem")):
        (client / dst).write_bytes((folder / src).read_bytes())


@pytest.fixture(scope="module")
def tls_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path]]:
    """(DOCKER_HOST, the client's cert folder, another CA's client folder, untrusted)."""
    certs = tmp_path_factory.mktemp("tls")
    make_certs(certs / "good", "bake-test")
    make_certs(certs / "evil", "someone-else")
    port = free_port()
    tls = ("-H", f"tcp://127.0.0.1:{port}", "--tlsverify",
           f"--tlscacert={certs / 'good' / 'ca.pem'}",
           f"--tlscert={certs / 'good' / 'server.pem'}",
           f"--tlskey={certs / 'good' / 'server-key.pem'}")
    try:
        with second_engine(loaded_from_host(BASE), label="test-tls", extra_args=tls) as sock:
            yield f"tcp://127.0.0.1:{port}", certs / "good" / "client-dir", \
                certs / "evil" / "client-dir"
            docker("image", "prune", "-af", host=sock, check=False)
    except MachineError as exc:
        pytest.fail(str(exc))


def test_build_run_and_key_hit_on_an_engine_over_tls(
        host: Host, job: object, tls_engine: tuple[str, Path, Path]) -> None:
    address, client, _ = tls_engine
    host.egress["allow"] = []  # setup needs no network: the second engine has no proxy
    spec = job(SPEC)  # type: ignore[operator]
    env = {"DOCKER_HOST": address, "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(client)}
    built = host.bake("build", str(spec), "--json", env=env, check=True)
    first = json.loads(built.stdout)
    assert first["cached"] is False and first["egress"] == "offline"
    hit = host.bake("build", str(spec), "--json", env=env, check=True)
    assert json.loads(hit.stdout)["cached"] is True and "bake:" in hit.stdout
    # The image is on the TLS engine, not on the local one.
    assert docker("image", "inspect", first["image"], check=False).returncode != 0
    ran = host.bake("run", str(spec), env=env)
    assert ran.returncode == 0 and "hello over TLS" in ran.stdout, ran.stderr
    doctor = host.bake("doctor", "--json", env=env)
    checks = {c["name"]: c for c in json.loads(doctor.stdout)}
    assert checks["engine"]["ok"] and f"{address} (TLS)" in checks["engine"]["detail"]


@pytest.mark.parametrize("case", ["engine-not-trusted", "client-not-trusted"])
def test_certificates_that_do_not_match_are_a_clear_error(
        host: Host, job: object, tls_engine: tuple[str, Path, Path], tmp_path: Path,
        case: str) -> None:
    address, good, evil = tls_engine
    certs = tmp_path / "certs"
    certs.mkdir()
    # engine-not-trusted: another CA, so the client refuses the engine's certificate;
    # client-not-trusted: the right CA, but a client certificate the engine refuses.
    (certs / "ca.pem").write_bytes(((evil if case == "engine-not-trusted" else good)
                                    / "ca.pem").read_bytes())
    for name in ("cert.pem", "key.pem"):
        (certs / name).write_bytes((evil / name).read_bytes())
    spec = job(SPEC)  # type: ignore[operator]
    env = {"DOCKER_HOST": address, "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(certs)}
    proc = host.bake("build", str(spec), env=env)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"Docker Engine at {address} (TLS)" in proc.stderr
    assert "DOCKER_CERT_PATH" in proc.stderr


def test_plain_http_to_a_tls_engine_is_refused_clearly(
        host: Host, job: object, tls_engine: tuple[str, Path, Path]) -> None:
    address, _, _ = tls_engine
    spec = job(SPEC)  # type: ignore[operator]
    proc = host.bake("key", str(spec), env={"DOCKER_HOST": address})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "Docker Engine" in proc.stderr

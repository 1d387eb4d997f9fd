"""Issue 13 item 2: `bake egress lock` and `bake doctor` name the seller's own containers on
docker0 and say what the lock does to them; the claim is checked from inside one.

The host stays locked throughout (the lock is idempotent); the only container
made here is removed at the end.
"""

from __future__ import annotations

import json
import socket
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from bake.egress.lockdown import PROXY_PORTS
from bake.engine import Engine
from tests.integration.conftest import BASE, Host


@pytest.fixture
def neighbour(engine: None) -> Iterator[str]:
    """A container of the seller's own, on the default bridge, with a non-bake name."""
    name = f"seller-web-{uuid.uuid4().hex[:8]}"
    subprocess.run(["docker", "run", "-d", "--name", name, BASE, "sleep", "600"],
                   capture_output=True, check=True)
    try:
        yield name
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)


def _listener(host: str, ports: range) -> socket.socket:
    for port in ports:
        sock = socket.socket()
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            continue
        sock.listen(4)
        return sock
    raise AssertionError(f"no free port in {ports}")


def test_lock_and_doctor_name_the_sellers_containers(host: Host, locked: None,
                                                     neighbour: str) -> None:
    lock = host.bake("egress", "lock")
    assert lock.returncode == 0, lock.stderr
    said = lock.stdout + lock.stderr
    assert neighbour in said
    ports = f"{PROXY_PORTS.start}-{PROXY_PORTS.stop - 1}"
    assert f"reach only TCP ports {ports} on this host" in said
    assert "bake-canary" not in said and "bake-job" not in said

    doctor = host.bake("doctor", "--json", timeout=180)
    check = {c["name"]: c for c in json.loads(doctor.stdout)}["docker0 containers"]
    assert check["ok"] is True
    assert neighbour in check["detail"] and "confined by the lock too" in check["detail"]

    # What it says is what happens: from inside the container a host port outside
    # bake's range is refused, one inside it answers.
    gateway = Engine.from_env().bridge_gateway()
    outside = _listener(gateway, range(39050, 39099))
    inside = _listener(gateway, range(PROXY_PORTS.stop - 1, PROXY_PORTS.start - 1, -1))
    out_port, in_port = outside.getsockname()[1], inside.getsockname()[1]
    probe = ("import socket, sys\n"
             "for port in sys.argv[2:]:\n"
             "    try:\n"
             "        socket.create_connection((sys.argv[1], int(port)), timeout=5).close()\n"
             "        print(port, 'connected')\n"
             "    except OSError as exc:\n"
             "        print(port, type(exc).__name__)\n")
    try:
        proc = subprocess.run(
            ["docker", "exec", neighbour, "python3", "-c", probe, gateway, str(out_port),
             str(in_port)], capture_output=True, text=True, timeout=60, check=True)
    finally:
        outside.close()
        inside.close()
    assert proc.stdout.splitlines() == [f"{out_port} ConnectionRefusedError",
                                        f"{in_port} connected"], proc.stdout

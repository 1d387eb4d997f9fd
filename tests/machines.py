"""Local stand-ins for a fleet, shared by the integration tests and the benchmarks.

* :func:`serve_registry` runs a real Distribution registry (Debian's
  ``docker-registry``) on a loopback port with its own storage;
* :func:`second_engine` runs a second Docker Engine, another "machine": its own
  data root, exec root, socket and bridge.

Never ``--bridge=none`` for the second engine: dockerd then deletes the host's
``docker0`` at start (moby's removeDefaultBridgeInterface), taking the first
engine's bridge with it.  ``--iptables=false`` keeps it out of the firewall.
Failures raise :class:`MachineError`; pytest fixtures turn it into a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REGISTRY_BIN = "/usr/bin/docker-registry"


class MachineError(RuntimeError):
    """A local registry or engine did not start."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def docker(*args: str, host: str | None = None, check: bool = True, stdin: Any = None,
           timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """The docker CLI against the default engine, or the one at ``host``."""
    env = dict(os.environ)
    if host:
        env["DOCKER_HOST"] = host
    return subprocess.run(["docker", *args], capture_output=True, text=True, env=env,
                          check=check, stdin=stdin, timeout=timeout)


@dataclass
class LocalRegistry:
    """A Distribution registry on a loopback port, with its own storage."""

    address: str  # "127.0.0.1:<port>"
    folder: Path

    def repository(self, name: str) -> str:
        """A repository only this run uses, so that prune touches nothing else."""
        return f"{self.address}/bake-test-{name}-{uuid.uuid4().hex[:8]}"

    def forget_local(self, repository: str) -> None:
        """Remove every image of ``repository`` from the local engine (a test's own)."""
        listed = docker("images", "--format", "{{.Repository}}:{{.Tag}}", check=False).stdout
        ours = [ref for ref in listed.split() if ref.rpartition(":")[0] == repository]
        if ours:
            docker("rmi", "-f", *ours, check=False)

    def has(self, image: str) -> bool:
        """Does the registry hold ``image``?  Asked over the Registry API, not through bake."""
        repository, _, tag = image.rpartition(":")
        name = repository.split("/", 1)[1]
        request = urllib.request.Request(
            f"http://{self.address}/v2/{name}/manifests/{tag}", method="HEAD",
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return bool(response.status == 200)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return False
            raise


@contextmanager
def serve_registry(folder: Path, *, readonly: bool = False) -> Iterator[LocalRegistry]:
    """Run ``docker-registry serve`` until the block ends; wait until it answers."""
    if not Path(REGISTRY_BIN).is_file():
        raise MachineError(f"{REGISTRY_BIN} is missing; scripts/bootstrap installs it")
    folder.mkdir(parents=True, exist_ok=True)
    address = f"127.0.0.1:{free_port()}"
    maintenance = "  maintenance:\n    readonly:\n      enabled: true\n" if readonly else ""
    config = folder / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {folder / 'storage'}\n  delete:\n    enabled: true\n{maintenance}"
        f"http:\n  addr: {address}\n"
    )
    log = (folder / "registry.log").open("wb")
    proc = subprocess.Popen([REGISTRY_BIN, "serve", str(config)], stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://{address}/v2/", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise MachineError(f"docker-registry did not start on {address}:\n"
                                   f"{(folder / 'registry.log').read_text(errors='replace')}")
            time.sleep(0.05)
        yield LocalRegistry(address, folder)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(folder / "storage", ignore_errors=True)


def loaded_from_host(image: str) -> Callable[[str], None]:
    """A second engine's seed: ``image`` from the first engine, by save | load (same id)."""
    def seed(sock: str) -> None:
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        assert save.stdout is not None
        with save.stdout:
            docker("load", host=sock, stdin=save.stdout)
        if save.wait() != 0:
            raise MachineError(f"docker save {image} failed")

    return seed


def _unused_subnet() -> str:
    used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True,
                          check=True).stdout
    for third in range(90, 250):
        prefix = f"10.213.{third}."
        if prefix not in used:
            return prefix
    raise MachineError("no free 10.213.x.0/24 for the second engine's bridge")


@contextmanager
def second_engine(seed: Callable[[str], None], *, label: str = "engine2",
                  data_size: str | None = None, resolv_conf: str | None = None,
                  extra_args: tuple[str, ...] = ()) -> Iterator[str]:
    """A second dockerd; ``seed(socket)`` gives it its base image.  Yields its DOCKER_HOST.

    ``data_size`` (e.g. "600m") puts its data root on a tmpfs of that size: a
    machine whose disk fills up.  ``resolv_conf`` is the ``/etc/resolv.conf`` this
    engine sees (in a mount namespace of its own; the host's file is untouched):
    e.g. a machine whose resolver is systemd-resolved's 127.0.0.53.  ``extra_args``
    go to dockerd (e.g. a TLS listener).
    """
    if os.geteuid() != 0:
        raise MachineError("a second dockerd needs root")
    # Short: the engine's sockets live under it, and a unix socket path is at most 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="bk2-", dir="/tmp"))
    sock = f"unix://{root}/docker.sock"
    bridge = f"bk2br{os.getpid() % 100000}"
    prefix = _unused_subnet()
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    log = (root / "dockerd.log").open("wb")
    proc: subprocess.Popen[bytes] | None = None
    mounted = False
    try:
        if data_size:
            (root / "data").mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={data_size}", "bake-engine2",
                            str(root / "data")], check=True)
            mounted = True
        subprocess.run(["ip", "addr", "add", f"{prefix}1/24", "dev", bridge], check=True)
        subprocess.run(["ip", "link", "set", bridge, "up"], check=True)
        argv = [shutil.which("dockerd") or "/usr/sbin/dockerd", "--data-root", str(root / "data"),
                "--exec-root", str(root / "exec"), "--pidfile", str(root / "dockerd.pid"),
                "-H", sock, f"--bridge={bridge}", "--iptables=false", "--ip-masq=false",
                "--ip-forward=false", f"--cgroup-parent=bake-{label}", *extra_args]
        if resolv_conf is not None:
            (root / "resolv.conf").write_text(resolv_conf)
            # unshare and sh exec: the pid stays dockerd's, so SIGTERM below reaches it.
            argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                    'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(root / "resolv.conf"),
                    *argv]
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.monotonic() + 60
        while docker("version", host=sock, check=False).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise MachineError("the second dockerd did not start:\n"
                                   + (root / "dockerd.log").read_text(errors="replace")[-3000:])
            time.sleep(0.2)
        seed(sock)
        yield sock
    finally:
        if proc is not None:
            leftovers = docker("ps", "-aq", host=sock, check=False).stdout.split()
            if leftovers:
                docker("rm", "-f", *leftovers, host=sock, check=False)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        subprocess.run(["ip", "link", "del", bridge], check=False)
        if mounted:
            # The engine's own mounts under the data root go with it; then ours.
            subprocess.run(["umount", "-R", str(root / "data")], check=False)
        shutil.rmtree(root, ignore_errors=True)

"""Commands bake runs on the host: the one module that uses :mod:`subprocess`.

Two shapes (cibuildwheel's ``util/cmd.py`` and nox's ``popen.py`` are the models):
:func:`run` for a short command whose whole output we want (``iptables``, a
credential helper, ``docker version``, ``mmdebstrap``), and :class:`Process` for a
long one whose output we stream and which we may have to cancel (``docker
build``).  Failures to start or to finish in time surface as the built-in
``OSError`` family (``FileNotFoundError``, ``PermissionError``, ``TimeoutError``),
so no caller ever handles a ``subprocess`` exception.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Completed", "Process", "run"]


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def last_line(self) -> str:
        """The last line the command printed on stderr (else stdout): usually the reason."""
        lines = (self.stderr or self.stdout).strip().splitlines()
        return lines[-1] if lines else f"exit {self.returncode}"


def run(argv: Sequence[str], *, timeout: float | None = None, input: str | None = None,
        env: Mapping[str, str] | None = None) -> Completed:
    """Run a command to its end and capture its output (text).

    ``OSError`` when it cannot start; ``TimeoutError`` when it runs past ``timeout``
    (it is killed first).
    """
    try:
        proc = subprocess.run(
            list(argv), input=input, capture_output=True, text=True, timeout=timeout,
            env=dict(env) if env is not None else None, check=False,
            stdin=subprocess.DEVNULL if input is None else None,
        )
    except subprocess.TimeoutExpired as exc:
        raise TimeoutError(f"{argv[0]} did not finish within {timeout:g} s") from exc
    return Completed(tuple(argv), proc.returncode, proc.stdout or "", proc.stderr or "")


class Process:
    """A long command in a session of its own, its output (stdout and stderr) as lines.

    Its own session: a terminal's Ctrl-C reaches bake only, which then cancels the
    command itself (:meth:`cancel`) and knows that it did.
    """

    def __init__(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> None:
        self.argv = tuple(argv)
        #: Output lines as they come; ``None`` once the command closed its output.
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._proc = subprocess.Popen(
            list(argv), env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._pump, name=f"bake-{argv[0]}-output",
                                        daemon=True)

    def start_reading(self) -> None:
        self._reader.start()

    def _pump(self) -> None:
        assert self._proc.stdout is not None
        for raw in iter(self._proc.stdout.readline, b""):
            self.lines.put(raw.decode("utf-8", "replace").rstrip("\n"))
        self.lines.put(None)

    def wait(self) -> int:
        return self._proc.wait()

    def cancel(self, grace: float) -> None:
        """SIGINT to the whole process group, SIGKILL after ``grace`` seconds."""
        if self._proc.poll() is not None:
            return
        try:
            os.killpg(self._proc.pid, signal.SIGINT)
            self._proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        except ProcessLookupError:
            pass

    def close(self) -> None:
        if self._reader.is_alive():
            self._reader.join(timeout=5)
        if self._proc.stdout is not None:
            self._proc.stdout.close()

"""A rendezvous for tests that need a request to stay running until they say so.

A worker's ``hold`` command (``fixtures/runtime/runtime_handlers.py``) connects to the gate's
Unix socket and blocks. :meth:`Gate.entered` returns once a handler has connected, which is
proof that it is running (no sleeping and hoping); :meth:`Held.release` lets it return.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from typing import Dict, List

from bridge_client import DEFAULT_TIMEOUT, FIXTURES

#: Where ``runtime_handlers`` lives, for ``DSPEX_PYTHON_PATH``.
RUNTIME_HANDLERS_DIR = os.path.join(FIXTURES, "runtime")


def runtime_env(**extra: str) -> Dict[str, str]:
    """Worker environment that loads the runtime test handlers."""
    return {"DSPEX_HANDLERS": "runtime_handlers", "DSPEX_PYTHON_PATH": RUNTIME_HANDLERS_DIR, **extra}


class Held:
    """One ``hold`` request that has checked in and waits for release."""

    def __init__(self, connection: socket.socket, tag: str) -> None:
        self._connection = connection
        self.tag = tag

    def release(self, message: str = "go") -> None:
        self._connection.sendall((message + "\n").encode())
        self._connection.close()


class Gate:
    """A listening Unix socket in a short private directory (socket paths are limited to
    about 100 bytes, which pytest's tmp_path can exceed)."""

    def __init__(self) -> None:
        self._directory = tempfile.mkdtemp(prefix="gate-", dir="/tmp")
        self.path = os.path.join(self._directory, "s")
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._socket.bind(self.path)
        self._socket.listen(64)
        self._socket.settimeout(DEFAULT_TIMEOUT)

    def args(self, tag: str) -> Dict[str, str]:
        """The ``hold`` command's args for a request tagged ``tag``."""
        return {"gate": self.path, "tag": tag}

    def entered(self, count: int = 1) -> List[Held]:
        """Wait until ``count`` more ``hold`` requests are running; returns them."""
        held = []
        for _ in range(count):
            connection, _ = self._socket.accept()
            connection.settimeout(DEFAULT_TIMEOUT)
            tag = connection.makefile("r").readline().strip()
            held.append(Held(connection, tag))
        return held

    def close(self) -> None:
        self._socket.close()
        shutil.rmtree(self._directory, ignore_errors=True)

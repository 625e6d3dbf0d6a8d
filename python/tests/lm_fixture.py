"""Start ``tests/fixtures/lm_server.py`` (the repository's test LM server) and talk to it."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any, Dict, Optional, Sequence

from bridge_client import DEFAULT_TIMEOUT, PYTHON_DIR

LM_SERVER = os.path.join(os.path.dirname(PYTHON_DIR), "tests", "fixtures", "lm_server.py")


def load_lm_server() -> Any:
    """``lm_server.py`` as a module in this process (it is a script, not on ``sys.path``), for
    tests that serve its answers from an in-process server."""
    spec = importlib.util.spec_from_file_location("lm_server", LM_SERVER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class LMServer:
    """The server as a child process; it exits when :meth:`close` closes its stdin."""

    def __init__(self, *options: str, python: str = sys.executable) -> None:
        self.process = subprocess.Popen(
            [python, LM_SERVER, *options],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        line = self.process.stdout.readline().decode()
        assert line.startswith("PORT "), f"lm_server said {line!r}: {self.process.stderr.read().decode()}"
        self.port = int(line.split()[1])
        self.base = f"http://127.0.0.1:{self.port}"
        #: What ``dspy.LM(..., api_base=...)`` and OpenAI clients take.
        self.api_base = self.base + "/v1"

    def get(self, path: str) -> Dict[str, Any]:
        with urllib.request.urlopen(self.base + path, timeout=DEFAULT_TIMEOUT) as response:
            return json.loads(response.read())

    def post(self, path: str, body: Any) -> tuple[int, Dict[str, str], Dict[str, Any]]:
        """POST JSON; returns status, headers and the decoded body (errors included)."""
        request = urllib.request.Request(
            self.base + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=DEFAULT_TIMEOUT) as response:
                return response.status, dict(response.headers), json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), json.loads(error.read())

    def stats(self) -> Dict[str, Any]:
        return self.get("/stats")

    def wait_in_flight(self, count: int) -> Dict[str, Any]:
        """Block until the server has ``count`` calls in flight; returns its stats."""
        stats = self.get(f"/wait?in_flight={count}&timeout={DEFAULT_TIMEOUT}")
        assert stats.pop("reached"), f"never {count} calls in flight: {stats}"
        return stats

    def control(self, **changes: Any) -> None:
        status, _, body = self.post("/control", changes)
        assert status == 200, body

    def chat(self, messages: Sequence[Dict[str, Any]], **extra: Any) -> tuple[int, Dict[str, str], Dict[str, Any]]:
        return self.post("/v1/chat/completions", {"model": "test", "messages": list(messages), **extra})

    def close(self) -> Optional[int]:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                return self.process.wait(DEFAULT_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if not stream.closed:
                stream.close()
        return self.process.returncode

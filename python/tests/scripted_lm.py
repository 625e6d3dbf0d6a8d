"""An OpenAI-compatible chat endpoint in the test process, scripted call by call.

The DSPy half's tests need a real HTTP endpoint (so the real DSPy/LiteLLM clients run, never
a mocked one) whose answers they can script: ``500``/``429`` on chosen calls, a ``Retry-After``
header, and a count of what arrived. It answers with the test LM server's own completions
(``tests/fixtures/lm_server.py``), so any signature gets typed values. Standard library only.
"""

from __future__ import annotations

import threading
from typing import Any, Dict, List, Optional

from lm_fixture import load_lm_server

lm_server = load_lm_server()


class ScriptedLM:
    """A threaded chat-completions server on 127.0.0.1; ``script`` decides each call's fate.

    Each call takes the next entry of ``script`` (``"ok"``, ``"500"``, ``"429"``, ``"503"``),
    then ``default`` once the script is used up.
    """

    def __init__(self, model: str = "gpt-4o-mini") -> None:
        self.model = model
        self.script: List[str] = []
        self.default = "ok"
        self.retry_after: Optional[str] = None
        self.calls = 0
        self.requests: List[Dict[str, Any]] = []
        self.authorizations: List[Optional[str]] = []
        self._lock = threading.Lock()
        self._server = lm_server.Server(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def set(self, script: Optional[List[str]] = None, default: str = "ok", retry_after: Optional[str] = None) -> None:
        with self._lock:
            self.script = list(script or [])
            self.default = default
            self.retry_after = retry_after
            self.calls = 0
            self.requests = []
            self.authorizations = []

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _next(self, body: Dict[str, Any], authorization: Optional[str]) -> str:
        with self._lock:
            self.calls += 1
            self.requests.append(body)
            self.authorizations.append(authorization)
            return self.script.pop(0) if self.script else self.default

    def _handler(self) -> type:
        owner = self

        class Handler(lm_server.Handler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self._body()
                outcome = owner._next(body, self.headers.get("Authorization"))
                if outcome == "ok":
                    completion = lm_server.complete(body, owner.model)
                    # The model this server names is what LiteLLM prices the call by.
                    completion["model"] = owner.model
                    self._json(200, completion)
                    return
                status = int(outcome)
                headers = {"Retry-After": owner.retry_after} if owner.retry_after is not None else {}
                self._error(status, f"scripted {status}", "server_error", headers)

        return Handler

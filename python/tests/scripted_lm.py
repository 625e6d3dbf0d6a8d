"""An OpenAI-compatible chat endpoint in the test process, scripted call by call.

The DSPy half's tests need a real HTTP endpoint (so the real DSPy/LiteLLM clients run, never
a mocked one) whose answers they can script: ``500``/``429`` on chosen calls, a ``Retry-After``
header, and a count of what arrived. It answers in ChatAdapter format with the dummy LM's
own completion function, so any signature gets typed values. Standard library only.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional

from dspex_bridge.dummy_lm import complete


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
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
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

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                outcome = owner._next(body, self.headers.get("Authorization"))
                if outcome == "ok":
                    messages = body.get("messages") or []
                    text = complete(messages)
                    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
                    completion_tokens = len(text.split())
                    self._send(
                        200,
                        {
                            "id": "chatcmpl-test",
                            "object": "chat.completion",
                            "created": 0,
                            "model": owner.model,
                            "choices": [
                                {
                                    "index": 0,
                                    "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": text},
                                }
                            ],
                            "usage": {
                                "prompt_tokens": prompt_tokens,
                                "completion_tokens": completion_tokens,
                                "total_tokens": prompt_tokens + completion_tokens,
                            },
                        },
                    )
                    return
                status = int(outcome)
                error = {"error": {"message": f"scripted {status}", "type": "server_error", "code": str(status)}}
                headers = {"Retry-After": owner.retry_after} if owner.retry_after is not None else {}
                self._send(status, error, headers)

            def _send(self, status: int, payload: Dict[str, Any], headers: Optional[Dict[str, str]] = None) -> None:
                data = json.dumps(payload).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        return Handler

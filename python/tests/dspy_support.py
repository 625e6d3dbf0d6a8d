"""Helpers shared by the DSPy half's in-process tests: definitions and a request context."""

from __future__ import annotations

import json
import os
import threading
from typing import Any, Dict, List, Optional


def field(name: str, type_term: Any = "str", description: Optional[str] = None) -> Dict[str, Any]:
    return {"name": name, "type": type_term, "description": description}


def definition(
    program_id: str,
    outputs: Optional[List[Dict[str, Any]]] = None,
    inputs: Optional[List[Dict[str, Any]]] = None,
    module: str = "predict",
    instructions: Optional[str] = None,
    **extra: Any,
) -> Dict[str, Any]:
    """A predict/chain_of_thought definition (``question -> answer`` by default)."""
    return {
        "program_id": program_id,
        "module": module,
        "signature": {
            "name": None,
            "instructions": instructions,
            "inputs": inputs if inputs is not None else [field("question")],
            "outputs": outputs if outputs is not None else [field("answer")],
        },
        **extra,
    }


def python_definition(program_id: str, factory: str, **extra: Any) -> Dict[str, Any]:
    return {"program_id": program_id, "module": "python", "factory": factory, **extra}


class Ctx:
    """Stands in for the runtime's ``RequestContext``: records emitted events."""

    def __init__(self, concurrency: int = 1, request_id: int = 1) -> None:
        self.request_id = request_id
        self.worker_id = "test-worker"
        self.concurrency = concurrency
        self.events: List[Dict[str, Any]] = []
        self._lock = threading.Lock()

    def emit(self, event: Dict[str, Any]) -> None:
        json.dumps(event)  # an event must be JSON, as it goes out in a frame
        with self._lock:
            self.events.append(event)


def read_trace(path: str) -> List[Dict[str, Any]]:
    """The dummy LM's trace lines (one per LM call)."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file]


def prompt_text(entry: Dict[str, Any]) -> str:
    return "\n".join(str(message.get("content")) for message in entry["messages"])

"""Per-worker cache of built programs, scoped by session.

The host's session registry is the source of truth for program definitions; a worker only
caches what it has built, keyed by (scope, program id), together with the digest of the
definition it was built from. A request whose digest matches the cached one runs the cached
program without the definition being parsed or hashed again (issue 10, item 2).

Requests run concurrently in threads, so every dictionary operation happens under one lock.
Building a program happens outside it: two requests may build the same program at once, and
the last one stored wins, which is harmless because both built the same thing.

This module does not import DSPy, so the generic commands (``get_stats``,
``cleanup_session``, ``reset_state``) stay cheap on workers that never ran a program.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from .definitions import ProgramSpec
from .errors import InvalidRequest, ProgramNotFound

#: Scope key; ``None`` is the anonymous scope used when a request carries no session.
Scope = Optional[str]


def scope_of(args: Dict[str, Any]) -> Scope:
    """The scope named by a request's ``session_id`` (absent or null = anonymous)."""
    session_id = args.get("session_id")
    if session_id is not None and not isinstance(session_id, str):
        raise InvalidRequest(f"session_id must be a string or null, got {type(session_id).__name__}")
    return session_id


def definition_hash(definition: Dict[str, Any]) -> str:
    """The bridge's own digest of a definition: SHA-256 of its canonical (key-sorted) JSON.

    Used only when a request carries no ``digest`` of its own; the host's digest is a hash
    of the JSON as it serialised it, and is trusted as given.
    """
    canonical = json.dumps(definition, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass
class Program:
    """A built program and what it was built from.

    ``input_fields`` are the names the program is called with (its signature's inputs, or
    for a ``python`` program without one the parameters of its ``forward``); ``accepts_any``
    is true when that ``forward`` also takes ``**kwargs``. ``output_fields`` are the names
    a result carries, or ``None`` when a ``python`` program returns whatever it predicts.
    """

    spec: ProgramSpec
    digest: str
    module: Any
    input_fields: Tuple[str, ...]
    output_fields: Optional[Tuple[str, ...]]
    required_inputs: Tuple[str, ...] = ()
    accepts_any: bool = False
    executions: int = field(default=0, compare=False)

    @property
    def program_id(self) -> str:
        """The program's id within its scope."""
        return self.spec.program_id


class ProgramStore:
    """Programs by scope, then by program id. One session never sees another's programs."""

    def __init__(self) -> None:
        self._scopes: Dict[Scope, Dict[str, Program]] = {}
        self._lock = threading.Lock()

    def get(self, scope: Scope, program_id: str) -> Optional[Program]:
        """The cached program, if this worker has built it in that scope."""
        with self._lock:
            return self._scopes.get(scope, {}).get(program_id)

    def require(self, scope: Scope, program_id: str) -> Program:
        """The cached program, or :class:`ProgramNotFound` naming the scope."""
        program = self.get(scope, program_id)
        if program is None:
            where = "the anonymous scope" if scope is None else f"session {scope!r}"
            raise ProgramNotFound(f"no program {program_id!r} in {where}; create it first or send its definition")
        return program

    def put(self, scope: Scope, program: Program) -> None:
        """Cache ``program``, replacing any program with the same id in that scope."""
        with self._lock:
            self._scopes.setdefault(scope, {})[program.program_id] = program

    def remove(self, scope: Scope, program_id: str) -> None:
        """Drop one program; :class:`ProgramNotFound` if it is not there."""
        with self._lock:
            programs = self._scopes.get(scope, {})
            if program_id in programs:
                del programs[program_id]
                if not programs:
                    del self._scopes[scope]
                return
        self.require(scope, program_id)  # raises the not-found error with its message

    def count_execution(self, program: Program) -> None:
        """Count one run of ``program`` (shown by ``get_program_info``)."""
        with self._lock:
            program.executions += 1

    def ids(self, scope: Scope) -> List[str]:
        """Program ids in a scope, sorted."""
        with self._lock:
            return sorted(self._scopes.get(scope, {}))

    def drop_scope(self, scope: Scope) -> int:
        """Forget a whole scope; returns how many programs it held."""
        with self._lock:
            return len(self._scopes.pop(scope, {}))

    def clear(self) -> int:
        """Forget every scope; returns how many programs were held."""
        with self._lock:
            removed = sum(len(programs) for programs in self._scopes.values())
            self._scopes.clear()
            return removed

    def __len__(self) -> int:
        with self._lock:
            return sum(len(programs) for programs in self._scopes.values())

"""Per-worker cache of built programs, scoped by session.

The host's session registry is the source of truth for program definitions; a worker only
caches what it has built. This module holds that cache without importing DSPy, so the generic
commands (``get_stats``, ``cleanup_session``, ``reset_state``) stay cheap on workers that never
ran a program.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from .definitions import ProgramSpec
from .errors import ProgramNotFound

#: Scope key; ``None`` is the anonymous scope used when a request carries no session.
Scope = Optional[str]


def scope_of(args: Dict[str, Any]) -> Scope:
    """The scope named by a request's ``session_id`` (absent or null = anonymous)."""
    session_id = args.get("session_id")
    if session_id is not None and not isinstance(session_id, str):
        raise ValueError(f"session_id must be a string or null, got {type(session_id).__name__}")
    return session_id


def definition_hash(definition: Dict[str, Any]) -> str:
    """A stable digest of a program definition, independent of key order."""
    canonical = json.dumps(definition, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass
class Program:
    """A built program and what it was built from."""

    spec: ProgramSpec
    definition: Dict[str, Any]
    digest: str
    module: Any
    executions: int = 0

    @property
    def program_id(self) -> str:
        """The program's id within its scope."""
        return self.spec.program_id


class ProgramStore:
    """Programs by scope, then by program id. One session never sees another's programs."""

    def __init__(self) -> None:
        self._scopes: Dict[Scope, Dict[str, Program]] = {}

    def get(self, scope: Scope, program_id: str) -> Optional[Program]:
        """The cached program, if this worker has built it in that scope."""
        return self._scopes.get(scope, {}).get(program_id)

    def require(self, scope: Scope, program_id: str) -> Program:
        """The cached program, or :class:`ProgramNotFound` naming the scope."""
        program = self.get(scope, program_id)
        if program is None:
            where = "the anonymous scope" if scope is None else f"session {scope!r}"
            raise ProgramNotFound(f"no program {program_id!r} in {where}; create it first")
        return program

    def put(self, scope: Scope, program: Program) -> None:
        """Cache ``program``, replacing any program with the same id in that scope."""
        self._scopes.setdefault(scope, {})[program.program_id] = program

    def remove(self, scope: Scope, program_id: str) -> None:
        """Drop one program; :class:`ProgramNotFound` if it is not there."""
        self.require(scope, program_id)
        programs = self._scopes[scope]
        del programs[program_id]
        if not programs:
            del self._scopes[scope]

    def ids(self, scope: Scope) -> List[str]:
        """Program ids in a scope, sorted."""
        return sorted(self._scopes.get(scope, {}))

    def drop_scope(self, scope: Scope) -> int:
        """Forget a whole scope; returns how many programs it held."""
        return len(self._scopes.pop(scope, {}))

    def clear(self) -> int:
        """Forget every scope; returns how many programs were held."""
        removed = len(self)
        self._scopes.clear()
        return removed

    def __len__(self) -> int:
        return sum(len(programs) for programs in self._scopes.values())

"""The registry of user commands and the ``@command`` decorator.

Handler modules named in ``DSPEX_HANDLERS`` are imported by the worker at start-up; importing
them runs their ``@command`` decorators, which record the functions here. Registration happens
at import time, so the registry is module state: one worker process serves one registry.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, TypeVar, Union, overload

#: Commands the worker implements itself. A user command may not take any of these names:
#: the host relies on their meaning, so shadowing one would silently change the protocol.
BUILTIN_COMMANDS = frozenset(
    {
        "ping",
        "echo",
        "get_stats",
        "cleanup_session",
        "reset_state",
        "shutdown",
        "configure_lm",
        "create_program",
        "execute_program",
        "list_programs",
        "delete_program",
        "get_program_info",
        "evaluate",
        "optimize",
    }
)

Handler = Callable[[Dict[str, Any]], Any]
F = TypeVar("F", bound=Handler)

_USER_COMMANDS: Dict[str, Handler] = {}


@overload
def command(name_or_function: F) -> F: ...


@overload
def command(name_or_function: Optional[str] = None) -> Callable[[F], F]: ...


def command(name_or_function: Union[str, F, None] = None) -> Union[F, Callable[[F], F]]:
    """Register a function as a worker command.

    Use it bare (``@command``: the command is named after the function) or with a name
    (``@command("name")``). The function receives the request's ``args`` dict and returns
    JSON-serialisable data; an exception it raises becomes a structured error whose type is
    the exception's class name.

    Raises ``ValueError`` at import time if the name is empty, is a built-in command, or is
    already registered: a handler module with a clash must not load half-working.
    """
    if callable(name_or_function):
        function = name_or_function
        _register(function.__name__, function)
        return function

    name = name_or_function

    def decorate(function: F) -> F:
        _register(name if name is not None else function.__name__, function)
        return function

    return decorate


def _register(name: str, function: Handler) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"command name must be a non-empty string, got {name!r}")
    if name in BUILTIN_COMMANDS:
        raise ValueError(f"command {name!r} is built into dspex_bridge and cannot be redefined")
    existing = _USER_COMMANDS.get(name)
    if existing is not None and existing is not function:
        raise ValueError(f"command {name!r} is already registered by {existing.__module__}.{existing.__qualname__}")
    _USER_COMMANDS[name] = function


def user_command(name: str) -> Optional[Handler]:
    """The user command registered under ``name``, if any."""
    return _USER_COMMANDS.get(name)


def user_command_names() -> list:
    """Names of all registered user commands, sorted."""
    return sorted(_USER_COMMANDS)


def unregister(name: str) -> None:
    """Remove a user command; for tests that register throwaway commands."""
    _USER_COMMANDS.pop(name, None)

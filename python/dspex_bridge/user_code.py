"""Finding users' code by name: ``"package.module:attribute"`` for factories and metrics.

User modules come from ``python.path`` (the worker prepends ``DSPEX_PYTHON_PATH`` to
``sys.path``), never from the host's working directory. Every way a name can fail to resolve
is the caller's mistake, reported as :class:`InvalidRequest` that says which part failed and
what to check, so it never counts against a worker's health.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any, Callable, Dict

from .errors import InvalidRequest

_cache: Dict[str, Any] = {}
_lock = threading.Lock()


def import_object(target: Any, role: str) -> Any:
    """The object named ``"pkg.mod:attr"`` (``attr`` may be dotted); ``role`` names it in errors."""
    if not isinstance(target, str) or target.count(":") != 1:
        raise InvalidRequest(f'{role} must be "package.module:attribute", got {target!r}')
    with _lock:
        if target in _cache:
            return _cache[target]
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise InvalidRequest(f'{role} must be "package.module:attribute", got {target!r}')
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise InvalidRequest(
                f"{role} {target!r}: module {module_name!r} was not found; python.path must contain the "
                "directory it lives in (workers never import from the current directory)"
            ) from exc
        raise InvalidRequest(
            f"{role} {target!r}: importing {module_name!r} failed because it imports {exc.name!r}, which is "
            "not installed in the worker's environment (add it to python.requirements or python.path)"
        ) from exc
    except Exception as exc:
        raise InvalidRequest(
            f"{role} {target!r}: importing {module_name!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    value: Any = module
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise InvalidRequest(f"{role} {target!r}: module {module_name!r} has no attribute {attribute!r}") from None
    with _lock:
        _cache[target] = value
    return value


def import_callable(target: Any, role: str) -> Callable[..., Any]:
    """Like :func:`import_object`, and the object must be callable."""
    value = import_object(target, role)
    if not callable(value):
        raise InvalidRequest(f"{role} {target!r} is a {type(value).__name__}, not a callable")
    return value

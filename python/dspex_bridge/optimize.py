"""Running a DSPy optimizer inside one worker, with progress while it runs.

``optimize`` is one long request: the optimizer makes many LM calls, in up to
``ctx.concurrency`` threads (its ``num_threads``, where it takes one) so it uses the worker's
slots and no more. Three optimizers, by wire name:

=================== ======================================= ===========================
``bootstrap_fewshot`` ``BootstrapFewShot``                   no ``num_threads``, no valset
``bootstrap_random``  ``BootstrapFewShotWithRandomSearch``   ``num_threads``
``mipro_v2``          ``MIPROv2`` (``auto="light"`` default) ``num_threads``; needs optuna
=================== ======================================= ===========================

``params`` go to the optimizer's constructor when it takes them, else to ``compile``; a key
neither takes is an :class:`InvalidRequest` listing the ones they do. Keys dspex sets itself
(``metric``, ``trainset``, ``valset``, ``student``, ``teacher``, ``num_threads``) cannot be
given there.

Progress (``ctx.emit({"kind": "progress", "message": ...})``) comes from three sources,
routed to the request they belong to through a DSPy context key, which DSPy copies into the
threads it starts: every metric call (so at least one event per trainset example the
optimizer scores, and per validation row), every ``dspy.Evaluate`` run (one per candidate
program), and DSPy's own log records (``dspy.*`` loggers at INFO and above, e.g. MIPROv2's
trial reports).

The result is written with ``program.save`` (JSON) to a temporary file next to ``out`` and
renamed into place, so a reader never sees half a state file; its digest is returned so the
host can put ``{path, digest}`` straight into a definition.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import os
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

import dspy
from dspy.utils.callback import BaseCallback

from .errors import InvalidRequest

log = logging.getLogger("dspex_bridge.optimize")

#: Wire name -> (DSPy class name, constructor defaults dspex applies).
OPTIMIZERS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "bootstrap_fewshot": ("BootstrapFewShot", {}),
    "bootstrap_random": ("BootstrapFewShotWithRandomSearch", {}),
    "mipro_v2": ("MIPROv2", {"auto": "light"}),
}

#: Arguments dspex passes itself; ``params`` may not set them.
RESERVED_PARAMS = frozenset({"self", "metric", "student", "trainset", "valset", "teacher", "num_threads"})

#: The DSPy settings key under which a request's :class:`Progress` travels.
PROGRESS_KEY = "dspex_progress"


class Progress:
    """Sends progress events for one request; safe to call from any thread."""

    def __init__(self, ctx: Any, optimizer: str) -> None:
        self._ctx = ctx
        self._optimizer = optimizer
        self._lock = threading.Lock()
        self.metric_calls = 0
        self.evaluations = 0

    def emit(self, message: str, **fields: Any) -> None:
        emit = getattr(self._ctx, "emit", None)
        if emit is None:
            return
        try:
            emit({"kind": "progress", "optimizer": self._optimizer, "message": message, **fields})
        except Exception:  # a lost progress line must never fail the optimization
            log.debug("progress event dropped", exc_info=True)

    def metric_called(self, score: Any) -> None:
        with self._lock:
            self.metric_calls += 1
            count = self.metric_calls
        self.emit(f"metric call {count}: {_short(score)}", stage="metric", metric_calls=count)

    def evaluated(self, score: Any) -> None:
        with self._lock:
            self.evaluations += 1
            count = self.evaluations
        self.emit(f"candidate {count} evaluated: score {_short(score)}", stage="evaluate", candidates=count)


class _ProgressCallback(BaseCallback):
    """Reports each finished ``dspy.Evaluate`` run (one per candidate program)."""

    def on_evaluate_end(self, call_id: str, outputs: Any, exception: Optional[BaseException] = None) -> None:
        progress = dspy.settings.get(PROGRESS_KEY)
        if isinstance(progress, Progress) and exception is None:
            progress.evaluated(getattr(outputs, "score", outputs))


class _ProgressLogHandler(logging.Handler):
    """Forwards DSPy's log records to the progress of the request that logged them."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            progress = dspy.settings.get(PROGRESS_KEY)
        except Exception:
            return
        if isinstance(progress, Progress):
            message = record.getMessage().strip()
            if message:
                progress.emit(message, stage="log", logger=record.name, level=record.levelname)


_handler_lock = threading.Lock()
_handler_installed = False
_CALLBACK = _ProgressCallback()


def _install_log_handler() -> None:
    global _handler_installed
    with _handler_lock:
        if not _handler_installed:
            handler = _ProgressLogHandler(level=logging.INFO)
            logging.getLogger("dspy").addHandler(handler)
            _handler_installed = True


def optimizer_class(name: Any) -> Tuple[type, Dict[str, Any]]:
    """The DSPy optimizer class for a wire name, and dspex's defaults for it."""
    if name not in OPTIMIZERS:
        raise InvalidRequest(f"unknown optimizer {name!r} (expected one of {', '.join(OPTIMIZERS)})")
    class_name, defaults = OPTIMIZERS[name]
    import dspy.teleprompt

    return getattr(dspy.teleprompt, class_name), dict(defaults)


def split_params(cls: type, params: Any, defaults: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``params`` divided into constructor and ``compile`` keyword arguments (see module doc)."""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise InvalidRequest(f"params must be an object, got {type(params).__name__}")
    init_names = _keywords(cls.__init__)
    compile_names = _keywords(cls.compile)
    reserved = sorted(set(params) & RESERVED_PARAMS)
    if reserved:
        raise InvalidRequest(
            f"params cannot set {', '.join(map(repr, reserved))}: dspex passes them itself "
            "(the metric, trainset and valset from their own arguments, num_threads from the worker's concurrency)"
        )
    unknown = sorted(set(params) - init_names - compile_names)
    if unknown:
        accepted = sorted((init_names | compile_names) - RESERVED_PARAMS)
        raise InvalidRequest(
            f"{cls.__name__} takes no parameter(s) {', '.join(map(repr, unknown))}; it takes: {', '.join(accepted)}"
        )
    init_kwargs = {key: value for key, value in defaults.items() if key in init_names}
    compile_kwargs: Dict[str, Any] = {}
    for key, value in params.items():
        if key in init_names:
            init_kwargs[key] = value
        else:
            compile_kwargs[key] = value
    return init_kwargs, compile_kwargs


def _keywords(function: Callable[..., Any]) -> set:
    return {
        name
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }


def examples(rows: Any, what: str) -> List[Any]:
    """``[{"inputs": {...}, "labels": {...}}, ...]`` as ``dspy.Example`` objects."""
    from .evaluate import make_example

    if not isinstance(rows, list) or not rows:
        raise InvalidRequest(f"{what} must be a non-empty list of {{inputs, labels}} objects")
    result = []
    for index, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("inputs"), dict):
            raise InvalidRequest(f"{what}[{index}] must be an object with an 'inputs' object, got {row!r:.80}")
        labels = row.get("labels") or {}
        if not isinstance(labels, dict):
            raise InvalidRequest(f"{what}[{index}].labels must be an object, got {labels!r:.80}")
        result.append(make_example(row["inputs"], labels))
    return result


def out_path(out: Any) -> str:
    """The absolute state path to write, checked before any work is done."""
    if not isinstance(out, str) or not out:
        raise InvalidRequest(f"out must be the path of the state file to write, got {out!r}")
    if not out.endswith(".json"):
        raise InvalidRequest(f"out {out!r} must end in .json: dspex writes DSPy's JSON state format")
    path = os.path.abspath(out)
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise InvalidRequest(f"cannot write {path!r}: directory {parent!r} does not exist")
    return path


def run(
    name: str,
    student: Any,
    metric: Callable[..., Any],
    trainset: List[Any],
    valset: Optional[List[Any]],
    params: Any,
    num_threads: int,
    progress: Progress,
) -> Any:
    """Compile ``student`` with the optimizer ``name``; returns the optimized program."""
    cls, defaults = optimizer_class(name)
    init_kwargs, compile_kwargs = split_params(cls, params, defaults)
    init_names, compile_names = _keywords(cls.__init__), _keywords(cls.compile)
    if "num_threads" in init_names:
        init_kwargs["num_threads"] = num_threads
    if valset is not None:
        if "valset" not in compile_names:
            raise InvalidRequest(f"{name} takes no valset; it bootstraps from the trainset alone")
        compile_kwargs["valset"] = valset

    @functools.wraps(metric)
    def counted_metric(*args: Any, **kwargs: Any) -> Any:
        value = metric(*args, **kwargs)
        progress.metric_called(value)
        return value

    try:
        optimizer = cls(metric=counted_metric, **init_kwargs)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"{cls.__name__} rejected params: {exc}") from exc
    _install_log_handler()
    progress.emit(
        f"{name}: {cls.__name__} on {len(trainset)} training example(s)"
        + (f", {len(valset)} validation example(s)" if valset else "")
        + (f", {num_threads} thread(s)" if "num_threads" in init_names else ""),
        stage="start",
    )
    callbacks = [*(dspy.settings.get("callbacks") or []), _CALLBACK]
    with dspy.context(callbacks=callbacks, **{PROGRESS_KEY: progress}):
        return optimizer.compile(student, trainset=trainset, **compile_kwargs)


def save(program: Any, path: str) -> str:
    """Write ``program``'s state to ``path`` atomically; returns the SHA-256 of the file."""
    directory, base = os.path.split(path)
    temporary = os.path.join(directory, f".{base}.{os.getpid()}.{threading.get_ident()}.tmp.json")
    try:
        program.save(temporary)
        with open(temporary, "rb") as file:
            digest = hashlib.sha256(file.read()).hexdigest()
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return digest


def demo_count(program: Any) -> int:
    """Few-shot demos across all predictors of ``program``."""
    return sum(len(getattr(predictor, "demos", None) or []) for predictor in program.predictors())


def best_score(program: Any) -> Optional[float]:
    """The optimizer's own score of the program it returned, when it reports one."""
    score = getattr(program, "score", None)
    if score is None:
        candidates = getattr(program, "candidate_programs", None)
        if candidates:
            score = candidates[0].get("score") if isinstance(candidates[0], dict) else None
    if isinstance(score, (int, float)) and not isinstance(score, bool):
        return float(score)
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."

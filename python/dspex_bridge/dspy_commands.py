"""The DSPy half of the bridge: the commands that build, run, score and optimize programs.

The worker calls :meth:`DspyCommands.handlers` for ``{name: handler(args, ctx)}`` and
:meth:`DspyCommands.preload` when ``DSPEX_PRELOAD_DSPY=1``. Requests run concurrently in
threads; everything shared here (the program store, the LMs, the imported metrics) is
locked, and everything per request (the LM, the usage tracker, the dummy's format records)
travels in ``dspy.context``, which lives in a context variable of the request's thread.

``dspy`` is imported on the first command that needs it (or by ``preload``), never at
worker start-up, so workers that only answer ``ping``/``echo`` or user commands start in a
fraction of a second. The commands that merely look at the program cache
(``list_programs``, ``delete_program``, ``get_program_info``) do not import it either.

The pieces live in their own modules: :mod:`.definitions` (validating definitions),
:mod:`.build` (definition -> ``dspy.Module``), :mod:`.lm`/:mod:`.lm_client` (LM settings,
retries, rate limits, cache), :mod:`.usage` (token usage and cost), :mod:`.outputs`
(prediction -> JSON), :mod:`.evaluate` and :mod:`.optimize`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import warnings
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple

from .definitions import definition_program_id, parse_program
from .errors import InvalidRequest, LMError
from .evaluate import load_metric, make_example, score_of
from .lm import LMConfig, LMs
from .outputs import prediction_outputs
from .programs import Program, ProgramStore, definition_hash, scope_of

log = logging.getLogger("dspex_bridge.dspy")

Handler = Callable[[Dict[str, Any], Any], Any]

# Exceptions from these packages are LM client failures whichever layer raised them.
_LM_ERROR_MODULES = ("litellm", "openai", "anthropic", "httpx", "httpcore")


class DspyCommands:
    """Program, LM, evaluation and optimization commands over one worker's :class:`ProgramStore`."""

    def __init__(self, store: ProgramStore, env: Optional[Mapping[str, str]] = None) -> None:
        self._store = store
        self._env = dict(os.environ if env is None else env)
        self._lms = LMs(self._env)
        self._default: Optional[LMConfig] = None
        self._preloaded: Optional[str] = None
        self._dspy: Any = None
        self._load_lock = threading.Lock()

    def handlers(self) -> Dict[str, Handler]:
        """Every DSPy command, as ``handler(args, ctx)``."""
        return {
            "configure_lm": self.configure_lm,
            "create_program": self.create_program,
            "execute_program": self.execute_program,
            "list_programs": self.list_programs,
            "delete_program": self.delete_program,
            "get_program_info": self.get_program_info,
            "evaluate": self.evaluate,
            "optimize": self.optimize,
        }

    def preload(self) -> None:
        """Import DSPy and build the default LM with its client (``DSPEX_PRELOAD_DSPY=1``);
        :meth:`preloaded_lm` then names its model.

        The host starts its workers' imports in parallel, before any request waits; a
        worker then answers its first row without paying for them.
        """
        self._load_dspy()
        config = self._default_config()
        lm = self._lms.get(config)
        if not config.is_dummy:
            from .lm_client import preload_client

            kind = preload_client(lm)
            log.info("preloaded LM %r (%s client)", config.model, kind)
        self._preloaded = config.model

    def preloaded_lm(self) -> Optional[str]:
        """The model ``preload`` built, for ``ping``'s ``lm`` field (``None`` before)."""
        return self._preloaded

    # -- commands ---------------------------------------------------------------------------

    def configure_lm(self, args: Dict[str, Any], ctx: Any = None) -> Dict[str, Any]:
        """Make an LM this worker's default; a missing key fails here, not on first use."""
        config = LMConfig.from_args(args)
        self._load_dspy()
        self._lms.get(config)
        self._default = config
        log.info("default LM is now %r", config.model)
        return {"model": config.model}

    def create_program(self, args: Dict[str, Any], ctx: Any = None) -> Dict[str, Any]:
        """Build a program in the request's scope (always rebuilt: the host's registry decides).

        Args: ``{program_id?, definition, digest?, session_id?, metric?}``. ``metric``, when
        given, is imported and checked callable so ``evaluate``/``optimize`` cannot fail on it
        later.
        """
        scope = scope_of(args)
        definition = args.get("definition")
        spec = parse_program(definition, _program_id(args, required=False))
        if args.get("metric") is not None:
            load_metric(args["metric"])
        program = self._build(spec, definition, _digest(args))
        self._store.put(scope, program)
        log.info("created program %r (%s) in scope %r", spec.program_id, spec.module, scope)
        return {
            "program_id": spec.program_id,
            "session_id": scope,
            "module": spec.module,
            "signature": spec.signature_text(),
            "input_fields": list(program.input_fields),
            "output_fields": None if program.output_fields is None else list(program.output_fields),
        }

    def execute_program(self, args: Dict[str, Any], ctx: Any = None) -> Dict[str, Any]:
        """Run a program on one row: ``{program_id, outputs, usage}``."""
        program, inputs, config = self._request(args)
        with self._session(config) as usage:
            prediction = self._run(program, config, inputs)
            outputs = prediction_outputs(program.spec, prediction)
        self._store.count_execution(program)
        return {"program_id": program.program_id, "outputs": outputs, "usage": usage.summary()}

    def evaluate(self, args: Dict[str, Any], ctx: Any = None) -> Dict[str, Any]:
        """Run a program on one row and score it: ``{program_id, outputs, score, usage}``.

        See :mod:`.evaluate` for how this matches ``dspy.Evaluate``.
        """
        program, inputs, config = self._request(args)
        labels = args.get("labels") or {}
        if not isinstance(labels, dict):
            raise InvalidRequest(f"labels must be an object, got {type(labels).__name__}")
        metric_name = args.get("metric")
        metric = load_metric(metric_name)
        with self._session(config) as usage:
            example = make_example(inputs, labels)
            prediction = self._run(program, config, inputs)
            outputs = prediction_outputs(program.spec, prediction)
            score = score_of(metric(example, prediction), metric_name)
        self._store.count_execution(program)
        return {"program_id": program.program_id, "outputs": outputs, "score": score, "usage": usage.summary()}

    def optimize(self, args: Dict[str, Any], ctx: Any = None) -> Dict[str, Any]:
        """Optimize a program: ``{state_path, digest, optimizer, demos, score, usage}``.

        Args: ``{definition, optimizer, trainset, valset?, metric, params?, out, lm?,
        session_id?}``; see :mod:`.optimize`. Everything the caller can get wrong is checked
        before the first LM call.
        """
        from . import optimize

        self._load_dspy()
        name = args.get("optimizer")
        optimize.optimizer_class(name)
        path = optimize.out_path(args.get("out"))
        metric = load_metric(args.get("metric"))
        definition = args.get("definition")
        spec = parse_program(definition, _program_id(args, required=False))
        trainset = optimize.examples(args.get("trainset"), "trainset")
        valset = optimize.examples(args["valset"], "valset") if args.get("valset") is not None else None
        config = self._lm_config(args)
        student = self._build(spec, definition, _digest(args)).module
        concurrency = max(1, int(getattr(ctx, "concurrency", 1) or 1))
        progress = optimize.Progress(ctx, name)
        with self._session(config, optimizing=True) as usage:
            try:
                optimized = optimize.run(
                    name, student, metric, trainset, valset, args.get("params"), concurrency, progress
                )
            except Exception as exc:
                failure = self._lm_failure(config, exc)
                if failure is None:
                    raise
                raise failure from exc
            digest = optimize.save(optimized, path)
        demos = optimize.demo_count(optimized)
        score = optimize.best_score(optimized)
        progress.emit(f"saved {path} ({demos} demo(s))", stage="done")
        return {
            "state_path": path,
            "digest": digest,
            "optimizer": name,
            "demos": demos,
            "score": score,
            "usage": usage.summary(),
        }

    def list_programs(self, args: Dict[str, Any], ctx: Any = None) -> Dict[str, Any]:
        """Program ids in the request's scope, sorted."""
        return {"programs": self._store.ids(scope_of(args))}

    def delete_program(self, args: Dict[str, Any], ctx: Any = None) -> Dict[str, Any]:
        """Forget one program; ``ProgramNotFound`` if it is not in that scope."""
        program_id = _program_id(args, required=True)
        self._store.remove(scope_of(args), program_id)
        return {"deleted": True}

    def get_program_info(self, args: Dict[str, Any], ctx: Any = None) -> Dict[str, Any]:
        """What a cached program is and how often it ran on this worker."""
        program = self._store.require(scope_of(args), _program_id(args, required=True))
        spec = program.spec
        return {
            "program_id": program.program_id,
            "module": spec.module,
            "signature": spec.signature_text(),
            "inputs": [field.to_json() for field in spec.inputs],
            "outputs": [field.to_json() for field in spec.outputs],
            "input_fields": list(program.input_fields),
            "output_fields": None if program.output_fields is None else list(program.output_fields),
            "factory": spec.factory,
            "state": None if spec.state is None else {"path": spec.state.path, "digest": spec.state.digest},
            "demos": len(spec.demos),
            "digest": program.digest,
            "executions": program.executions,
        }

    # -- internals ----------------------------------------------------------------------------

    def _request(self, args: Dict[str, Any]) -> Tuple[Program, Dict[str, Any], LMConfig]:
        """The program, inputs and LM settings of an ``execute_program``/``evaluate`` request."""
        inputs = args.get("inputs")
        if inputs is None:
            inputs = {}
        if not isinstance(inputs, dict):
            raise InvalidRequest(f"inputs must be an object, got {type(inputs).__name__}")
        program = self._program(args)
        from .build import check_inputs

        check_inputs(program, inputs)
        return program, inputs, self._lm_config(args)

    def _program(self, args: Dict[str, Any]) -> Program:
        """The program a request names, from the cache when its digest matches.

        With a ``digest`` equal to the cached program's, the definition is neither parsed
        nor hashed (the host sends both on every row). Otherwise the definition is parsed
        and built, and the cache updated: the host's registry is the truth.
        """
        scope = scope_of(args)
        definition = args.get("definition")
        program_id = _program_id(args, required=False)
        if program_id is None and definition is not None:
            program_id = definition_program_id(definition)
        if program_id is None:
            raise InvalidRequest("execute_program needs a program_id or a definition")
        digest = _digest(args)
        cached = self._store.get(scope, program_id)
        if cached is not None and digest is not None and cached.digest == digest:
            return cached
        if definition is None:
            return self._store.require(scope, program_id)
        spec = parse_program(definition, program_id)
        digest = digest or _canonical_digest(spec.program_id, definition)
        if cached is not None and cached.digest == digest:
            return cached
        # A worker that never saw this program (or saw an older version) builds it from the
        # definition the host sent.
        program = self._build(spec, definition, digest)
        self._store.put(scope, program)
        return program

    def _build(self, spec: Any, definition: Any, digest: Optional[str]) -> Program:
        self._load_dspy()
        from .build import build_program

        return build_program(spec, digest or _canonical_digest(spec.program_id, definition))

    def _lm_config(self, args: Dict[str, Any]) -> LMConfig:
        lm_args = args.get("lm")
        return self._default_config() if lm_args is None else LMConfig.from_args(lm_args)

    def _default_config(self) -> LMConfig:
        if self._default is None:
            self._default = LMConfig.from_env(self._env)
        return self._default

    @contextlib.contextmanager
    def _session(self, config: LMConfig, optimizing: bool = False) -> Iterator[Any]:
        """The DSPy context of one request: its LM and its own usage tracker.

        An optimizer run retries 429s inside the worker (it is one long request the host
        cannot usefully retry) and keeps DSPy's call history, which optimizers read; a row
        request does neither (see :mod:`.usage`).
        """
        dspy = self._load_dspy()
        from .usage import KEEP_HISTORY, RequestUsage

        lm = self._lms.get(config)
        if optimizing and hasattr(lm, "with_rate_limit_retries"):
            lm = lm.with_rate_limit_retries()
        usage = RequestUsage()
        settings: Dict[str, Any] = {"lm": lm, "usage_tracker": usage, KEEP_HISTORY: optimizing}
        if config.is_dummy:
            from .dummy_lm import FORMAT_RECORDER

            callbacks = list(dspy.settings.get("callbacks") or [])
            if FORMAT_RECORDER not in callbacks:
                settings["callbacks"] = [*callbacks, FORMAT_RECORDER]
        with dspy.context(**settings):
            yield usage

    def _run(self, program: Program, config: LMConfig, inputs: Dict[str, Any]) -> Any:
        try:
            return program.module(**inputs)
        except Exception as exc:
            failure = self._lm_failure(config, exc)
            if failure is None:
                raise
            raise failure from exc

    def _lm_failure(self, config: LMConfig, exc: BaseException) -> Optional[BaseException]:
        """The ``LMError`` an LM failure that escaped the LM's own policy becomes, if it is one."""
        if isinstance(exc, LMError):
            return None
        dspy_lm_error = getattr(self._dspy, "LMError", None)
        is_lm = (isinstance(dspy_lm_error, type) and isinstance(exc, dspy_lm_error)) or type(exc).__module__.split(".")[
            0
        ] in _LM_ERROR_MODULES
        if not is_lm:
            return None
        from .lm_client import failure_message

        return LMError(failure_message(config.model, exc, config.api_key_env))

    def _load_dspy(self) -> Any:
        """Import and prepare DSPy once: its response cache off until an LM asks for one."""
        if self._dspy is not None:
            return self._dspy
        with self._load_lock:
            if self._dspy is not None:
                return self._dspy
            # The dummy is a BaseLM subclass with forward(); DSPy 3.4 flags that interface as
            # deprecated on every call. It is supported throughout 3.4 (the pinned version).
            warnings.filterwarnings(
                "ignore", message=r"Implementing custom LMs through BaseLM", category=DeprecationWarning
            )
            import dspy

            # Workers must not write under $HOME: no cache until an LM's settings ask for one.
            dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
            log.info("loaded dspy %s", getattr(dspy, "__version__", "?"))
            self._dspy = dspy
            return dspy


def _canonical_digest(program_id: str, definition: Dict[str, Any]) -> str:
    """The bridge's digest of a definition, with its id filled in so where the id came from does not matter."""
    return definition_hash({**definition, "program_id": program_id})


def _digest(args: Dict[str, Any]) -> Optional[str]:
    digest = args.get("digest")
    if digest is not None and not isinstance(digest, str):
        raise InvalidRequest(f"digest must be a string, got {type(digest).__name__}")
    return digest


def _program_id(args: Dict[str, Any], required: bool) -> Optional[str]:
    program_id = args.get("program_id")
    if program_id is None and not required:
        return None
    if not isinstance(program_id, str) or not program_id:
        raise InvalidRequest(f"program_id must be a non-empty string, got {program_id!r}")
    return program_id

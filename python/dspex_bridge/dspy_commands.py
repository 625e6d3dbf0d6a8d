"""The DSPy half of the bridge: building, caching and running programs, and the LM setup.

``dspy`` is imported on the first command that needs it, never at worker start-up, so workers
that only answer ``ping``/``echo`` or user commands start in a fraction of a second. The
commands that merely look at the program cache (``list_programs``, ``delete_program``,
``get_program_info``) do not import it either.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from .definitions import ProgramSpec, parse_program
from .errors import LMError, ProgramExists
from .programs import Program, ProgramStore, definition_hash, scope_of

log = logging.getLogger("dspex_bridge.dspy")

#: Seconds a real LM call may take before the provider client gives up. The host's request
#: timeout still bounds the whole request; this keeps a dead endpoint from hanging a worker.
DEFAULT_LM_TIMEOUT = 60.0

# Providers whose key variable is well known, so a missing key is reported before DSPy or
# LiteLLM is asked to do anything. Other providers (local servers, exotic hosts) are left to
# DSPy, whose own missing-credential error is mapped to LMError as well.
_PROVIDER_KEY_VARS: Dict[str, Tuple[str, ...]] = {
    "openai": ("OPENAI_API_KEY",),
    "anthropic": ("ANTHROPIC_API_KEY",),
    "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
    "groq": ("GROQ_API_KEY",),
    "mistral": ("MISTRAL_API_KEY",),
    "deepseek": ("DEEPSEEK_API_KEY",),
    "openrouter": ("OPENROUTER_API_KEY",),
}

_LM_ERROR_MODULES = ("litellm", "openai", "anthropic", "httpx", "httpcore")


@dataclass(frozen=True)
class LMConfig:
    """What an LM is built from; equal configs share one LM object."""

    model: str
    api_key_env: Optional[str] = None
    temperature: Optional[float] = None
    max_tokens: Optional[int] = None
    timeout: float = DEFAULT_LM_TIMEOUT

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> LMConfig:
        """Read ``{model, api_key_env?, temperature?, max_tokens?, timeout?}``."""
        model = args.get("model")
        if not isinstance(model, str) or not model:
            raise ValueError(f"lm.model must be a non-empty string, got {model!r}")
        api_key_env = args.get("api_key_env")
        if api_key_env is not None and (not isinstance(api_key_env, str) or not api_key_env):
            raise ValueError(f"lm.api_key_env must be a variable name, got {api_key_env!r}")
        temperature = _optional_number(args.get("temperature"), "lm.temperature")
        max_tokens = args.get("max_tokens")
        if max_tokens is not None and (
            isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
        ):
            raise ValueError(f"lm.max_tokens must be a positive integer, got {max_tokens!r}")
        timeout = _optional_number(args.get("timeout"), "lm.timeout")
        return cls(model, api_key_env, temperature, max_tokens, DEFAULT_LM_TIMEOUT if timeout is None else timeout)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> LMConfig:
        """The worker's default LM from ``DSPEX_LM_*`` (model ``dummy`` when unset)."""
        raw: Dict[str, Any] = {"model": env.get("DSPEX_LM_MODEL") or "dummy"}
        if env.get("DSPEX_LM_API_KEY_ENV"):
            raw["api_key_env"] = env["DSPEX_LM_API_KEY_ENV"]
        for name, key, parse in (
            ("DSPEX_LM_TEMPERATURE", "temperature", float),
            ("DSPEX_LM_MAX_TOKENS", "max_tokens", int),
        ):
            text = env.get(name)
            if text:
                try:
                    raw[key] = parse(text)
                except ValueError:
                    raise ValueError(f"{name}={text!r} is not a valid {parse.__name__} (lm.{key})") from None
        return cls.from_args(raw)


def _optional_number(value: Any, what: str) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} must be a number, got {value!r}")
    return float(value)


class DspyCommands:
    """Program and LM commands over one worker's :class:`ProgramStore`."""

    def __init__(self, store: ProgramStore, env: Optional[Mapping[str, str]] = None) -> None:
        self._store = store
        self._env = dict(os.environ if env is None else env)
        self._default: Optional[LMConfig] = None
        self._lms: Dict[LMConfig, Any] = {}
        self._dspy: Any = None

    def handlers(self) -> Dict[str, Any]:
        """The commands as ``handler(args, ctx)`` (contract §5); a shim until the rewrite."""
        commands = (
            self.configure_lm,
            self.create_program,
            self.execute_program,
            self.list_programs,
            self.delete_program,
            self.get_program_info,
        )
        return {method.__name__: (lambda args, ctx, method=method: method(args)) for method in commands}

    # -- commands ---------------------------------------------------------------------------

    def create_program(self, args: Dict[str, Any]) -> Dict[str, Any]:
        """Build a program in the request's scope; ``ProgramExists`` if the id is taken.

        ``replace: true`` overwrites a cached copy instead: the Rust host keeps the program
        registry and has already checked for duplicates, so a copy left in this worker's
        cache by a deleted program of the same id is stale, not a conflict.
        """
        scope = scope_of(args)
        spec = parse_program(args.get("definition"), _program_id(args, required=False))
        if self._store.get(scope, spec.program_id) is not None and not args.get("replace"):
            where = "the anonymous scope" if scope is None else f"session {scope!r}"
            raise ProgramExists(f"program {spec.program_id!r} already exists in {where}; delete it first")
        program = self._build(spec, args["definition"])
        self._store.put(scope, program)
        log.info("created program %r (%s) in scope %r", spec.program_id, spec.module, scope)
        return {
            "program_id": spec.program_id,
            "session_id": scope,
            "module": spec.module,
            "signature": spec.signature_text(),
        }

    def execute_program(self, args: Dict[str, Any]) -> Dict[str, Any]:
        """Run a program, (re)building it from the sent definition when the cache is stale."""
        scope = scope_of(args)
        program_id = _program_id(args, required=False)
        definition = args.get("definition")
        if definition is not None:
            spec = parse_program(definition, program_id)
            program = self._store.get(scope, spec.program_id)
            if program is None or program.digest != definition_hash(_canonical(spec, definition)):
                # A worker that never saw this program (or saw an older version) builds it
                # from the definition the host sent: the host's registry is the truth.
                program = self._build(spec, definition)
                self._store.put(scope, program)
        else:
            if program_id is None:
                raise ValueError("execute_program needs a program_id or a definition")
            program = self._store.require(scope, program_id)

        inputs = args.get("inputs") or {}
        if not isinstance(inputs, dict):
            raise ValueError(f"inputs must be an object, got {type(inputs).__name__}")
        lm_args = args.get("lm")
        if lm_args is not None and not isinstance(lm_args, dict):
            raise ValueError(f"lm must be an object or null, got {type(lm_args).__name__}")
        config = LMConfig.from_args(lm_args) if lm_args is not None else self._default_config()
        prediction = self._run(program, config, inputs)
        program.executions += 1
        return {"program_id": program.program_id, "outputs": self._outputs(program, prediction)}

    def list_programs(self, args: Dict[str, Any]) -> Dict[str, Any]:
        """Program ids in the request's scope, sorted."""
        return {"programs": self._store.ids(scope_of(args))}

    def delete_program(self, args: Dict[str, Any]) -> Dict[str, Any]:
        """Forget one program; ``ProgramNotFound`` if it is not in that scope."""
        program_id = _program_id(args, required=True)
        self._store.remove(scope_of(args), program_id)
        return {"deleted": True}

    def get_program_info(self, args: Dict[str, Any]) -> Dict[str, Any]:
        """What a cached program is and how often it ran on this worker."""
        program = self._store.require(scope_of(args), _program_id(args, required=True))
        spec = program.spec
        return {
            "program_id": program.program_id,
            "module": spec.module,
            "signature": spec.signature_text(),
            "inputs": [field.to_json() for field in spec.inputs],
            "outputs": [field.to_json() for field in spec.outputs],
            "executions": program.executions,
        }

    def configure_lm(self, args: Dict[str, Any]) -> Dict[str, Any]:
        """Make an LM this worker's default; a missing key fails here, not on first use."""
        config = LMConfig.from_args(args)
        lm = self._lm(config)
        self._default = config
        self._load_dspy().configure(lm=lm)
        log.info("default LM is now %r", config.model)
        return {"model": config.model}

    # -- internals ----------------------------------------------------------------------------

    def _default_config(self) -> LMConfig:
        if self._default is None:
            self._default = LMConfig.from_env(self._env)
        return self._default

    def preload(self) -> None:
        """Import DSPy now rather than on the first DSPy command (``DSPEX_PRELOAD_DSPY=1``):
        the host then starts its workers' imports in parallel, before any request waits."""
        self._load_dspy()

    def _load_dspy(self) -> Any:
        """Import and prepare DSPy once: no disk cache, the dummy's recorder installed."""
        if self._dspy is not None:
            return self._dspy
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        # The dummy is a BaseLM subclass with forward(); DSPy 3.4 flags that interface as
        # deprecated on every call. It is supported throughout 3.4 (the pinned version).
        warnings.filterwarnings(
            "ignore", message=r"Implementing custom LMs through BaseLM", category=DeprecationWarning
        )
        import dspy

        from .dummy_lm import FORMAT_RECORDER

        # Workers must not write under $HOME, and a cache would let repeated dummy calls
        # skip the adapter path tests rely on; real LMs are built with cache=False too.
        dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
        dspy.configure(callbacks=[*(dspy.settings.callbacks or []), FORMAT_RECORDER])
        log.info("loaded dspy %s", getattr(dspy, "__version__", "?"))
        self._dspy = dspy
        return dspy

    def _build(self, spec: ProgramSpec, definition: Dict[str, Any]) -> Program:
        dspy = self._load_dspy()
        fields: Dict[str, Any] = {}
        for field in spec.inputs:
            fields[field.name] = (field.annotation, _field(dspy.InputField, field.description))
        for field in spec.outputs:
            fields[field.name] = (field.annotation, _field(dspy.OutputField, field.description))
        try:
            signature = dspy.make_signature(
                fields, instructions=spec.instructions, signature_name=spec.name or "StringSignature"
            )
            module = dspy.ChainOfThought(signature) if spec.module == "chain_of_thought" else dspy.Predict(signature)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"program {spec.program_id!r}: DSPy rejected the signature: {exc}") from exc
        canonical = _canonical(spec, definition)
        return Program(spec, canonical, definition_hash(canonical), module)

    def _lm(self, config: LMConfig) -> Any:
        lm = self._lms.get(config)
        if lm is None:
            lm = self._build_lm(config)
            self._lms[config] = lm
        return lm

    def _build_lm(self, config: LMConfig) -> Any:
        dspy = self._load_dspy()
        if config.model == "dummy":
            from .dummy_lm import DummyLM

            return DummyLM()
        api_key = _api_key(config, self._env)
        kwargs: Dict[str, Any] = {"cache": False, "num_retries": 0, "timeout": config.timeout}
        if api_key is not None:
            kwargs["api_key"] = api_key
        if config.temperature is not None:
            kwargs["temperature"] = config.temperature
        if config.max_tokens is not None:
            kwargs["max_tokens"] = config.max_tokens
        try:
            return dspy.LM(config.model, **kwargs)
        except Exception as exc:
            raise LMError(f"cannot set up LM {config.model!r}: {exc}") from exc

    def _run(self, program: Program, config: LMConfig, inputs: Dict[str, Any]) -> Any:
        dspy = self._load_dspy()
        lm = self._lm(config)
        try:
            with dspy.context(lm=lm):
                return program.module(**inputs)
        except Exception as exc:
            if _is_lm_failure(exc, dspy):
                raise LMError(_lm_failure_message(config, exc)) from exc
            raise

    def _outputs(self, program: Program, prediction: Any) -> Dict[str, Any]:
        declared = {field.name: field.type_term for field in program.spec.outputs}
        outputs: Dict[str, Any] = {}
        # Every predicted field, declared ones typed; chain_of_thought adds `reasoning`.
        for name in prediction.keys():  # noqa: SIM118 - a Prediction, not a dict
            outputs[name] = to_json(prediction[name], declared.get(name))
        return outputs


def _canonical(spec: ProgramSpec, definition: Dict[str, Any]) -> Dict[str, Any]:
    """The definition with its id filled in, so its hash does not depend on where the id came from."""
    return {**definition, "program_id": spec.program_id}


def _field(factory: Any, description: Optional[str]) -> Any:
    return factory(desc=description) if description else factory()


def _program_id(args: Dict[str, Any], required: bool) -> Optional[str]:
    program_id = args.get("program_id")
    if program_id is None and not required:
        return None
    if not isinstance(program_id, str) or not program_id:
        raise ValueError(f"program_id must be a non-empty string, got {program_id!r}")
    return program_id


def _api_key(config: LMConfig, env: Mapping[str, str]) -> Optional[str]:
    """The key to pass to DSPy, failing before any network call when it is missing."""
    if config.api_key_env is not None:
        key = env.get(config.api_key_env) or os.environ.get(config.api_key_env)
        if not key:
            raise LMError(
                f"no API key for LM {config.model!r}: set {config.api_key_env} "
                "(the variable lm.api_key_env names) in the worker's environment"
            )
        return key
    provider = config.model.split("/", 1)[0] if "/" in config.model else None
    candidates = _PROVIDER_KEY_VARS.get(provider or "")
    if candidates and not any(env.get(name) or os.environ.get(name) for name in candidates):
        raise LMError(
            f"no API key for LM {config.model!r}: set {' or '.join(candidates)} "
            "(or name the variable holding the key in lm.api_key_env)"
        )
    return None


def _is_lm_failure(exc: BaseException, dspy: Any) -> bool:
    dspy_lm_error = getattr(dspy, "LMError", None)
    if isinstance(dspy_lm_error, type) and isinstance(exc, dspy_lm_error):
        return True
    return type(exc).__module__.split(".")[0] in _LM_ERROR_MODULES


def _lm_failure_message(config: LMConfig, exc: BaseException) -> str:
    detail = str(exc).strip() or type(exc).__name__
    message = f"LM {config.model!r} failed ({type(exc).__name__}): {detail}"
    names = type(exc).__name__.lower()
    if "auth" in names or "config" in names or "api key" in detail.lower():
        hint = config.api_key_env or "the key variable"
        message += f"\nCheck that {hint} holds a valid key (lm.api_key_env names the variable)."
    return message


def to_json(value: Any, type_term: Any = None) -> Any:
    """Convert a predicted value to plain JSON, honouring the declared type where known.

    A declared ``float`` comes back as a JSON number with a fractional part even when the
    value happens to be whole, so typed consumers never see an integer there.
    """
    if value is None:
        return None
    if type_term == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return _finite(float(value))
    if type_term == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(type_term, dict) and len(type_term) == 1:
        ((kind, inner),) = type_term.items()
        if kind == "list" and isinstance(value, (list, tuple)):
            return [to_json(item, inner) for item in value]
        if kind == "dict" and isinstance(value, dict):
            return {str(key): to_json(item, inner) for key, item in value.items()}
        if kind == "optional":
            return to_json(value, inner)
    if isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, dict):
        return {str(key): to_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json(item) for item in value]
    if isinstance(value, enum.Enum):
        return to_json(value.value)
    model_dump = getattr(value, "model_dump", None)
    if callable(model_dump):
        return to_json(model_dump(mode="json"))
    to_dict = getattr(value, "toDict", None)
    if callable(to_dict):
        return to_json(to_dict())
    return str(value)


def _finite(value: float) -> Optional[float]:
    # NaN and infinities are not JSON; the host would reject the whole frame.
    return value if math.isfinite(value) else None

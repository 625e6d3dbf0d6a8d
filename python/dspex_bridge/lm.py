"""LM settings (contract §4) and the worker's LMs built from them.

A worker has one default LM, read from ``DSPEX_LM`` (a JSON object) or set by
``configure_lm``, and a request may bring its own ``lm`` object. Both are parsed into an
:class:`LMConfig` here, without importing DSPy; :class:`LMs` builds each distinct config
once (DSPy LMs are thread-safe and keep their HTTP connection pools) and owns DSPy's
response cache, which is one store per process.

How the LM is built: ``dspy.LM(model, api_base=..., api_key=..., timeout=..., cache=...,
num_retries=0, **extra)``, through :mod:`dspex_bridge.lm_client`. With ``api_base`` given as
an argument (never as ``OPENAI_API_BASE``), DSPy 3.4 picks its native client for the
providers it knows (``openai/...`` included) and LiteLLM otherwise; ``extra={"engine":
"litellm"}`` forces LiteLLM. DSPy's own retries are off: dspex retries each LM call itself
(see ``lm_client``) so that a 429 can go back to the host instead of being retried here.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from .errors import InvalidRequest, LMError

log = logging.getLogger("dspex_bridge.lm")

#: The model name that selects the offline, deterministic LM (``dummy_lm``).
DUMMY_MODEL = "dummy"

#: Seconds a real LM call may take before the client gives up (and dspex retries it).
DEFAULT_TIMEOUT = 60.0

#: Retries of a failed LM call (5xx, timeout, connection error) before ``LMError``.
DEFAULT_NUM_RETRIES = 3

#: Entries of DSPy's in-memory response cache. DSPy's default (a million) would let a
#: long-lived worker grow without a useful bound; the disk tier keeps everything anyway.
MEMORY_CACHE_ENTRIES = 10_000

CACHE_MODES = ("off", "memory", "disk")

# Settings with a key of their own; ``extra`` may not smuggle a second value for them.
_NAMED_KWARGS = frozenset(
    {"model", "api_key", "api_base", "base_url", "temperature", "max_tokens", "timeout", "num_retries", "cache"}
)

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

#: Sent as the key to an ``api_base`` that needs none (local vLLM, llama.cpp, Ollama ...):
#: OpenAI-style clients refuse to send a request without some key.
PLACEHOLDER_KEY = "dspex-no-key"


@dataclass(frozen=True)
class LMConfig:
    """What an LM is built from (contract §4); equal configs share one LM object."""

    model: str
    api_key_env: Optional[str] = None
    api_base: Optional[str] = None
    temperature: Optional[float] = None
    max_tokens: Optional[int] = None
    timeout: float = DEFAULT_TIMEOUT
    num_retries: int = DEFAULT_NUM_RETRIES
    extra: Dict[str, Any] = field(default_factory=dict)
    cache: str = "off"
    cache_dir: Optional[str] = None

    @functools.cached_property
    def key(self) -> str:
        """A canonical string for this config, to share one LM per distinct config (computed
        once: the default config is looked up on every request)."""
        return json.dumps(
            [
                self.model,
                self.api_key_env,
                self.api_base,
                self.temperature,
                self.max_tokens,
                self.timeout,
                self.num_retries,
                self.extra,
                self.cache,
                self.cache_dir,
            ],
            sort_keys=True,
            default=str,
        )

    @property
    def is_dummy(self) -> bool:
        return self.model == DUMMY_MODEL

    @classmethod
    def from_args(cls, args: Any, where: str = "lm") -> LMConfig:
        """Read an ``lm`` object; a bad value is an :class:`InvalidRequest` naming the key."""
        if not isinstance(args, dict):
            raise InvalidRequest(f"{where} must be an object of LM settings, got {type(args).__name__}")
        known = {
            "model",
            "api_key_env",
            "api_base",
            "temperature",
            "max_tokens",
            "timeout",
            "num_retries",
            "extra",
            "cache",
            "cache_dir",
        }
        unknown = sorted(set(args) - known)
        if unknown:
            raise InvalidRequest(
                f"{where} has unknown key(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}"
            )
        model = args.get("model")
        if not isinstance(model, str) or not model.strip():
            raise InvalidRequest(f"{where}.model must be a non-empty string, got {model!r}")
        api_key_env = _optional_text(args.get("api_key_env"), f"{where}.api_key_env")
        api_base = _optional_text(args.get("api_base"), f"{where}.api_base")
        temperature = _optional_number(args.get("temperature"), f"{where}.temperature")
        max_tokens = _optional_int(args.get("max_tokens"), f"{where}.max_tokens", minimum=1)
        timeout = _optional_number(args.get("timeout"), f"{where}.timeout")
        if timeout is not None and timeout <= 0:
            raise InvalidRequest(f"{where}.timeout must be a positive number of seconds, got {timeout!r}")
        num_retries = _optional_int(args.get("num_retries"), f"{where}.num_retries", minimum=0)
        extra = args.get("extra") or {}
        if not isinstance(extra, dict):
            raise InvalidRequest(f"{where}.extra must be an object of dspy.LM keyword arguments, got {extra!r}")
        clashes = sorted(set(extra) & _NAMED_KWARGS)
        if clashes:
            raise InvalidRequest(
                f"{where}.extra sets {', '.join(map(repr, clashes))}, which have settings of their own; "
                f"set {where}.<name> instead (the key itself is never passed in lm settings: use api_key_env)"
            )
        cache = args.get("cache") or "off"
        if cache not in CACHE_MODES:
            raise InvalidRequest(f"{where}.cache must be one of {', '.join(CACHE_MODES)}, got {cache!r}")
        cache_dir = _optional_text(args.get("cache_dir"), f"{where}.cache_dir")
        if cache == "disk" and cache_dir is None:
            raise InvalidRequest(f'{where}.cache = "disk" needs {where}.cache_dir (the directory all workers share)')
        return cls(
            model=model.strip(),
            api_key_env=api_key_env,
            api_base=api_base,
            temperature=temperature,
            max_tokens=max_tokens,
            timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
            num_retries=DEFAULT_NUM_RETRIES if num_retries is None else num_retries,
            extra=dict(extra),
            cache=cache,
            cache_dir=cache_dir,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> LMConfig:
        """The worker's default LM from ``DSPEX_LM`` (the ``dummy`` model when unset)."""
        text = env.get("DSPEX_LM")
        if not text:
            return cls(DUMMY_MODEL)
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise InvalidRequest(f"DSPEX_LM is not valid JSON ({exc}); the host sets it from [lm]") from None
        return cls.from_args(raw, where="DSPEX_LM")

    def api_key(self, env: Mapping[str, str]) -> Optional[str]:
        """The key to pass to DSPy, failing before any network call when it is missing.

        ``api_key_env`` names the variable that must hold it. Without it, a well-known
        provider's own variable must be set, unless an ``api_base`` is given: a local server
        usually needs no key, so it gets a placeholder when that variable is unset.
        """
        if self.is_dummy:
            return None
        if self.api_key_env is not None:
            key = env.get(self.api_key_env) or os.environ.get(self.api_key_env)
            if not key:
                raise LMError(
                    f"no API key for LM {self.model!r}: set {self.api_key_env} "
                    "(the variable lm.api_key_env names) in the worker's environment"
                )
            return key
        provider = self.model.split("/", 1)[0] if "/" in self.model else ""
        candidates = _PROVIDER_KEY_VARS.get(provider, ())
        for name in candidates:
            key = env.get(name) or os.environ.get(name)
            if key:
                return key
        if self.api_base is not None:
            return PLACEHOLDER_KEY if candidates else None
        if candidates:
            raise LMError(
                f"no API key for LM {self.model!r}: set {' or '.join(candidates)} "
                "(or name the variable holding the key in lm.api_key_env)"
            )
        return None


def _optional_text(value: Any, what: str) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{what} must be a non-empty string or null, got {value!r}")
    return value


def _optional_number(value: Any, what: str) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRequest(f"{what} must be a number, got {value!r}")
    return float(value)


def _optional_int(value: Any, what: str, minimum: int) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidRequest(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


class LMs:
    """The LMs of one worker: one object per distinct :class:`LMConfig`, and DSPy's cache.

    DSPy has one response cache per process (``dspy.cache``). It starts disabled (a worker
    must not write under ``$HOME``); the first LM built with ``cache = memory | disk`` sets it
    up, and a later LM asking for a different store replaces it (logged: one worker should
    see one cache setting, the host's). The disk store is shared by every worker of the
    machine, so it is opened with DSPy's restricted unpickler: a planted entry cannot run
    code in a worker.
    """

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self._lms: Dict[str, Any] = {}
        self._lock = threading.Lock()
        self._cache_setting: Optional[Tuple[str, Optional[str]]] = None

    def get(self, config: LMConfig) -> Any:
        """The LM for ``config``, built on first use."""
        key = config.key
        with self._lock:
            lm = self._lms.get(key)
        if lm is not None:
            return lm
        lm = self._build(config)
        with self._lock:
            # Two requests may build the same LM at once; keep the first, drop the other.
            return self._lms.setdefault(key, lm)

    def _build(self, config: LMConfig) -> Any:
        if config.is_dummy:
            from .dummy_lm import DummyLM

            return DummyLM(trace_path=self._env.get("DSPEX_DUMMY_TRACE") or None)
        api_key = config.api_key(self._env)
        if config.cache != "off":
            self._configure_cache(config)
        from .lm_client import build_lm

        try:
            return build_lm(config, api_key)
        except (LMError, InvalidRequest):
            raise
        except Exception as exc:
            raise LMError(f"cannot set up LM {config.model!r}: {type(exc).__name__}: {exc}") from exc

    def _configure_cache(self, config: LMConfig) -> None:
        setting = (config.cache, config.cache_dir if config.cache == "disk" else None)
        with self._lock:
            if self._cache_setting == setting:
                return
            if self._cache_setting is not None:
                log.warning(
                    "DSPy's response cache changes from %s to %s (the newest LM's setting)",
                    self._cache_setting,
                    setting,
                )
            self._cache_setting = setting
            import dspy

            if config.cache == "disk" and config.cache_dir is not None:
                try:
                    os.makedirs(config.cache_dir, mode=0o700, exist_ok=True)
                except OSError as exc:
                    raise LMError(f"cannot create lm.cache_dir {config.cache_dir!r}: {exc}") from exc
            dspy.configure_cache(
                enable_disk_cache=config.cache == "disk",
                enable_memory_cache=True,
                disk_cache_dir=config.cache_dir,
                memory_max_entries=MEMORY_CACHE_ENTRIES,
                restrict_pickle=True,
            )

"""``dspy.LM`` with dspex's retry and rate-limit policy around every LM call.

Where the hook sits: DSPy 3.4 runs every call of a ``dspy.LM``, through its native client or
through LiteLLM, in ``dspy.clients.execution.execute``, and projects any failure onto one
error family (``LMServerError`` for 5xx, ``LMTimeoutError``, ``LMTransportError`` for
connection failures, ``LMRateLimitError`` with ``retry_after`` from the ``Retry-After``
header, ``LMAuthError`` ...). Both clients make exactly one attempt when the LM is built with
``num_retries=0`` (LiteLLM's engine passes ``num_retries=0`` and DSPy's own retry loop is
then empty). :class:`DspexLM` overrides ``__call__``/``acall``, the entry points adapters
and user code use, and retries there: once per LM call, never around a whole program, the
same for both clients. It does not override ``forward``, which would make DSPy treat it as
a legacy LM and skip its cache.

Policy (contract §4):

* 5xx, timeouts and connection errors: retried up to ``num_retries`` times after
  0.5 s, 1 s, 2 s, ... (capped at 30 s), or after the ``Retry-After`` the provider sent
  (a hint over :data:`MAX_RETRY_AFTER` is not waited for: the call fails at once);
  then :class:`~dspex_bridge.errors.LMError`.
* 429: :class:`RateLimited` at once, carrying ``retry_after``, so the host's pool backs off
  and retries the request. An optimizer run (one long request) instead retries 429s here
  like 5xx: its LM is a copy with ``retry_rate_limits`` set.
* any other LM failure (auth, bad request, unknown model): ``LMError`` at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Dict, Optional

import dspy
from dspy.utils.exceptions import LMError as DspyLMError
from dspy.utils.exceptions import (
    LMRateLimitError,
    LMServerError,
    LMTimeoutError,
    LMTransportError,
)

from .errors import LMError, RateLimited
from .lm import LMConfig
from .usage import record_call

log = logging.getLogger("dspex_bridge.lm")

#: First retry delay in seconds; each further retry doubles it, up to :data:`MAX_BACKOFF`.
BASE_BACKOFF = 0.5
MAX_BACKOFF = 30.0
#: A provider asking to wait longer than this is not waited for inside one request.
MAX_RETRY_AFTER = 60.0

_TRANSIENT = (LMServerError, LMTimeoutError, LMTransportError)


def backoff_delay(attempt: int, retry_after: Optional[float]) -> float:
    """Seconds to wait before retry number ``attempt + 1`` (``attempt`` counts from 0)."""
    if retry_after is not None and retry_after >= 0:
        return float(retry_after)
    return min(BASE_BACKOFF * (2**attempt), MAX_BACKOFF)


class DspexLM(dspy.LM):
    """A ``dspy.LM`` whose calls follow dspex's retry policy (see the module doc)."""

    def __init__(self, model: str, *, retries: int, key_hint: Optional[str] = None, **kwargs: Any) -> None:
        super().__init__(model, num_retries=0, **kwargs)
        self.dspex_retries = retries
        self.retry_rate_limits = False
        self.key_hint = key_hint

    def __call__(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        attempt = 0
        while True:
            try:
                return super().__call__(prompt, messages=messages, **kwargs)
            except DspyLMError as exc:
                delay = self._retry_delay(exc, attempt)
            time.sleep(delay)
            attempt += 1

    async def acall(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        attempt = 0
        while True:
            try:
                return await super().acall(prompt, messages=messages, **kwargs)
            except DspyLMError as exc:
                delay = self._retry_delay(exc, attempt)
            await asyncio.sleep(delay)
            attempt += 1

    def with_rate_limit_retries(self) -> DspexLM:
        """A copy that retries 429s like 5xx (for optimizer runs; shares the connection pools)."""
        copied = self.copy()
        copied.retry_rate_limits = True
        return copied

    def update_history(self, entry: Dict[str, Any]) -> None:
        if record_call(self.model, entry):
            super().update_history(entry)

    def dump_state(self) -> Dict[str, Any]:
        # A program saved while this LM is attached to a predictor must load anywhere as a
        # plain dspy.LM, not as a custom class that needs allow_unsafe_lm_state.
        state = super().dump_state()
        state["_dspy_lm_class"] = "dspy.clients.lm.LM"
        state["num_retries"] = self.dspex_retries
        return state

    def _retry_delay(self, exc: DspyLMError, attempt: int) -> float:
        """The wait before the next attempt, or raise the error this failure ends in."""
        retry_after = _seconds(getattr(exc, "retry_after", None))
        rate_limited = isinstance(exc, LMRateLimitError)
        if rate_limited and not self.retry_rate_limits:
            raise RateLimited(
                f"LM {self.model!r} is rate limited (HTTP 429){_after(retry_after)}: {_detail(exc)}",
                retry_after=retry_after,
            ) from exc
        transient = rate_limited or isinstance(exc, _TRANSIENT)
        if not transient:
            raise LMError(failure_message(self.model, exc, self.key_hint)) from exc
        if attempt >= self.dspex_retries:
            raise LMError(
                f"LM {self.model!r} failed after {attempt + 1} attempt(s) ({type(exc).__name__}): {_detail(exc)}"
            ) from exc
        if retry_after is not None and retry_after > MAX_RETRY_AFTER:
            raise LMError(
                f"LM {self.model!r} failed ({type(exc).__name__}) and asked to retry after {retry_after:g} s, "
                f"longer than the {MAX_RETRY_AFTER:g} s a request waits: {_detail(exc)}"
            ) from exc
        delay = backoff_delay(attempt, retry_after)
        log.warning(
            "LM %r call failed (%s); retry %d/%d in %.1f s",
            self.model,
            type(exc).__name__,
            attempt + 1,
            self.dspex_retries,
            delay,
        )
        return delay


def build_lm(config: LMConfig, api_key: Optional[str]) -> DspexLM:
    """Build the LM for a non-dummy config (the key was resolved by the caller)."""
    kwargs: Dict[str, Any] = dict(config.extra)
    kwargs["cache"] = config.cache != "off"
    kwargs["timeout"] = config.timeout
    if config.api_base is not None:
        kwargs["api_base"] = config.api_base
    if api_key is not None:
        kwargs["api_key"] = api_key
    if config.temperature is not None:
        kwargs["temperature"] = config.temperature
    if config.max_tokens is not None:
        kwargs["max_tokens"] = config.max_tokens
    return DspexLM(config.model, retries=config.num_retries, key_hint=config.api_key_env, **kwargs)


def client_kind(lm: Any) -> str:
    """``"native"`` when DSPy will call ``lm`` through its own client, ``"litellm"`` otherwise.

    Decided offline from the LM's settings, as DSPy does for an ordinary chat request.
    """
    from dspy.clients.backend_selection import select_backend

    return "native" if select_backend(lm).native else "litellm"


def preload_client(lm: Any) -> str:
    """Import the client ``lm`` will use, so the first request does not pay for it."""
    kind = client_kind(lm)
    if kind == "litellm":
        from dspy.clients._litellm import get_litellm

        get_litellm(feature="dspex preload")
    else:
        import dspy.clients.engines.lm15_engine  # noqa: F401 - imported for its side effect
    return kind


def failure_message(model: str, exc: BaseException, key_hint: Optional[str] = None) -> str:
    """``LM 'model' failed (ErrorType): detail``, with a hint where the key is the likely cause."""
    message = f"LM {model!r} failed ({type(exc).__name__}): {_detail(exc)}"
    names = type(exc).__name__.lower()
    detail = str(exc).lower()
    if "auth" in names or "notconfigured" in names or "api key" in detail or "api_key" in detail:
        hint = key_hint or "the key variable"
        message += f"\nCheck that {hint} holds a valid key (lm.api_key_env names the variable)."
    return message


def _detail(exc: BaseException) -> str:
    return (getattr(exc, "message", None) or str(exc)).strip() or type(exc).__name__


def _seconds(value: Any) -> Optional[float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


def _after(retry_after: Optional[float]) -> str:
    return f", retry after {retry_after:g} s" if retry_after is not None else ""

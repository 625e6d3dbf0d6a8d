"""Token usage and cost of one request, from DSPy's own usage tracking.

DSPy records each LM call's usage on ``dspy.settings.usage_tracker``, which lives in a
context variable: a tracker installed with ``dspy.context(usage_tracker=...)`` in a request's
thread is that request's alone, so concurrent requests in other threads never mix.

Two gaps in DSPy 3.4 are closed here:

* its ``ParallelExecutor`` (``Evaluate``, the optimizers' ``num_threads``) gives every
  child thread a *deep copy* of the tracker and drops the copies afterwards, so usage made
  in those threads would be lost. :class:`RequestUsage` returns itself from
  ``__deepcopy__`` and locks its updates, so all threads of one request add to one tracker;
* the tracker sees token counts only. The cost of a call reaches the LM's history entry,
  so the bridge's LMs call :func:`record_call` from ``update_history``.

A cache hit adds no usage (DSPy reports ``{}`` for it) and no cost.

History: DSPy keeps every call's messages and response in the LM's, each calling module's
and a global history (up to 10 000 entries each), which in a worker running a 500 000-row
job is memory spent on nothing. Row requests therefore run with :data:`KEEP_HISTORY` off and
the bridge's LMs record only the cost; optimizer runs keep history, which DSPy's
optimizers read.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any, Dict, Optional

from dspy.dsp.utils.settings import settings
from dspy.utils.usage_tracker import UsageTracker


class RequestUsage(UsageTracker):
    """One request's LM usage, shared by every thread the request runs (see module doc)."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._cost: Dict[str, float] = defaultdict(float)
        self._priced_calls: Dict[str, int] = defaultdict(int)

    def __deepcopy__(self, memo: Dict[int, Any]) -> RequestUsage:
        return self

    def add_usage(self, lm: str, usage_entry: Dict[str, Any]) -> None:
        with self._lock:
            super().add_usage(lm, usage_entry)

    def add_cost(self, lm: str, cost: Optional[float]) -> None:
        """Count the cost of one billed call (``None``: the provider's price is unknown)."""
        if cost is None:
            return
        with self._lock:
            self._cost[lm] += float(cost)
            self._priced_calls[lm] += 1

    def summary(self) -> Dict[str, Dict[str, Any]]:
        """``{model: {prompt_tokens, completion_tokens, total_tokens, cost, calls}}`` (contract §4).

        ``calls`` counts LM calls that reported usage (cache hits report none). ``cost`` is
        the sum of the calls' costs when every one of them had a known price, else ``None``:
        a partial sum would read as the whole bill.
        """
        with self._lock:
            totals = self.get_total_tokens()
            result = {}
            for model, entries in self.usage_data.items():
                if not entries:
                    continue
                total = totals.get(model, {})
                calls = len(entries)
                prompt = _count(total.get("prompt_tokens"))
                completion = _count(total.get("completion_tokens"))
                total_tokens = _count(total.get("total_tokens")) or prompt + completion
                priced = self._priced_calls.get(model, 0)
                result[model] = {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": total_tokens,
                    "cost": self._cost[model] if priced == calls else None,
                    "calls": calls,
                }
            return result


def _count(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


#: DSPy settings key: whether the bridge's LMs add their calls to DSPy's histories.
KEEP_HISTORY = "dspex_keep_history"


def record_call(model: str, entry: Dict[str, Any]) -> bool:
    """Add a finished call's cost (from its history ``entry``) to the request's tracker.

    Returns whether the entry should also go to DSPy's histories (see the module doc).
    """
    tracker = settings.usage_tracker
    if isinstance(tracker, RequestUsage) and entry.get("usage"):
        tracker.add_cost(model, entry.get("cost"))
    return bool(settings.get(KEEP_HISTORY, True))
